/*
 * Internal declarations shared by the sources of the edgekit C library (not installed, not
 * part of the API: see edgekit.h for that).
 */
#ifndef EDGEKIT_INTERNAL_H_
#define EDGEKIT_INTERNAL_H_

#include <stddef.h>
#include <stdint.h>

#include "edgekit.h"

/* ---- SHA-256 (ek_sha256.c) ------------------------------------------------------------------ */

typedef struct {
  uint32_t h[8];
  uint64_t bytes;
  uint8_t buf[64];
  size_t fill;
  int accel; /* the CPU's SHA-256 instructions are used */
} ek_sha256;

void ek_sha256_init(ek_sha256 *s);
void ek_sha256_update(ek_sha256 *s, const void *data, size_t n);
void ek_sha256_final(ek_sha256 *s, char hex[65]);

/* ---- JSON (ek_json.c) ------------------------------------------------------------------------ */

typedef enum {
  EK_JSON_NULL,
  EK_JSON_FALSE,
  EK_JSON_TRUE,
  EK_JSON_NUMBER,
  EK_JSON_STRING,
  EK_JSON_ARRAY,
  EK_JSON_OBJECT,
} ek_jtype;

typedef struct ek_json ek_json;
struct ek_json {
  ek_jtype type;
  double num;      /* EK_JSON_NUMBER */
  const char *str; /* EK_JSON_STRING: NUL-terminated UTF-8 */
  size_t len;      /* EK_JSON_STRING: bytes */
  const char *key; /* member of an object: its key */
  ek_json *child;  /* first element / member */
  ek_json *next;   /* next sibling */
  size_t count;    /* elements / members */
};

typedef struct ek_json_doc ek_json_doc;

/* NULL on error, with the reason in err. */
ek_json_doc *ek_json_parse(const char *text, size_t n, char *err, size_t errlen);
void ek_json_free(ek_json_doc *doc);
const ek_json *ek_json_root(const ek_json_doc *doc);
const ek_json *ek_json_get(const ek_json *obj, const char *key);
const ek_json *ek_json_at(const ek_json *arr, size_t i);
const char *ek_json_string(const ek_json *v);
int ek_json_is_null(const ek_json *v); /* absent or null */

/* ---- The file format (ek_format.c) -------------------------------------------------------- */

#define EK_MAX_RANK 8

typedef struct {
  const char *name;
  double rate;
  int mask_rank;
  int mask_shape[EK_MAX_RANK];
  const char *mask_input; /* NULL: none */
} ek_meta_layer;

typedef struct {
  const char *name;
  ek_task task;
  int sigmoid;
  int rank;                    /* -1: no `shape` key (the signature's is used) */
  int shape[EK_MAX_RANK];
  size_t size; /* product of shape (0 until known) */
  const char **class_names;
  int n_class_names;
  int calibrated;
  double temperature;
  double mi_slope; /* tau(x) = temperature * exp(mi_slope * MI(x)), MI of the raw samples */
  int has_abstain;
  const char *abstain_score;
  double abstain_threshold;
  double *noise_variance; /* NULL or n_noise values (one per value) */
  size_t n_noise;
  const char *variance_output; /* log-variance output name, or NULL */
  double variance_scale;       /* factor on exp(log-variance) (1: none fitted) */
  double interval;
} ek_meta_output;

typedef struct {
  ek_json_doc *doc; /* every string below points into it */
  const char *format;
  int version;
  const char *stochastic;
  int seeded;
  ek_meta_layer *layers;
  int n_layers;
  const char *sig_full, *sig_trunk, *sig_head, *sig_masked;
  const char *input_name;
  ek_meta_output *outputs;
  int n_outputs;
  int batch_full, batch_trunk, batch_head, batch_masked; /* 0: dynamic */
  const char *quant_mode;
} ek_meta;

/* Reads the edgekit entry of `data` and (with `check`) checks the digest. Returns EK_OK and fills
 * `hex` (the verified digest; without `check`, the one the metadata claims) and `*json`/`*json_len`
 * (the metadata JSON inside `data`), or EK_OK with *json == NULL when the file has no edgekit
 * entry at all (hex is then the plain SHA-256 of the bytes, when `check`); else an error with the
 * message in err. Never reads outside `data`. */
ek_status ek_format_verify(const uint8_t *data, size_t size, int check, char hex[65], const char **json,
                           size_t *json_len, char *err, size_t errlen);

/* Every tensor of every subgraph, by its declared shape and shape signature (dynamic dims as 1),
 * within `budget` bytes: checked on the raw bytes before LiteRT allocates anything. */
ek_status ek_format_check_tensors(const uint8_t *data, size_t size, size_t budget, char *err, size_t errlen);

/* Parses the metadata JSON. `meta` owns what it allocates: ek_meta_free. */
ek_status ek_format_parse(const char *json, size_t len, ek_meta *meta, char *err, size_t errlen);
void ek_meta_free(ek_meta *meta);

#endif /* EDGEKIT_INTERNAL_H_ */
