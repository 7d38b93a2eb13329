/* opsprof: per-op timings of one micro-batch (VL_PROFILE=2).
 *
 * Owns: a vl_ops table that wraps a backend's and, while armed, brackets
 * every op call with backend timers (CUDA events on the compute stream,
 * the wall clock on the CPU), the sums by op and by phase (vision / text,
 * forward / loss / backward: the graph announces phases through
 * ops->phase), and the table printed at the end of a run.  Unarmed, a call
 * costs one test; without VL_PROFILE=2 the trainer does not wrap at all.
 * Does not own: the ops themselves, deciding which micro-batch (train.c).
 */
#ifndef VL_OPSPROF_H
#define VL_OPSPROF_H

#include <stdio.h>

#include "ops.h"

typedef struct vl_opsprof vl_opsprof;

/* *out: a table that forwards everything to inner (which it does not own);
 * *prof: its profiler state.  Free with vl_opsprof_free. */
int vl_opsprof_wrap(vl_ops **out, vl_opsprof **prof, vl_ops *inner);
/* Records the op calls queued from now until disarm (timer pairs; calls
 * beyond VL_OPS_TIMERS / 2 are counted as dropped). */
void vl_opsprof_arm(vl_opsprof *p);
void vl_opsprof_disarm(vl_opsprof *p);
/* After the recorded work is done (ops->sync): reads the timers and adds
 * them to the sums (one more profiled micro-batch). */
int vl_opsprof_collect(vl_opsprof *p);
/* The table: by phase and op, by op, by phase, sorted by time; title names
 * what was profiled. */
void vl_opsprof_print(const vl_opsprof *p, FILE *f, const char *title);
void vl_opsprof_free(vl_opsprof *p);

#endif
