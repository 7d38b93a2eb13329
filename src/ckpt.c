/* ckpt: parallel HDF5 checkpoints (see ckpt.h). */
#include "ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <stdint.h>
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

/* Tensor checksums: the sum, mod 2^64, over a tensor's elements of a 64-bit
 * hash of (flat index, fp32 bits).  Each rank adds up its part and the parts
 * are summed across ranks, so the value does not depend on how many ranks
 * wrote or read the file; a changed, moved or zeroed value changes it.
 * Stored as the attribute "checksum" (uint64) of every dataset. */
static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t vl_ckpt_checksum(const float *x, size_t first, size_t n) {
  uint64_t s = 0;
  const long long nn = (long long)n;
#pragma omp parallel for reduction(+ : s) schedule(static)
  for (long long j = 0; j < nn; j++) {
    uint32_t bits;
    memcpy(&bits, &x[j], 4);
    s += mix64(((uint64_t)first + (uint64_t)j) * 0x9e3779b97f4a7c15ULL ^ bits);
  }
  return s;
}

static uint64_t part_checksum(const vl_optim *o, const vl_param *p, const float *host) {
  hsize_t a = 0, b = 0;
  size_t at = 0;
  if (!shard_part(o, p, &a, &b, &at)) return 0;
  return vl_ckpt_checksum(host + at, (size_t)a, (size_t)(b - a));
}

/* sums[k * n_params + i]: checksum of tensor i of shard array k (0..2),
 * summed over the ranks.  Collective. */
static int checksums(const vl_optim *o, float *const *h, uint64_t *sums) {
  const int np = o->m->n_params;
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < np; i++) sums[k * np + i] = part_checksum(o, &o->m->params[i], h[k]);
  int e = MPI_Allreduce(MPI_IN_PLACE, sums, 3 * np, MPI_UINT64_T, MPI_SUM, o->comm->world);
  if (e != MPI_SUCCESS) VL_ERROR(VL_EMPI, "MPI_Allreduce of the checkpoint checksums failed (code %d)", e);
  return VL_OK;
}

static int attr_write(hid_t obj, const char *name, hid_t type, const void *value, const char *str);

/* "[a, b, c]" */
static void fmt_dims(char *buf, size_t n, const hsize_t *d, int nd) {
  size_t at = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < nd && at < n; i++)
    at += (size_t)snprintf(buf + at, n - at, "%s%llu", i ? ", " : "", (unsigned long long)d[i]);
  if (at < n) snprintf(buf + at, n - at, "]");
}

/* One tensor: dataset `name` under group; write (or read) this rank's part
 * from/to host[at..], with its checksum *sum (written, or read back for the
 * caller to compare).  Collective over the file's communicator. */
static int tensor_io(hid_t group, const vl_param *p, int create, const vl_optim *o, float *host,
                     uint64_t *sum, const char *file) {
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
    hsize_t got[H5S_MAX_RANK];
    int nd = H5Sget_simple_extent_ndims(space); /* H5S_MAX_RANK at most */
    if (nd < 0 || H5Sget_simple_extent_dims(space, got, NULL) != nd)
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: cannot read the shape of %s", file, p->name);
    int same = nd == p->ndim;
    for (int d = 0; same && d < nd; d++) same = got[d] == dims[d];
    if (!same) {
      char gs[160], ws[160];
      fmt_dims(gs, sizeof gs, got, nd);
      fmt_dims(ws, sizeof ws, dims, p->ndim);
      VL_ERROR_GOTO(rc, done, VL_ESHAPE, "%s: tensor %s has shape %s, the model expects %s (another model?)",
                    file, p->name, gs, ws);
    }
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
  if (create) {
    VL_CALL_GOTO(rc, done, attr_write(dset, "checksum", H5T_NATIVE_UINT64, sum, NULL));
  } else {
    hid_t at = -1;
    if (H5Aexists(dset, "checksum") <= 0 || (at = H5Aopen(dset, "checksum", H5P_DEFAULT)) < 0 ||
        H5Aread(at, H5T_NATIVE_UINT64, sum) < 0) {
      if (at >= 0) H5Aclose(at);
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: tensor %s has no readable checksum (damaged, or not written by vltrain)",
                    file, p->name);
    }
    H5Aclose(at);
  }
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
    if (src[k]) {
      VL_CALL(o->ops->get_raw(o->ops, h[k], src[k], bytes));
      continue;
    }
    /* lean: no master; the working weights (bf16 on the GPU) as fp32 */
    if (!o->work) VL_ERROR(VL_EINVAL, "lean optimizer without working weights (vl_optim_bind)");
    memset(h[k], 0, bytes);
    size_t mine = vl_optim_mine(o);
    if (mine)
      VL_CALL(o->ops->get(o->ops, h[k], (const char *)o->work + o->begin * o->ops->elem_size, mine));
  }
  return VL_OK;
}

/* fsync of a file or folder by name: the data of a checkpoint reach the disk
 * before its name does, and a rename before the next step (a crash of the
 * node, not only of the process, leaves the previous state). */
static int sync_path(const char *p) {
  int fd = open(p, O_RDONLY);
  if (fd < 0) return -1;
  int r = fsync(fd);
  close(fd);
  return r;
}

static int cmp_desc(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x < y) - (x > y);
}

/* In dir: keeps the newest `keep` checkpoints of steps <= step (this one
 * included; newer ones, of an abandoned run, are overwritten when reached)
 * and removes the others, and the temporary files of writes of earlier
 * steps that never finished (a killed process).  One pass over the folder. */
static void prune(const char *dir, int step, int keep) {
  DIR *d = opendir(dir);
  if (!d) return;
  int *steps = NULL;
  size_t n = 0, cap = 0;
  char path[VL_PATH_MAX + 300], canon[64];
  for (struct dirent *e; (e = readdir(d));) {
    int st = -1;
    if (sscanf(e->d_name, "step_%d", &st) != 1 || st < 0) continue;
    snprintf(canon, sizeof canon, "step_%07d.h5", st);
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (!strcmp(e->d_name, canon) && st <= step) {
      if (n == cap) {
        int *more = realloc(steps, (cap = cap ? 2 * cap : 64) * sizeof *steps);
        if (!more) break;
        steps = more;
      }
      steps[n++] = st;
    } else if (st < step && !strncmp(e->d_name, canon, strlen(canon)) && !strcmp(e->d_name + strlen(canon), ".tmp")) {
      unlink(path);
    }
  }
  closedir(d);
  if (n > 1) qsort(steps, n, sizeof *steps, cmp_desc);
  for (size_t i = (size_t)keep; i < n; i++) {
    snprintf(path, sizeof path, "%s/step_%07d.h5", dir, steps[i]);
    unlink(path);
  }
  free(steps);
}

/* The test hook of ckpt.h: VL_TEST_CKPT_KILL_AT=STEP:RANK:POINT. */
static void test_kill_point(const vl_optim *o, const char *point) {
  const char *e = getenv("VL_TEST_CKPT_KILL_AT");
  int step, rank;
  char where[16];
  if (!e || sscanf(e, "%d:%d:%15s", &step, &rank, where) != 3) return;
  if (step != o->step || rank != o->comm->rank || strcmp(where, point)) return;
  fprintf(stderr, "VL_TEST_CKPT_KILL_AT: rank %d kills itself at '%s' of the checkpoint of step %d\n",
          rank, point, step);
  fflush(stderr);
  raise(SIGKILL);
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
  uint64_t *sums = NULL;
  hid_t f = -1, g[3] = {-1, -1, -1}, gopt = -1;
  VL_CALL_GOTO(rc, done, shard_to_host(o, h));
  VL_CALL_GOTO(rc, done, vl_malloc((void **)&sums, 3 * (size_t)o->m->n_params * sizeof *sums, "checksums"));
  VL_CALL_GOTO(rc, done, checksums(o, h, sums));
  f = open_file(tmp, o->comm->world, 1);
  H5_CHECK(f, "cannot create %s", tmp);
  g[0] = H5Gcreate2(f, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  gopt = H5Gcreate2(f, "optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5_CHECK(gopt, "%s: groups", tmp);
  g[1] = H5Gcreate2(gopt, "m", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  g[2] = H5Gcreate2(gopt, "v", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5_CHECK(g[0] < 0 || g[1] < 0 || g[2] < 0 ? -1 : 0, "%s: groups", tmp);
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < o->m->n_params; i++) {
      if (k == 1 && i == o->m->n_params / 2) test_kill_point(o, "tensors");
      VL_CALL_GOTO(rc, done, tensor_io(g[k], &o->m->params[i], 1, o, h[k], &sums[k * o->m->n_params + i], tmp));
    }
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
  test_kill_point(o, "flush");
done:
  for (int k = 0; k < 3; k++) {
    if (g[k] >= 0) H5Gclose(g[k]);
    free(h[k]);
  }
  free(sums);
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
    int bad = sync_path(tmp) || rename(tmp, path);
    if (!bad) test_kill_point(o, "rename");
    bad = bad || !(fl = fopen(ltmp, "w")) || fprintf(fl, "step_%07d.h5\n", o->step) < 0 ||
          fflush(fl) || fsync(fileno(fl));
    if (fl && fclose(fl)) bad = 1;
    if (!bad) test_kill_point(o, "latest");
    if (bad || rename(ltmp, lt) || sync_path(dir))
      rc = vl_err_raise(VL_EIO, __FILE__, __LINE__, __func__, "finishing %s: %s", path, strerror(errno));
    if (rc == VL_OK && keep > 0) prune(dir, o->step, keep);
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

/* The "format" attribute of the file, which must be CKPT_FORMAT. */
static int check_format(hid_t f, const char *file) {
  int rc = VL_OK;
  hid_t attr = -1, t = -1;
  char got[64] = "";
  if (H5Aexists(f, "format") <= 0)
    VL_ERROR(VL_EIO, "%s: no format attribute: not a vltrain checkpoint, or an incomplete one", file);
  attr = H5Aopen(f, "format", H5P_DEFAULT);
  H5_CHECK(attr, "%s: cannot open attribute format", file);
  t = H5Aget_type(attr);
  H5_CHECK(t, "%s: attribute format", file);
  if (H5Tget_class(t) != H5T_STRING || H5Tis_variable_str(t) > 0 || H5Tget_size(t) >= sizeof got)
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: attribute format is not the string %s", file, CKPT_FORMAT);
  H5_CHECK(H5Aread(attr, t, got), "%s: cannot read attribute format", file);
  got[sizeof got - 1] = '\0';
  if (strcmp(got, CKPT_FORMAT))
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: format '%s', this vltrain reads '%s'", file, got, CKPT_FORMAT);
done:
  if (t >= 0) H5Tclose(t);
  if (attr >= 0) H5Aclose(attr);
  return rc;
}

int vl_ckpt_load(const char *path, vl_optim *o, vl_t *params, vl_ckpt_cursor *cur) {
  int rc = VL_OK;
  float *h[3] = {NULL, NULL, NULL};
  uint64_t *stored = NULL, *sums = NULL;
  const int np = o->m->n_params;
  static const char *const groups[3] = {"params", "optimizer/m", "optimizer/v"};
  hid_t f = -1, g[3] = {-1, -1, -1};
  H5E_BEGIN_TRY { f = open_file(path, o->comm->world, 0); } H5E_END_TRY;
  if (f < 0) VL_ERROR(VL_EIO, "%s: cannot open as HDF5 (missing, truncated or not a checkpoint)", path);
  long long step = 0, nparam = 0;
  H5E_BEGIN_TRY { rc = check_format(f, path); } H5E_END_TRY;
  if (rc) goto read_done;
  VL_CALL_GOTO(rc, read_done, attr_read_long(f, "step", &step, path));
  VL_CALL_GOTO(rc, read_done, attr_read_long(f, "n_parameters", &nparam, path));
  cur->samples = -1;
  cur->seed = 0;
  cur->size = 0;
  if (H5Aexists(f, "data_samples") > 0) { /* older checkpoints have no cursor */
    long long dseed = 0;
    VL_CALL_GOTO(rc, read_done, attr_read_long(f, "data_samples", &cur->samples, path));
    VL_CALL_GOTO(rc, read_done, attr_read_long(f, "data_seed", &dseed, path));
    VL_CALL_GOTO(rc, read_done, attr_read_long(f, "data_size", &cur->size, path));
    cur->seed = (unsigned long long)dseed;
  }
  if (step < 0 || step > 2147483647LL)
    VL_ERROR_GOTO(rc, read_done, VL_EIO, "%s: step %lld is out of range (damaged file?)", path, step);
  if (nparam < 0 || (size_t)nparam != o->n)
    VL_ERROR_GOTO(rc, read_done, VL_ESHAPE, "%s holds %lld parameters, this model has %zu (another model?)",
                  path, nparam, o->n);
  VL_CALL_GOTO(rc, read_done, vl_malloc((void **)&stored, 3 * (size_t)np * sizeof *stored, "checksums"));
  VL_CALL_GOTO(rc, read_done, vl_malloc((void **)&sums, 3 * (size_t)np * sizeof *sums, "checksums"));
  for (int k = 0; k < 3; k++) {
    H5E_BEGIN_TRY { g[k] = H5Gopen2(f, groups[k], H5P_DEFAULT); } H5E_END_TRY;
    if (g[k] < 0) VL_ERROR_GOTO(rc, read_done, VL_EIO, "%s: group /%s missing", path, groups[k]);
    VL_CALL_GOTO(rc, read_done, vl_malloc((void **)&h[k], o->shard * sizeof(float) + 4, "checkpoint staging"));
    memset(h[k], 0, o->shard * sizeof(float));
    for (int i = 0; i < np; i++) {
      H5E_BEGIN_TRY { rc = tensor_io(g[k], &o->m->params[i], 0, o, h[k], &stored[k * np + i], path); } H5E_END_TRY;
      if (rc) goto read_done;
    }
  }
read_done: /* every rank read its part, or failed: agree before the checksums' collective */
  {
    double worst = rc;
    int crc = vl_comm_allreduce_double(o->comm, &worst, 1, VL_COMM_MAX);
    if (rc) goto done;
    VL_CALL_GOTO(rc, done, crc);
    if (worst > 0) VL_ERROR_GOTO(rc, done, (int)worst, "another rank failed reading %s", path);
  }
  VL_CALL_GOTO(rc, done, checksums(o, h, sums));
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < np; i++)
      if (sums[k * np + i] != stored[k * np + i])
        VL_ERROR_GOTO(rc, done, VL_EIO, "%s: /%s/%s does not match its checksum: the file is damaged or was altered",
                      path, groups[k], o->m->params[i].name);
  vl_ops *ops = o->ops;
  if (o->master) /* lean: the weights below are the only copy */
    VL_CALL_GOTO(rc, done, ops->put_raw(ops, o->master, h[0], o->shard * sizeof(float)));
  VL_CALL_GOTO(rc, done, ops->put_raw(ops, o->mom1, h[1], o->shard * sizeof(float)));
  VL_CALL_GOTO(rc, done, ops->put_raw(ops, o->mom2, h[2], o->shard * sizeof(float)));
  o->step = (int)step;
  /* working weights: my shard from the masters, then all-gathered in place */
  {
    const size_t el = ops->elem_size;
    size_t mine = vl_optim_mine(o);
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
  free(stored);
  free(sums);
  if (f >= 0) H5Fclose(f);
  double worst = rc;
  int crc = vl_comm_allreduce_double(o->comm, &worst, 1, VL_COMM_MAX);
  int all = (int)worst;
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  VL_CALL(crc);
  if (all) VL_ERROR(all, "another rank failed reading %s", path);
  return VL_OK;
}
