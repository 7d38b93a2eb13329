/* statsreport: reads a gradstats.h5 (src/gradstats.h) and prints it for a
 * person -- the loss curve's landmarks, gradient norms and clipping, skipped
 * steps, the gradient noise scale, the spread of per-rank gradient norms,
 * the tensors with the largest update ratios, the evaluations -- or its
 * per-step columns as CSV for a plotting tool.  `vlckpt stats` is its
 * front end.  Opens the file read-only without HDF5's file lock, so a
 * running job's file can be read (rows being written may be incomplete).
 * Does not own: writing the file (gradstats). */
#ifndef VL_STATSREPORT_H
#define VL_STATSREPORT_H

#include <stdio.h>

typedef struct {
  int top;     /* tensors listed by update ratio (default 10) */
  int window;  /* rows averaged for "recent" figures (default 10) */
  int csv;     /* 1: the per-step columns as CSV instead of the report */
} vl_stats_report_opts;

/* Prints the report (or CSV) of the statistics file at path to out. */
int vl_stats_report(const char *path, const vl_stats_report_opts *opts, FILE *out);

#endif
