/*
 * The edgekit .tflite format (docs/format.md): the metadata entry, its digest, its keys.
 *
 * The entry is found with a bounds-checked flatbuffer reader of its own (the same fields as
 * edgekit.runtime.metadata): LiteRT must not see the bytes before the digest is checked, and a
 * damaged file must give a message, never a read outside the buffer.
 *
 *   Model (root table): field 4 buffers [Buffer], field 6 metadata [Metadata]
 *   Metadata: field 0 name (string), field 1 buffer (uint32 index into Model.buffers)
 *   Buffer: field 0 data [ubyte], or fields 1 offset / 2 size (uint64, bytes after the flatbuffer)
 */
#include "ek_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Bounds-checked flatbuffer reading ------------------------------------------------------ */

typedef struct {
  const uint8_t *b;
  size_t n;
  int bad;
} fb;

static int need(fb *r, uint64_t pos, uint64_t size) {
  if (r->bad || pos > r->n || size > r->n - pos) {
    r->bad = 1;
    return 0;
  }
  return 1;
}

static uint32_t rd_u32(fb *r, uint64_t pos) {
  if (!need(r, pos, 4)) return 0;
  const uint8_t *p = r->b + pos;
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t rd_u16(fb *r, uint64_t pos) {
  if (!need(r, pos, 2)) return 0;
  return (uint16_t)(r->b[pos] | r->b[pos + 1] << 8);
}

static uint64_t rd_u64(fb *r, uint64_t pos) {
  if (!need(r, pos, 8)) return 0;
  return (uint64_t)rd_u32(r, pos) | (uint64_t)rd_u32(r, pos + 4) << 32;
}

static uint64_t deref(fb *r, uint64_t pos) { return pos + rd_u32(r, pos); }

/* Absolute position of field `field` of the table at `table`, or 0 when absent. */
static uint64_t field_pos(fb *r, uint64_t table, int field) {
  int32_t soff = (int32_t)rd_u32(r, table);
  int64_t vt = (int64_t)table - soff;
  if (r->bad || vt < 0) {
    r->bad = 1;
    return 0;
  }
  uint16_t vsize = rd_u16(r, (uint64_t)vt);
  if (r->bad || vsize < 4 || vsize % 2 || !need(r, (uint64_t)vt, vsize)) {
    r->bad = 1;
    return 0;
  }
  if (4 + 2 * field >= vsize) return 0;
  uint16_t off = rd_u16(r, (uint64_t)vt + 4 + 2 * (uint64_t)field);
  return off ? table + off : 0;
}

/* (start, length) of the vector at pos; at least one byte per element must fit. */
static uint64_t vector(fb *r, uint64_t pos, uint32_t *len, uint64_t elem) {
  *len = rd_u32(r, pos);
  if (!need(r, pos + 4, (uint64_t)*len * elem)) *len = 0;
  return pos + 4;
}

/* ---- Locating the entry and checking the digest -------------------------------------------- */

static const char ZERO_DIGEST[] = "0000000000000000000000000000000000000000000000000000000000000000";

static int contains(const uint8_t *data, size_t n, const char *needle) {
  size_t k = strlen(needle);
  for (size_t i = 0; i + k <= n; i++)
    if (data[i] == (uint8_t)needle[0] && memcmp(data + i, needle, k) == 0) return 1;
  return 0;
}

static void sha256_hex(const uint8_t *data, size_t n, size_t zero_at, char hex[65]) {
  ek_sha256 s;
  ek_sha256_init(&s);
  if (zero_at == (size_t)-1) {
    ek_sha256_update(&s, data, n);
  } else {
    ek_sha256_update(&s, data, zero_at);
    ek_sha256_update(&s, ZERO_DIGEST, 64);
    ek_sha256_update(&s, data + zero_at + 64, n - zero_at - 64);
  }
  ek_sha256_final(&s, hex);
}

static const char *find_last(const char *hay, size_t n, const char *needle) {
  size_t k = strlen(needle);
  const char *hit = NULL;
  for (size_t i = 0; i + k <= n; i++)
    if (memcmp(hay + i, needle, k) == 0) hit = hay + i;
  return hit;
}

static const char *find_first(const char *hay, size_t n, const char *needle, size_t k) {
  for (size_t i = 0; i + k <= n; i++)
    if (memcmp(hay + i, needle, k) == 0) return hay + i;
  return NULL;
}

#define DAMAGED "The model file is damaged: "

ek_status ek_format_verify(const uint8_t *data, size_t size, int check, char hex[65], const char **json_out,
                           size_t *json_len_out, char *err, size_t errlen) {
  *json_out = NULL;
  *json_len_out = 0;
  if (size < 8 || memcmp(data + 4, "TFL3", 4) != 0) {
    if (contains(data, size, "\"edgekit/")) {
      snprintf(err, errlen,
               DAMAGED "it holds edgekit metadata but its header is not a .tflite flatbuffer's (bytes 4-8 must be 'TFL3').");
      return EK_ERROR_INTEGRITY;
    }
    snprintf(err, errlen,
             "Not a .tflite flatbuffer. Expected the file identifier 'TFL3' at bytes 4-8. Received: %s",
             size < 8 ? "a file of fewer than 8 bytes" : "other bytes");
    return EK_ERROR_INTEGRITY;
  }
  fb r = {data, size, 0};
  uint64_t root = deref(&r, 0);
  uint64_t meta_field = field_pos(&r, root, 6);
  uint64_t buf_field = field_pos(&r, root, 4);
  int found = 0;
  uint64_t json_at = 0;
  uint32_t json_len = 0;
  if (!r.bad && meta_field) {
    uint32_t n_entries, n_buffers = 0;
    uint64_t entries = vector(&r, deref(&r, meta_field), &n_entries, 4);
    uint64_t buffers = buf_field ? vector(&r, deref(&r, buf_field), &n_buffers, 4) : 0;
    for (uint32_t i = 0; i < n_entries && !r.bad; i++) {
      uint64_t table = deref(&r, entries + 4 * (uint64_t)i);
      uint64_t name_pos = field_pos(&r, table, 0);
      if (!name_pos || r.bad) continue;
      uint32_t name_len;
      uint64_t name = vector(&r, deref(&r, name_pos), &name_len, 1);
      if (r.bad || name_len != 7 || memcmp(data + name, "edgekit", 7) != 0) continue;
      if (found) {
        snprintf(err, errlen, DAMAGED "it holds more than one edgekit metadata entry.");
        return EK_ERROR_INTEGRITY;
      }
      uint64_t index_pos = field_pos(&r, table, 1);
      uint32_t index = index_pos ? rd_u32(&r, index_pos) : 0;
      if (r.bad) break;
      if (index >= n_buffers) {
        snprintf(err, errlen,
                 DAMAGED "the edgekit entry points at buffer %u. Expected an index below %u. Received: %u", index,
                 n_buffers, index);
        return EK_ERROR_INTEGRITY;
      }
      uint64_t btable = deref(&r, buffers + 4 * (uint64_t)index);
      uint64_t data_pos = field_pos(&r, btable, 0);
      if (data_pos) {
        json_at = vector(&r, deref(&r, data_pos), &json_len, 1);
      } else {
        uint64_t off_pos = field_pos(&r, btable, 1), size_pos = field_pos(&r, btable, 2);
        if (off_pos && size_pos) {
          json_at = rd_u64(&r, off_pos);
          uint64_t len = rd_u64(&r, size_pos);
          if (len > UINT32_MAX || !need(&r, json_at, len)) r.bad = 1;
          json_len = (uint32_t)len;
        }
      }
      found = 1;
    }
  }
  if (r.bad) {
    snprintf(err, errlen,
             DAMAGED "a flatbuffer field points outside the file (%zu bytes; a truncated or altered file).", size);
    return EK_ERROR_INTEGRITY;
  }
  if (!found) {
    if (contains(data, size, "\"edgekit/")) {
      snprintf(err, errlen, DAMAGED "it was exported by edgekit but its metadata entry cannot be found.");
      return EK_ERROR_INTEGRITY;
    }
    if (check) sha256_hex(data, size, (size_t)-1, hex);
    return EK_OK; /* no entry: the caller decides whether unverified files may run */
  }
  const char *json = (const char *)data + json_at;
  char perr[160];
  ek_json_doc *doc = ek_json_parse(json, json_len, perr, sizeof perr);
  if (doc == NULL) {
    snprintf(err, errlen, DAMAGED "its edgekit metadata is not UTF-8 JSON (%s).", perr);
    return EK_ERROR_INTEGRITY;
  }
  const ek_json *root_obj = ek_json_root(doc);
  const char *value = ek_json_string(ek_json_get(root_obj, "sha256"));
  int ok = value != NULL && strlen(value) == 64 && root_obj->type == EK_JSON_OBJECT;
  for (int i = 0; ok && i < 64; i++) ok = (value[i] >= '0' && value[i] <= '9') || (value[i] >= 'a' && value[i] <= 'f');
  char expected[65] = {0};
  if (ok) memcpy(expected, value, 64);
  ek_json_free(doc);
  if (!ok) {
    snprintf(err, errlen,
             DAMAGED "its edgekit metadata has no valid integrity digest. Expected 'sha256' to be 64 lowercase "
                     "hex digits. Received: %s",
             value ? "another value" : "none");
    return EK_ERROR_INTEGRITY;
  }
  const char *key = find_last(json, json_len, "\"sha256\"");
  const char *hit = key ? find_first(key + 8, json_len - (size_t)(key + 8 - json), expected, 64) : NULL;
  if (hit == NULL) {
    snprintf(err, errlen, DAMAGED "the digest cannot be located in its edgekit metadata.");
    return EK_ERROR_INTEGRITY;
  }
  if (!check) { /* the claimed digest, for caches keyed by content */
    memcpy(hex, expected, 65);
    *json_out = json;
    *json_len_out = json_len;
    return EK_OK;
  }
  sha256_hex(data, size, (size_t)((const uint8_t *)hit - data), hex);
  if (memcmp(hex, expected, 64) != 0) {
    snprintf(err, errlen,
             "The model file differs from what was exported (integrity digest mismatch). Expected: sha256=%s. "
             "Received: sha256=%s",
             expected, hex);
    return EK_ERROR_INTEGRITY;
  }
  *json_out = json;
  *json_len_out = json_len;
  return EK_OK;
}

/* ---- Declared tensor sizes ------------------------------------------------------------------- */

/* Bytes per element of each TFLite TensorType (schema.fbs order); unknown types count as 8. */
static const uint8_t TYPE_BYTES[] = {4, 2, 4, 1, 8, 8, 1, 2, 8, 1, 8, 16, 8, 1, 8, 4, 2, 1, 1};

/* Product of the int32 vector at field `field` of `table` (dynamic dims count as 1), saturating. */
static double shape_elems(fb *r, uint64_t table, int field, int *present) {
  uint64_t pos = field_pos(r, table, field);
  *present = pos != 0;
  if (!pos) return 0;
  uint32_t n;
  uint64_t start = vector(r, deref(r, pos), &n, 4);
  double elems = 1;
  for (uint32_t i = 0; i < n && !r->bad; i++) {
    int32_t d = (int32_t)rd_u32(r, start + 4 * (uint64_t)i);
    if (d > 0) elems *= d;
  }
  return elems;
}

ek_status ek_format_check_tensors(const uint8_t *data, size_t size, size_t budget, char *err, size_t errlen) {
  fb r = {data, size, 0};
  uint64_t root = deref(&r, 0);
  uint64_t sgs_pos = field_pos(&r, root, 2);
  uint32_t n_sg = 0;
  uint64_t sgs = sgs_pos ? vector(&r, deref(&r, sgs_pos), &n_sg, 4) : 0;
  for (uint32_t g = 0; g < n_sg && !r.bad; g++) {
    uint64_t sg = deref(&r, sgs + 4 * (uint64_t)g);
    uint64_t ts_pos = field_pos(&r, sg, 0);
    uint32_t n_t = 0;
    uint64_t ts = ts_pos ? vector(&r, deref(&r, ts_pos), &n_t, 4) : 0;
    for (uint32_t i = 0; i < n_t && !r.bad; i++) {
      uint64_t t = deref(&r, ts + 4 * (uint64_t)i);
      uint64_t type_pos = field_pos(&r, t, 1);
      uint8_t type = type_pos && need(&r, type_pos, 1) ? data[type_pos] : 0;
      double width = type < sizeof TYPE_BYTES ? TYPE_BYTES[type] : 8;
      int has_shape, has_sig;
      /* both the shape LiteRT allocates first and the signature it resizes from */
      double a = shape_elems(&r, t, 0, &has_shape) * width, b = shape_elems(&r, t, 7, &has_sig) * width;
      double bytes = a > b ? a : b;
      if (!r.bad && bytes > (double)budget) {
        snprintf(err, errlen,
                 "Tensor %u of subgraph %u declares %.0f bytes at batch 1. Expected at most the memory budget of %zu "
                 "bytes (a damaged file, or a model too large for this device).",
                 i, g, bytes, budget);
        return EK_ERROR_UNSUPPORTED;
      }
    }
  }
  if (r.bad) {
    snprintf(err, errlen, DAMAGED "a flatbuffer field of its graph points outside the file.");
    return EK_ERROR_INTEGRITY;
  }
  return EK_OK;
}

/* ---- Parsing the metadata ------------------------------------------------------------------- */

typedef struct {
  char *err;
  size_t errlen;
  ek_status status;
} ctx;

#define MALFORMED "Malformed edgekit metadata: "

static int bad(ctx *c, ek_status status, const char *fmt, ...) {
  if (c->status == EK_OK) {
    va_list ap;
    va_start(ap, fmt);
    c->status = status;
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
  }
  return 0;
}

static const char *opt_string(ctx *c, const ek_json *obj, const char *key, const char *where) {
  const ek_json *v = ek_json_get(obj, key);
  if (ek_json_is_null(v)) return NULL;
  if (v->type != EK_JSON_STRING) {
    bad(c, EK_ERROR_FORMAT, MALFORMED "%s.%s must be a string or null.", where, key);
    return NULL;
  }
  return v->str;
}

static int is_int(const ek_json *v, double lo, double hi) {
  return v && v->type == EK_JSON_NUMBER && v->num == floor(v->num) && v->num >= lo && v->num <= hi;
}

/* A list of positive ints into shape[]: 1 on success. */
static int read_shape(ctx *c, const ek_json *v, int *rank, int shape[EK_MAX_RANK], size_t *size, const char *what) {
  if (v == NULL || v->type != EK_JSON_ARRAY || v->count > EK_MAX_RANK)
    return bad(c, EK_ERROR_FORMAT, MALFORMED "%s must be a list of at most 8 positive integers.", what);
  size_t total = 1;
  int i = 0;
  for (const ek_json *d = v->child; d; d = d->next, i++) {
    if (!is_int(d, 1, 1 << 30))
      return bad(c, EK_ERROR_FORMAT, MALFORMED "%s must be a list of at most 8 positive integers.", what);
    shape[i] = (int)d->num;
    if (total > ((size_t)1 << 40) / (size_t)shape[i])
      return bad(c, EK_ERROR_FORMAT, MALFORMED "%s declares too many values.", what);
    total *= (size_t)shape[i];
  }
  *rank = i;
  if (size) *size = total;
  return 1;
}

static int read_class_names(ctx *c, const ek_json *v, ek_meta_output *o, const char *where) {
  if (ek_json_is_null(v)) return 1;
  if (v->type != EK_JSON_ARRAY) return bad(c, EK_ERROR_FORMAT, MALFORMED "%s class_names must be a list.", where);
  o->class_names = calloc(v->count ? v->count : 1, sizeof *o->class_names);
  if (o->class_names == NULL) return bad(c, EK_ERROR_NOMEM, "out of memory");
  int i = 0;
  for (const ek_json *n = v->child; n; n = n->next) {
    if (n->type != EK_JSON_STRING)
      return bad(c, EK_ERROR_FORMAT, MALFORMED "%s class_names must be strings.", where);
    o->class_names[i++] = n->str;
  }
  o->n_class_names = i;
  return 1;
}

static int number(const ek_json *v) { return v != NULL && v->type == EK_JSON_NUMBER && isfinite(v->num); }

/* One entry of edgekit/2's `outputs` (runtime/plan.py reads the same keys the same way). */
static int read_output(ctx *c, const ek_json *e, ek_meta_output *o) {
  char where[96];
  if (e->type != EK_JSON_OBJECT) return bad(c, EK_ERROR_FORMAT, MALFORMED "every entry of outputs must be an object.");
  o->name = ek_json_string(ek_json_get(e, "name"));
  if (o->name == NULL) return bad(c, EK_ERROR_FORMAT, MALFORMED "every entry of outputs needs a string 'name'.");
  snprintf(where, sizeof where, "outputs['%.60s']", o->name);
  const char *task = opt_string(c, e, "task", where);
  if (task == NULL) task = "classification";
  if (strcmp(task, "classification") != 0 && strcmp(task, "regression") != 0)
    return bad(c, EK_ERROR_UNSUPPORTED, "%s: unsupported task. Expected 'classification' or 'regression'. Received: %s",
               where, task);
  o->task = strcmp(task, "classification") == 0 ? EK_TASK_CLASSIFICATION : EK_TASK_REGRESSION;
  o->rank = -1;
  const ek_json *shape = ek_json_get(e, "shape");
  if (!ek_json_is_null(shape) && !read_shape(c, shape, &o->rank, o->shape, &o->size, where)) return 0;
  o->temperature = 1.0;
  o->variance_scale = 1.0;
  o->interval = 0.9;
  if (o->task == EK_TASK_CLASSIFICATION) {
    const char *act = opt_string(c, e, "activation", where);
    if (act != NULL && strcmp(act, "softmax") != 0 && strcmp(act, "sigmoid") != 0)
      return bad(c, EK_ERROR_UNSUPPORTED, "%s: unsupported activation. Expected 'softmax' or 'sigmoid'. Received: %s",
                 where, act);
    o->sigmoid = act != NULL && strcmp(act, "sigmoid") == 0;
    if (!read_class_names(c, ek_json_get(e, "class_names"), o, where)) return 0;
    const ek_json *cal = ek_json_get(e, "calibration");
    if (!ek_json_is_null(cal)) {
      const char *method = ek_json_string(ek_json_get(cal, "method"));
      const ek_json *t = ek_json_get(cal, "temperature"), *slope = ek_json_get(cal, "mi_slope");
      if (method == NULL || strcmp(method, "temperature") != 0)
        return bad(c, EK_ERROR_UNSUPPORTED, "%s: unsupported calibration. Expected method 'temperature'. Received: %s",
                   where, method ? method : "none");
      if (!number(t) || !(t->num >= 1e-3 && t->num <= 1e3))
        return bad(c, EK_ERROR_FORMAT, MALFORMED "%s: calibration.temperature must be a number in [1e-3, 1e3].", where);
      if (!ek_json_is_null(slope) && (!number(slope) || slope->num < 0))
        return bad(c, EK_ERROR_FORMAT, MALFORMED "%s: calibration.mi_slope must be a number >= 0.", where);
      o->calibrated = 1;
      o->temperature = t->num;
      o->mi_slope = ek_json_is_null(slope) ? 0.0 : slope->num;
    }
    const ek_json *ab = ek_json_get(e, "abstain");
    if (!ek_json_is_null(ab)) {
      const char *score = ek_json_string(ek_json_get(ab, "score"));
      const ek_json *th = ek_json_get(ab, "threshold");
      if (score == NULL || (strcmp(score, "entropy") != 0 && strcmp(score, "confidence") != 0 &&
                            strcmp(score, "mutual_information") != 0))
        return bad(c, EK_ERROR_UNSUPPORTED,
                   "%s: unsupported abstention score. Expected 'entropy', 'confidence' or 'mutual_information'. "
                   "Received: %s",
                   where, score ? score : "none");
      if (!number(th)) return bad(c, EK_ERROR_FORMAT, MALFORMED "%s: abstain.threshold must be a finite number.", where);
      o->has_abstain = 1;
      o->abstain_score = score;
      o->abstain_threshold = th->num;
    }
  } else {
    const ek_json *nv = ek_json_get(e, "noise_variance");
    if (!ek_json_is_null(nv)) {
      if (nv->type != EK_JSON_ARRAY || nv->count == 0)
        return bad(c, EK_ERROR_FORMAT, MALFORMED "%s: noise_variance must be a list of one number per value.", where);
      o->noise_variance = malloc(nv->count * sizeof(double));
      if (o->noise_variance == NULL) return bad(c, EK_ERROR_NOMEM, "out of memory");
      o->n_noise = nv->count;
      size_t i = 0;
      for (const ek_json *v = nv->child; v; v = v->next, i++) {
        if (!number(v) || v->num < 0)
          return bad(c, EK_ERROR_FORMAT, MALFORMED "%s: noise_variance values must be numbers >= 0.", where);
        o->noise_variance[i] = v->num;
      }
    }
    const ek_json *var = ek_json_get(e, "variance");
    if (!ek_json_is_null(var)) {
      const char *kind = ek_json_string(ek_json_get(var, "kind"));
      o->variance_output = ek_json_string(ek_json_get(var, "output"));
      if (kind == NULL || strcmp(kind, "log_variance") != 0)
        return bad(c, EK_ERROR_UNSUPPORTED, "%s: unsupported variance kind. Expected 'log_variance'. Received: %s",
                   where, kind ? kind : "none");
      if (o->variance_output == NULL)
        return bad(c, EK_ERROR_FORMAT, MALFORMED "%s: variance.output must name an output.", where);
    }
    const ek_json *iv = ek_json_get(e, "interval");
    if (!ek_json_is_null(iv)) {
      if (!number(iv) || !(iv->num > 0 && iv->num < 1))
        return bad(c, EK_ERROR_FORMAT, MALFORMED "%s: interval must be a number in (0, 1).", where);
      o->interval = iv->num;
    }
    const ek_json *vs = ek_json_get(e, "variance_scale");
    if (!ek_json_is_null(vs)) {
      if (!number(vs) || vs->num < 0)
        return bad(c, EK_ERROR_FORMAT, MALFORMED "%s: variance_scale must be a number >= 0.", where);
      if (vs->num > 0) o->variance_scale = vs->num; /* 0 reads as 1, as runtime/plan.py */
    }
  }
  return 1;
}

static int read_batch(ctx *c, const ek_json *batch, const char *role, int *out) {
  const ek_json *v = ek_json_get(batch, role);
  *out = 0;
  if (ek_json_is_null(v)) return 1;
  if (!is_int(v, 1, 1 << 20)) return bad(c, EK_ERROR_FORMAT, MALFORMED "batch.%s must be a positive integer or null.", role);
  *out = (int)v->num;
  return 1;
}

ek_status ek_format_parse(const char *json, size_t len, ek_meta *m, char *err, size_t errlen) {
  memset(m, 0, sizeof *m);
  ctx c = {err, errlen, EK_OK};
  m->doc = ek_json_parse(json, len, err, errlen);
  if (m->doc == NULL) return EK_ERROR_FORMAT;
  const ek_json *root = ek_json_root(m->doc);
  if (root->type != EK_JSON_OBJECT) {
    snprintf(err, errlen, MALFORMED "expected a JSON object.");
    return EK_ERROR_FORMAT;
  }
  m->format = ek_json_string(ek_json_get(root, "format"));
  if (m->format == NULL) m->format = "edgekit/1";
  if (strcmp(m->format, "edgekit/1") == 0) {
    m->version = 1;
  } else if (strcmp(m->format, "edgekit/2") == 0) {
    m->version = 2;
  } else {
    snprintf(err, errlen,
             "Unsupported file format. Expected 'edgekit/1' or 'edgekit/2' (this is edgekit-run %s). Received: %.40s",
             EK_VERSION, m->format);
    return EK_ERROR_UNSUPPORTED;
  }
  m->stochastic = opt_string(&c, root, "stochastic", "metadata");
  if (m->stochastic == NULL) m->stochastic = "in-graph";
  if (strcmp(m->stochastic, "in-graph") != 0 && strcmp(m->stochastic, "mask-input") != 0 &&
      strcmp(m->stochastic, "none") != 0)
    bad(&c, EK_ERROR_UNSUPPORTED, "Unsupported stochastic mode. Expected 'in-graph', 'mask-input' or 'none'. Received: %s",
        m->stochastic);
  m->seeded = !ek_json_is_null(ek_json_get(root, "seed"));

  const ek_json *layers = ek_json_get(root, "mc_layers");
  if (!ek_json_is_null(layers)) {
    if (layers->type != EK_JSON_ARRAY) return bad(&c, EK_ERROR_FORMAT, MALFORMED "mc_layers must be a list."), c.status;
    m->layers = calloc(layers->count ? layers->count : 1, sizeof *m->layers);
    if (m->layers == NULL) return EK_ERROR_NOMEM;
    for (const ek_json *l = layers->child; l && c.status == EK_OK; l = l->next) {
      ek_meta_layer *ml = &m->layers[m->n_layers++];
      const ek_json *rate = ek_json_get(l, "rate");
      ml->name = ek_json_string(ek_json_get(l, "name"));
      if (l->type != EK_JSON_OBJECT || rate == NULL || rate->type != EK_JSON_NUMBER || !(rate->num >= 0 && rate->num < 1)) {
        bad(&c, EK_ERROR_FORMAT, MALFORMED "every mc_layers entry needs a rate in [0, 1).");
        break;
      }
      ml->rate = rate->num;
      const ek_json *shape = ek_json_get(l, "mask_shape");
      if (!ek_json_is_null(shape)) read_shape(&c, shape, &ml->mask_rank, ml->mask_shape, NULL, "mc_layers[].mask_shape");
      else ml->mask_rank = -1; /* the mask input's own shape */
      ml->mask_input = opt_string(&c, l, "mask_input", "mc_layers[]");
    }
  }
  const ek_json *sigs = ek_json_get(root, "signatures");
  if (!ek_json_is_null(sigs)) {
    if (sigs->type != EK_JSON_OBJECT) bad(&c, EK_ERROR_FORMAT, MALFORMED "signatures must be an object.");
    m->sig_full = opt_string(&c, sigs, "full", "signatures");
    m->sig_trunk = opt_string(&c, sigs, "trunk", "signatures");
    m->sig_head = opt_string(&c, sigs, "head", "signatures");
    m->sig_masked = opt_string(&c, sigs, "masked", "signatures");
  }
  const ek_json *input = ek_json_get(root, "input");
  if (!ek_json_is_null(input)) m->input_name = opt_string(&c, input, "name", "input");
  const ek_json *quant = ek_json_get(root, "quantization");
  if (!ek_json_is_null(quant)) m->quant_mode = opt_string(&c, quant, "mode", "quantization");

  const ek_json *batch = ek_json_get(root, "batch");
  if (!ek_json_is_null(batch)) {
    if (batch->type != EK_JSON_OBJECT) bad(&c, EK_ERROR_FORMAT, MALFORMED "batch must be an object.");
    read_batch(&c, batch, "full", &m->batch_full);
    read_batch(&c, batch, "trunk", &m->batch_trunk);
    read_batch(&c, batch, "head", &m->batch_head);
    read_batch(&c, batch, "masked", &m->batch_masked);
  }

  const ek_json *outputs = ek_json_get(root, "outputs");
  if (!ek_json_is_null(outputs) && c.status == EK_OK) {
    if (outputs->type != EK_JSON_ARRAY || outputs->count == 0 || outputs->count > 64)
      return bad(&c, EK_ERROR_FORMAT, MALFORMED "outputs must be a list of 1 to 64 entries."), c.status;
    m->outputs = calloc(outputs->count, sizeof *m->outputs);
    if (m->outputs == NULL) return EK_ERROR_NOMEM;
    for (const ek_json *e = outputs->child; e && c.status == EK_OK; e = e->next)
      read_output(&c, e, &m->outputs[m->n_outputs++]);
  } else if (c.status == EK_OK) {
    /* edgekit/1: one classification output, from `output` and `class_names`. Its size comes
     * from the signature when `num_classes` is absent (size 0 here). */
    m->outputs = calloc(1, sizeof *m->outputs);
    if (m->outputs == NULL) return EK_ERROR_NOMEM;
    m->n_outputs = 1;
    ek_meta_output *o = &m->outputs[0];
    const ek_json *out = ek_json_get(root, "output");
    o->name = ek_json_is_null(out) ? NULL : opt_string(&c, out, "name", "output");
    const ek_json *nc = ek_json_is_null(out) ? NULL : ek_json_get(out, "num_classes");
    o->task = EK_TASK_CLASSIFICATION;
    o->temperature = 1.0;
    o->variance_scale = 1.0;
    o->interval = 0.9;
    o->rank = -1;
    if (is_int(nc, 1, 1 << 24)) {
      o->rank = 1;
      o->shape[0] = (int)nc->num;
      o->size = (size_t)nc->num;
    }
    read_class_names(&c, ek_json_get(root, "class_names"), o, "metadata");
  }
  return c.status;
}

void ek_meta_free(ek_meta *m) {
  if (m == NULL) return;
  for (int i = 0; i < m->n_outputs; i++) {
    free(m->outputs[i].class_names);
    free(m->outputs[i].noise_variance);
  }
  free(m->outputs);
  free(m->layers);
  ek_json_free(m->doc);
  memset(m, 0, sizeof *m);
}
