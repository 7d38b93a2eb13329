/* statsreport: a gradstats.h5 printed for a person or as CSV (see
 * statsreport.h). */
#include "statsreport.h"

#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "model.h"

static const char *const columns[] = {"step", "loss", "lr", "tokens_per_s", "grad_norm",
                                      "clip_coef", "skipped", "nonfinite_ranks", "noise_scale"};
enum { C_STEP, C_LOSS, C_LR, C_TPS, C_GNORM, C_CLIP, C_SKIP, C_NONFIN, C_NOISE, N_COLS };

typedef struct {
  hid_t file;
  hsize_t rows, n_eval, n_acc;
  int n_params, world;
  double *col[N_COLS];
  double *eval_step, *eval_loss, *eval_acc;
  char *names; /* n_params x VL_NAME_MAX */
} stats_file;

/* The whole of a 1-d dataset (NULL, 0 rows when it is absent and optional). */
static int read_column(hid_t f, const char *name, int optional, double **v, hsize_t *n) {
  *v = NULL;
  *n = 0;
  if (H5Lexists(f, name, H5P_DEFAULT) <= 0) {
    if (optional) return VL_OK;
    VL_ERROR(VL_EHDF5, "no dataset %s: not a vltrain statistics file", name);
  }
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  if (d < 0) VL_ERROR(VL_EHDF5, "cannot open dataset %s", name);
  hid_t s = H5Dget_space(d);
  int rc = VL_OK;
  if (s < 0 || H5Sget_simple_extent_ndims(s) != 1 || H5Sget_simple_extent_dims(s, n, NULL) < 0)
    rc = VL_EHDF5;
  if (rc == VL_OK) rc = vl_malloc((void **)v, (*n + 1) * sizeof(double), name);
  if (rc == VL_OK && *n && H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, *v) < 0)
    rc = VL_EHDF5;
  if (s >= 0) H5Sclose(s);
  H5Dclose(d);
  if (rc) VL_ERROR(rc, "cannot read dataset %s", name);
  return VL_OK;
}

/* Row `row` of a (rows, cols) dataset. */
static int read_row(hid_t f, const char *name, hsize_t row, int cols, double *out) {
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  if (d < 0) VL_ERROR(VL_EHDF5, "cannot open dataset %s", name);
  hid_t fs = H5Dget_space(d);
  hsize_t dims[2] = {0, 0}, start[2] = {row, 0}, count[2] = {1, (hsize_t)cols}, m = (hsize_t)cols;
  int ok = fs >= 0 && H5Sget_simple_extent_ndims(fs) == 2 && H5Sget_simple_extent_dims(fs, dims, NULL) == 2 &&
           dims[1] == (hsize_t)cols && row < dims[0];
  hid_t ms = ok ? H5Screate_simple(1, &m, NULL) : -1;
  ok = ok && ms >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
       H5Dread(d, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, out) >= 0;
  if (ms >= 0) H5Sclose(ms);
  if (fs >= 0) H5Sclose(fs);
  H5Dclose(d);
  if (!ok) VL_ERROR(VL_EHDF5, "cannot read row %llu of %s", (unsigned long long)row, name);
  return VL_OK;
}

static void close_file(stats_file *s) {
  for (int k = 0; k < N_COLS; k++) free(s->col[k]);
  free(s->eval_step);
  free(s->eval_loss);
  free(s->eval_acc);
  free(s->names);
  if (s->file >= 0) H5Fclose(s->file);
  memset(s, 0, sizeof *s);
  s->file = -1;
}

static int open_file(stats_file *s, const char *path) {
  memset(s, 0, sizeof *s);
  s->file = -1;
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl < 0) VL_ERROR(VL_EHDF5, "%s: file access properties", path);
#if H5_VERSION_GE(1, 10, 7)
  /* no lock: the writing job keeps the file open */
  if (H5Pset_file_locking(fapl, 0, 1) < 0) { H5Pclose(fapl); VL_ERROR(VL_EHDF5, "%s: file locking off", path); }
#endif
  H5E_BEGIN_TRY { s->file = H5Fopen(path, H5F_ACC_RDONLY, fapl); } H5E_END_TRY;
  H5Pclose(fapl);
  if (s->file < 0) VL_ERROR(VL_EHDF5, "cannot open %s as HDF5", path);
  int rc = VL_OK;
  for (int k = 0; k < N_COLS && rc == VL_OK; k++) {
    hsize_t n;
    rc = read_column(s->file, columns[k], 0, &s->col[k], &n);
    if (rc == VL_OK && k == 0) s->rows = n;
    if (rc == VL_OK && n != s->rows) {
      rc = vl_err_raise(VL_EHDF5, __FILE__, __LINE__, __func__,
                        "%s: %s has %llu rows, step has %llu (a row being written?)", path, columns[k],
                        (unsigned long long)n, (unsigned long long)s->rows);
    }
  }
  hsize_t ne[3] = {0, 0, 0};
  if (rc == VL_OK) rc = read_column(s->file, "eval_step", 1, &s->eval_step, &ne[0]);
  if (rc == VL_OK) rc = read_column(s->file, "eval_loss", 1, &s->eval_loss, &ne[1]);
  if (rc == VL_OK) rc = read_column(s->file, "eval_accuracy", 1, &s->eval_acc, &ne[2]);
  s->n_eval = ne[0] < ne[1] ? ne[0] : ne[1];
  s->n_acc = ne[2];
  /* tensor names and the world size */
  if (rc == VL_OK) {
    hid_t d = H5Dopen2(s->file, "tensor_names", H5P_DEFAULT);
    hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
    hsize_t np = 0;
    if (sp < 0 || H5Sget_simple_extent_dims(sp, &np, NULL) != 1) rc = VL_EHDF5;
    s->n_params = (int)np;
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, VL_NAME_MAX);
    if (rc == VL_OK) rc = vl_malloc((void **)&s->names, (np + 1) * VL_NAME_MAX, "tensor names");
    if (rc == VL_OK && np && H5Dread(d, st, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->names) < 0) rc = VL_EHDF5;
    H5Tclose(st);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    long long w = 0;
    hid_t a = H5Aopen(s->file, "world_size", H5P_DEFAULT);
    if (a < 0 || H5Aread(a, H5T_NATIVE_LLONG, &w) < 0) rc = VL_EHDF5;
    if (a >= 0) H5Aclose(a);
    s->world = (int)w;
    if (rc)
      rc = vl_err_raise(VL_EHDF5, __FILE__, __LINE__, __func__,
                        "%s: no tensor_names or world_size: not a vltrain statistics file", path);
  }
  if (rc) {
    close_file(s);
    return rc;
  }
  return VL_OK;
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* median of the finite values of v[lo..hi); NAN when there are none */
static double median(const double *v, hsize_t lo, hsize_t hi) {
  double *t = malloc((hi - lo + 1) * sizeof(double));
  if (!t) return NAN;
  size_t n = 0;
  for (hsize_t i = lo; i < hi; i++)
    if (isfinite(v[i])) t[n++] = v[i];
  qsort(t, n, sizeof(double), cmp_double);
  const double m = n ? (n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2])) : NAN;
  free(t);
  return m;
}

/* the last row (before `before`) whose values in `name` are all finite, or -1 */
static long last_finite_row(stats_file *s, const char *name, int cols, double *buf, hsize_t before) {
  for (hsize_t r = before; r-- > 0;) {
    if (read_row(s->file, name, r, cols, buf)) return -2;
    int ok = 1;
    for (int c = 0; c < cols && ok; c++) ok = isfinite(buf[c]);
    if (ok) return (long)r;
  }
  return -1;
}

static void print_csv(const stats_file *s, FILE *out) {
  for (int k = 0; k < N_COLS; k++) fprintf(out, "%s%s", columns[k], k + 1 < N_COLS ? "," : "\n");
  for (hsize_t r = 0; r < s->rows; r++)
    for (int k = 0; k < N_COLS; k++) fprintf(out, "%.9g%s", s->col[k][r], k + 1 < N_COLS ? "," : "\n");
}

typedef struct {
  int index;
  double ratio;
} ranked;

static int by_ratio_desc(const void *a, const void *b) {
  const double x = ((const ranked *)a)->ratio, y = ((const ranked *)b)->ratio;
  return (x < y) - (x > y);
}

static int print_report(stats_file *s, const char *path, const vl_stats_report_opts *o, FILE *out) {
  const hsize_t n = s->rows;
  const double *step = s->col[C_STEP], *loss = s->col[C_LOSS];
  fprintf(out, "statistics: %s\n", path);
  fprintf(out, "  world size %d, %d tensors, %llu recorded steps", s->world, s->n_params, (unsigned long long)n);
  if (n) fprintf(out, " (%.0f .. %.0f)", step[0], step[n - 1]);
  fprintf(out, ", %llu evaluations\n", (unsigned long long)s->n_eval);
  if (!n) return VL_OK;
  const hsize_t w = (hsize_t)(o->window > 0 ? o->window : 10), lo = n > w ? n - w : 0;
  /* loss */
  hsize_t imin = 0;
  for (hsize_t r = 1; r < n; r++)
    if (isfinite(loss[r]) && (!isfinite(loss[imin]) || loss[r] < loss[imin])) imin = r;
  double sum = 0;
  int cnt = 0;
  for (hsize_t r = lo; r < n; r++)
    if (isfinite(loss[r])) sum += loss[r], cnt++;
  fprintf(out, "loss         first %.4f (step %.0f), last %.4f (step %.0f), lowest %.4f (step %.0f), "
          "mean of the last %d: %.4f\n", loss[0], step[0], loss[n - 1], step[n - 1], loss[imin],
          step[imin], cnt, cnt ? sum / cnt : NAN);
  fprintf(out, "lr           last %.3e\n", s->col[C_LR][n - 1]);
  fprintf(out, "tokens/s     median %.0f (steps after the first)\n",
          median(s->col[C_TPS], n > 1 ? 1 : 0, n));
  /* gradient norm and clipping */
  const double *g = s->col[C_GNORM], *clip = s->col[C_CLIP];
  hsize_t imax = 0;
  int clipped = 0;
  for (hsize_t r = 0; r < n; r++) {
    if (isfinite(g[r]) && (!isfinite(g[imax]) || g[r] > g[imax])) imax = r;
    if (isfinite(clip[r]) && clip[r] < 1.0) clipped++;
  }
  fprintf(out, "grad norm    last %.3e, median %.3e, largest %.3e (step %.0f); clipped on %d of %llu steps\n",
          g[n - 1], median(g, 0, n), g[imax], step[imax], clipped, (unsigned long long)n);
  /* skipped steps */
  int skipped = 0, worst = 0;
  for (hsize_t r = 0; r < n; r++) {
    if (s->col[C_SKIP][r] > 0) skipped++;
    if (s->col[C_NONFIN][r] > worst) worst = (int)s->col[C_NONFIN][r];
  }
  fprintf(out, "skipped      %d step(s) with a non-finite loss or gradient", skipped);
  if (skipped) {
    fprintf(out, ":");
    int shown = 0;
    for (hsize_t r = 0; r < n && shown < 10; r++)
      if (s->col[C_SKIP][r] > 0) fprintf(out, " %.0f", step[r]), shown++;
    if (skipped > shown) fprintf(out, " ...");
    fprintf(out, " (at most %d rank(s) non-finite at once)", worst);
  }
  fprintf(out, "\n");
  /* gradient noise scale */
  const double b = median(s->col[C_NOISE], lo, n);
  if (isfinite(b))
    fprintf(out, "noise scale  B_simple median of the last %llu steps %.3e tokens (batches well above it "
            "gain little per token)\n", (unsigned long long)(n - lo), b);
  else
    fprintf(out, "noise scale  not available (one rank, or no finite estimate yet)\n");
  /* ranks */
  double *buf = NULL;
  const int wide = s->n_params > s->world ? s->n_params : s->world;
  VL_CALL(vl_malloc((void **)&buf, (size_t)(wide > 0 ? wide : 1) * 3 * sizeof(double), "a statistics row"));
  int rc = VL_OK;
  if (s->world > 0) {
    long r = last_finite_row(s, "rank_grad_norm", s->world, buf, n);
    if (r == -2) rc = VL_EHDF5;
    else if (r < 0) fprintf(out, "ranks        no per-rank gradient norms recorded\n");
    else {
      double mn = buf[0], mx = buf[0];
      for (int i = 1; i < s->world; i++) mn = fmin(mn, buf[i]), mx = fmax(mx, buf[i]);
      fprintf(out, "ranks        local gradient norms at step %.0f: smallest %.3e, largest %.3e "
              "(ratio %.2f)\n", step[r], mn, mx, mn > 0 ? mx / mn : NAN);
    }
  }
  /* tensors by update ratio, from the last complete row */
  if (rc == VL_OK && s->n_params > 0) {
    double *gn = buf, *pn = buf + wide, *ur = buf + 2 * (size_t)wide;
    long r = last_finite_row(s, "tensor_update_ratio", s->n_params, ur, n);
    if (r == -2) rc = VL_EHDF5;
    else if (r < 0) fprintf(out, "tensors      no per-tensor statistics recorded\n");
    else {
      rc = read_row(s->file, "tensor_grad_norm", (hsize_t)r, s->n_params, gn);
      if (rc == VL_OK) rc = read_row(s->file, "tensor_param_norm", (hsize_t)r, s->n_params, pn);
      ranked *rk = rc == VL_OK ? malloc((size_t)s->n_params * sizeof *rk) : NULL;
      if (rc == VL_OK && !rk) rc = VL_ENOMEM;
      if (rc == VL_OK) {
        for (int i = 0; i < s->n_params; i++) rk[i].index = i, rk[i].ratio = ur[i];
        qsort(rk, (size_t)s->n_params, sizeof *rk, by_ratio_desc);
        const int top = o->top > 0 && o->top < s->n_params ? o->top : s->n_params;
        fprintf(out, "tensors      at step %.0f, the %d largest update ratios |dW| / |W|:\n", step[r], top);
        fprintf(out, "  %-56s %12s %12s %12s\n", "tensor", "grad norm", "param norm", "update ratio");
        for (int k = 0; k < top; k++) {
          const int i = rk[k].index;
          fprintf(out, "  %-56.*s %12.4e %12.4e %12.4e\n", VL_NAME_MAX, s->names + (size_t)i * VL_NAME_MAX,
                  gn[i], pn[i], ur[i]);
        }
      }
      free(rk);
    }
  }
  free(buf);
  if (rc) VL_ERROR(rc, "%s: cannot read the per-rank or per-tensor statistics", path);
  /* evaluations */
  if (s->n_eval) {
    fprintf(out, "evaluations\n  %8s  %8s  %s\n", "step", "val loss", "exact-match accuracy");
    for (hsize_t e = 0; e < s->n_eval; e++)
      fprintf(out, "  %8.0f  %8.4f  %6.1f%%\n", s->eval_step[e], s->eval_loss[e],
              e < s->n_acc ? 100.0 * s->eval_acc[e] : NAN);
  }
  return VL_OK;
}

int vl_stats_report(const char *path, const vl_stats_report_opts *opts, FILE *out) {
  vl_stats_report_opts o = opts ? *opts : (vl_stats_report_opts){10, 10, 0};
  stats_file s;
  VL_CALL(open_file(&s, path));
  int rc = VL_OK;
  if (o.csv) print_csv(&s, out);
  else rc = print_report(&s, path, &o, out);
  close_file(&s);
  VL_CALL(rc);
  return VL_OK;
}
