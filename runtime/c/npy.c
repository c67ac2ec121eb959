/* npy.c: see npy.h. */
#define _POSIX_C_SOURCE 200809L

#include "npy.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_HEADER 65536

static int little_endian(void) {
  const uint16_t one = 1;
  return *(const uint8_t *)&one == 1;
}

static void swap_bytes(uint8_t *p, size_t n, size_t width) {
  for (size_t i = 0; i < n; i++, p += width)
    for (size_t a = 0, b = width - 1; a < b; a++, b--) {
      uint8_t t = p[a];
      p[a] = p[b];
      p[b] = t;
    }
}

static const char *skip_space(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n')) p++;
  return p;
}

/* The value after 'key': in the header dict, or NULL. */
static const char *find_key(const char *h, const char *end, const char *key) {
  size_t k = strlen(key);
  for (const char *p = h; p + k + 2 <= end; p++) {
    if ((*p == '\'' || *p == '"') && memcmp(p + 1, key, k) == 0 && p[k + 1] == *p) {
      const char *q = skip_space(p + k + 2, end);
      if (q < end && *q == ':') return skip_space(q + 1, end);
    }
  }
  return NULL;
}

int npy_read(const char *path, npy_array *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  struct stat st;
  if (stat(path, &st) != 0) {
    snprintf(err, errlen, "Input file not found. Expected an existing .npy file. Received: '%.400s'", path);
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    snprintf(err, errlen, "Not a regular file. Expected a .npy file. Received: '%.400s'", path);
    return -1;
  }
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err, errlen, "Cannot open '%.400s': %s", path, strerror(errno));
    return -1;
  }
  uint8_t pre[12];
  size_t got = fread(pre, 1, 10, f);
  if (got < 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
    fclose(f);
    snprintf(err, errlen, "Cannot read '%.400s' as a .npy array. Expected the magic bytes \\x93NUMPY. Received: %s", path,
             got < 10 ? "a file of fewer than 10 bytes" : "other bytes");
    return -1;
  }
  int major = pre[6];
  size_t header_len, prefix;
  if (major == 1) {
    header_len = (size_t)pre[8] | (size_t)pre[9] << 8;
    prefix = 10;
  } else if (major == 2 || major == 3) {
    if (fread(pre + 10, 1, 2, f) != 2) {
      fclose(f);
      snprintf(err, errlen, "Cannot read '%.400s' as a .npy array: the header is truncated.", path);
      return -1;
    }
    header_len = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    prefix = 12;
  } else {
    fclose(f);
    snprintf(err, errlen, "Cannot read '%.400s' as a .npy array. Expected format version 1, 2 or 3. Received: %d", path,
             major);
    return -1;
  }
  if (header_len > MAX_HEADER || prefix + header_len > (size_t)st.st_size) {
    fclose(f);
    snprintf(err, errlen, "Cannot read '%.400s' as a .npy array: the header length %zu does not fit the file.", path,
             header_len);
    return -1;
  }
  char *h = malloc(header_len + 1);
  if (h == NULL || fread(h, 1, header_len, f) != header_len) {
    free(h);
    fclose(f);
    snprintf(err, errlen, "Cannot read '%.400s' as a .npy array: the header is truncated.", path);
    return -1;
  }
  h[header_len] = '\0';
  const char *end = h + header_len;
  const char *descr = find_key(h, end, "descr");
  const char *fortran = find_key(h, end, "fortran_order");
  const char *shape = find_key(h, end, "shape");
  int rc = -1;
  size_t width = 0;
  int swap = 0, is_f8 = 0;
  if (descr == NULL || fortran == NULL || shape == NULL) {
    snprintf(err, errlen,
             "Cannot read '%.400s' as a .npy array. Expected a header with 'descr', 'fortran_order' and 'shape'. "
             "Received: %.120s",
             path, h);
    goto done;
  }
  char quote = *descr;
  if ((quote != '\'' && quote != '"') || end - descr < 5 || descr[4] != quote) {
    snprintf(err, errlen, "Cannot read '%.400s' as a .npy array: unreadable descr. Received: %.40s", path, descr);
    goto done;
  }
  char order = descr[1];
  if (descr[2] == 'f' && descr[3] == '4') width = 4;
  else if (descr[2] == 'f' && descr[3] == '8') width = 8, is_f8 = 1;
  if (width == 0 || (order != '<' && order != '>' && order != '=')) {
    snprintf(err, errlen,
             "Unsupported input dtype in '%.400s'. Expected float32 ('<f4') or float64 ('<f8') values. Received: "
             "descr=%.8s",
             path, descr);
    goto done;
  }
  swap = (order == '<' && !little_endian()) || (order == '>' && little_endian());
  if (strncmp(fortran, "False", 5) != 0) {
    snprintf(err, errlen, "Unsupported layout in '%.400s'. Expected fortran_order False (C order). Received: %.8s", path,
             fortran);
    goto done;
  }
  if (*shape != '(') {
    snprintf(err, errlen, "Cannot read '%.400s' as a .npy array: unreadable shape. Received: %.40s", path, shape);
    goto done;
  }
  const char *p = shape + 1;
  size_t count = 1;
  for (;;) {
    p = skip_space(p, end);
    if (p < end && *p == ')') break;
    if (p >= end || *p < '0' || *p > '9' || out->rank == NPY_MAX_RANK) {
      snprintf(err, errlen,
               "Cannot read '%.400s' as a .npy array. Expected a shape of at most %d non-negative integers. Received: "
               "%.60s",
               path, NPY_MAX_RANK, shape);
      goto done;
    }
    long long v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
      v = v * 10 + (*p - '0');
      if (v > (1LL << 40)) break;
      p++;
    }
    if (v > (1LL << 40) || (v > 0 && count > ((size_t)1 << 40) / (size_t)v)) {
      snprintf(err, errlen, "Cannot read '%.400s' as a .npy array: its shape declares too many values.", path);
      goto done;
    }
    out->shape[out->rank++] = v;
    count *= (size_t)v;
    p = skip_space(p, end);
    if (p < end && *p == ',') p++;
  }
  if (out->rank == 0) count = 1; /* a 0-d array holds one value */
  size_t data_bytes = (size_t)st.st_size - prefix - header_len;
  if (data_bytes != count * width) {
    snprintf(err, errlen,
             "Cannot read '%.400s' as a .npy array. Expected %zu bytes of data for its shape. Received: %zu bytes", path,
             count * width, data_bytes);
    goto done;
  }
  uint8_t *raw = malloc(count > 0 ? count * width : 1);
  out->data = malloc(count ? count * sizeof(float) : sizeof(float));
  if (raw == NULL || out->data == NULL || fread(raw, 1, count * width, f) != count * width) {
    free(raw);
    snprintf(err, errlen, "Cannot read the data of '%.400s'.", path);
    goto done;
  }
  if (swap) swap_bytes(raw, count, width);
  if (is_f8) {
    for (size_t i = 0; i < count; i++) {
      double d;
      memcpy(&d, raw + 8 * i, 8);
      out->data[i] = (float)d;
    }
  } else {
    memcpy(out->data, raw, count * 4);
  }
  free(raw);
  out->count = count;
  rc = 0;
done:
  if (rc != 0) npy_free(out);
  free(h);
  fclose(f);
  return rc;
}

void npy_free(npy_array *a) {
  free(a->data);
  memset(a, 0, sizeof *a);
}

int npy_write(const char *path, const float *data, int rank, const long long *shape, char *err, size_t errlen) {
  char header[256];
  int n = snprintf(header, sizeof header, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
  size_t count = 1;
  for (int i = 0; i < rank; i++) {
    n += snprintf(header + n, sizeof header - (size_t)n, "%lld%s", shape[i], rank == 1 ? "," : i + 1 < rank ? ", " : "");
    count *= (size_t)shape[i];
  }
  n += snprintf(header + n, sizeof header - (size_t)n, "), }");
  size_t total = 10 + (size_t)n + 1;
  size_t pad = (64 - total % 64) % 64;
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%.4000s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  if (f == NULL) {
    snprintf(err, errlen, "Cannot write '%.400s': %s", path, strerror(errno));
    return -1;
  }
  uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
  size_t hlen = (size_t)n + pad + 1;
  pre[8] = (uint8_t)(hlen & 0xFF);
  pre[9] = (uint8_t)(hlen >> 8);
  int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(header, 1, (size_t)n, f) == (size_t)n;
  for (size_t i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF;
  if (ok && little_endian()) {
    ok = fwrite(data, sizeof(float), count, f) == count;
  } else {
    for (size_t i = 0; ok && i < count; i++) {
      uint8_t b[4];
      memcpy(b, data + i, 4);
      swap_bytes(b, 1, 4);
      ok = fwrite(b, 1, 4, f) == 4;
    }
  }
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp, path) != 0) {
    remove(tmp);
    snprintf(err, errlen, "Cannot write '%.400s': %s", path, strerror(errno));
    return -1;
  }
  return 0;
}
