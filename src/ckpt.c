/* ckpt: parallel HDF5 checkpoints (see ckpt.h). */
#include "ckpt.h"

#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"

#define CKPT_FORMAT "vltrain-checkpoint-1"
#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define H5_CHECK(expr, ...)                                            \
  do {                                                                 \
    if ((expr) < 0) VL_ERROR_GOTO(rc, done, VL_EHDF5, __VA_ARGS__);    \
  } while (0)

/* Selects the flat row-major range [a, b) of an array of shape dims[0..nd)
 * as a union of hyperslabs (partial row, full rows, partial row, recursively). */
static herr_t select_flat(hid_t space, const hsize_t *dims, int nd, int level, hsize_t *prefix,
                          hsize_t a, hsize_t b) {
  if (a >= b) return 0;
  hsize_t start[8], count[8];
  if (level == nd - 1) {
    for (int d = 0; d < level; d++) { start[d] = prefix[d]; count[d] = 1; }
    start[level] = a;
    count[level] = b - a;
    return H5Sselect_hyperslab(space, H5S_SELECT_OR, start, NULL, count, NULL);
  }
  hsize_t inner = 1;
  for (int d = level + 1; d < nd; d++) inner *= dims[d];
  hsize_t r0 = a / inner, r1 = b / inner;
  if (a % inner) { /* head: part of row r0 */
    hsize_t end = (r0 + 1) * inner < b ? (r0 + 1) * inner : b;
    prefix[level] = r0;
    if (select_flat(space, dims, nd, level + 1, prefix, a % inner, end - r0 * inner) < 0) return -1;
    r0++;
    if (end == b) return 0;
  }
  if (r1 > r0) { /* whole rows r0 .. r1-1 */
    for (int d = 0; d < level; d++) { start[d] = prefix[d]; count[d] = 1; }
    start[level] = r0;
    count[level] = r1 - r0;
    for (int d = level + 1; d < nd; d++) { start[d] = 0; count[d] = dims[d]; }
    if (H5Sselect_hyperslab(space, H5S_SELECT_OR, start, NULL, count, NULL) < 0) return -1;
  }
  if (b % inner && r1 >= r0) { /* tail: start of row r1 */
    prefix[level] = r1;
    return select_flat(space, dims, nd, level + 1, prefix, 0, b % inner);
  }
  return 0;
}

/* This rank's part of parameter p: flat [*a, *b) within the tensor and the
 * offset of *a in the rank's shard. */
static int shard_part(const vl_optim *o, const vl_param *p, hsize_t *a, hsize_t *b, size_t *at) {
  size_t mine_end = o->begin + o->shard < o->n ? o->begin + o->shard : o->n;
  size_t lo = p->offset > o->begin ? p->offset : o->begin;
  size_t hi = p->offset + p->numel < mine_end ? p->offset + p->numel : mine_end;
  if (lo >= hi) return 0;
  *a = lo - p->offset;
  *b = hi - p->offset;
  *at = lo - o->begin;
  return 1;
}

/* One tensor: dataset `name` under group; write (or read) this rank's part
 * from/to host[at..].  Collective over the file's communicator. */
static int tensor_io(hid_t group, const vl_param *p, int create, const vl_optim *o, float *host,
                     const char *file) {
  int rc = VL_OK;
  hid_t space = -1, dset = -1, mem = -1, dxpl = -1;
  hsize_t dims[VL_MAX_DIMS], a = 0, b = 0, prefix[8] = {0};
  size_t at = 0;
  for (int d = 0; d < p->ndim; d++) dims[d] = (hsize_t)p->shape[d];
  if (create) {
    space = H5Screate_simple(p->ndim, dims, NULL);
    H5_CHECK(space, "%s: cannot create the dataspace of %s", file, p->name);
    dset = H5Dcreate2(group, p->name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5_CHECK(dset, "%s: cannot create dataset %s", file, p->name);
  } else {
    if (H5Lexists(group, p->name, H5P_DEFAULT) <= 0)
      VL_ERROR_GOTO(rc, done, VL_ESHAPE, "%s: tensor %s is missing (a checkpoint of another model?)",
                    file, p->name);
    dset = H5Dopen2(group, p->name, H5P_DEFAULT);
    H5_CHECK(dset, "%s: cannot open dataset %s", file, p->name);
    space = H5Dget_space(dset);
    H5_CHECK(space, "%s: cannot read the shape of %s", file, p->name);
    hsize_t got[8];
    int nd = H5Sget_simple_extent_dims(space, got, NULL);
    int same = nd == p->ndim;
    for (int d = 0; same && d < nd; d++) same = got[d] == dims[d];
    if (!same)
      VL_ERROR_GOTO(rc, done, VL_ESHAPE, "%s: tensor %s has %d dims [%llu, ...], the model expects %d [%llu, ...]",
                    file, p->name, nd, nd > 0 ? (unsigned long long)got[0] : 0ULL, p->ndim,
                    (unsigned long long)dims[0]);
  }
  int has = shard_part(o, p, &a, &b, &at);
  H5_CHECK(H5Sselect_none(space), "%s: selection of %s", file, p->name);
  if (has) H5_CHECK(select_flat(space, dims, p->ndim, 0, prefix, a, b), "%s: selection of %s", file, p->name);
  hsize_t n_mem = has ? b - a : 0;
  mem = H5Screate_simple(1, &n_mem, NULL);
  H5_CHECK(mem, "%s: memory space of %s", file, p->name);
  if (!has) H5_CHECK(H5Sselect_none(mem), "%s: memory selection of %s", file, p->name);
  dxpl = H5Pcreate(H5P_DATASET_XFER);
  H5_CHECK(dxpl, "%s: transfer properties", file);
  H5_CHECK(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE), "%s: collective transfer", file);
  float *buf = has ? host + at : host;
  if (create)
    H5_CHECK(H5Dwrite(dset, H5T_NATIVE_FLOAT, mem, space, dxpl, buf), "%s: writing %s failed", file, p->name);
  else
    H5_CHECK(H5Dread(dset, H5T_NATIVE_FLOAT, mem, space, dxpl, buf), "%s: reading %s failed (truncated or damaged file?)", file, p->name);
done:
  if (dxpl >= 0) H5Pclose(dxpl);
  if (mem >= 0) H5Sclose(mem);
  if (dset >= 0) H5Dclose(dset);
  if (space >= 0) H5Sclose(space);
  return rc;
}

static int attr_write(hid_t obj, const char *name, hid_t type, const void *value, const char *str) {
  int rc = VL_OK;
  hid_t space = H5Screate(H5S_SCALAR), t = type, attr = -1;
  if (str) {
    t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(str) + 1);
    value = str;
  }
  attr = H5Acreate2(obj, name, t, space, H5P_DEFAULT, H5P_DEFAULT);
  H5_CHECK(attr, "cannot create attribute %s", name);
  H5_CHECK(H5Awrite(attr, t, value), "cannot write attribute %s", name);
done:
  if (attr >= 0) H5Aclose(attr);
  if (str && t >= 0) H5Tclose(t);
  H5Sclose(space);
  return rc;
}

static int attr_read_long(hid_t obj, const char *name, long long *v, const char *file) {
  int rc = VL_OK;
  if (H5Aexists(obj, name) <= 0)
    VL_ERROR(VL_EIO, "%s: attribute %s missing: not a vltrain checkpoint, or an incomplete one", file, name);
  hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
  H5_CHECK(attr, "%s: cannot open attribute %s", file, name);
  H5_CHECK(H5Aread(attr, H5T_NATIVE_LLONG, v), "%s: cannot read attribute %s", file, name);
done:
  if (attr >= 0) H5Aclose(attr);
  return rc;
}

static hid_t open_file(const char *path, MPI_Comm comm, int create) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl < 0) return -1;
  if (H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) < 0) { H5Pclose(fapl); return -1; }
  H5Pset_all_coll_metadata_ops(fapl, 1);
  H5Pset_coll_metadata_write(fapl, 1);
  hid_t f = create ? H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl) : H5Fopen(path, H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  return f;
}

/* The three fp32 shard arrays on the host, for HDF5. */
static int shard_to_host(const vl_optim *o, float **h) {
  const size_t bytes = o->shard * sizeof(float);
  const float *src[3] = {o->master, o->mom1, o->mom2};
  for (int k = 0; k < 3; k++) {
    VL_CALL(vl_malloc((void **)&h[k], bytes + 4, "checkpoint staging"));
    VL_CALL(o->ops->get_raw(o->ops, h[k], src[k], bytes));
  }
  return VL_OK;
}

int vl_ckpt_save(const char *out_dir, const vl_optim *o, const vl_config *cfg, int keep,
                 const vl_ckpt_cursor *cur) {
  char dir[VL_PATH_MAX + 16], path[VL_PATH_MAX + 64], tmp[VL_PATH_MAX + 80];
  snprintf(dir, sizeof dir, "%s/ckpt", out_dir);
  snprintf(path, sizeof path, "%s/step_%07d.h5", dir, o->step);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int rc = VL_OK;
  if (o->comm->rank == 0) {
    mkdir(out_dir, 0755);
    if (mkdir(dir, 0755) && errno != EEXIST) rc = VL_EIO;
  }
  VL_CALL(vl_comm_bcast(o->comm, &rc, sizeof rc, 0));
  if (rc) VL_ERROR(VL_EIO, "cannot create %s: %s", dir, strerror(errno));
  float *h[3] = {NULL, NULL, NULL};
  hid_t f = -1, g[3] = {-1, -1, -1}, gopt = -1;
  VL_CALL_GOTO(rc, done, shard_to_host(o, h));
  f = open_file(tmp, o->comm->world, 1);
  H5_CHECK(f, "cannot create %s", tmp);
  g[0] = H5Gcreate2(f, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  gopt = H5Gcreate2(f, "optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5_CHECK(gopt, "%s: groups", tmp);
  g[1] = H5Gcreate2(gopt, "m", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  g[2] = H5Gcreate2(gopt, "v", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5_CHECK(g[0] < 0 || g[1] < 0 || g[2] < 0 ? -1 : 0, "%s: groups", tmp);
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < o->m->n_params; i++)
      VL_CALL_GOTO(rc, done, tensor_io(g[k], &o->m->params[i], 1, o, h[k], tmp));
  long long step = o->step, world = o->comm->size, seed = (long long)cfg->train.seed,
            nparam = (long long)o->n;
  VL_CALL_GOTO(rc, done, attr_write(f, "format", 0, NULL, CKPT_FORMAT));
  VL_CALL_GOTO(rc, done, attr_write(f, "vltrain_version", 0, NULL, PACKAGE_VERSION));
  VL_CALL_GOTO(rc, done, attr_write(f, "config", 0, NULL, cfg->text ? cfg->text : ""));
  VL_CALL_GOTO(rc, done, attr_write(f, "step", H5T_NATIVE_LLONG, &step, NULL));
  VL_CALL_GOTO(rc, done, attr_write(f, "world_size", H5T_NATIVE_LLONG, &world, NULL));
  VL_CALL_GOTO(rc, done, attr_write(f, "seed", H5T_NATIVE_LLONG, &seed, NULL));
  VL_CALL_GOTO(rc, done, attr_write(f, "n_parameters", H5T_NATIVE_LLONG, &nparam, NULL));
  {
    long long ds = cur->samples, dz = cur->size, dseed = (long long)cur->seed;
    VL_CALL_GOTO(rc, done, attr_write(f, "data_samples", H5T_NATIVE_LLONG, &ds, NULL));
    VL_CALL_GOTO(rc, done, attr_write(f, "data_seed", H5T_NATIVE_LLONG, &dseed, NULL));
    VL_CALL_GOTO(rc, done, attr_write(f, "data_size", H5T_NATIVE_LLONG, &dz, NULL));
  }
  H5_CHECK(H5Fflush(f, H5F_SCOPE_GLOBAL), "%s: flush failed", tmp);
done:
  for (int k = 0; k < 3; k++) {
    if (g[k] >= 0) H5Gclose(g[k]);
    free(h[k]);
  }
  if (gopt >= 0) H5Gclose(gopt);
  if (f >= 0 && H5Fclose(f) < 0 && rc == VL_OK)
    rc = vl_err_raise(VL_EHDF5, __FILE__, __LINE__, __func__, "%s: close failed", tmp);
  double worst = rc;
  VL_CALL(vl_comm_allreduce_double(o->comm, &worst, 1, VL_COMM_MAX));
  int all = (int)worst;
  if (all) {
    if (o->comm->rank == 0) unlink(tmp);
    if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
    VL_ERROR(all, "another rank failed writing %s", tmp);
  }
  if (o->comm->rank == 0) {
    char lt[VL_PATH_MAX + 32], ltmp[VL_PATH_MAX + 40];
    snprintf(lt, sizeof lt, "%s/latest", dir);
    snprintf(ltmp, sizeof ltmp, "%s.tmp", lt);
    FILE *fl = NULL;
    if (rename(tmp, path) || !(fl = fopen(ltmp, "w")) ||
        fprintf(fl, "step_%07d.h5\n", o->step) < 0 || fclose(fl) || rename(ltmp, lt))
      rc = vl_err_raise(VL_EIO, __FILE__, __LINE__, __func__, "finishing %s: %s", path, strerror(errno));
    /* keep the newest `keep` checkpoints (this one included) */
    int kept = 0;
    for (int st = o->step; rc == VL_OK && keep > 0 && st >= 0; st--) {
      char old[VL_PATH_MAX + 64];
      snprintf(old, sizeof old, "%s/step_%07d.h5", dir, st);
      if (access(old, F_OK) == 0 && ++kept > keep) unlink(old);
    }
  }
  VL_CALL(vl_comm_bcast(o->comm, &rc, sizeof rc, 0));
  if (rc) VL_ERROR(rc, "could not finish checkpoint %s", path);
  return VL_OK;
}

int vl_ckpt_latest(const char *out_dir, char *path, size_t n) {
  char lt[VL_PATH_MAX + 32], name[256] = "";
  snprintf(lt, sizeof lt, "%s/ckpt/latest", out_dir);
  path[0] = '\0';
  FILE *f = fopen(lt, "r");
  if (!f) return VL_OK;
  int ok = fscanf(f, "%255s", name) == 1;
  fclose(f);
  if (!ok) VL_ERROR(VL_EIO, "%s is empty or damaged", lt);
  snprintf(path, n, "%s/ckpt/%s", out_dir, name);
  if (access(path, R_OK)) VL_ERROR(VL_EIO, "%s names %s, which cannot be read", lt, path);
  return VL_OK;
}

int vl_ckpt_load(const char *path, vl_optim *o, vl_t *params, vl_ckpt_cursor *cur) {
  int rc = VL_OK;
  float *h[3] = {NULL, NULL, NULL};
  hid_t f = -1, g[3] = {-1, -1, -1};
  H5E_BEGIN_TRY { f = open_file(path, o->comm->world, 0); } H5E_END_TRY;
  if (f < 0) VL_ERROR(VL_EIO, "%s: cannot open as HDF5 (missing, truncated or not a checkpoint)", path);
  long long step = 0, nparam = 0;
  VL_CALL_GOTO(rc, done, attr_read_long(f, "step", &step, path));
  VL_CALL_GOTO(rc, done, attr_read_long(f, "n_parameters", &nparam, path));
  cur->samples = -1;
  cur->seed = 0;
  cur->size = 0;
  if (H5Aexists(f, "data_samples") > 0) { /* older checkpoints have no cursor */
    long long dseed = 0;
    VL_CALL_GOTO(rc, done, attr_read_long(f, "data_samples", &cur->samples, path));
    VL_CALL_GOTO(rc, done, attr_read_long(f, "data_seed", &dseed, path));
    VL_CALL_GOTO(rc, done, attr_read_long(f, "data_size", &cur->size, path));
    cur->seed = (unsigned long long)dseed;
  }
  if ((size_t)nparam != o->n)
    VL_ERROR_GOTO(rc, done, VL_ESHAPE, "%s holds %lld parameters, this model has %zu (another model?)",
                  path, nparam, o->n);
  const char *groups[3] = {"params", "optimizer/m", "optimizer/v"};
  for (int k = 0; k < 3; k++) {
    H5E_BEGIN_TRY { g[k] = H5Gopen2(f, groups[k], H5P_DEFAULT); } H5E_END_TRY;
    if (g[k] < 0) VL_ERROR_GOTO(rc, done, VL_EIO, "%s: group /%s missing", path, groups[k]);
    VL_CALL_GOTO(rc, done, vl_malloc((void **)&h[k], o->shard * sizeof(float) + 4, "checkpoint staging"));
    memset(h[k], 0, o->shard * sizeof(float));
    for (int i = 0; i < o->m->n_params; i++) {
      H5E_BEGIN_TRY { rc = tensor_io(g[k], &o->m->params[i], 0, o, h[k], path); } H5E_END_TRY;
      if (rc) goto done;
    }
  }
  vl_ops *ops = o->ops;
  VL_CALL_GOTO(rc, done, ops->put_raw(ops, o->master, h[0], o->shard * sizeof(float)));
  VL_CALL_GOTO(rc, done, ops->put_raw(ops, o->mom1, h[1], o->shard * sizeof(float)));
  VL_CALL_GOTO(rc, done, ops->put_raw(ops, o->mom2, h[2], o->shard * sizeof(float)));
  o->step = (int)step;
  /* working weights: my shard from the masters, then all-gathered in place */
  {
    const size_t el = ops->elem_size;
    size_t mine = o->begin < o->n ? (o->n - o->begin < o->shard ? o->n - o->begin : o->shard) : 0;
    if (mine) VL_CALL_GOTO(rc, done, ops->put(ops, (char *)params + o->begin * el, h[0], mine));
    if (o->comm->size > 1) {
      VL_CALL_GOTO(rc, done, vl_comm_allgather_inplace(o->comm, el == 2 ? VL_COMM_BF16 : VL_COMM_F32,
                                                       params, o->shard));
      VL_CALL_GOTO(rc, done, vl_comm_sync(o->comm));
    }
    VL_CALL_GOTO(rc, done, ops->sync(ops));
  }
done:
  for (int k = 0; k < 3; k++) {
    if (g[k] >= 0) H5Gclose(g[k]);
    free(h[k]);
  }
  if (f >= 0) H5Fclose(f);
  double worst = rc;
  int crc = vl_comm_allreduce_double(o->comm, &worst, 1, VL_COMM_MAX);
  int all = (int)worst;
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  VL_CALL(crc);
  if (all) VL_ERROR(all, "another rank failed reading %s", path);
  return VL_OK;
}
