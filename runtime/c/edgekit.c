/*
 * The edgekit C runtime: opening a file, planning its signatures, MC sampling, statistics and
 * the latency budget. The API and its contract are in edgekit.h; the design is the Python
 * runtime's (runtime/mc.py), which this file follows step by step where the two must agree.
 *
 * How a prediction runs
 * ---------------------
 * trunk (once, batch 1) -> features -> the stochastic signature at batch T (masked twin, head or
 * full) -> T rows of each output -> checks -> calibration -> statistics. Input and output
 * tensors live in host buffers owned by the handle (64-byte aligned, LiteRT's requirement),
 * wrapped in LiteRtTensorBuffers that are re-created only when the batch changes; LiteRT's
 * CompiledModel resizes its inputs itself from the buffers' shapes. With runtime masks and a
 * signature whose first op broadcasts (checked at load, as in Python), one features row is fed
 * for T mask rows.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "ek_internal.h"
#include "litert_c.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EK_RNG_AVX2 1
#include <immintrin.h>
#else
#define EK_RNG_AVX2 0
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* The mask generator: four xoshiro256** lanes (see seed_rng). */
#define EK_RNG_LANES 4
typedef struct {
  uint64_t s[4][EK_RNG_LANES]; /* state word w of lane l is s[w][l] */
  int avx2;                    /* step the lanes with AVX2 instructions */
} ek_rng;

#define DEFAULT_SAMPLES 100
#define DEFAULT_MAX_SAMPLES 1000
#define HARD_MAX_SAMPLES 65536
#define DEFAULT_MEMORY_BYTES ((size_t)512 << 20)
#define DEFAULT_MAX_FILE_BYTES ((size_t)1 << 30)
/* Budgeted sampling goes in chunks of at most a third of the budget, none shorter than 1 ms
 * (runtime/mc.py: _BUDGET_CHUNKS, _MIN_CHUNK_S), and draws at least 75% of the samples that
 * fit at the typical cost (_MIN_SHARE). */
#define BUDGET_CHUNKS 3
#define MIN_CHUNK_S 0.001
#define MIN_SHARE 0.75
/* Seeded in-graph files restart their RANDOM_UNIFORM sequence whenever LiteRT re-prepares the
 * graph (a new batch size): their sampler runs at this one batch for the handle's lifetime. */
#define SEEDED_BATCH 8
#define PROB_EPS 1e-12 /* log(0) guard, as summarize() in runtime/mc.py */

/* ---- Small helpers --------------------------------------------------------------------------- */

typedef struct {
  const char *name;
  LiteRtTensor handle;
  LiteRtRankedTensorType type; /* dims[0] of the declared type may be -1 (dynamic batch) */
  int int8;
  float scale;
  int zero_point;
  size_t row_elems;
  size_t elem_size;
  int static_batch;
  /* role of an input: data (x / features) or mask */
  int is_mask;
  /* host memory and its LiteRT wrapper */
  void *host;
  size_t host_rows;
  LiteRtTensorBuffer tb;
  int tb_rows;
  uint64_t gen; /* data inputs: which features the rows hold */
  int gen_rows;
} tensor;

typedef struct {
  int index;
  const char *key;
  int n_in, n_out;
  tensor *in, *out;
  LiteRtTensorBuffer *in_tb, *out_tb;
} sig;

typedef struct {
  int input;          /* index in the sampler's inputs */
  size_t units;       /* per sample */
  uint32_t threshold; /* keep when 16 random bits >= threshold */
  int8_t keep_code, drop_code;
} mask_plan;

typedef struct {
  ek_meta_output meta;
  int out;      /* index in the sampler's outputs */
  int var_out;  /* heteroscedastic: index of the log-variance output, else -1 */
  size_t size;  /* statistics size: classes (2 for sigmoid) or values */
  double slack; /* per-value slack of the probability check */
  const char **names;
  char *names_storage;
  float *ps;    /* per-sample outputs (after calibration), cap_rows x size */
  float *pv;    /* heteroscedastic: per-sample variances, cap_rows x size */
  size_t ps_rows;
} output;

/* The latency model of runtime/mc.py (LatencyModel): see edgekit.h, Budgets. */
#define WINDOW 256
#define BUCKETS 32
#define MIN_RESIDUALS 20
#define QUANTILE 0.995
#define SPEED_WEIGHT 0.5
#define SPEED_MEMORY_S 1.0

typedef struct {
  int obs_n, obs_head;
  int obs_t[WINDOW];
  double obs_s[WINDOW];
  double sums[5], anchor_sums[5];
  int n_anchors, since_exact;
  int res_n, res_head;
  int res_b[WINDOW];
  double res_r[WINDOW];
  double sorted_all[WINDOW];
  int n_all;
  double sorted_by[BUCKETS][WINDOW];
  int n_by[BUCKETS];
  double fixed_s, per_sample_s;
  double speed, speed_at;
} latency;

typedef struct {
  int key;
  double value;
} slack_entry;

struct ek_model {
  char errmsg[640];
  ek_open_options opts;
  uint8_t *data;
  size_t size;
  char sha256[65];
  int verified;
  ek_meta meta;
  int has_meta;
  /* LiteRT */
  LiteRtEnvironment env;
  LiteRtModel lm;
  LiteRtOptions lopts;
  LiteRtCompiledModel cm;
  int n_sigs;
  sig *sigs;
  /* plan */
  sig *trunk;   /* NULL: no trunk */
  sig *sampler;
  int data_in;  /* the sampler's data input */
  int trunk_out;
  tensor *x;    /* the model input: trunk's or sampler's data input */
  mask_plan *masks;
  int n_masks;
  int broadcast;
  int sampler_batch;
  int trunk_batch;
  int masks_from_runtime, masks_from_file;
  const char *plan_name;
  char note[320];
  char *notes_text;           /* the notes, one allocation */
  const char *notes[130];
  int n_notes;
  int input_rank;
  int input_shape[EK_MAX_RANK];
  size_t input_size;
  output *outputs;
  int n_outputs;
  int max_samples;
  size_t memory_bytes;
  /* runtime state */
  ek_rng rng;
  ek_rng scratch_rng;
  uint64_t gen;
  int high_water;
  void *feat;   /* the current input's features (quantized), one row */
  size_t feat_bytes;
  double *dscratch; /* statistics and calibration scratch */
  size_t dscratch_len;
  /* budget state */
  latency *lat;
  int calibrated;
  slack_entry slack[64];
  int n_slack;
  double after_s[WINDOW];
  int after_n, after_count;
  double reserve_s, after_med;
};

static ek_status fail(ek_model *m, ek_status status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m->errmsg, sizeof m->errmsg, fmt, ap);
  va_end(ap);
  return status;
}

static double monotonic_s(void *ctx) {
  (void)ctx;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_s(const ek_model *m) { return m->opts.clock(m->opts.clock_ctx); }

static void *aligned(size_t bytes) {
  void *p = NULL;
  size_t n = (bytes + 63) / 64 * 64;
  if (n == 0) n = 64;
  if (posix_memalign(&p, LITERT_HOST_MEMORY_BUFFER_ALIGNMENT, n) != 0) return NULL;
  return p;
}

/* Round half to even, as Python's round() and numpy's round(). */
static double round_even(double v) {
  double r = floor(v + 0.5);
  if (r - v == 0.5 && fmod(r, 2.0) != 0.0) r -= 1.0;
  return r;
}

const char *ek_version(void) { return EK_VERSION; }

const char *ek_status_name(ek_status status) {
  switch (status) {
    case EK_OK: return "EK_OK";
    case EK_ERROR_ARGUMENT: return "EK_ERROR_ARGUMENT";
    case EK_ERROR_IO: return "EK_ERROR_IO";
    case EK_ERROR_INTEGRITY: return "EK_ERROR_INTEGRITY";
    case EK_ERROR_FORMAT: return "EK_ERROR_FORMAT";
    case EK_ERROR_UNSUPPORTED: return "EK_ERROR_UNSUPPORTED";
    case EK_ERROR_LITERT: return "EK_ERROR_LITERT";
    case EK_ERROR_BUDGET: return "EK_ERROR_BUDGET";
    case EK_ERROR_OUTPUT: return "EK_ERROR_OUTPUT";
    case EK_ERROR_NOMEM: return "EK_ERROR_NOMEM";
  }
  return "EK_ERROR_UNKNOWN";
}

const char *ek_errmsg(const ek_model *model) { return model ? model->errmsg : "out of memory"; }

/* ---- Randomness: splitmix64 seeding, xoshiro256** ------------------------------------------- */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Four xoshiro256** generators side by side (edgekit.h, Randomness): lane l takes the splitmix64
 * outputs 4l..4l+3 as its state, and a step of all four gives four consecutive words of the stream,
 * lane 0 first. Four lanes because that is one AVX2 register per state word: where the CPU has AVX2
 * the four steps are one vector step (about twice the scalar generator's speed here); elsewhere the
 * scalar code below computes the same words. */
static int cpu_has_avx2(void);

static void seed_rng(ek_rng *r, uint64_t seed) {
  for (int l = 0; l < EK_RNG_LANES; l++)
    for (int w = 0; w < 4; w++) r->s[w][l] = splitmix64(&seed);
  r->avx2 = cpu_has_avx2();
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static int little_endian(void) {
  const uint16_t one = 1;
  return *(const uint8_t *)&one == 1;
}

/* `groups` steps of the four lanes: 4 * groups words into `out`. */
static void rng_words_scalar(ek_rng *r, uint64_t *out, size_t groups) {
  for (int l = 0; l < EK_RNG_LANES; l++) {
    uint64_t s0 = r->s[0][l], s1 = r->s[1][l], s2 = r->s[2][l], s3 = r->s[3][l];
    for (size_t i = 0; i < groups; i++) {
      out[EK_RNG_LANES * i + (size_t)l] = rotl(s1 * 5, 7) * 9;
      uint64_t t = s1 << 17;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = rotl(s3, 45);
    }
    r->s[0][l] = s0, r->s[1][l] = s1, r->s[2][l] = s2, r->s[3][l] = s3;
  }
}

#if EK_RNG_AVX2
/* The same steps, one lane per 64-bit element: x * 5 and x * 9 as shifts and adds (AVX2 has no
 * 64-bit multiply), rotations as two shifts. */
__attribute__((target("avx2"))) static void rng_words_avx2(ek_rng *r, uint64_t *out, size_t groups) {
  __m256i s0 = _mm256_loadu_si256((const __m256i *)r->s[0]), s1 = _mm256_loadu_si256((const __m256i *)r->s[1]);
  __m256i s2 = _mm256_loadu_si256((const __m256i *)r->s[2]), s3 = _mm256_loadu_si256((const __m256i *)r->s[3]);
  for (size_t i = 0; i < groups; i++) {
    __m256i x = _mm256_add_epi64(_mm256_slli_epi64(s1, 2), s1);
    x = _mm256_or_si256(_mm256_slli_epi64(x, 7), _mm256_srli_epi64(x, 57));
    _mm256_storeu_si256((__m256i *)(out + EK_RNG_LANES * i), _mm256_add_epi64(_mm256_slli_epi64(x, 3), x));
    __m256i t = _mm256_slli_epi64(s1, 17);
    s2 = _mm256_xor_si256(s2, s0);
    s3 = _mm256_xor_si256(s3, s1);
    s1 = _mm256_xor_si256(s1, s2);
    s0 = _mm256_xor_si256(s0, s3);
    s2 = _mm256_xor_si256(s2, t);
    s3 = _mm256_or_si256(_mm256_slli_epi64(s3, 45), _mm256_srli_epi64(s3, 19));
  }
  _mm256_storeu_si256((__m256i *)r->s[0], s0);
  _mm256_storeu_si256((__m256i *)r->s[1], s1);
  _mm256_storeu_si256((__m256i *)r->s[2], s2);
  _mm256_storeu_si256((__m256i *)r->s[3], s3);
}
#endif

/* Whether to step the lanes with AVX2: the CPU has it, and EDGEKIT_NO_AVX2 is unset (the tests
 * set it to check that the scalar code gives the same stream). */
static int cpu_has_avx2(void) {
#if EK_RNG_AVX2
  const char *off = getenv("EDGEKIT_NO_AVX2");
  if (off != NULL && *off != '\0' && strcmp(off, "0") != 0) return 0;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") != 0;
#else
  return 0;
#endif
}

static void rng_words(ek_rng *r, uint64_t *out, size_t groups) {
#if EK_RNG_AVX2
  if (r->avx2) {
    rng_words_avx2(r, out, groups);
    return;
  }
#endif
  rng_words_scalar(r, out, groups);
}

static uint64_t entropy_seed(const void *salt) {
  uint64_t seed = 0;
  FILE *f = fopen("/dev/urandom", "rb");
  if (f != NULL) {
    if (fread(&seed, sizeof seed, 1, f) != 1) seed = 0;
    fclose(f);
  }
  if (seed == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)salt;
  }
  return seed;
}

/* Keep-masks for `rows` samples of every mask input (the order of edgekit.h, Randomness).
 *
 * Two passes per block of 1024 units: the generator's words go to a small buffer (in L1), then one
 * branchless loop turns their 16-bit units into keep values, which vectorizes. A compare per unit
 * in one pass was ~3x slower (unpredictable branches or scalar selects); one pass over a whole
 * mask's worth of words doubled the memory traffic. On x86 the float masks are written with
 * streaming stores: the book MLP writes 474 KB of masks per T=100 prediction into buffers the
 * invoke's weights have pushed out of L2, and reading those lines in before overwriting them cost
 * more than the invoke reading the masks back (bench/native.py: the ratio to the bare invoke). */
#define MASK_BLOCK 1024

static void keep_floats(uint32_t *out, const uint16_t *u, size_t n, uint32_t thr) {
#if defined(__SSE2__)
  if (n == MASK_BLOCK && ((uintptr_t)out & 15) == 0) {
    /* unsigned 16-bit u >= thr as a signed compare of (u ^ 0x8000) > ((thr ^ 0x8000) - 1) */
    const __m128i flip = _mm_set1_epi16((short)-32768), one = _mm_set1_epi32(0x3f800000);
    const __m128i limit = _mm_set1_epi16((short)((int)(thr ^ 0x8000u) - 1));
    for (size_t i = 0; i < n; i += 8) {
      __m128i ge = _mm_cmpgt_epi16(_mm_xor_si128(_mm_loadu_si128((const __m128i *)(u + i)), flip), limit);
      _mm_stream_si128((__m128i *)(out + i), _mm_and_si128(_mm_unpacklo_epi16(ge, ge), one));
      _mm_stream_si128((__m128i *)(out + i + 4), _mm_and_si128(_mm_unpackhi_epi16(ge, ge), one));
    }
    return;
  }
#endif
  for (size_t i = 0; i < n; i++) out[i] = -(uint32_t)(u[i] >= thr) & 0x3f800000u; /* the bits of 1.0f, 0.0f */
}
static void fill_masks(ek_model *m, ek_rng *rng, int rows) {
  uint64_t words[MASK_BLOCK / 4];
  uint16_t units16[MASK_BLOCK];
  int le = little_endian();
  for (int k = 0; k < m->n_masks; k++) {
    const mask_plan *mp = &m->masks[k];
    tensor *t = &m->sampler->in[mp->input];
    size_t units = (size_t)rows * mp->units;
    uint32_t thr = mp->threshold;
    for (size_t at = 0; at < units; at += MASK_BLOCK) {
      size_t n = units - at < MASK_BLOCK ? units - at : MASK_BLOCK, nw = (n + 3) / 4;
      rng_words(rng, words, (nw + EK_RNG_LANES - 1) / EK_RNG_LANES); /* whole steps: MASK_BLOCK / 16 per full block */
      if (le) { /* lowest 16 bits first, whatever the byte order */
        memcpy(units16, words, nw * sizeof *words);
      } else {
        for (size_t i = 0; i < nw; i++)
          for (int j = 0; j < 4; j++) units16[4 * i + (size_t)j] = (uint16_t)(words[i] >> (16 * j));
      }
      const uint16_t *u = units16;
      if (!t->int8) {
        keep_floats((uint32_t *)t->host + at, u, n, thr);
      } else {
        int8_t *out = (int8_t *)t->host + at, keep = mp->keep_code, drop = mp->drop_code;
        for (size_t i = 0; i < n; i++) out[i] = u[i] >= thr ? keep : drop;
      }
    }
  }
#if defined(__SSE2__)
  _mm_sfence(); /* streaming stores are weakly ordered: complete them before LiteRT's threads read */
#endif
}

/* ---- Reading the file ------------------------------------------------------------------------- */

static ek_status read_file(const char *path, size_t limit, uint8_t **data, size_t *size, char *err, size_t errlen) {
  struct stat st;
  *data = NULL;
  *size = 0;
  if (path == NULL || stat(path, &st) != 0) {
    snprintf(err, errlen, "Model file not found. Expected an existing .tflite file. Received: '%.400s'",
             path ? path : "(null)");
    return EK_ERROR_IO;
  }
  if (!S_ISREG(st.st_mode)) {
    snprintf(err, errlen, "Not a regular file. Expected a .tflite file. Received: '%.400s' (%s)", path,
             S_ISDIR(st.st_mode) ? "a directory" : "a device or special file");
    return EK_ERROR_IO;
  }
  if ((uint64_t)st.st_size > limit) {
    snprintf(err, errlen, "The model file is too large. Expected at most %zu bytes. Received: %lld bytes", limit,
             (long long)st.st_size);
    return EK_ERROR_IO;
  }
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err, errlen, "Cannot open the model file '%.400s': %s", path, strerror(errno));
    return EK_ERROR_IO;
  }
  size_t n = (size_t)st.st_size;
  uint8_t *buf = aligned(n ? n : 1);
  if (buf == NULL) {
    fclose(f);
    snprintf(err, errlen, "out of memory");
    return EK_ERROR_NOMEM;
  }
  size_t got = n ? fread(buf, 1, n, f) : 0;
  int extra = fgetc(f) != EOF; /* the file grew while being read */
  fclose(f);
  if (got != n || extra) {
    free(buf);
    snprintf(err, errlen, "Cannot read the model file '%.400s' (it changed while being read).", path);
    return EK_ERROR_IO;
  }
  *data = buf;
  *size = n;
  return EK_OK;
}

static ek_status file_digest(const char *path, int check, int allow_unverified, char sha256_hex[65], int *verified,
                             char *err, size_t errlen) {
  char dummy[8];
  if (err == NULL) err = dummy, errlen = sizeof dummy;
  uint8_t *data;
  size_t size;
  ek_status st = read_file(path, DEFAULT_MAX_FILE_BYTES, &data, &size, err, errlen);
  if (st != EK_OK) return st;
  const char *json;
  size_t json_len;
  char hex[65];
  st = ek_format_verify(data, size, check, hex, &json, &json_len, err, errlen);
  if (st == EK_OK && json == NULL && !check && allow_unverified) st = ek_format_verify(data, size, 1, hex, &json, &json_len, err, errlen);
  free(data);
  if (st != EK_OK) return st;
  if (json == NULL && !allow_unverified) {
    snprintf(err, errlen,
             "The model has no edgekit metadata, so its integrity cannot be verified. Expected an 'edgekit' metadata "
             "entry. Received: none");
    return EK_ERROR_INTEGRITY;
  }
  if (sha256_hex) memcpy(sha256_hex, hex, 65);
  if (verified) *verified = json != NULL;
  return EK_OK;
}

ek_status ek_verify_file(const char *path, int allow_unverified, char sha256_hex[65], int *verified, char *err,
                         size_t errlen) {
  return file_digest(path, 1, allow_unverified, sha256_hex, verified, err, errlen);
}

ek_status ek_claimed_digest(const char *path, int allow_unverified, char sha256_hex[65], int *has_metadata, char *err,
                            size_t errlen) {
  return file_digest(path, 0, allow_unverified, sha256_hex, has_metadata, err, errlen);
}

/* ---- Options ---------------------------------------------------------------------------------- */

void ek_open_options_init(ek_open_options *o) {
  memset(o, 0, sizeof *o);
  o->threads = 1;
  o->max_samples = DEFAULT_MAX_SAMPLES;
  o->max_file_bytes = DEFAULT_MAX_FILE_BYTES;
  o->memory_bytes = DEFAULT_MEMORY_BYTES;
  o->calibrated = 1;
  o->litert_log = EK_LITERT_LOG_UNCHANGED;
}

void ek_predict_options_init(ek_predict_options *o) {
  memset(o, 0, sizeof *o);
  o->min_samples = 8;
}

/* ---- LiteRT: signatures and tensors ------------------------------------------------------------ */

static size_t elem_size(LiteRtElementType t) {
  switch (t) {
    case kLiteRtElementTypeFloat32: return 4;
    case kLiteRtElementTypeInt8: return 1;
    case kLiteRtElementTypeInt32: return 4;
    case kLiteRtElementTypeInt64: return 8;
    case kLiteRtElementTypeFloat16: return 2;
    default: return 8; /* unknown: count generously */
  }
}

static ek_status describe_tensor(ek_model *m, LiteRtTensor h, const char *name, tensor *t, const char *key) {
  LiteRtTensorTypeId id;
  t->name = name;
  t->handle = h;
  if (LiteRtGetTensorTypeId(h, &id) != kLiteRtStatusOk || id != kLiteRtRankedTensorType ||
      LiteRtGetRankedTensorType(h, &t->type) != kLiteRtStatusOk)
    return fail(m, EK_ERROR_UNSUPPORTED, "Signature '%s': tensor '%s' has no fixed rank. Expected a ranked tensor.", key,
                name);
  int rank = (int)t->type.layout.rank;
  if (rank < 1 || rank > EK_MAX_RANK)
    return fail(m, EK_ERROR_UNSUPPORTED,
                "Signature '%s': tensor '%s' has rank %d. Expected a batch axis and at most 7 more.", key, name, rank);
  t->type.layout.has_strides = 0;
  t->row_elems = 1;
  for (int d = 1; d < rank; d++) {
    int v = t->type.layout.dimensions[d];
    if (v < 1 || t->row_elems > ((size_t)1 << 40) / (size_t)v)
      return fail(m, EK_ERROR_UNSUPPORTED,
                  "Signature '%s': tensor '%s' has a dynamic or invalid dimension %d. Expected only the batch axis "
                  "to be dynamic.",
                  key, name, d);
    t->row_elems *= (size_t)v;
  }
  t->static_batch = t->type.layout.dimensions[0] > 0 ? t->type.layout.dimensions[0] : 0;
  t->elem_size = elem_size(t->type.element_type);
  t->int8 = t->type.element_type == kLiteRtElementTypeInt8;
  if (t->type.element_type != kLiteRtElementTypeFloat32 && !t->int8)
    return fail(m, EK_ERROR_UNSUPPORTED,
                "Signature '%s': tensor '%s' has element type %d. Expected float32 or int8.", key, name,
                (int)t->type.element_type);
  if (t->int8) {
    LiteRtQuantizationTypeId q;
    LiteRtQuantizationPerTensor pq;
    if (LiteRtGetQuantizationTypeId(h, &q) != kLiteRtStatusOk || q != kLiteRtQuantizationPerTensor ||
        LiteRtGetPerTensorQuantization(h, &pq) != kLiteRtStatusOk || !(pq.scale > 0) || pq.zero_point < -128 ||
        pq.zero_point > 127)
      return fail(m, EK_ERROR_UNSUPPORTED,
                  "Signature '%s': int8 tensor '%s' has no usable per-tensor quantization. Expected a scale > 0 and "
                  "a zero point in [-128, 127].",
                  key, name);
    t->scale = pq.scale;
    t->zero_point = (int)pq.zero_point;
  }
  return EK_OK;
}

static ek_status load_signatures(ek_model *m) {
  LiteRtParamIndex n;
  if (LiteRtGetNumModelSignatures(m->lm, &n) != kLiteRtStatusOk || n == 0 || n > 64)
    return fail(m, EK_ERROR_UNSUPPORTED, "The model has no usable signatures. Expected 1 to 64 signatures.");
  m->sigs = calloc(n, sizeof *m->sigs);
  if (m->sigs == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
  m->n_sigs = (int)n;
  for (int i = 0; i < m->n_sigs; i++) {
    sig *s = &m->sigs[i];
    LiteRtSignature ls;
    LiteRtParamIndex ni, no;
    s->index = i;
    if (LiteRtGetModelSignature(m->lm, (LiteRtParamIndex)i, &ls) != kLiteRtStatusOk ||
        LiteRtGetSignatureKey(ls, &s->key) != kLiteRtStatusOk || LiteRtGetNumSignatureInputs(ls, &ni) != kLiteRtStatusOk ||
        LiteRtGetNumSignatureOutputs(ls, &no) != kLiteRtStatusOk || ni > 64 || no > 64)
      return fail(m, EK_ERROR_LITERT, "LiteRT cannot read signature %d of the model.", i);
    s->n_in = (int)ni;
    s->n_out = (int)no;
    s->in = calloc(ni ? ni : 1, sizeof *s->in);
    s->out = calloc(no ? no : 1, sizeof *s->out);
    s->in_tb = calloc(ni ? ni : 1, sizeof *s->in_tb);
    s->out_tb = calloc(no ? no : 1, sizeof *s->out_tb);
    if (!s->in || !s->out || !s->in_tb || !s->out_tb) return fail(m, EK_ERROR_NOMEM, "out of memory");
    /* Tensors are described lazily (only the planned signatures must be ones we can run). */
    for (int k = 0; k < s->n_in; k++) {
      if (LiteRtGetSignatureInputName(ls, (LiteRtParamIndex)k, &s->in[k].name) != kLiteRtStatusOk ||
          LiteRtGetSignatureInputTensorByIndex(ls, (LiteRtParamIndex)k, &s->in[k].handle) != kLiteRtStatusOk)
        return fail(m, EK_ERROR_LITERT, "LiteRT cannot read the inputs of signature '%s'.", s->key);
    }
    for (int k = 0; k < s->n_out; k++) {
      if (LiteRtGetSignatureOutputName(ls, (LiteRtParamIndex)k, &s->out[k].name) != kLiteRtStatusOk ||
          LiteRtGetSignatureOutputTensorByIndex(ls, (LiteRtParamIndex)k, &s->out[k].handle) != kLiteRtStatusOk)
        return fail(m, EK_ERROR_LITERT, "LiteRT cannot read the outputs of signature '%s'.", s->key);
    }
  }
  return EK_OK;
}

static ek_status describe_sig(ek_model *m, sig *s) {
  for (int k = 0; k < s->n_in; k++) {
    ek_status st = describe_tensor(m, s->in[k].handle, s->in[k].name, &s->in[k], s->key);
    if (st != EK_OK) return st;
  }
  for (int k = 0; k < s->n_out; k++) {
    ek_status st = describe_tensor(m, s->out[k].handle, s->out[k].name, &s->out[k], s->key);
    if (st != EK_OK) return st;
  }
  return EK_OK;
}

static sig *find_sig(ek_model *m, const char *key) {
  if (key == NULL) return NULL;
  for (int i = 0; i < m->n_sigs; i++)
    if (strcmp(m->sigs[i].key, key) == 0) return &m->sigs[i];
  return NULL;
}

static int find_in(const sig *s, const char *name) {
  for (int k = 0; k < s->n_in; k++)
    if (strcmp(s->in[k].name, name) == 0) return k;
  return -1;
}

static int find_out(const sig *s, const char *name) {
  for (int k = 0; k < s->n_out; k++)
    if (strcmp(s->out[k].name, name) == 0) return k;
  return -1;
}

/* The LiteRT CompiledModel pitfall: a signature output made by a RESHAPE whose shape is computed
 * at run time (Keras' Flatten exported with a dynamic batch) is a dynamic tensor, and LiteRT's
 * CompiledModel then never writes the caller's buffer while Run returns OK. */
static int output_is_dynamic_reshape(const tensor *t) {
  bool has;
  LiteRtTensorDefiningOp def;
  LiteRtOpCode code;
  LiteRtParamIndex n;
  LiteRtTensor shape;
  LiteRtWeights w;
  const void *addr;
  size_t bytes = 0;
  if (LiteRtGetTensorDefiningOp(t->handle, &has, &def) != kLiteRtStatusOk || !has) return 0;
  if (LiteRtGetOpCode(def.op, &code) != kLiteRtStatusOk || code != kLiteRtOpCodeTflReshape) return 0;
  if (LiteRtGetNumOpInputs(def.op, &n) != kLiteRtStatusOk || n < 2) return 0;
  if (LiteRtGetOpInput(def.op, 1, &shape) != kLiteRtStatusOk || shape == NULL) return 0;
  if (LiteRtGetTensorWeights(shape, &w) != kLiteRtStatusOk ||
      LiteRtGetWeightsBytes(w, &addr, &bytes) != kLiteRtStatusOk)
    return 1;
  return bytes == 0;
}

static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
  return x < y ? -1 : x > y;
}

/* Bytes of the tensors of one signature's subgraph: fixed part and per batch row (runtime/safety.py's
 * declared_tensors check): a tensor declaring more than the memory budget is refused before LiteRT
 * allocates anything. */
static ek_status subgraph_bytes(ek_model *m, const sig *s, size_t *fixed, size_t *per_row) {
  LiteRtSignature ls;
  LiteRtSubgraph sg;
  LiteRtParamIndex n_ops;
  *fixed = *per_row = 0;
  if (LiteRtGetModelSignature(m->lm, (LiteRtParamIndex)s->index, &ls) != kLiteRtStatusOk ||
      LiteRtGetSignatureSubgraph(ls, &sg) != kLiteRtStatusOk || LiteRtGetNumSubgraphOps(sg, &n_ops) != kLiteRtStatusOk)
    return fail(m, EK_ERROR_LITERT, "LiteRT cannot read the graph of signature '%s'.", s->key);
  if (n_ops > 100000) return fail(m, EK_ERROR_UNSUPPORTED, "Signature '%s' has %zu ops. Expected at most 100000.", s->key, (size_t)n_ops);
  size_t cap = 64, count = 0;
  LiteRtTensor *all = malloc(cap * sizeof *all);
  if (all == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
  for (LiteRtParamIndex i = 0; i < n_ops; i++) {
    LiteRtOp op;
    LiteRtParamIndex ni = 0, no = 0;
    if (LiteRtGetSubgraphOp(sg, i, &op) != kLiteRtStatusOk) continue;
    LiteRtGetNumOpInputs(op, &ni);
    LiteRtGetNumOpOutputs(op, &no);
    for (LiteRtParamIndex k = 0; k < ni + no; k++) {
      LiteRtTensor t = NULL;
      if ((k < ni ? LiteRtGetOpInput(op, k, &t) : LiteRtGetOpOutput(op, k - ni, &t)) != kLiteRtStatusOk || t == NULL)
        continue;
      if (count == cap) {
        LiteRtTensor *more = realloc(all, 2 * cap * sizeof *all);
        if (more == NULL) {
          free(all);
          return fail(m, EK_ERROR_NOMEM, "out of memory");
        }
        all = more;
        cap *= 2;
      }
      all[count++] = t;
    }
  }
  qsort(all, count, sizeof *all, cmp_ptr);
  ek_status st = EK_OK;
  for (size_t i = 0; i < count && st == EK_OK; i++) {
    if (i > 0 && all[i] == all[i - 1]) continue;
    LiteRtTensorTypeId id;
    LiteRtRankedTensorType rt;
    if (LiteRtGetTensorTypeId(all[i], &id) != kLiteRtStatusOk || id != kLiteRtRankedTensorType ||
        LiteRtGetRankedTensorType(all[i], &rt) != kLiteRtStatusOk)
      continue;
    double bytes = (double)elem_size(rt.element_type);
    int dynamic = 0;
    for (unsigned d = 0; d < rt.layout.rank && d < LITERT_TENSOR_MAX_RANK; d++) {
      int v = rt.layout.dimensions[d];
      if (v < 0) dynamic = 1;
      else bytes *= (double)v;
    }
    if (bytes > (double)m->memory_bytes) {
      st = fail(m, EK_ERROR_UNSUPPORTED,
                "A tensor of signature '%s' declares %.0f bytes at batch 1. Expected at most the memory budget of %zu "
                "bytes (a damaged file, or a model too large for this device).",
                s->key, bytes, m->memory_bytes);
    } else if (dynamic) {
      *per_row += (size_t)bytes;
    } else {
      *fixed += (size_t)bytes;
    }
  }
  free(all);
  return st;
}

/* ---- Tensor buffers -------------------------------------------------------------------------- */

static ek_status ensure_rows(ek_model *m, tensor *t, int rows) {
  if (t->tb != NULL && t->tb_rows == rows) return EK_OK;
  if (t->tb != NULL) {
    LiteRtDestroyTensorBuffer(t->tb);
    t->tb = NULL;
    t->tb_rows = 0;
  }
  size_t row_bytes = t->row_elems * t->elem_size;
  if (t->host_rows < (size_t)rows) {
    void *p = aligned((size_t)rows * row_bytes);
    if (p == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory (%d rows of tensor '%s')", rows, t->name);
    if (t->host != NULL && t->gen_rows > 0) memcpy(p, t->host, (size_t)t->gen_rows * row_bytes);
    free(t->host);
    t->host = p;
    t->host_rows = (size_t)rows;
  }
  LiteRtRankedTensorType type = t->type;
  type.layout.dimensions[0] = rows;
  if (LiteRtCreateTensorBufferFromHostMemory(&type, t->host, (size_t)rows * row_bytes, NULL, &t->tb) != kLiteRtStatusOk) {
    t->tb = NULL;
    return fail(m, EK_ERROR_LITERT, "LiteRT cannot wrap a buffer of %d rows for tensor '%s'.", rows, t->name);
  }
  t->tb_rows = rows;
  return EK_OK;
}

static void free_sig_buffers(sig *s) {
  for (int k = 0; k < s->n_in; k++) {
    if (s->in[k].tb) LiteRtDestroyTensorBuffer(s->in[k].tb);
    free(s->in[k].host);
  }
  for (int k = 0; k < s->n_out; k++) {
    if (s->out[k].tb) LiteRtDestroyTensorBuffer(s->out[k].tb);
    free(s->out[k].host);
  }
}

static void prefill_outputs(sig *s, int rows) {
  for (int k = 0; k < s->n_out; k++) {
    tensor *t = &s->out[k];
    size_t n = (size_t)rows * t->row_elems;
    if (t->int8) {
      memset(t->host, 0x7F, n); /* an unwritten int8 buffer reads as 127 everywhere: no probability vector */
    } else {
      float *f = t->host;
      for (size_t i = 0; i < n; i++) f[i] = NAN;
    }
  }
}

static ek_status run_sig(ek_model *m, sig *s) {
  for (int k = 0; k < s->n_in; k++) s->in_tb[k] = s->in[k].tb;
  for (int k = 0; k < s->n_out; k++) s->out_tb[k] = s->out[k].tb;
  LiteRtStatus st = LiteRtRunCompiledModel(m->cm, (LiteRtParamIndex)s->index, (size_t)s->n_in, s->in_tb,
                                           (size_t)s->n_out, s->out_tb);
  if (st != kLiteRtStatusOk)
    return fail(m, EK_ERROR_LITERT, "LiteRT failed to run signature '%s' (LiteRT status %d).", s->key, (int)st);
  return EK_OK;
}

/* ---- Inputs: quantization and features -------------------------------------------------------- */

static ek_status quantize_input(ek_model *m, const float *x, void *dst) {
  tensor *t = m->x;
  if (!t->int8) {
    memcpy(dst, x, t->row_elems * sizeof(float));
    return EK_OK;
  }
  double lo = (-128 - t->zero_point) * (double)t->scale, hi = (127 - t->zero_point) * (double)t->scale;
  int8_t *q = dst;
  for (size_t i = 0; i < t->row_elems; i++) {
    if (x[i] < lo - t->scale / 2.0 || x[i] > hi + t->scale / 2.0)
      return fail(m, EK_ERROR_ARGUMENT,
                  "The model's input is int8 (scale=%g, zero_point=%d), which represents [%g, %g]. Expected values in "
                  "that range. Received: %g at index %zu",
                  (double)t->scale, t->zero_point, lo, hi, (double)x[i], i);
    double v = round_even((double)(x[i] / t->scale)) + t->zero_point;
    q[i] = (int8_t)(v < -128 ? -128 : v > 127 ? 127 : v);
  }
  return EK_OK;
}

/* The current input's features (one row, quantized like the sampler's data input) into m->feat. */
static ek_status features(ek_model *m, const float *x) {
  m->gen++;
  if (m->trunk == NULL) return quantize_input(m, x, m->feat);
  sig *s = m->trunk;
  int rows = m->trunk_batch ? m->trunk_batch : 1;
  ek_status st = EK_OK;
  for (int k = 0; k < s->n_in && st == EK_OK; k++) st = ensure_rows(m, &s->in[k], rows);
  for (int k = 0; k < s->n_out && st == EK_OK; k++) st = ensure_rows(m, &s->out[k], rows);
  if (st != EK_OK) return st;
  tensor *xin = m->x;
  size_t row_bytes = xin->row_elems * xin->elem_size;
  st = quantize_input(m, x, xin->host);
  for (int r = 1; r < rows && st == EK_OK; r++) memcpy((char *)xin->host + (size_t)r * row_bytes, xin->host, row_bytes);
  if (st != EK_OK) return st;
  prefill_outputs(s, rows);
  if ((st = run_sig(m, s)) != EK_OK) return st;
  tensor *f = &s->out[m->trunk_out];
  memcpy(m->feat, f->host, m->feat_bytes);
  if (!f->int8) {
    const float *v = m->feat;
    for (size_t i = 0; i < f->row_elems; i++)
      if (!isfinite(v[i]))
        return fail(m, EK_ERROR_OUTPUT,
                    "The trunk's output is not finite (value %zu is %g). Expected finite features: a damaged file, or "
                    "an input far outside the training range.",
                    i, (double)v[i]);
  }
  return EK_OK;
}

/* ---- The stochastic invoke ------------------------------------------------------------------ */

static double dequant(const tensor *t, const void *host, size_t i) {
  if (!t->int8) return ((const float *)host)[i];
  float v = ((float)((const int8_t *)host)[i] - (float)t->zero_point) * t->scale;
  return v;
}

static ek_status grow_outputs(ek_model *m, size_t rows) {
  for (int o = 0; o < m->n_outputs; o++) {
    output *out = &m->outputs[o];
    if (out->ps_rows >= rows) continue;
    float *ps = realloc(out->ps, rows * out->size * sizeof(float));
    if (ps == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
    out->ps = ps;
    if (out->var_out >= 0) {
      float *pv = realloc(out->pv, rows * out->size * sizeof(float));
      if (pv == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
      out->pv = pv;
    }
    out->ps_rows = rows;
  }
  size_t need = rows * 2;
  for (int o = 0; o < m->n_outputs; o++)
    if (rows * m->outputs[o].size > need) need = rows * m->outputs[o].size;
  if (m->dscratch_len < need) {
    double *s = realloc(m->dscratch, need * sizeof(double));
    if (s == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
    m->dscratch = s;
    m->dscratch_len = need;
  }
  return EK_OK;
}

/* Reads `rows` rows of every output into the per-sample arrays at row `at`: dequantized,
 * checked, a sigmoid unit expanded to two probabilities. Calibration comes at the summary. */
static ek_status collect(ek_model *m, int rows, int at) {
  for (int o = 0; o < m->n_outputs; o++) {
    output *out = &m->outputs[o];
    const tensor *t = &m->sampler->out[out->out];
    const ek_meta_output *mo = &out->meta;
    for (int r = 0; r < rows; r++) {
      float *dst = out->ps + (size_t)(at + r) * out->size;
      size_t base = (size_t)r * t->row_elems;
      if (mo->task == EK_TASK_REGRESSION) {
        for (size_t i = 0; i < out->size; i++) {
          double v = dequant(t, t->host, base + i);
          if (!isfinite(v))
            return fail(m, EK_ERROR_OUTPUT,
                        "Output '%s' is not finite (sample %d, value %zu is %g). Expected finite values: a damaged "
                        "file, or a model LiteRT does not run as exported.",
                        mo->name, at + r, i, v);
          dst[i] = (float)v;
        }
        if (out->var_out >= 0) {
          const tensor *tv = &m->sampler->out[out->var_out];
          for (size_t i = 0; i < out->size; i++) {
            double lv = dequant(tv, tv->host, (size_t)r * tv->row_elems + i);
            double var = exp(lv);
            if (!isfinite(lv) || !isfinite(var))
              return fail(m, EK_ERROR_OUTPUT,
                          "Output '%s' gives a log-variance that is not finite or overflows (sample %d, value %zu is "
                          "%g). Expected finite values.",
                          mo->variance_output, at + r, i, lv);
            out->pv[(size_t)(at + r) * out->size + i] = (float)var;
          }
        }
        continue;
      }
      /* classification: check the probabilities as runtime/mc.py's _check_probs */
      double lo = INFINITY, hi = -INFINITY, sum = 0;
      int nan = 0;
      size_t n_raw = mo->sigmoid ? 1 : out->size;
      for (size_t i = 0; i < n_raw; i++) {
        double p = dequant(t, t->host, base + i);
        if (p != p) nan = 1;
        if (p < lo) lo = p;
        if (p > hi) hi = p;
        sum += p;
        dst[i] = (float)p;
      }
      double slack = out->slack;
      int ok = !nan && lo >= -slack && hi <= 1 + slack &&
               (mo->sigmoid || fabs(sum - 1) <= slack * (double)(out->size > 1 ? out->size : 1));
      if (!ok)
        return fail(m, EK_ERROR_OUTPUT,
                    "Output '%s' is not class probabilities. Expected values in [0, 1]%s. Received: %s (sample %d): "
                    "a damaged file, or a model LiteRT does not run as exported.",
                    mo->name, mo->sigmoid ? "" : " summing to 1 per sample",
                    nan ? "NaN (an output LiteRT did not write, or a damaged op)" : "values out of range", at + r);
      if (mo->sigmoid) {
        float p = dst[0];
        dst[0] = 1.0f - p;
        dst[1] = p;
      }
    }
  }
  return EK_OK;
}

static void lat_observe(latency *l, int samples, double seconds, double now, int residual);

/* One stochastic invoke of `rows` samples of the current features, read into the per-sample
 * arrays at row `at`. `rng` draws the masks; `observe`: feed the latency model. */
static ek_status invoke(ek_model *m, int rows, int at, ek_rng *rng, int observe) {
  double start = now_s(m);
  sig *s = m->sampler;
  int grew = rows > m->high_water;
  ek_status st = grow_outputs(m, (size_t)(at + rows));
  if (st != EK_OK) return st;
  tensor *d = &s->in[m->data_in];
  int data_rows = m->broadcast ? 1 : rows;
  if ((st = ensure_rows(m, d, data_rows)) != EK_OK) return st;
  for (int k = 0; k < m->n_masks; k++)
    if ((st = ensure_rows(m, &s->in[m->masks[k].input], rows)) != EK_OK) return st;
  for (int k = 0; k < s->n_out; k++)
    if ((st = ensure_rows(m, &s->out[k], rows)) != EK_OK) return st;
  /* The features rows: written once per input and kept across chunks. */
  size_t row_bytes = d->row_elems * d->elem_size;
  if (d->gen != m->gen) d->gen_rows = 0, d->gen = m->gen;
  for (int r = d->gen_rows; r < data_rows; r++) memcpy((char *)d->host + (size_t)r * row_bytes, m->feat, row_bytes);
  if (data_rows > d->gen_rows) d->gen_rows = data_rows;
  fill_masks(m, rng, rows);
  prefill_outputs(s, rows);
  if ((st = run_sig(m, s)) != EK_OK) return st;
  if ((st = collect(m, rows, at)) != EK_OK) return st;
  if (grew) {
    m->high_water = rows; /* this invoke paid for allocation: no latency sample */
  } else if (observe && m->lat) {
    double end = now_s(m);
    lat_observe(m->lat, rows, end - start, end, 1);
  }
  return EK_OK;
}

/* Runs `rows` samples as invokes of the sampler's batch when it is static. */
static ek_status draw(ek_model *m, int rows, int at, ek_rng *rng, int observe) {
  int b = m->sampler_batch;
  if (b == 0) return invoke(m, rows, at, rng, observe);
  for (int done = 0; done < rows; done += b) {
    ek_status st = invoke(m, b, at + done, rng, observe);
    if (st != EK_OK) return st;
  }
  return EK_OK;
}

/* ---- Statistics ------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double sample_quantile(const double *sorted, int n, double q) {
  double h = (n - 1) * q;
  int lo = (int)h;
  int hi = lo + 1 < n ? lo + 1 : n - 1;
  return sorted[lo] + (h - lo) * (sorted[hi] - sorted[lo]);
}

/* Quantile q of the mixture (1/n) sum N(mu_i, var_i), by safeguarded Newton steps on its CDF. */
static double mixture_quantile(const double *mu, const double *var, int n, double q) {
  double lo = INFINITY, hi = -INFINITY;
  for (int i = 0; i < n; i++) {
    double s = sqrt(var[i]);
    if (mu[i] - 10 * s < lo) lo = mu[i] - 10 * s;
    if (mu[i] + 10 * s > hi) hi = mu[i] + 10 * s;
  }
  double x = 0;
  for (int i = 0; i < n; i++) x += mu[i];
  x /= n;
  for (int it = 0; it < 100; it++) {
    double cdf = 0, pdf = 0;
    for (int i = 0; i < n; i++) {
      double s = sqrt(var[i]);
      if (s > 0) {
        double z = (x - mu[i]) / s;
        cdf += 0.5 * erfc(-z / sqrt(2.0));
        pdf += exp(-0.5 * z * z) / (s * 2.5066282746310002); /* sqrt(2 pi) */
      } else {
        cdf += x >= mu[i] ? 1.0 : 0.0;
      }
    }
    cdf /= n;
    pdf /= n;
    double f = cdf - q;
    if (f > 0) hi = x;
    else lo = x;
    if (fabs(f) < 1e-12 || hi - lo <= 1e-12 * (fabs(x) + 1e-300)) break;
    double nx = pdf > 0 ? x - f / pdf : (lo + hi) / 2;
    x = nx > lo && nx < hi ? nx : (lo + hi) / 2;
  }
  return x;
}

/* Mutual information (nats) of n samples of c probabilities (runtime/calibration.py). */
static double mutual_info(const double *p, int n, size_t c) {
  double entropy = 0, expected = 0;
  for (size_t k = 0; k < c; k++) {
    double sum = 0;
    for (int t = 0; t < n; t++) {
      sum += p[(size_t)t * c + k];
      expected -= p[(size_t)t * c + k] * log(p[(size_t)t * c + k] + PROB_EPS);
    }
    entropy -= sum / n * log(sum / n + PROB_EPS);
  }
  expected /= n;
  return entropy - expected > 0 ? entropy - expected : 0.0;
}

/* The summaries of every output from its n samples (runtime/summaries.py, in double precision). */
static ek_status summarize(ek_model *m, int n, ek_result *res) {
  for (int o = 0; o < m->n_outputs; o++) {
    output *out = &m->outputs[o];
    ek_output_result *r = &res->outputs[o];
    const ek_meta_output *mo = &out->meta;
    size_t c = out->size;
    r->abstain = -1;
    if (mo->task == EK_TASK_CLASSIFICATION) {
      double *p = m->dscratch; /* n x c probabilities, calibrated when the file says so */
      for (size_t i = 0; i < (size_t)n * c; i++) p[i] = out->ps[i];
      if (mo->calibrated && m->opts.calibrated) {
        /* tau = temperature * exp(mi_slope * MI of the raw samples); each sample becomes
         * softmax(log(p + 1e-12) / tau), exact for softmax outputs since
         * softmax(log softmax(z) / tau) = softmax(z / tau) (runtime/calibration.py) */
        double tau = mo->temperature * (mo->mi_slope > 0 ? exp(mo->mi_slope * mutual_info(p, n, c)) : 1.0);
        for (int t = 0; t < n; t++) {
          double *row = p + (size_t)t * c, mx = -INFINITY, z = 0;
          for (size_t k = 0; k < c; k++) {
            row[k] = log(row[k] + PROB_EPS) / tau;
            if (row[k] > mx) mx = row[k];
          }
          for (size_t k = 0; k < c; k++) z += row[k] = exp(row[k] - mx);
          for (size_t k = 0; k < c; k++) row[k] /= z;
        }
      }
      if (r->samples != NULL && r->samples_capacity > 0) {
        size_t rows = (size_t)(n < r->samples_capacity ? n : r->samples_capacity);
        for (size_t i = 0; i < rows * c; i++) r->samples[i] = (float)p[i];
      }
      double entropy = 0, expected = 0, best = -1;
      int pred = 0;
      for (size_t k = 0; k < c; k++) {
        double sum = 0, ss = 0;
        for (int t = 0; t < n; t++) sum += p[(size_t)t * c + k];
        double mean = sum / n;
        for (int t = 0; t < n; t++) {
          double v = p[(size_t)t * c + k], dv = v - mean;
          ss += dv * dv;
          expected -= v * log(v + PROB_EPS);
        }
        if (r->mean) r->mean[k] = (float)mean;
        if (r->std) r->std[k] = (float)sqrt(ss / n);
        entropy -= mean * log(mean + PROB_EPS);
        if (mean > best) best = mean, pred = (int)k;
      }
      expected /= n;
      r->predicted = pred;
      r->confidence = (float)best;
      r->entropy = entropy;
      r->mutual_information = entropy - expected > 0 ? entropy - expected : 0.0;
      if (mo->has_abstain) { /* scores of the calibrated mean (runtime/calibration.py: Abstention) */
        double score = strcmp(mo->abstain_score, "entropy") == 0      ? r->entropy
                       : strcmp(mo->abstain_score, "confidence") == 0 ? 1.0 - best
                                                                       : r->mutual_information;
        r->abstain = score > mo->abstain_threshold;
      }
    } else {
      if (r->samples != NULL && r->samples_capacity > 0) {
        int rows = n < r->samples_capacity ? n : r->samples_capacity;
        memcpy(r->samples, out->ps, (size_t)rows * c * sizeof(float));
      }
      double *col = m->dscratch, *var = m->dscratch + n;
      double level = mo->interval;
      for (size_t k = 0; k < c; k++) {
        double sum = 0, ss = 0;
        for (int t = 0; t < n; t++) sum += col[t] = out->ps[(size_t)t * c + k];
        double mean = sum / n;
        for (int t = 0; t < n; t++) ss += (col[t] - mean) * (col[t] - mean);
        double epi = ss / n, alea = 0, lo, hi;
        int have_var = mo->noise_variance != NULL || out->var_out >= 0;
        if (have_var) {
          double vs = 0;
          for (int t = 0; t < n; t++) {
            var[t] = mo->noise_variance ? mo->noise_variance[k]
                                        : (double)out->pv[(size_t)t * c + k] * mo->variance_scale;
            if (var[t] < 1e-300) var[t] = 1e-300;
            vs += var[t];
          }
          alea = vs / n;
          lo = mixture_quantile(col, var, n, (1 - level) / 2);
          hi = mixture_quantile(col, var, n, (1 + level) / 2);
        } else {
          qsort(col, (size_t)n, sizeof *col, cmp_double);
          lo = sample_quantile(col, n, (1 - level) / 2);
          hi = sample_quantile(col, n, (1 + level) / 2);
        }
        if (r->mean) r->mean[k] = (float)mean;
        if (r->std) r->std[k] = (float)sqrt(epi);
        if (r->low) r->low[k] = (float)lo;
        if (r->high) r->high[k] = (float)hi;
        if (r->aleatoric_std) r->aleatoric_std[k] = have_var ? (float)sqrt(alea) : NAN;
        if (r->total_std) r->total_std[k] = (float)sqrt(epi + alea);
      }
      r->predicted = -1;
      r->confidence = NAN;
      r->entropy = NAN;
      r->mutual_information = NAN;
    }
  }
  return EK_OK;
}

/* Whether every output is settled after n samples (edgekit.h: tolerance, lead_k). */
static int settled(ek_model *m, int n, const ek_predict_options *po) {
  if (n < 2 || n < po->min_samples) return 0;
  double sq = sqrt((double)n);
  for (int o = 0; o < m->n_outputs; o++) {
    output *out = &m->outputs[o];
    size_t c = out->size;
    int ok = 0;
    if (out->meta.task == EK_TASK_CLASSIFICATION) {
      int top = 0, second = -1;
      double best = -1, next = -1;
      for (size_t k = 0; k < c; k++) {
        double s = 0;
        for (int t = 0; t < n; t++) s += out->ps[(size_t)t * c + k];
        if (s > best) {
          next = best, second = top, best = s, top = (int)k;
        } else if (s > next) {
          next = s, second = (int)k;
        }
      }
      if (po->tolerance > 0) {
        double mean = best / n, ss = 0;
        for (int t = 0; t < n; t++) ss += pow(out->ps[(size_t)t * c + top] - mean, 2);
        if (sqrt(ss / (n - 1)) / sq < po->tolerance) ok = 1;
      }
      if (!ok && po->lead_k > 0 && second >= 0 && second != top) {
        double md = (best - next) / n, ss = 0;
        for (int t = 0; t < n; t++) {
          double dv = out->ps[(size_t)t * c + top] - out->ps[(size_t)t * c + second];
          ss += (dv - md) * (dv - md);
        }
        if (md > po->lead_k * sqrt(ss / (n - 1)) / sq) ok = 1;
      }
    } else if (po->tolerance > 0) {
      ok = 1;
      for (size_t k = 0; k < c && ok; k++) {
        double s = 0, ss = 0;
        for (int t = 0; t < n; t++) s += out->ps[(size_t)t * c + k];
        double mean = s / n;
        for (int t = 0; t < n; t++) ss += pow(out->ps[(size_t)t * c + k] - mean, 2);
        ok = sqrt(ss / (n - 1)) / sq < po->tolerance;
      }
    }
    if (!ok) return 0;
  }
  return 1;
}

/* ---- The latency model (runtime/mc.py: LatencyModel) ------------------------------------------ */

static int bucket_of(int samples) {
  unsigned v = samples < 1 ? 1u : (unsigned)samples;
  int b = 0;
  while (v) b++, v >>= 1;
  return b < BUCKETS ? b : BUCKETS - 1;
}

static void terms(int samples, double seconds, double out[5]) {
  double s = seconds > 1e-9 ? seconds : 1e-9;
  double w = 1.0 / (s * s);
  out[0] = w;
  out[1] = w * samples;
  out[2] = w * samples * samples;
  out[3] = w * seconds;
  out[4] = w * samples * seconds;
}

static void lat_refit(latency *l) {
  double v[5];
  for (int i = 0; i < 5; i++) v[i] = l->sums[i] + l->anchor_sums[i];
  double w = v[0], wt = v[1], wtt = v[2], ws = v[3], wts = v[4];
  if (l->obs_n + l->n_anchors < 2 || w <= 0) return;
  double det = w * wtt - wt * wt;
  if (det <= 1e-9 * w * wtt) { /* one batch size only: keep the slope, move the intercept */
    double f = (ws - l->per_sample_s * wt) / w;
    l->fixed_s = f > 0 ? f : 0;
    return;
  }
  double b = (w * wts - wt * ws) / det;
  l->per_sample_s = b > 1e-9 ? b : 1e-9;
  double f = (ws - b * wt) / w;
  l->fixed_s = f > 0 ? f : 0;
}

static void lat_anchor(latency *l, int samples, double seconds) {
  double t[5];
  terms(samples, seconds, t);
  for (int i = 0; i < 5; i++) l->anchor_sums[i] += t[i];
  l->n_anchors++;
  lat_refit(l);
}

static double lat_speed_now(const latency *l, double now) {
  double dt = now - l->speed_at;
  return 1.0 + (l->speed - 1.0) * exp(-(dt > 0 ? dt : 0) / SPEED_MEMORY_S);
}

static void sorted_insert(double *a, int *n, double v) {
  int lo = 0, hi = *n;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (a[mid] <= v) lo = mid + 1;
    else hi = mid;
  }
  memmove(a + lo + 1, a + lo, (size_t)(*n - lo) * sizeof *a);
  a[lo] = v;
  (*n)++;
}

static void sorted_remove(double *a, int *n, double v) {
  int lo = 0, hi = *n;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (a[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  if (lo < *n && a[lo] == v) {
    memmove(a + lo, a + lo + 1, (size_t)(*n - lo - 1) * sizeof *a);
    (*n)--;
  }
}

static void lat_add_residual(latency *l, int bucket, double r) {
  if (l->res_n == WINDOW) {
    int old = l->res_head;
    sorted_remove(l->sorted_all, &l->n_all, l->res_r[old]);
    sorted_remove(l->sorted_by[l->res_b[old]], &l->n_by[l->res_b[old]], l->res_r[old]);
    l->res_head = (l->res_head + 1) % WINDOW;
    l->res_n--;
  }
  int at = (l->res_head + l->res_n) % WINDOW;
  l->res_b[at] = bucket;
  l->res_r[at] = r;
  l->res_n++;
  sorted_insert(l->sorted_all, &l->n_all, r);
  sorted_insert(l->sorted_by[bucket], &l->n_by[bucket], r);
}

static void lat_observe(latency *l, int samples, double seconds, double now, int residual) {
  double t[5];
  if (l->per_sample_s > 0) {
    double speed = lat_speed_now(l, now), expected = l->fixed_s + l->per_sample_s * samples;
    if (residual) lat_add_residual(l, bucket_of(samples), seconds - expected * speed);
    double ratio = seconds / expected;
    ratio = ratio < 0.25 ? 0.25 : ratio > 4.0 ? 4.0 : ratio; /* one invoke moves it at most to 1/4 or 4x */
    l->speed = speed + SPEED_WEIGHT * (ratio - speed);
    l->speed_at = now;
  }
  if (l->obs_n == WINDOW) {
    int old = l->obs_head;
    terms(l->obs_t[old], l->obs_s[old], t);
    for (int i = 0; i < 5; i++) l->sums[i] -= t[i];
    l->obs_head = (l->obs_head + 1) % WINDOW;
    l->obs_n--;
  }
  int at = (l->obs_head + l->obs_n) % WINDOW;
  l->obs_t[at] = samples;
  l->obs_s[at] = seconds;
  l->obs_n++;
  terms(samples, seconds, t);
  for (int i = 0; i < 5; i++) l->sums[i] += t[i];
  if (++l->since_exact >= WINDOW) { /* running sums drift: recompute now and then */
    l->since_exact = 0;
    memset(l->sums, 0, sizeof l->sums);
    for (int k = 0; k < l->obs_n; k++) {
      int j = (l->obs_head + k) % WINDOW;
      terms(l->obs_t[j], l->obs_s[j], t);
      for (int i = 0; i < 5; i++) l->sums[i] += t[i];
    }
  }
  lat_refit(l);
}

static double quantile_sorted(const double *a, int n, double q) {
  double h = (n - 1) * q;
  int lo = (int)h;
  int hi = lo + 1 < n ? lo + 1 : n - 1;
  return a[lo] + (h - lo) * (a[hi] - a[lo]);
}

static double lat_typical(const latency *l, int samples) { return l->fixed_s + l->per_sample_s * samples; }

static int lat_blind(const latency *l) { return l->n_all < MIN_RESIDUALS; }

static double lat_margin(const latency *l, int samples) {
  int b = bucket_of(samples);
  if (l->n_by[b] >= MIN_RESIDUALS) {
    double v = quantile_sorted(l->sorted_by[b], l->n_by[b], QUANTILE);
    return v > 0 ? v : 0;
  }
  if (!lat_blind(l)) {
    double v = quantile_sorted(l->sorted_all, l->n_all, QUANTILE);
    return v > 0 ? v : 0;
  }
  return 0.5 * lat_typical(l, samples);
}

/* Largest T <= cap with p99(T) <= seconds at `speed`; 0 if even T = 1 does not fit. */
static int lat_largest_fitting(const latency *l, double seconds, int cap, double speed) {
  if (l->per_sample_s <= 0) return cap;
  int blind = lat_blind(l);
  for (int b = bucket_of(cap); b > 0; b--) {
    int lo = 1 << (b - 1), hi = (1 << b) - 1;
    if (hi > cap) hi = cap;
    double room = blind ? seconds / 1.5 : seconds - lat_margin(l, lo);
    double t = floor((room / speed - l->fixed_s) / l->per_sample_s);
    if (t > hi) t = hi;
    if (t >= lo) return (int)t;
  }
  return 0;
}

/* The slack of runtime/mc.py's _SlackTracker: a fraction of the budget kept free at the end of
 * sampling, learnt per half-octave of budget from how often calls end late (P(late) ~ 0.005). */
#define SLACK_Q 0.005
#define SLACK_STEP 0.03
#define SLACK_START 0.15
#define SLACK_MAX 0.2

static double *slack_slot(ek_model *m, double budget_s) {
  int key = (int)round_even(2 * log2(budget_s * 1e3));
  for (int i = 0; i < m->n_slack; i++)
    if (m->slack[i].key == key) return &m->slack[i].value;
  if (m->n_slack == (int)(sizeof m->slack / sizeof m->slack[0])) return &m->slack[0].value;
  m->slack[m->n_slack].key = key;
  m->slack[m->n_slack].value = SLACK_START;
  return &m->slack[m->n_slack++].value;
}

static void slack_update(ek_model *m, double budget_s, double elapsed_s) {
  double *v = slack_slot(m, budget_s);
  *v += elapsed_s > budget_s ? SLACK_STEP : -SLACK_STEP * SLACK_Q / (1 - SLACK_Q);
  *v = *v < 0 ? 0 : *v > SLACK_MAX ? SLACK_MAX : *v;
}

static void after_add(ek_model *m, double s) {
  m->after_s[m->after_n % WINDOW] = s;
  m->after_n++;
  if (m->after_count < WINDOW) m->after_count++;
}

/* Rows rounded to the sampler's batch: down (at least one batch) or up. */
static int to_batch(const ek_model *m, int rows, int up) {
  int b = m->sampler_batch;
  if (b == 0) return rows;
  int k = up ? (rows + b - 1) / b : rows / b;
  return (k < 1 ? 1 : k) * b;
}

static ek_status grow(ek_model *m, int rows) {
  rows = to_batch(m, rows, 1);
  if (m->sampler_batch || rows <= m->high_water) return EK_OK;
  /* Two unobserved invokes: the first re-allocates, the second touches the new memory for the
   * first time (~2x a steady invoke); neither is a fair latency sample. */
  ek_status st = invoke(m, rows, 0, &m->scratch_rng, 0);
  if (st == EK_OK) st = invoke(m, rows, 0, &m->scratch_rng, 0);
  return st;
}

static ek_status anchor(ek_model *m, int rows, int repeats) {
  double times[9];
  rows = to_batch(m, rows, 1);
  if (repeats > 9) repeats = 9;
  for (int i = 0; i < repeats; i++) {
    double start = now_s(m);
    ek_status st = draw(m, rows, 0, &m->scratch_rng, 0);
    if (st != EK_OK) return st;
    times[i] = now_s(m) - start;
  }
  qsort(times, (size_t)repeats, sizeof *times, cmp_double);
  lat_anchor(m->lat, rows, quantile_sorted(times, repeats, 0.5));
  return EK_OK;
}

/* Fits the latency model for this handle's thread count: the median of 5 draws at batch 1, 16
 * and 128 (after one untimed draw each, which pays for allocation). */
static ek_status calibrate(ek_model *m) {
  if (m->calibrated) return EK_OK;
  if (m->lat == NULL) {
    m->lat = calloc(1, sizeof *m->lat);
    if (m->lat == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
    m->lat->speed = 1.0;
  }
  /* calibration draws use zero features (they are never part of a result) */
  memset(m->feat, 0, m->feat_bytes);
  m->gen++;
  const int sizes[3] = {1, 16, 128};
  int last = -1;
  for (int i = 0; i < 3; i++) {
    int rows = to_batch(m, sizes[i] < m->max_samples ? sizes[i] : m->max_samples, 1);
    if (rows == last) continue;
    last = rows;
    ek_status st = draw(m, rows, 0, &m->scratch_rng, 0);
    if (st == EK_OK) st = anchor(m, rows, 5);
    if (st != EK_OK) return st;
  }
  m->calibrated = 1;
  return EK_OK;
}

/* ---- Opening ---------------------------------------------------------------------------------- */

static ek_model *new_model(const ek_open_options *opts) {
  ek_model *m = calloc(1, sizeof *m);
  if (m == NULL) return NULL;
  if (opts) m->opts = *opts;
  else ek_open_options_init(&m->opts);
  if (m->opts.clock == NULL) m->opts.clock = monotonic_s;
  m->memory_bytes = m->opts.memory_bytes ? m->opts.memory_bytes : DEFAULT_MEMORY_BYTES;
  m->trunk_out = -1;
  return m;
}

static ek_status check_open_options(ek_model *m) {
  const ek_open_options *o = &m->opts;
  if (o->threads < 1 || o->threads > 256)
    return fail(m, EK_ERROR_ARGUMENT, "Expected `threads` to be an integer in [1, 256]. Received: threads=%d", o->threads);
  if (o->max_samples < 1 || o->max_samples > HARD_MAX_SAMPLES)
    return fail(m, EK_ERROR_ARGUMENT, "Expected `max_samples` in [1, %d]. Received: max_samples=%d", HARD_MAX_SAMPLES,
                o->max_samples);
  if (o->max_file_bytes == 0) m->opts.max_file_bytes = DEFAULT_MAX_FILE_BYTES;
  return EK_OK;
}

static void xnnpack_payload_free(void *p) { free(p); }

static ek_status load_litert(ek_model *m) {
  LiteRtEnvOption env_opts[2];
  int n_env = 0;
  env_opts[n_env].tag = kLiteRtEnvOptionTagAutoRegisterAccelerators; /* CPU only: no GPU/NPU dlopen */
  env_opts[n_env].value.type = kLiteRtAnyTypeInt;
  env_opts[n_env].value.value.int_value = kLiteRtHwAcceleratorCpu;
  n_env++;
  if (m->opts.litert_log != EK_LITERT_LOG_UNCHANGED) {
    int sev = m->opts.litert_log == EK_LITERT_LOG_ERROR    ? kLiteRtLogSeverityError
              : m->opts.litert_log == EK_LITERT_LOG_SILENT ? kLiteRtLogSeveritySilent
                                                            : kLiteRtLogSeverityInfo;
    env_opts[n_env].tag = kLiteRtEnvOptionTagMinLoggerSeverity;
    env_opts[n_env].value.type = kLiteRtAnyTypeInt;
    env_opts[n_env].value.value.int_value = sev;
    n_env++;
  }
  LiteRtStatus st = LiteRtCreateEnvironment(n_env, env_opts, &m->env);
  if (st != kLiteRtStatusOk) return fail(m, EK_ERROR_LITERT, "LiteRT cannot create its environment (status %d).", (int)st);
  st = LiteRtCreateModelFromBuffer(m->env, m->data, m->size, &m->lm);
  if (st != kLiteRtStatusOk) {
    m->lm = NULL;
    return fail(m, EK_ERROR_LITERT, "LiteRT cannot load the model (status %d): not a model it can read.", (int)st);
  }
  return EK_OK;
}

static ek_status compile_model(ek_model *m) {
  /* Threads: LrtCreateCpuOptions and its setters are not exported by the wheel; the CPU
   * accelerator reads the same TOML payload from an opaque option named "xnnpack". The
   * CompiledModel refuses NULL options and options with no accelerator. */
  char payload_text[48];
  snprintf(payload_text, sizeof payload_text, "num_threads = %d\n", m->opts.threads);
  char *payload = malloc(strlen(payload_text) + 1);
  if (payload == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
  memcpy(payload, payload_text, strlen(payload_text) + 1);
  LiteRtOpaqueOptions cpu;
  if (LiteRtCreateOptions(&m->lopts) != kLiteRtStatusOk) {
    free(payload);
    m->lopts = NULL;
    return fail(m, EK_ERROR_LITERT, "LiteRT cannot create compilation options.");
  }
  if (LiteRtSetOptionsHardwareAccelerators(m->lopts, kLiteRtHwAcceleratorCpu) != kLiteRtStatusOk) {
    free(payload);
    return fail(m, EK_ERROR_LITERT, "LiteRT refused the CPU accelerator option.");
  }
  if (LiteRtCreateOpaqueOptions("xnnpack", payload, xnnpack_payload_free, &cpu) != kLiteRtStatusOk) {
    free(payload);
    return fail(m, EK_ERROR_LITERT, "LiteRT refused the CPU thread option.");
  }
  if (LiteRtAddOpaqueOptions(m->lopts, cpu) != kLiteRtStatusOk) {
    LiteRtDestroyOpaqueOptions(cpu);
    return fail(m, EK_ERROR_LITERT, "LiteRT refused the CPU thread option.");
  }
  LiteRtStatus st = LiteRtCreateCompiledModel(m->env, m->lm, m->lopts, &m->cm);
  if (st != kLiteRtStatusOk) {
    m->cm = NULL;
    return fail(m, EK_ERROR_LITERT, "LiteRT cannot compile the model for the CPU (status %d).", (int)st);
  }
  return EK_OK;
}

static int mask_layer_for(const ek_meta *meta, const char *name, int twin) {
  for (int i = 0; i < meta->n_layers; i++) {
    char buf[32];
    snprintf(buf, sizeof buf, "mask_%d", i);
    if (twin ? (meta->layers[i].rate > 0 && strcmp(buf, name) == 0)
             : (meta->layers[i].mask_input && strcmp(meta->layers[i].mask_input, name) == 0))
      return i;
  }
  return -1;
}

static int8_t quant_code(const tensor *t, double v) {
  double q = round_even(v / (double)t->scale + t->zero_point);
  return (int8_t)(q < -128 ? -128 : q > 127 ? 127 : q);
}

/* The masks the sampler takes, in mc_layers order (edgekit.h, Randomness). */
static ek_status plan_masks(ek_model *m, int twin) {
  const ek_meta *meta = &m->meta;
  sig *s = m->sampler;
  m->masks = calloc((size_t)(meta->n_layers ? meta->n_layers : 1), sizeof *m->masks);
  if (m->masks == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
  for (int i = 0; i < meta->n_layers; i++) {
    const ek_meta_layer *l = &meta->layers[i];
    char twin_name[32];
    const char *name = NULL;
    if (twin && l->rate > 0) {
      snprintf(twin_name, sizeof twin_name, "mask_%d", i);
      name = twin_name;
    } else if (!twin && l->mask_input) {
      name = l->mask_input;
    }
    if (name == NULL) continue;
    int k = find_in(s, name);
    if (k < 0)
      return fail(m, EK_ERROR_UNSUPPORTED,
                  "Signature '%s' has no mask input '%s' for MC layer %d. Expected the inputs docs/format.md describes.",
                  s->key, name, i);
    tensor *t = &s->in[k];
    size_t units = 1;
    if (l->mask_rank >= 0) {
      for (int d = 0; d < l->mask_rank; d++) units *= (size_t)l->mask_shape[d];
      if (units != t->row_elems)
        return fail(m, EK_ERROR_UNSUPPORTED,
                    "MC layer %d's mask_shape has %zu units but input '%s' of '%s' takes %zu per sample. Expected them "
                    "to agree.",
                    i, units, name, s->key, t->row_elems);
    } else {
      units = t->row_elems;
    }
    mask_plan *mp = &m->masks[m->n_masks++];
    mp->input = k;
    mp->units = units;
    mp->threshold = (uint32_t)round_even(l->rate * 65536.0);
    if (t->int8) {
      mp->keep_code = quant_code(t, 1.0);
      mp->drop_code = quant_code(t, 0.0);
    }
    t->is_mask = 1;
  }
  return EK_OK;
}

/* The one data input of a signature: the input that is not a mask. */
static int data_input(ek_model *m, sig *s, const char *preferred) {
  int found = -1, count = 0;
  if (preferred && (found = find_in(s, preferred)) >= 0 && !s->in[found].is_mask) return found;
  found = -1;
  for (int k = 0; k < s->n_in; k++)
    if (!s->in[k].is_mask && mask_layer_for(&m->meta, s->in[k].name, 0) < 0 &&
        mask_layer_for(&m->meta, s->in[k].name, 1) < 0)
      found = k, count++;
  return count == 1 ? found : -1;
}

static ek_status plan_outputs(ek_model *m) {
  const ek_meta *meta = &m->meta;
  sig *s = m->sampler;
  m->n_outputs = meta->n_outputs;
  m->outputs = calloc((size_t)m->n_outputs, sizeof *m->outputs);
  if (m->outputs == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
  const char *mode = meta->quant_mode;
  for (int o = 0; o < m->n_outputs; o++) {
    output *out = &m->outputs[o];
    out->meta = meta->outputs[o];
    out->var_out = -1;
    ek_meta_output *mo = &out->meta;
    int k = mo->name ? find_out(s, mo->name) : -1;
    if (k < 0 && meta->version == 1 && m->n_outputs == 1) k = 0; /* v1: the first output, as runtime/mc.py */
    if (k < 0)
      return fail(m, EK_ERROR_UNSUPPORTED,
                  "The metadata names output '%s', which signature '%s' does not have. Expected one of its outputs.",
                  mo->name, s->key);
    out->out = k;
    const tensor *t = &s->out[k];
    if (mo->name == NULL) mo->name = t->name;
    if (mo->size == 0) { /* no shape in the metadata (or v1 without num_classes): the signature's */
      mo->size = t->row_elems;
      mo->rank = (int)t->type.layout.rank - 1;
      for (int d = 0; d < mo->rank; d++) mo->shape[d] = t->type.layout.dimensions[d + 1];
    }
    if (t->row_elems != mo->size)
      return fail(m, EK_ERROR_UNSUPPORTED,
                  "Output '%s' has %zu values per sample, but the metadata says %zu. Expected them to agree.", mo->name,
                  t->row_elems, mo->size);
    if (mo->task == EK_TASK_CLASSIFICATION && mo->sigmoid && mo->size != 1)
      return fail(m, EK_ERROR_UNSUPPORTED, "Output '%s' is declared a sigmoid. Expected one unit. Received: %zu", mo->name,
                  mo->size);
    if (mo->noise_variance && mo->n_noise != mo->size)
      return fail(m, EK_ERROR_FORMAT,
                  "Malformed edgekit metadata: noise_variance of '%s' has %zu numbers. Expected one per value: %zu",
                  mo->name, mo->n_noise, mo->size);
    out->size = mo->task == EK_TASK_CLASSIFICATION && mo->sigmoid ? 2 : mo->size;
    if (mo->variance_output) {
      out->var_out = find_out(s, mo->variance_output);
      if (out->var_out < 0 || s->out[out->var_out].row_elems != mo->size)
        return fail(m, EK_ERROR_UNSUPPORTED,
                    "Output '%s' declares log-variance output '%s', which signature '%s' does not have with %zu values. "
                    "Expected a matching output.",
                    mo->name, mo->variance_output, s->key, mo->size);
    }
    /* Per-value slack of the probability check (runtime/mc.py): float32 softmax rounding plus
     * half a quantization step where the softmax runs quantized. */
    double step = 0;
    if (t->int8) step = t->scale;
    else if (mode == NULL || strcmp(mode, "int8") == 0 || strcmp(mode, "int16x8") == 0) step = 1.0 / 256;
    out->slack = 1e-4 + step / 2;
    /* class names: the metadata's when they match, else "0", "1", ... */
    if (mo->task == EK_TASK_CLASSIFICATION) {
      out->names = calloc(out->size, sizeof *out->names);
      if (out->names == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
      if (mo->class_names && (size_t)mo->n_class_names == out->size) {
        for (size_t i = 0; i < out->size; i++) out->names[i] = mo->class_names[i];
      } else {
        out->names_storage = malloc(out->size * 24);
        if (out->names_storage == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
        for (size_t i = 0; i < out->size; i++) {
          snprintf(out->names_storage + 24 * i, 24, "%zu", i);
          out->names[i] = out->names_storage + 24 * i;
        }
      }
    }
  }
  return EK_OK;
}

/* Runs the planned signatures once on zeros with NaN-filled outputs. Returns EK_OK, or the
 * error; *unwritten is set when Run succeeded but left an output unwritten. */
static ek_status smoke_run(ek_model *m, sig *s, int rows, int *unwritten) {
  ek_status st = EK_OK;
  *unwritten = 0;
  for (int k = 0; k < s->n_in && st == EK_OK; k++) st = ensure_rows(m, &s->in[k], rows);
  for (int k = 0; k < s->n_out && st == EK_OK; k++) st = ensure_rows(m, &s->out[k], rows);
  if (st != EK_OK) return st;
  for (int k = 0; k < s->n_in; k++) memset(s->in[k].host, 0, (size_t)rows * s->in[k].row_elems * s->in[k].elem_size);
  for (int k = 0; k < s->n_in; k++) s->in[k].gen = 0, s->in[k].gen_rows = 0;
  prefill_outputs(s, rows);
  if ((st = run_sig(m, s)) != EK_OK) return st;
  for (int k = 0; k < s->n_out; k++) {
    const tensor *t = &s->out[k];
    size_t n = (size_t)rows * t->row_elems, i = 0;
    if (t->int8) {
      while (i < n && ((const int8_t *)t->host)[i] == 0x7F) i++;
    } else {
      while (i < n && isnan(((const float *)t->host)[i])) i++;
    }
    if (i == n) *unwritten = 1;
  }
  return EK_OK;
}

/* Whether the sampler takes one features row for T mask rows (runtime/mc.py, _feed_broadcasts):
 * one row and two rows of the same features, with the same two masks, must give the same two
 * outputs. */
static int check_broadcast(ek_model *m) {
  sig *s = m->sampler;
  if (m->n_masks == 0 || m->sampler_batch) return 0;
  tensor *d = &s->in[m->data_in];
  ek_rng rng;
  seed_rng(&rng, 12345);
  for (int k = 0; k < m->n_masks; k++)
    if (ensure_rows(m, &s->in[m->masks[k].input], 2) != EK_OK) return 0;
  for (int k = 0; k < s->n_out; k++)
    if (ensure_rows(m, &s->out[k], 2) != EK_OK) return 0;
  fill_masks(m, &rng, 2);
  float *outs[2] = {NULL, NULL};
  int ok = 1;
  for (int rows = 1; rows <= 2 && ok; rows++) {
    if (ensure_rows(m, d, rows) != EK_OK) ok = 0;
    for (int r = 0; r < rows && ok; r++) {
      for (size_t i = 0; i < d->row_elems; i++) {
        /* not zeros: a zero row would hide masks paired with the wrong rows */
        double v = d->row_elems > 1 ? -1.0 + 2.0 * (double)i / (double)(d->row_elems - 1) : 0.5;
        if (d->int8) ((int8_t *)d->host)[(size_t)r * d->row_elems + i] = (int8_t)round_even(v * 100);
        else ((float *)d->host)[(size_t)r * d->row_elems + i] = (float)v;
      }
    }
    d->gen = 0;
    d->gen_rows = 0;
    if (!ok) break;
    prefill_outputs(s, 2);
    if (run_sig(m, s) != EK_OK) {
      ok = 0;
      break;
    }
    const tensor *t = &s->out[m->outputs[0].out];
    size_t bytes = 2 * t->row_elems * t->elem_size;
    outs[rows - 1] = malloc(bytes);
    if (outs[rows - 1] == NULL) {
      ok = 0;
      break;
    }
    memcpy(outs[rows - 1], t->host, bytes);
  }
  if (ok) {
    const tensor *t = &s->out[m->outputs[0].out];
    size_t bytes = 2 * t->row_elems * t->elem_size;
    ok = memcmp(outs[0], outs[1], bytes) == 0;
    if (ok && !t->int8)
      for (size_t i = 0; i < 2 * t->row_elems; i++) ok &= !isnan(outs[0][i]);
  }
  free(outs[0]);
  free(outs[1]);
  m->errmsg[0] = '\0';
  return ok;
}

static ek_status plan(ek_model *m) {
  ek_meta *meta = &m->meta;
  sig *full = find_sig(m, meta->sig_full);
  if (full == NULL) full = find_sig(m, "full");
  if (full == NULL && m->n_sigs == 1) full = &m->sigs[0]; /* a foreign file with one signature */
  if (full == NULL) {
    char names[256] = "";
    for (int i = 0; i < m->n_sigs; i++) {
      size_t len = strlen(names);
      snprintf(names + len, sizeof names - len, "%s'%s'", i ? ", " : "", m->sigs[i].key);
    }
    return fail(m, EK_ERROR_UNSUPPORTED,
                "The model has no usable signature. Expected a 'full' signature (docs/format.md). Received: signatures=[%s]",
                names);
  }
  sig *trunk = find_sig(m, meta->sig_trunk), *head = find_sig(m, meta->sig_head);
  if (!(trunk && head)) trunk = head = NULL;
  int in_graph = strcmp(meta->stochastic, "in-graph") == 0;
  sig *masked = in_graph && !meta->seeded ? find_sig(m, meta->sig_masked) : NULL;
  ek_status st;
  if ((st = describe_sig(m, full)) != EK_OK) return st;
  if (trunk) {
    if ((st = describe_sig(m, trunk)) != EK_OK || (st = describe_sig(m, head)) != EK_OK) return st;
    int k = trunk->n_out == 1 ? 0 : find_out(trunk, "features");
    if (k < 0)
      return fail(m, EK_ERROR_UNSUPPORTED, "Signature '%s' has several outputs and none named 'features'.", trunk->key);
    m->trunk_out = k;
    if (output_is_dynamic_reshape(&trunk->out[k])) {
      snprintf(m->note, sizeof m->note,
               "The trunk's output '%s' is a dynamic RESHAPE (a Flatten exported with a dynamic batch), which LiteRT's "
               "CompiledModel leaves unwritten; sampling runs '%s' at batch T instead (slower; re-export the file with a "
               "static flatten).",
               trunk->out[k].name, full->key);
      trunk = head = NULL;
      masked = NULL; /* the twin of a split file takes the trunk's features */
    }
  }
  if (masked && (st = describe_sig(m, masked)) != EK_OK) return st;
  m->trunk = trunk;
  m->sampler = masked ? masked : trunk ? head : full;
  int twin = masked != NULL;
  int mask_input = strcmp(meta->stochastic, "mask-input") == 0;
  if ((st = describe_sig(m, m->sampler)) != EK_OK) return st;
  if (twin || mask_input) {
    if ((st = plan_masks(m, twin)) != EK_OK) return st;
  }
  m->masks_from_runtime = m->n_masks > 0;
  m->masks_from_file = !m->masks_from_runtime && in_graph && meta->n_layers > 0;
  if (!m->has_meta) m->masks_from_file = 1; /* a foreign file: whatever its graph draws */
  m->plan_name = twin ? (trunk ? "trunk+masked" : "masked") : trunk ? "trunk+head" : "full";
  /* the data inputs */
  const char *x_name = meta->input_name ? meta->input_name : "x";
  m->data_in = data_input(m, m->sampler, trunk ? trunk->out[m->trunk_out].name : x_name);
  if (m->data_in < 0)
    return fail(m, EK_ERROR_UNSUPPORTED,
                "Signature '%s': cannot tell which input is the data. Expected one input besides the masks.",
                m->sampler->key);
  if (trunk) {
    int k = data_input(m, trunk, x_name);
    if (k < 0 || trunk->n_in != 1)
      return fail(m, EK_ERROR_UNSUPPORTED, "Signature '%s' must take one input. Received: %d inputs", trunk->key, trunk->n_in);
    m->x = &trunk->in[k];
    const tensor *f = &trunk->out[m->trunk_out], *d = &m->sampler->in[m->data_in];
    if (f->row_elems != d->row_elems || f->type.element_type != d->type.element_type)
      return fail(m, EK_ERROR_UNSUPPORTED,
                  "The trunk's output '%s' (%zu values) does not match the input '%s' of '%s' (%zu values). Expected the "
                  "same shape and type.",
                  f->name, f->row_elems, d->name, m->sampler->key, d->row_elems);
    m->trunk_batch = trunk->in[k].static_batch;
    int mb = meta->batch_trunk;
    if (mb && m->trunk_batch && mb != m->trunk_batch)
      return fail(m, EK_ERROR_UNSUPPORTED, "The metadata says the trunk runs at batch %d, its signature at %d.", mb, m->trunk_batch);
    if (mb) m->trunk_batch = mb;
  } else {
    m->x = &m->sampler->in[m->data_in];
  }
  /* the sampler's batch: static tensors, the metadata's `batch`, or a seeded file */
  int tb = m->sampler->in[m->data_in].static_batch;
  int mb = m->sampler == masked ? meta->batch_masked : m->sampler == head ? meta->batch_head : meta->batch_full;
  if (mb && tb && mb != tb)
    return fail(m, EK_ERROR_UNSUPPORTED, "The metadata says '%s' runs at batch %d, its signature at %d.", m->sampler->key, mb, tb);
  m->sampler_batch = mb ? mb : tb;
  if (!m->sampler_batch && m->masks_from_file && meta->seeded) m->sampler_batch = SEEDED_BATCH;
  /* the input */
  m->input_rank = (int)m->x->type.layout.rank - 1;
  for (int d = 0; d < m->input_rank; d++) m->input_shape[d] = m->x->type.layout.dimensions[d + 1];
  m->input_size = m->x->row_elems;
  const tensor *d = &m->sampler->in[m->data_in];
  m->feat_bytes = d->row_elems * d->elem_size;
  m->feat = aligned(m->feat_bytes);
  if (m->feat == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
  if ((st = plan_outputs(m)) != EK_OK) return st;
  /* memory: the largest sampler batch the budget allows (runtime/mc.py: max_batch) */
  size_t fixed = 0, per = 0;
  for (int i = 0; i < m->n_sigs; i++) { /* every signature's tensors within the budget, the sampler's sized */
    size_t f, p;
    if ((st = subgraph_bytes(m, &m->sigs[i], &f, &p)) != EK_OK) return st;
    if (&m->sigs[i] == m->sampler) fixed = f, per = p;
  }
  size_t max_rows = per > 0 && fixed < m->memory_bytes ? (m->memory_bytes - fixed) / per : (size_t)HARD_MAX_SAMPLES;
  if (fixed >= m->memory_bytes || max_rows < 1)
    return fail(m, EK_ERROR_UNSUPPORTED, "One MC sample needs %zu bytes of tensors. Expected at most the memory budget of %zu bytes.",
                fixed + per, m->memory_bytes);
  m->max_samples = m->opts.max_samples;
  if ((size_t)m->max_samples > max_rows) m->max_samples = (int)max_rows;
  if (m->sampler_batch) m->max_samples = m->max_samples < m->sampler_batch ? m->sampler_batch : m->max_samples / m->sampler_batch * m->sampler_batch;
  return EK_OK;
}

/* The notes a result carries (runtime/mc.py: MCModel._notes, the same sentences), then the plan's. */
static ek_status make_notes(ek_model *m) {
  size_t cap = 512 * ((size_t)m->n_outputs + 1) + sizeof m->note, used = 0;
  m->notes_text = malloc(cap);
  if (m->notes_text == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
  int old = m->meta.version < 2;
  for (int o = 0; o < m->n_outputs && m->n_notes < 128; o++) {
    const ek_meta_output *mo = &m->outputs[o].meta;
    char *at = m->notes_text + used;
    int w = 0;
    if (mo->task == EK_TASK_CLASSIFICATION && !mo->calibrated)
      w = snprintf(at, 512, "%.400s: uncalibrated (%s)", mo->name,
                   old ? "the file predates calibration (edgekit/1)" : "the file carries no temperature");
    else if (mo->task == EK_TASK_REGRESSION && !mo->noise_variance && !mo->variance_output)
      w = snprintf(at, 512, "%.300s: no noise variance in the file: the std and interval cover the model's uncertainty only",
                   mo->name);
    if (w > 0) {
      m->notes[m->n_notes++] = at;
      used += (size_t)(w < 511 ? w : 511) + 1;
    }
  }
  if (m->note[0]) {
    memcpy(m->notes_text + used, m->note, strlen(m->note) + 1);
    m->notes[m->n_notes++] = m->notes_text + used;
  }
  return EK_OK;
}

static ek_status finish_open(ek_model *m) {
  const char *json = NULL;
  size_t json_len = 0;
  ek_status st = check_open_options(m);
  if (st != EK_OK) return st;
  st = ek_format_verify(m->data, m->size, 1, m->sha256, &json, &json_len, m->errmsg, sizeof m->errmsg);
  if (st != EK_OK) return st;
  if (json == NULL) {
    if (!m->opts.allow_unverified)
      return fail(m, EK_ERROR_INTEGRITY,
                  "The model has no edgekit metadata, so its integrity cannot be verified. Expected an 'edgekit' "
                  "metadata entry. Received: none");
    static const char foreign[] = "{\"format\": \"edgekit/1\"}";
    if ((st = ek_format_parse(foreign, sizeof foreign - 1, &m->meta, m->errmsg, sizeof m->errmsg)) != EK_OK) return st;
    m->meta.format = "none";
  } else {
    m->verified = 1;
    m->has_meta = 1;
    if ((st = ek_format_parse(json, json_len, &m->meta, m->errmsg, sizeof m->errmsg)) != EK_OK) return st;
  }
  if ((st = ek_format_check_tensors(m->data, m->size, m->memory_bytes, m->errmsg, sizeof m->errmsg)) != EK_OK) return st;
  /* The digest is checked: LiteRT may now see the bytes. */
  if ((st = load_litert(m)) != EK_OK) return st;
  if ((st = load_signatures(m)) != EK_OK) return st;
  if ((st = plan(m)) != EK_OK) return st;
  if ((st = make_notes(m)) != EK_OK) return st;
  if ((st = compile_model(m)) != EK_OK) return st;
  uint64_t seed = m->opts.has_seed ? m->opts.seed : entropy_seed(m);
  seed_rng(&m->rng, seed);
  seed_rng(&m->scratch_rng, seed ^ 0x5eed5eed5eed5eedULL); /* load-time and calibration draws */
  /* One run of each planned signature on zeros, outputs NaN-filled: a signature whose output
   * LiteRT leaves unwritten is caught now (the CompiledModel dynamic-output pitfall). */
  int unwritten = 0;
  if (m->trunk) {
    if ((st = smoke_run(m, m->trunk, m->trunk_batch ? m->trunk_batch : 1, &unwritten)) != EK_OK) return st;
    if (unwritten)
      return fail(m, EK_ERROR_OUTPUT,
                  "LiteRT ran signature '%s' but did not write its output (a dynamic output shape under LiteRT's "
                  "CompiledModel). Expected a file with static output shapes: re-export it.",
                  m->trunk->key);
  }
  int rows = m->sampler_batch ? m->sampler_batch : 1;
  if ((st = smoke_run(m, m->sampler, rows, &unwritten)) != EK_OK) return st;
  if (unwritten)
    return fail(m, EK_ERROR_OUTPUT,
                "LiteRT ran signature '%s' but did not write its output (a dynamic output shape under LiteRT's "
                "CompiledModel). Expected a file with static output shapes: re-export it.",
                m->sampler->key);
  m->broadcast = check_broadcast(m);
  /* One real sample on zeros, so a file whose output is not what the metadata says is refused
   * now (runtime/mc.py does the same). */
  memset(m->feat, 0, m->feat_bytes);
  m->gen++;
  if ((st = draw(m, rows, 0, &m->scratch_rng, 0)) != EK_OK) return st;
  m->high_water = rows;
  m->errmsg[0] = '\0';
  return EK_OK;
}

ek_status ek_open(const char *path, const ek_open_options *opts, ek_model **model) {
  if (model == NULL) return EK_ERROR_ARGUMENT;
  ek_model *m = *model = new_model(opts);
  if (m == NULL) return EK_ERROR_NOMEM;
  ek_status st = check_open_options(m);
  if (st != EK_OK) return st;
  st = read_file(path, m->opts.max_file_bytes, &m->data, &m->size, m->errmsg, sizeof m->errmsg);
  if (st != EK_OK) return st;
  return finish_open(m);
}

ek_status ek_open_bytes(const void *data, size_t size, const ek_open_options *opts, ek_model **model) {
  if (model == NULL) return EK_ERROR_ARGUMENT;
  ek_model *m = *model = new_model(opts);
  if (m == NULL) return EK_ERROR_NOMEM;
  if (data == NULL && size > 0) return fail(m, EK_ERROR_ARGUMENT, "Expected model bytes. Received: NULL");
  m->data = aligned(size ? size : 1);
  if (m->data == NULL) return fail(m, EK_ERROR_NOMEM, "out of memory");
  if (size) memcpy(m->data, data, size);
  m->size = size;
  return finish_open(m);
}

void ek_close(ek_model *m) {
  if (m == NULL) return;
  for (int i = 0; i < m->n_sigs; i++) {
    free_sig_buffers(&m->sigs[i]);
    free(m->sigs[i].in);
    free(m->sigs[i].out);
    free(m->sigs[i].in_tb);
    free(m->sigs[i].out_tb);
  }
  free(m->sigs);
  if (m->cm) LiteRtDestroyCompiledModel(m->cm);
  if (m->lopts) LiteRtDestroyOptions(m->lopts);
  if (m->lm) LiteRtDestroyModel(m->lm);
  if (m->env) LiteRtDestroyEnvironment(m->env);
  for (int o = 0; o < m->n_outputs; o++) {
    free(m->outputs[o].names);
    free(m->outputs[o].names_storage);
    free(m->outputs[o].ps);
    free(m->outputs[o].pv);
  }
  free(m->outputs);
  free(m->masks);
  free(m->feat);
  free(m->dscratch);
  free(m->notes_text);
  free(m->lat);
  ek_meta_free(&m->meta);
  free(m->data);
  free(m);
}

/* ---- Information ------------------------------------------------------------------------------ */

static int usable(const ek_model *m) { return m != NULL && m->cm != NULL && m->sampler != NULL && m->high_water > 0; }

ek_status ek_get_info(const ek_model *m, ek_model_info *info) {
  if (!usable(m) || info == NULL) return EK_ERROR_ARGUMENT;
  memset(info, 0, sizeof *info);
  info->format = m->meta.format;
  info->stochastic = m->has_meta ? m->meta.stochastic : "in-graph";
  info->plan = m->plan_name;
  info->masks_from = m->masks_from_runtime ? "runtime" : m->masks_from_file ? "file" : "none";
  info->sha256 = m->sha256;
  info->verified = m->verified;
  info->input_rank = m->input_rank;
  memcpy(info->input_shape, m->input_shape, sizeof info->input_shape);
  info->input_size = m->input_size;
  info->input_int8 = m->x->int8;
  info->num_outputs = m->n_outputs;
  info->sampler_batch = m->sampler_batch;
  info->max_samples = m->max_samples;
  info->note = m->note[0] ? m->note : NULL;
  info->notes = m->notes;
  info->num_notes = m->n_notes;
  return EK_OK;
}

ek_status ek_get_output_info(const ek_model *m, int index, ek_output_info *info) {
  if (!usable(m) || info == NULL || index < 0 || index >= m->n_outputs) return EK_ERROR_ARGUMENT;
  const output *out = &m->outputs[index];
  const ek_meta_output *mo = &out->meta;
  memset(info, 0, sizeof *info);
  info->name = mo->name;
  info->task = mo->task;
  info->size = out->size;
  info->rank = mo->rank < 0 ? 0 : mo->rank;
  for (int d = 0; d < info->rank && d < 8; d++) info->shape[d] = mo->shape[d];
  info->class_names = (const char *const *)out->names;
  info->sigmoid = mo->sigmoid;
  info->calibrated = mo->calibrated && m->opts.calibrated;
  info->temperature = info->calibrated ? mo->temperature : 1.0;
  info->mi_slope = info->calibrated ? mo->mi_slope : 0.0;
  info->has_abstain = mo->has_abstain;
  info->abstain_score = mo->abstain_score;
  info->abstain_threshold = mo->abstain_threshold;
  info->aleatoric = mo->noise_variance ? EK_ALEATORIC_HOMOSCEDASTIC
                    : out->var_out >= 0 ? EK_ALEATORIC_HETEROSCEDASTIC
                                        : EK_ALEATORIC_NONE;
  info->interval = mo->interval;
  return EK_OK;
}

/* ---- Predicting ------------------------------------------------------------------------------- */

static ek_status check_predict(ek_model *m, const float *input, size_t count, const ek_predict_options *po,
                               const ek_result *res) {
  if (po->samples < 0 || po->samples > HARD_MAX_SAMPLES)
    return fail(m, EK_ERROR_ARGUMENT, "Expected `samples` to be an integer >= 1 (or 0 for the default). Received: samples=%d",
                po->samples);
  if (!(po->budget_ms >= 0) || !isfinite(po->budget_ms))
    return fail(m, EK_ERROR_ARGUMENT, "Expected `budget_ms` to be a finite number > 0 (or 0 for none). Received: budget_ms=%g",
                po->budget_ms);
  if (!(po->tolerance >= 0 && po->tolerance < 1))
    return fail(m, EK_ERROR_ARGUMENT, "Expected `tolerance` to be a number in (0, 1) (or 0 for none). Received: tolerance=%g",
                po->tolerance);
  if (!(po->lead_k >= 0) || !isfinite(po->lead_k))
    return fail(m, EK_ERROR_ARGUMENT, "Expected `lead_k` to be a finite number > 0 (or 0 for none). Received: lead_k=%g",
                po->lead_k);
  if (po->samples > m->max_samples)
    return fail(m, EK_ERROR_ARGUMENT,
                "samples=%d is more than this handle allows. Expected samples <= %d (ek_open_options.max_samples and the "
                "memory budget). Received: samples=%d",
                po->samples, m->max_samples, po->samples);
  if (res == NULL || res->num_outputs != m->n_outputs || res->outputs == NULL)
    return fail(m, EK_ERROR_ARGUMENT, "Expected a result with %d output entries. Received: %d", m->n_outputs,
                res ? res->num_outputs : 0);
  if (input == NULL || count != m->input_size)
    return fail(m, EK_ERROR_ARGUMENT, "Input has the wrong size. Expected %zu float values (one input). Received: %zu",
                m->input_size, input ? count : 0);
  for (size_t i = 0; i < count; i++)
    if (!isfinite(input[i])) {
      size_t bad = 0;
      for (size_t j = i; j < count; j++) bad += !isfinite(input[j]);
      return fail(m, EK_ERROR_ARGUMENT,
                  "Input contains NaN or Inf. Expected finite values. Received: %zu non-finite value(s), the first at "
                  "index %zu = %g",
                  bad, i, (double)input[i]);
    }
  return EK_OK;
}

static ek_status sample_budgeted(ek_model *m, int cap, const ek_predict_options *po, double deadline, double hard,
                                 int *done_out, int *cut_out, int *stopped_out) {
  latency *l = m->lat;
  int stop_rule = po->tolerance > 0 || po->lead_k > 0;
  int chunk = stop_rule ? (po->min_samples < cap ? to_batch(m, po->min_samples > 0 ? po->min_samples : 1, 1) : cap) : cap;
  int done = 0, cut = 0, stopped = 0;
  double now = now_s(m);
  double chunk_s = (deadline - now) / BUDGET_CHUNKS;
  if (chunk_s < MIN_CHUNK_S) chunk_s = MIN_CHUNK_S;
  double per = l->per_sample_s > 1e-9 ? l->per_sample_s : 1e-9;
  double fl = MIN_SHARE * (hard - now - l->fixed_s) / per;
  int floor_n = fl > cap ? cap : fl < 0 ? 0 : (int)fl;
  double spent = 0, fitted = 0;
  while (done < cap) {
    int want = chunk < cap - done ? chunk : cap - done;
    now = now_s(m);
    double slow = lat_speed_now(l, now);
    if (fitted > 0 && spent / fitted > slow) slow = spent / fitted;
    double by_chunk = (chunk_s / slow - l->fixed_s) / per;
    int cw = by_chunk < 1 ? 1 : by_chunk > want ? want : (int)by_chunk;
    want = cw < want ? cw : want;
    int fit = lat_largest_fitting(l, deadline - now, want, slow);
    double left_d = ((deadline - now) / slow - l->fixed_s) / per;
    int left = left_d > want ? want : left_d < -1 ? -1 : (int)left_d;
    int floor_left = floor_n - done;
    int alt = want < floor_left ? want : floor_left;
    alt = alt < left ? alt : left;
    if (alt > fit) fit = alt;
    if (fit < want) cut = done + fit < cap;
    if (fit < 1) {
      if (done == 0) fit = 1; /* a prediction needs one sample; budget_cut says it was tight */
      else break;
    }
    if (m->sampler_batch) {
      if (fit < m->sampler_batch && done > 0) break;
      fit = to_batch(m, fit, 0);
    }
    if (!m->sampler_batch && fit > m->high_water) {
      /* First time this handle needs so many samples: pay the allocation once (twice what is
       * needed, so the call-to-call wobble of T does not pay it again), then re-plan. */
      int g = 2 * fit < cap ? 2 * fit : cap;
      ek_status st = grow(m, g > m->max_samples ? m->max_samples : g);
      if (st != EK_OK) return st;
      int f2 = lat_largest_fitting(l, deadline - now_s(m), fit, slow);
      fit = f2 > 0 ? f2 : (done == 0 ? 1 : 0);
      if (fit < 1) {
        cut = 1;
        break;
      }
    }
    int last = fit < want;
    double start = now_s(m);
    ek_status st = draw(m, fit, done, &m->rng, 1);
    if (st != EK_OK) return st;
    spent += now_s(m) - start;
    fitted += lat_typical(l, fit);
    done += fit;
    if (last) break;
    if (stop_rule) {
      if (settled(m, done, po)) {
        stopped = 1;
        break;
      }
      chunk *= 2;
    }
  }
  *done_out = done;
  *cut_out = cut && !stopped;
  *stopped_out = stopped;
  return EK_OK;
}

static ek_status sample_stop_rule(ek_model *m, int cap, const ek_predict_options *po, int *done_out, int *stopped_out) {
  int chunk = to_batch(m, po->min_samples > 0 ? po->min_samples : 1, 1);
  int done = 0;
  *stopped_out = 0;
  while (done < cap) {
    int want = chunk < cap - done ? chunk : cap - done;
    want = to_batch(m, want, 1);
    ek_status st = draw(m, want, done, &m->rng, 1);
    if (st != EK_OK) return st;
    done += want;
    if (settled(m, done, po)) {
      *stopped_out = 1;
      break;
    }
    chunk *= 2;
  }
  *done_out = done;
  return EK_OK;
}

ek_status ek_predict(ek_model *m, const float *input, size_t count, const ek_predict_options *opts, ek_result *res) {
  if (m == NULL) return EK_ERROR_ARGUMENT;
  if (!usable(m)) return fail(m, EK_ERROR_ARGUMENT, "The model handle is not open (ek_open failed: see its message).");
  ek_predict_options po;
  if (opts) po = *opts;
  else ek_predict_options_init(&po);
  ek_status st = check_predict(m, input, count, &po, res);
  if (st != EK_OK) return st;
  int budget = po.budget_ms > 0, stop_rule = po.tolerance > 0 || po.lead_k > 0;
  int cap = po.samples ? po.samples : (budget || stop_rule ? m->max_samples : DEFAULT_SAMPLES);
  cap = to_batch(m, cap, 1);
  if (cap > m->max_samples) cap = to_batch(m, m->max_samples, 0);
  if (budget && !m->calibrated && (st = calibrate(m)) != EK_OK) return st;
  double t0 = now_s(m); /* the budget counts from here: the checks of the input are part of the call */
  double budget_s = po.budget_ms / 1e3, reserve = 0, slack = 0;
  if (budget) {
    if (m->after_n % 8 == 0 && m->after_count > 0) {
      double sorted[WINDOW];
      memcpy(sorted, m->after_s, (size_t)m->after_count * sizeof(double));
      qsort(sorted, (size_t)m->after_count, sizeof(double), cmp_double);
      m->reserve_s = quantile_sorted(sorted, m->after_count, QUANTILE);
      m->after_med = quantile_sorted(sorted, m->after_count, 0.5);
    } else if (m->after_count == 0) {
      m->reserve_s = m->after_med = 1e-4;
    }
    slack = *slack_slot(m, budget_s) * budget_s;
    /* A stall after sampling longer than a quarter of the budget breaks its call whatever is
     * reserved; reserving for it would starve the next calls instead (runtime/mc.py). */
    reserve = m->reserve_s < (1 - MIN_SHARE) * budget_s ? m->reserve_s : (1 - MIN_SHARE) * budget_s;
    int one = m->sampler_batch ? m->sampler_batch : 1;
    if (lat_typical(m->lat, one) > budget_s)
      return fail(m, EK_ERROR_BUDGET,
                  "The latency budget is smaller than one MC sample on this machine. Expected budget_ms >= %.3f (the "
                  "fitted cost of %d sample%s with %d thread(s)). Received: budget_ms=%g",
                  lat_typical(m->lat, one) * 1e3, one, one > 1 ? "s (the file's static batch)" : "", m->opts.threads,
                  po.budget_ms);
  }
  if ((st = features(m, input)) != EK_OK) return st;
  int done = 0, cut = 0, stopped = 0;
  if (budget) {
    double deadline = t0 + budget_s - reserve - slack, hard = t0 + budget_s - m->after_med;
    st = sample_budgeted(m, cap, &po, deadline, hard, &done, &cut, &stopped);
  } else if (stop_rule) {
    st = sample_stop_rule(m, cap, &po, &done, &stopped);
  } else {
    st = draw(m, cap, 0, &m->rng, 1);
    done = cap;
  }
  if (st != EK_OK) return st;
  double t_after = now_s(m);
  if ((st = summarize(m, done, res)) != EK_OK) return st;
  double t_end = now_s(m);
  res->samples = done;
  res->elapsed_ms = (t_end - t0) * 1e3;
  res->budget_cut = cut;
  res->stopped_early = stopped;
  if (budget) {
    after_add(m, t_end - t_after);
    slack_update(m, budget_s, t_end - t0);
  }
  m->errmsg[0] = '\0';
  return EK_OK;
}

ek_status ek_warmup(ek_model *m, const ek_predict_options *opts) {
  if (m == NULL) return EK_ERROR_ARGUMENT;
  if (!usable(m)) return fail(m, EK_ERROR_ARGUMENT, "The model handle is not open (ek_open failed: see its message).");
  ek_predict_options po;
  if (opts) po = *opts;
  else ek_predict_options_init(&po);
  ek_status st;
  if (po.budget_ms > 0) {
    if ((st = calibrate(m)) != EK_OK) return st;
    int cap = po.samples ? po.samples : m->max_samples;
    if (cap > m->max_samples) cap = m->max_samples;
    int need = lat_largest_fitting(m->lat, po.budget_ms / 1e3, cap, 1.0);
    need = need < 1 ? 1 : need;
    int target = 2 * need < m->max_samples ? 2 * need : m->max_samples;
    if ((st = grow(m, target)) != EK_OK) return st;
    return anchor(m, need, 3);
  }
  int need = po.samples ? po.samples : DEFAULT_SAMPLES;
  if (need > m->max_samples) need = m->max_samples;
  memset(m->feat, 0, m->feat_bytes);
  m->gen++;
  return grow(m, need);
}

/* ---- Profiling -------------------------------------------------------------------------------- */

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return quantile_sorted(v, n, 0.5);
}

ek_status ek_profile(ek_model *m, const float *input, size_t count, int samples, int repeats, ek_profile_result *out) {
  if (m == NULL) return EK_ERROR_ARGUMENT;
  if (!usable(m) || out == NULL) return fail(m, EK_ERROR_ARGUMENT, "The model handle is not open.");
  if (samples < 1 || samples > m->max_samples || repeats < 1 || repeats > 100000)
    return fail(m, EK_ERROR_ARGUMENT, "Expected samples in [1, %d] and repeats in [1, 100000]. Received: samples=%d, repeats=%d",
                m->max_samples, samples, repeats);
  samples = to_batch(m, samples, 1);
  ek_output_result *outs = calloc((size_t)m->n_outputs, sizeof *outs);
  double *times = malloc(3 * (size_t)repeats * sizeof(double));
  if (outs == NULL || times == NULL) {
    free(outs);
    free(times);
    return fail(m, EK_ERROR_NOMEM, "out of memory");
  }
  ek_result res = {outs, m->n_outputs, 0, 0, 0, 0};
  ek_predict_options po;
  ek_predict_options_init(&po);
  po.samples = samples;
  ek_status st = ek_predict(m, input, count, &po, &res); /* warm-up, and the features of `input` */
  sig *s = m->sampler;
  int rows = m->sampler_batch ? m->sampler_batch : samples;
  for (int i = 0; i < repeats && st == EK_OK; i++) {
    /* the bare invoke: inputs as the last prediction left them, only Run timed */
    if ((st = invoke(m, rows, 0, &m->rng, 0)) != EK_OK) break;
    double t = now_s(m);
    if ((st = run_sig(m, s)) != EK_OK) break;
    times[i] = (now_s(m) - t) * 1e3;
    t = now_s(m);
    if ((st = ek_predict(m, input, count, &po, &res)) != EK_OK) break;
    times[repeats + i] = (now_s(m) - t) * 1e3;
    if (m->trunk) {
      t = now_s(m);
      if ((st = features(m, input)) != EK_OK) break;
      times[2 * repeats + i] = (now_s(m) - t) * 1e3;
    } else {
      times[2 * repeats + i] = 0;
    }
  }
  if (st == EK_OK) {
    out->invoke_ms = median(times, repeats) * (m->sampler_batch ? (double)samples / m->sampler_batch : 1.0);
    out->predict_ms = median(times + repeats, repeats);
    out->trunk_ms = median(times + 2 * repeats, repeats);
    out->samples = samples;
  }
  free(outs);
  free(times);
  return st;
}
