/* stats_rows FILE [ROW]: opens a gradstats.h5 read-only with HDF5's default
 * file access (as h5py or h5ls would) and prints "rows N last_step S
 * last_loss L" for the last row, or for row ROW (1-based) when given
 * (tests/test_stats_live.sh reads the file of a running vltrain). */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>

static int last(hid_t f, const char *name, hsize_t *rows, double *v, hsize_t row) {
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  if (d < 0) return -1;
  hid_t fs = H5Dget_space(d);
  int ok = fs >= 0 && H5Sget_simple_extent_dims(fs, rows, NULL) == 1;
  *v = 0;
  if (ok && row > *rows) ok = 0;
  if (ok && *rows > 0) {
    hsize_t at = (row ? row : *rows) - 1, one = 1;
    hid_t ms = H5Screate_simple(1, &one, NULL);
    ok = H5Sselect_hyperslab(fs, H5S_SELECT_SET, &at, NULL, &one, NULL) >= 0 &&
         H5Dread(d, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, v) >= 0;
    H5Sclose(ms);
  }
  if (fs >= 0) H5Sclose(fs);
  H5Dclose(d);
  return ok ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc != 2 && argc != 3) { fprintf(stderr, "usage: stats_rows gradstats.h5 [ROW]\n"); return 2; }
  const hsize_t row = argc == 3 ? (hsize_t)strtoull(argv[2], NULL, 10) : 0;
  hid_t f = H5Fopen(argv[1], H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) { fprintf(stderr, "stats_rows: cannot open %s\n", argv[1]); return 1; }
  hsize_t rows = 0, rows2 = 0;
  double step = 0, loss = 0;
  int bad = last(f, "step", &rows, &step, row) || last(f, "loss", &rows2, &loss, row);
  H5Fclose(f);
  if (bad) { fprintf(stderr, "stats_rows: cannot read step and loss of %s\n", argv[1]); return 1; }
  printf("rows %llu last_step %.0f last_loss %.9f\n", (unsigned long long)(rows < rows2 ? rows : rows2), step, loss);
  return 0;
}
