/* gradstats: extendable HDF5 datasets of per-step statistics (see gradstats.h). */
#include "gradstats.h"

#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

/* File access without HDF5's file lock (1.10.7 and later): the writer's
 * exclusive lock would keep every reader (h5py, h5ls, a notebook) out of
 * the file while the run goes on.  -1 when the properties cannot be made. */
static hid_t unlocked_fapl(void) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
#if H5_VERSION_GE(1, 10, 7)
  if (fapl >= 0 && H5Pset_file_locking(fapl, 0, 1) < 0) { H5Pclose(fapl); return -1; }
#endif
  return fapl;
}

static const char *const scalars[] = {"step", "loss", "lr", "tokens_per_s", "grad_norm",
                                      "clip_coef", "skipped", "nonfinite_ranks", "noise_scale"};
enum { N_SCALARS = 9, FLUSH_EVERY = 4 };

struct vl_gradstats {
  hid_t file;
  hid_t scalar[N_SCALARS];
  hid_t tensor[3];  /* grad norm, param norm, update ratio */
  hid_t rank;
  hid_t eval_step, eval_loss, eval_acc;
  int n_params, world;
  hsize_t rows, eval_rows;
  int since_flush;
};

static const char *const tensor_sets[3] = {"tensor_grad_norm", "tensor_param_norm",
                                           "tensor_update_ratio"};

double vl_noise_scale(double small_sq, double b_small, double big_sq, double b_big) {
  if (!(b_big > b_small) || b_small <= 0) return NAN;
  double g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small);
  double s = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big);
  return g2 > 0 ? s / g2 : NAN;
}

static hid_t make_set(hid_t f, const char *name, int cols) {
  hsize_t dims[2] = {0, (hsize_t)cols}, maxd[2] = {H5S_UNLIMITED, (hsize_t)cols};
  hsize_t chunk[2] = {64, (hsize_t)(cols > 0 ? cols : 1)};
  int nd = cols > 0 ? 2 : 1;
  hid_t space = H5Screate_simple(nd, dims, maxd), dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, nd, chunk);
  hid_t d = H5Dcreate2(f, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Pclose(dcpl);
  H5Sclose(space);
  return d;
}

static int append_row(hid_t d, hsize_t row, int cols, const double *v) {
  hsize_t dims[2] = {row + 1, (hsize_t)cols}, start[2] = {row, 0}, count[2] = {1, (hsize_t)cols};
  int nd = cols > 0 ? 2 : 1;
  if (!cols) count[0] = 1;
  if (H5Dset_extent(d, dims) < 0) VL_ERROR(VL_EHDF5, "cannot extend a statistics dataset");
  hid_t fs = H5Dget_space(d);
  hsize_t mdim = cols > 0 ? (hsize_t)cols : 1;
  hid_t ms = H5Screate_simple(1, &mdim, NULL);
  herr_t e = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
  if (e >= 0) e = H5Dwrite(d, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, v);
  H5Sclose(ms);
  H5Sclose(fs);
  (void)nd;
  if (e < 0) VL_ERROR(VL_EHDF5, "cannot write a statistics row");
  return VL_OK;
}

int vl_gradstats_open(vl_gradstats **out, const char *path, const vl_model *m, int world,
                      int append, int last_step) {
  *out = NULL;
  vl_gradstats *gs = calloc(1, sizeof *gs);
  if (!gs) VL_ERROR(VL_ENOMEM, "statistics");
  gs->n_params = m->n_params;
  gs->world = world;
  int rc = VL_OK;
  hid_t fapl = unlocked_fapl();
  if (fapl < 0) { free(gs); VL_ERROR(VL_EHDF5, "%s: file access properties", path); }
  H5E_BEGIN_TRY { gs->file = append ? H5Fopen(path, H5F_ACC_RDWR, fapl) : -1; } H5E_END_TRY;
  if (gs->file >= 0) { /* continue: drop rows after the checkpoint being resumed */
    H5Pclose(fapl);
    for (int k = 0; k < N_SCALARS; k++) gs->scalar[k] = H5Dopen2(gs->file, scalars[k], H5P_DEFAULT);
    for (int k = 0; k < 3; k++) gs->tensor[k] = H5Dopen2(gs->file, tensor_sets[k], H5P_DEFAULT);
    gs->rank = H5Dopen2(gs->file, "rank_grad_norm", H5P_DEFAULT);
    gs->eval_step = H5Dopen2(gs->file, "eval_step", H5P_DEFAULT);
    gs->eval_loss = H5Dopen2(gs->file, "eval_loss", H5P_DEFAULT);
    /* eval_accuracy came later: a file from before gets it now */
    gs->eval_acc = H5Lexists(gs->file, "eval_accuracy", H5P_DEFAULT) > 0
                       ? H5Dopen2(gs->file, "eval_accuracy", H5P_DEFAULT)
                       : make_set(gs->file, "eval_accuracy", 0);
    int ok = gs->rank >= 0 && gs->eval_step >= 0 && gs->eval_loss >= 0 && gs->eval_acc >= 0;
    for (int k = 0; k < N_SCALARS; k++) ok &= gs->scalar[k] >= 0;
    for (int k = 0; k < 3; k++) ok &= gs->tensor[k] >= 0;
    hsize_t n = 0, rdims[2] = {0, 0};
    if (ok) {
      hid_t sp = H5Dget_space(gs->scalar[0]);
      H5Sget_simple_extent_dims(sp, &n, NULL);
      H5Sclose(sp);
      sp = H5Dget_space(gs->rank);
      H5Sget_simple_extent_dims(sp, rdims, NULL);
      H5Sclose(sp);
      ok = rdims[1] == (hsize_t)world || n == 0;
    }
    if (!ok) {
      vl_gradstats_close(gs);
      VL_ERROR(VL_EHDF5, "%s: not a statistics file of this run (other world size?); move it away", path);
    }
    double *steps = malloc((n + 1) * sizeof(double));
    if (n && H5Dread(gs->scalar[0], H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, steps) < 0) rc = VL_EHDF5;
    hsize_t keep = 0;
    while (keep < n && steps[keep] <= last_step) keep++;
    free(steps);
    gs->rows = keep;
    for (int k = 0; k < N_SCALARS; k++) { hsize_t d = keep; H5Dset_extent(gs->scalar[k], &d); }
    for (int k = 0; k < 3; k++) { hsize_t d[2] = {keep, (hsize_t)m->n_params}; H5Dset_extent(gs->tensor[k], d); }
    { hsize_t d[2] = {keep, (hsize_t)world}; H5Dset_extent(gs->rank, d); }
    { /* evaluations after the resumed step go too */
      hsize_t ne = 0;
      hid_t es = H5Dget_space(gs->eval_step);
      H5Sget_simple_extent_dims(es, &ne, NULL);
      H5Sclose(es);
      double *ev = malloc((ne + 1) * sizeof(double));
      if (ne && ev) H5Dread(gs->eval_step, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, ev);
      hsize_t ke = 0;
      while (ev && ke < ne && ev[ke] <= last_step) ke++;
      free(ev);
      H5Dset_extent(gs->eval_step, &ke);
      H5Dset_extent(gs->eval_loss, &ke);
      H5Dset_extent(gs->eval_acc, &ke);
      gs->eval_rows = ke;
    }
    if (rc) { vl_gradstats_close(gs); VL_ERROR(VL_EHDF5, "%s: cannot read the recorded steps", path); }
    *out = gs;
    return VL_OK;
  }
  gs->file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  if (gs->file < 0) { free(gs); VL_ERROR(VL_EHDF5, "cannot create %s", path); }
  for (int k = 0; k < N_SCALARS; k++) gs->scalar[k] = make_set(gs->file, scalars[k], 0);
  for (int k = 0; k < 3; k++) gs->tensor[k] = make_set(gs->file, tensor_sets[k], m->n_params);
  gs->rank = make_set(gs->file, "rank_grad_norm", world);
  gs->eval_step = make_set(gs->file, "eval_step", 0);
  gs->eval_loss = make_set(gs->file, "eval_loss", 0);
  gs->eval_acc = make_set(gs->file, "eval_accuracy", 0);
  /* names of the tensor columns */
  hid_t st = H5Tcopy(H5T_C_S1);
  H5Tset_size(st, VL_NAME_MAX);
  hsize_t np = (hsize_t)m->n_params;
  hid_t sp = H5Screate_simple(1, &np, NULL);
  hid_t dn = H5Dcreate2(gs->file, "tensor_names", st, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  char *names = calloc((size_t)m->n_params, VL_NAME_MAX);
  for (int i = 0; i < m->n_params && names; i++) memcpy(names + (size_t)i * VL_NAME_MAX, m->params[i].name, VL_NAME_MAX);
  if (dn < 0 || !names || H5Dwrite(dn, st, H5S_ALL, H5S_ALL, H5P_DEFAULT, names) < 0) rc = VL_EHDF5;
  free(names);
  if (dn >= 0) H5Dclose(dn);
  H5Sclose(sp);
  H5Tclose(st);
  long long w = world;
  hid_t as = H5Screate(H5S_SCALAR), at = H5Acreate2(gs->file, "world_size", H5T_NATIVE_LLONG, as, H5P_DEFAULT, H5P_DEFAULT);
  if (at < 0 || H5Awrite(at, H5T_NATIVE_LLONG, &w) < 0) rc = VL_EHDF5;
  if (at >= 0) H5Aclose(at);
  H5Sclose(as);
  for (int k = 0; k < N_SCALARS; k++) if (gs->scalar[k] < 0) rc = VL_EHDF5;
  if (gs->eval_step < 0 || gs->eval_loss < 0 || gs->eval_acc < 0) rc = VL_EHDF5;
  if (rc) { vl_gradstats_close(gs); VL_ERROR(VL_EHDF5, "cannot lay out %s", path); }
  *out = gs;
  return VL_OK;
}

int vl_gradstats_append(vl_gradstats *gs, const vl_gradstats_row *r) {
  const double v[N_SCALARS] = {r->step, r->loss, r->lr, r->tokens_per_s, r->grad_norm,
                               r->clip_coef, r->skipped, r->nonfinite_ranks, r->noise_scale};
  for (int k = 0; k < N_SCALARS; k++) VL_CALL(append_row(gs->scalar[k], gs->rows, 0, &v[k]));
  const double *t[3] = {r->tensor_grad_norm, r->tensor_param_norm, r->tensor_update_ratio};
  double *nan_row = NULL;
  for (int k = 0; k < 3; k++) {
    if (!t[k]) {
      if (!nan_row) {
        nan_row = malloc((size_t)(gs->n_params > gs->world ? gs->n_params : gs->world) * sizeof(double));
        for (int i = 0; nan_row && i < (gs->n_params > gs->world ? gs->n_params : gs->world); i++) nan_row[i] = NAN;
      }
      t[k] = nan_row;
    }
    if (t[k]) VL_CALL(append_row(gs->tensor[k], gs->rows, gs->n_params, t[k]));
  }
  VL_CALL(append_row(gs->rank, gs->rows, gs->world, r->rank_grad_norm ? r->rank_grad_norm : nan_row));
  free(nan_row);
  gs->rows++;
  if (++gs->since_flush >= FLUSH_EVERY) {
    if (H5Fflush(gs->file, H5F_SCOPE_GLOBAL) < 0) VL_ERROR(VL_EHDF5, "statistics flush failed");
    gs->since_flush = 0;
  }
  return VL_OK;
}

int vl_gradstats_eval(vl_gradstats *gs, int step, double loss, double accuracy) {
  double st = step;
  VL_CALL(append_row(gs->eval_step, gs->eval_rows, 0, &st));
  VL_CALL(append_row(gs->eval_loss, gs->eval_rows, 0, &loss));
  VL_CALL(append_row(gs->eval_acc, gs->eval_rows, 0, &accuracy));
  gs->eval_rows++;
  if (H5Fflush(gs->file, H5F_SCOPE_GLOBAL) < 0) VL_ERROR(VL_EHDF5, "statistics flush failed");
  return VL_OK;
}

int vl_gradstats_close(vl_gradstats *gs) {
  if (!gs) return VL_OK;
  if (gs->eval_step > 0) H5Dclose(gs->eval_step);
  if (gs->eval_loss > 0) H5Dclose(gs->eval_loss);
  if (gs->eval_acc > 0) H5Dclose(gs->eval_acc);
  for (int k = 0; k < N_SCALARS; k++) if (gs->scalar[k] > 0) H5Dclose(gs->scalar[k]);
  for (int k = 0; k < 3; k++) if (gs->tensor[k] > 0) H5Dclose(gs->tensor[k]);
  if (gs->rank > 0) H5Dclose(gs->rank);
  int rc = VL_OK;
  if (gs->file >= 0 && H5Fclose(gs->file) < 0) rc = VL_EHDF5;
  free(gs);
  if (rc) VL_ERROR(rc, "closing the statistics file failed");
  return VL_OK;
}
