/* hfexport: a checkpoint read serially, and a Hugging Face model folder
 * written from parameters (what `vlckpt` does; tests use it directly).
 *
 * Owns: opening a checkpoint file of ckpt.h's format in one process (no
 * MPI-IO), rebuilding its config and model from the stored config text
 * (vl_config_load_text), the checks of `vlckpt inspect` (every tensor of the
 * model present in /params and /optimizer/{m,v} with its shape, nothing
 * else, every value readable and finite), and the export folder:
 * config.json (hfconfig.h), model.safetensors or model-0000N-of-0000M
 * shards with model.safetensors.index.json, generation_config.json and
 * the tokenizer/preprocessor files of the source folder.
 * Does not own: the parallel checkpoint writer/reader (ckpt.c), the
 * safetensors format (safetensors.c), config.json's layout (hfconfig.c). */
#ifndef VL_HFEXPORT_H
#define VL_HFEXPORT_H

#include <stdio.h>

#include "model.h"
#include "safetensors.h"

typedef struct {
  char path[VL_PATH_MAX];
  long long step, world_size, seed, n_parameters;
  char format[64], version[64];
  vl_config cfg;      /* from the stored config text */
  vl_model model;
  long long file_id;  /* hid_t */
} vl_ckptfile;

/* Opens a checkpoint and rebuilds its config and model.  Errors (VL_EIO)
 * name the file and what is wrong: not HDF5 / truncated, an attribute
 * missing, a config text that does not load. */
int vl_ckptfile_open(vl_ckptfile *f, const char *path);
void vl_ckptfile_close(vl_ckptfile *f);

/* Reads group ("params", "optimizer/m", "optimizer/v") into host in the
 * model's layout (n_elements floats).  Every missing or mis-shaped tensor,
 * and every one whose values differ from the checksum stored with it
 * (ckpt.h), is named on stderr; the error counts them. */
int vl_ckptfile_read(vl_ckptfile *f, const char *group, float *host);

/* `vlckpt inspect`: prints step, world size, config text, the tensor list
 * with shapes, then the checks; *problems = number of failed checks. */
int vl_ckptfile_inspect(vl_ckptfile *f, FILE *out, int *problems);

/* Writes the Hugging Face folder outdir (created; must be empty or absent)
 * from the model's parameters host (fp32, model layout).  dtype VL_DT_BF16
 * (rounded to nearest even) or VL_DT_F32 (bitwise).  A single
 * model.safetensors when the data fits in shard_bytes, else shards and
 * the index.  src_dir: a folder whose tokenizer, preprocessor and
 * generation files are copied ("" or NULL: none). */
int vl_hf_export(const vl_model *m, const float *host, const char *outdir, vl_dtype dtype,
                 size_t shard_bytes, const char *src_dir);

/* Copies file from to path to; *copied = 0 (and VL_OK) when from does not exist. */
int vl_hf_copy_file(const char *from, const char *to, int *copied);

#endif
