/*
 * npy.h: reading and writing NumPy .npy arrays of float32 (for edgekit-run).
 *
 * The format (numpy.lib.format, versions 1.0-3.0): the magic "\x93NUMPY", a version, a header
 * length, a Python-literal dict {'descr': ..., 'fortran_order': ..., 'shape': (...)} padded with
 * spaces to a multiple of 64 bytes, then the raw data in C order. Read: float32 ('<f4', '>f4')
 * and float64 ('<f8', '>f8', converted to float32), C order only; the data must fill the rest of
 * the file exactly. Every check names what was expected and what was found.
 */
#ifndef EDGEKIT_NPY_H_
#define EDGEKIT_NPY_H_

#include <stddef.h>

#define NPY_MAX_RANK 8

typedef struct {
  int rank;
  long long shape[NPY_MAX_RANK];
  size_t count; /* number of values */
  float *data;  /* malloc'd, count values (NULL when count is 0) */
} npy_array;

/* 0 on success; else -1 with a one-sentence message in err. */
int npy_read(const char *path, npy_array *out, char *err, size_t errlen);
void npy_free(npy_array *a);

/* Writes a little-endian float32 array atomically (a temporary file renamed over `path`).
 * 0 on success; else -1 with a message. */
int npy_write(const char *path, const float *data, int rank, const long long *shape, char *err, size_t errlen);

#endif /* EDGEKIT_NPY_H_ */
