/* vlckpt: look into a vltrain checkpoint, or export it as a Hugging Face
 * model folder (hfexport.h does the work; this is the command line); print
 * a run's training statistics (statsreport.h). */
#include <errno.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "hfexport.h"
#include "statsreport.h"
#include "weights.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: vlckpt inspect CKPT.h5\n"
          "       vlckpt export CKPT.h5 OUTDIR [--dtype bf16|fp32] [--shard-size 5GB] [--from DIR]\n"
          "       vlckpt init CONFIG.yaml OUTDIR [--dtype bf16|fp32] [--shard-size 5GB] [--from DIR]\n"
          "       vlckpt stats OUT/gradstats.h5 [--top K] [--window N] [--csv]\n"
          "\n"
          "inspect: step, world size, config text, tensors and shapes, then checks\n"
          "  (readable, complete, finite); exit 0 if every check passes, 1 if not.\n"
          "export: writes OUTDIR (new or empty) as a Hugging Face folder: config.json,\n"
          "  model.safetensors or model-0000N-of-0000M.safetensors + index (shards of at\n"
          "  most --shard-size, default 5GB; units B, KB, MB, GB = 10^3.., KiB, MiB, GiB),\n"
          "  tokenizer, chat template, preprocessor and generation files copied from\n"
          "  --from DIR, else from the checkpoint's model.path when it is a folder.\n"
          "  --dtype: bf16 (default, rounded to nearest even) or fp32 (bitwise).\n"
          "init: a new model folder like export's, with random weights (Hugging Face's\n"
          "  initialisation, seeded by train.seed) of the architecture CONFIG.yaml gives:\n"
          "  a tiny model of a family to try the whole path with.\n"
          "stats: a run's statistics file (train.stats_every) for a person: loss\n"
          "  landmarks, gradient norms and clipping, skipped steps, the gradient noise\n"
          "  scale, per-rank norms, the K tensors with the largest update ratios\n"
          "  (default 10), evaluations; figures over the last N steps (default 10).\n"
          "  --csv: the per-step columns as CSV instead.  Reads a running job's file.\n");
}

/* "5GB", "500MB", "2GiB", "123" (bytes). 0 on a bad value. */
static size_t parse_size(const char *s) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || v <= 0) return 0;
  static const struct { const char *u; double f; } units[] = {
      {"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
      {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}};
  for (size_t i = 0; i < sizeof units / sizeof *units; i++)
    if (!strcmp(end, units[i].u)) return (size_t)(v * units[i].f);
  return 0;
}

static int inspect(const char *path) {
  vl_ckptfile f;
  if (vl_ckptfile_open(&f, path)) return 1;
  int problems = 0;
  int rc = vl_ckptfile_inspect(&f, stdout, &problems);
  vl_ckptfile_close(&f);
  if (rc) return 1;
  if (problems) {
    fprintf(stderr, "vlckpt: %s: %d check(s) FAILED\n", path, problems);
    return 1;
  }
  return 0;
}

static int do_export(const char *path, const char *outdir, vl_dtype dt, size_t shard, const char *from) {
  vl_ckptfile f;
  if (vl_ckptfile_open(&f, path)) return 1;
  float *host = NULL;
  int rc = vl_malloc((void **)&host, f.model.n_elements * sizeof(float), "parameters");
  if (rc == VL_OK) rc = vl_ckptfile_read(&f, "params", host);
  const char *src = from;
  struct stat sb;
  if (!src && f.cfg.model.path[0] && stat(f.cfg.model.path, &sb) == 0 && S_ISDIR(sb.st_mode))
    src = f.cfg.model.path;
  if (from && (stat(from, &sb) || !S_ISDIR(sb.st_mode)))
    rc = rc ? rc : vl_err_raise(VL_EINVAL, __FILE__, __LINE__, __func__, "--from %s: not a folder", from);
  if (rc == VL_OK) rc = vl_hf_export(&f.model, host, outdir, dt, shard, src);
  /* model.tokenizer / model.preprocessor of the run (as given, else under the
   * installed inputs/) when no source folder supplied them */
  const char *keys[2] = {f.cfg.model.tokenizer, f.cfg.model.preprocessor};
  const char *names[2] = {"tokenizer.json", "preprocessor_config.json"};
  for (int k = 0; k < 2 && rc == VL_OK; k++) {
    char to[VL_PATH_MAX + 64], from[2 * VL_PATH_MAX];
    snprintf(to, sizeof to, "%s/%s", outdir, names[k]);
    if (!keys[k][0] || access(to, F_OK) == 0) continue;
    int copied = 0;
    rc = vl_hf_copy_file(keys[k], to, &copied);
    if (rc == VL_OK && !copied && keys[k][0] != '/') {
      snprintf(from, sizeof from, "%s/%s", VL_INPUTS_DIR, keys[k]);
      rc = vl_hf_copy_file(from, to, &copied);
    }
    if (rc == VL_OK && !copied)
      fprintf(stderr, "vlckpt: %s %s not found: %s not written\n", k ? "model.preprocessor" : "model.tokenizer",
              keys[k], names[k]);
  }
  if (rc == VL_OK)
    printf("exported %s (step %lld, %zu parameters, %s) to %s%s%s\n", path, f.step,
           f.model.n_elements, dt == VL_DT_BF16 ? "bf16" : "fp32", outdir,
           src ? "; tokenizer/preprocessor files from " : "", src ? src : "");
  free(host);
  vl_ckptfile_close(&f);
  return rc ? 1 : 0;
}

static int do_init(const char *yaml, const char *outdir, vl_dtype dt, size_t shard, const char *from) {
  vl_config cfg;
  vl_model m;
  if (vl_config_load(&cfg, yaml)) return 1;
  if (vl_model_build(&m, &cfg.model)) return 1;
  float *w = NULL;
  int rc = vl_malloc((void **)&w, m.n_elements * sizeof(float), "parameters");
  struct stat sb;
  const char *src = from;
  if (!src && cfg.model.path[0] && stat(cfg.model.path, &sb) == 0 && S_ISDIR(sb.st_mode))
    src = cfg.model.path;
  if (rc == VL_OK) {
    vl_weights_init_random(&m, w, cfg.train.seed, 0.02f);
    rc = vl_hf_export(&m, w, outdir, dt, shard, src);
  }
  if (rc == VL_OK)
    printf("wrote %s: random %s model of %s, %zu parameters (%s, seed %llu)\n", outdir,
           m.cfg.family == VL_FAMILY_QWEN3_VL ? "qwen3-vl" : "qwen2-vl", yaml, m.n_elements,
           dt == VL_DT_BF16 ? "bf16" : "fp32", (unsigned long long)cfg.train.seed);
  free(w);
  vl_model_free(&m);
  vl_config_free(&cfg);
  return rc ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc < 2) { usage(stderr); return 2; }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) { usage(stdout); return 0; }
  const char *pos[3] = {NULL, NULL, NULL};
  int npos = 0;
  vl_dtype dt = VL_DT_BF16;
  size_t shard = (size_t)5e9;
  const char *from = NULL;
  vl_stats_report_opts so = {10, 10, 0};
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
      const char *d = argv[++i];
      if (!strcmp(d, "bf16") || !strcmp(d, "bfloat16")) dt = VL_DT_BF16;
      else if (!strcmp(d, "fp32") || !strcmp(d, "float32")) dt = VL_DT_F32;
      else { fprintf(stderr, "vlckpt: --dtype %s: expected bf16 or fp32\n", d); return 2; }
    } else if (!strcmp(argv[i], "--shard-size") && i + 1 < argc) {
      shard = parse_size(argv[++i]);
      if (!shard) { fprintf(stderr, "vlckpt: --shard-size %s: expected a size like 5GB\n", argv[i]); return 2; }
    } else if (!strcmp(argv[i], "--from") && i + 1 < argc) {
      from = argv[++i];
    } else if ((!strcmp(argv[i], "--top") || !strcmp(argv[i], "--window")) && i + 1 < argc) {
      const int top = !strcmp(argv[i], "--top");
      char *end;
      long v = strtol(argv[++i], &end, 10);
      if (*end || v <= 0 || v > 1000000) {
        fprintf(stderr, "vlckpt: %s %s: expected a positive count\n", top ? "--top" : "--window", argv[i]);
        return 2;
      }
      if (top) so.top = (int)v;
      else so.window = (int)v;
    } else if (!strcmp(argv[i], "--csv")) {
      so.csv = 1;
    } else if (argv[i][0] == '-' || npos >= 2) {
      usage(stderr);
      return 2;
    } else {
      pos[npos++] = argv[i];
    }
  }
  /* parallel HDF5 wants MPI up, even for one process reading serially */
  MPI_Init(&argc, &argv);
  int rc;
  if (!strcmp(argv[1], "inspect") && npos == 1) rc = inspect(pos[0]);
  else if (!strcmp(argv[1], "export") && npos == 2) rc = do_export(pos[0], pos[1], dt, shard, from);
  else if (!strcmp(argv[1], "init") && npos == 2) rc = do_init(pos[0], pos[1], dt, shard, from);
  else if (!strcmp(argv[1], "stats") && npos == 1) rc = vl_stats_report(pos[0], &so, stdout) ? 1 : 0;
  else { usage(stderr); rc = 2; }
  MPI_Finalize();
  return rc;
}
