/*
 * edgekit.h: MC-dropout prediction in C, over LiteRT's C API.
 *
 * edgekit exports a Keras model with MC-dropout layers to one .tflite file whose dropout stays
 * stochastic (docs/format.md). This library runs such a file on a device without Python: it
 * checks the file's digest, plans the work from its metadata, draws T stochastic samples in
 * few interpreter calls, and returns their mean, their spread and the uncertainty measures,
 * under an optional latency budget. It is the C counterpart of edgekit.runtime.MCModel and
 * gives the same numbers for the same masks (docs/native.md).
 *
 *     ek_model *model = NULL;
 *     ek_open_options opts;
 *     ek_open_options_init(&opts);
 *     opts.threads = 1;
 *     if (ek_open("model.tflite", &opts, &model) != EK_OK) {
 *       fprintf(stderr, "%s\n", ek_errmsg(model));   // model may be NULL (no memory): "out of memory"
 *       ek_close(model);
 *       return 1;
 *     }
 *     ek_output_info info;
 *     ek_get_output_info(model, 0, &info);            // e.g. a classifier of info.size classes
 *     float mean[16], std[16];
 *     ek_output_result out = {0};
 *     out.mean = mean;
 *     out.std = std;
 *     ek_result result = {&out, 1, 0, 0.0, 0, 0};
 *     ek_predict_options popts;
 *     ek_predict_options_init(&popts);
 *     popts.samples = 100;                            // or popts.budget_ms = 5.0
 *     if (ek_predict(model, x, x_count, &popts, &result) != EK_OK)
 *       fprintf(stderr, "%s\n", ek_errmsg(model));
 *     printf("class %d (p=%.3f, MI=%.3f nats)\n", out.predicted, out.confidence, out.mutual_information);
 *     ek_close(model);
 *
 * Conventions
 * -----------
 * - Every function returns an ek_status; EK_OK is 0. After an error, ek_errmsg(model) gives
 *   one sentence saying what was expected and what was received.
 * - The caller owns every output buffer; the library never keeps a pointer to one after the
 *   call returns. Strings and arrays the library hands out (names, info) belong to the model
 *   and stay valid until ek_close.
 * - No global state: everything lives in the ek_model handle. A handle is not thread-safe:
 *   use one per thread (each has its own LiteRT environment and compiled model). Handles on
 *   different threads never share anything. (LiteRT's own logger is process-wide in LiteRT;
 *   ek_open_options.litert_log sets it only when asked.)
 * - Probabilities and values are float32 as the model computes them; statistics are computed
 *   in double precision. Logarithms are natural (nats).
 *
 * Randomness (the masks)
 * ----------------------
 * Where the file lets the runtime draw the keep-masks (mask-input files, and unseeded in-graph
 * files that carry the `masked` twin), the library draws them with four xoshiro256** generators
 * (Blackman and Vigna, 2018) side by side: lane l is seeded with the splitmix64 outputs 4l..4l+3
 * of ek_open_options.seed (or of the operating system's entropy when no seed is given), and one
 * step of the four lanes gives four consecutive 64-bit words of the stream, lane 0 first (AVX2
 * computes a step at once where the CPU has it; elsewhere scalar code gives the same words, and
 * the environment variable EDGEKIT_NO_AVX2=1 forces it). The masks of one stochastic invoke of B
 * samples are drawn in the order of the metadata's `mc_layers` (one mask input per layer that has
 * one); each mask of B * prod(mask_shape) units, row-major, takes ceil(units / 16) steps, four
 * units per word from the lowest 16 bits up, and a unit is kept when its 16 bits are >=
 * round_half_even(rate * 65536) (so the rate is resolved to 1/65536, as the Python runtime does;
 * units left in the last step of a mask are discarded). One generator per handle, never reset:
 * masks never repeat across calls. tests/test_native.py reproduces the stream in numpy to feed
 * the Python interpreter the same masks. Files that draw their own masks (in-graph without the
 * twin, or seeded) use the file's RANDOM_UNIFORM ops, as the Python runtime does.
 */
#ifndef EDGEKIT_H_
#define EDGEKIT_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EK_VERSION "0.1.0"

/* The version of this library, EK_VERSION. */
const char *ek_version(void);

/* ---- Status codes ------------------------------------------------------------------------ */

typedef enum ek_status {
  EK_OK = 0,
  EK_ERROR_ARGUMENT = 1,    /* a bad argument or input: wrong size, NaN/Inf, bad option */
  EK_ERROR_IO = 2,          /* the file is missing, unreadable, not a regular file, or too large */
  EK_ERROR_INTEGRITY = 3,   /* the file differs from what was exported (digest), is damaged, or
                               carries no digest (and unverified files were not allowed) */
  EK_ERROR_FORMAT = 4,      /* the edgekit metadata is malformed */
  EK_ERROR_UNSUPPORTED = 5, /* a valid file this library cannot run (format, signatures, dtypes) */
  EK_ERROR_LITERT = 6,      /* LiteRT refused to load, compile or run the model */
  EK_ERROR_BUDGET = 7,      /* the latency budget is smaller than one MC sample on this machine */
  EK_ERROR_OUTPUT = 8,      /* the model ran but its output is not what the metadata promises
                               (not probabilities, NaN/Inf, or never written) */
  EK_ERROR_NOMEM = 9,       /* out of memory */
} ek_status;

/* The name of a status code ("EK_ERROR_BUDGET", ...), a static string. */
const char *ek_status_name(ek_status status);

/* ---- Opening a model -------------------------------------------------------------------- */

typedef struct ek_model ek_model;

/* How ek_open_options.litert_log sets LiteRT's process-wide logger. */
typedef enum ek_litert_log {
  EK_LITERT_LOG_UNCHANGED = 0, /* leave it as it is (LiteRT's default prints INFO and up) */
  EK_LITERT_LOG_ERROR = 1,     /* errors only */
  EK_LITERT_LOG_SILENT = 2,    /* nothing */
  EK_LITERT_LOG_INFO = 3,      /* everything LiteRT reports at INFO and up */
} ek_litert_log;

typedef struct ek_open_options {
  int threads;          /* XNNPACK threads (default 1: predictable latency; handles scale across cores) */
  int has_seed;         /* 1: draw the runtime's masks from `seed` (reproducible), 0: from OS entropy */
  uint64_t seed;
  int allow_unverified; /* 1: run a file without edgekit metadata (no digest to check); ek_get_info
                           says verified = 0. Default 0: such a file is refused with
                           EK_ERROR_INTEGRITY. */
  int max_samples;      /* cap on samples per prediction (default 1000, at most 65536); also sizes
                           the buffers of the largest stochastic invoke */
  size_t max_file_bytes; /* files larger than this are refused before they are read (default 1 GiB) */
  size_t memory_bytes;  /* tensor memory budget (default 512 MiB): a tensor declaring more at batch 1
                           is refused before LiteRT allocates it, and max_samples is lowered to the
                           largest batch of the stochastic signature that fits */
  int calibrated;       /* 1 (default): apply the temperatures the file carries to its class outputs;
                           0: the raw MC probabilities */
  ek_litert_log litert_log;
  /* The clock of the latency budget, in seconds (monotonic). NULL: CLOCK_MONOTONIC. Tests
   * inject a fake one; the latency model learns from it. */
  double (*clock)(void *clock_ctx);
  void *clock_ctx;
} ek_open_options;

/* Fills the defaults above. Always call it before setting fields: fields may be added. */
void ek_open_options_init(ek_open_options *opts);

/* Opens an edgekit .tflite file for prediction.
 *
 * In order: the file is read into memory (one copy, which is also what LiteRT runs, so the
 * bytes checked are the bytes run); its edgekit metadata entry is located with a bounds-checked
 * reader and its SHA-256 digest is checked (docs/format.md: the 64 hex digits of `sha256` read
 * as ASCII '0' while hashing), all BEFORE LiteRT sees the bytes, so a file with one changed byte
 * is refused with EK_ERROR_INTEGRITY and never reaches native code that could crash on it; the
 * metadata is parsed (edgekit/1 and edgekit/2); every tensor of every subgraph is checked against
 * memory_bytes by its declared shape and shape signature, still on the raw bytes; LiteRT compiles
 * the model for the CPU with `threads` XNNPACK threads; the signatures are planned by role (trunk
 * once per input, the masked twin or the head at batch T, or `full`); and each planned signature
 * runs once on zeros with NaN-filled outputs, so a signature whose output LiteRT does not write
 * is caught here (see ek_model_info.note).
 *
 * Whether or not it succeeds, *model receives a handle (NULL only when memory ran out): on
 * failure it holds the message for ek_errmsg and can only be closed. Always call ek_close.
 *
 * A digest proves the file is what was exported; it cannot vouch for a file that was damaged
 * and then re-signed, or for a file without metadata. LiteRT can crash natively on such a file.
 * Untrusted files should be loaded first in a separate process (edgekit-run does: --no-probe).
 */
ek_status ek_open(const char *path, const ek_open_options *opts, ek_model **model);

/* The same from bytes in memory (an app's asset). The bytes are copied; the caller keeps its
 * buffer. */
ek_status ek_open_bytes(const void *data, size_t size, const ek_open_options *opts, ek_model **model);

/* Frees everything the handle owns. NULL is a no-op. */
void ek_close(ek_model *model);

/* The message of the last error on this handle ("" after success; "out of memory" for NULL). */
const char *ek_errmsg(const ek_model *model);

/* ---- What the file holds ---------------------------------------------------------------- */

typedef enum ek_task { EK_TASK_CLASSIFICATION = 0, EK_TASK_REGRESSION = 1 } ek_task;

typedef enum ek_aleatoric {
  EK_ALEATORIC_NONE = 0,            /* no aleatoric part declared: intervals from the samples alone */
  EK_ALEATORIC_HOMOSCEDASTIC = 1,   /* `noise_variance` in the metadata */
  EK_ALEATORIC_HETEROSCEDASTIC = 2, /* a declared log-variance output, per sample */
} ek_aleatoric;

typedef struct ek_model_info {
  const char *format;     /* "edgekit/1", "edgekit/2", or "none" (unverified foreign file) */
  const char *stochastic; /* "in-graph", "mask-input" or "none" */
  const char *plan;       /* the signatures used: "trunk+masked", "trunk+head", "masked", "full" */
  const char *masks_from; /* "runtime" (drawn here, see Randomness), "file" (RANDOM_UNIFORM), "none" */
  const char *sha256;     /* the verified digest (or the file's plain SHA-256 when unverified) */
  int verified;           /* 1: the digest matched */
  int input_rank;         /* input shape without the batch axis */
  int input_shape[8];
  size_t input_size;      /* values per input: the product of input_shape */
  int input_int8;         /* 1: the file takes int8 inputs (inputs are still given as float and
                             quantized here with the file's scale and zero point) */
  int num_outputs;
  int sampler_batch;      /* 0: any batch; else the stochastic signature runs at exactly this
                             batch and T is drawn in multiples of it (static batches, seeded files) */
  int max_samples;
  const char *note;       /* NULL, or a sentence about the plan (e.g. why the trunk is not used) */
  const char *const *notes; /* num_notes sentences a result should carry (the `notes` of edgekit
                               predict --json): an uncalibrated output, a value output without noise
                               variance, and the plan's note */
  int num_notes;
} ek_model_info;

ek_status ek_get_info(const ek_model *model, ek_model_info *info);

typedef struct ek_output_info {
  const char *name;        /* the signature output (Keras output name), e.g. "probs" */
  ek_task task;
  size_t size;             /* classification: classes (2 for a sigmoid); regression: values */
  int rank;                /* the output's shape without the batch axis (its product: the values) */
  int shape[8];
  const char *const *class_names; /* `size` names (the metadata's, or "0", "1", ...) */
  int sigmoid;             /* 1: one sigmoid unit read as P(class 1): classes [1 - p, p] */
  int calibrated;          /* 1: the file's temperature is applied to every sample */
  double temperature;      /* 1.0 when not calibrated */
  double mi_slope;         /* the temperature of an input is temperature * exp(mi_slope * MI), with
                              MI the mutual information of its raw samples (0: one temperature) */
  int has_abstain;         /* 1: the metadata gives an abstention rule */
  const char *abstain_score; /* "entropy", "confidence" (1 - the top mean probability) or
                                "mutual_information", of the calibrated samples */
  double abstain_threshold;  /* abstain when the score is above it */
  ek_aleatoric aleatoric;  /* regression */
  double interval;         /* regression: level of the central predictive interval (e.g. 0.9) */
} ek_output_info;

/* index in [0, num_outputs), in the order of the metadata's `outputs` (v1: the one output). */
ek_status ek_get_output_info(const ek_model *model, int index, ek_output_info *info);

/* ---- Predicting --------------------------------------------------------------------------- */

typedef struct ek_predict_options {
  int samples;      /* T. Default 100 without a budget or a stop rule; with one, it is the cap
                       (default max_samples). Rounded up to a multiple of sampler_batch. */
  double budget_ms; /* > 0: latency budget for this input; 0: none. See Budgets below. */
  double tolerance; /* > 0: stop once the standard error is below it (classification: of the top
                       class's mean probability; values: of every mean) */
  double lead_k;    /* > 0: also stop once the top class leads the runner-up by more than lead_k
                       standard errors of their difference (classification outputs) */
  int min_samples;  /* a stop rule is first checked after this many samples (default 8: fewer
                       give no usable standard error), then after chunks that double */
} ek_predict_options;

void ek_predict_options_init(ek_predict_options *opts);

typedef struct ek_output_result {
  /* Caller-owned arrays of ek_output_info.size floats; NULL: not wanted. */
  float *mean;  /* classification: mean class probabilities; regression: MC mean */
  float *std;   /* standard deviation over the samples (population, ddof = 0): of the class
                   probabilities, or of the values (the epistemic part) */
  float *low;   /* regression: the central predictive interval at ek_output_info.interval */
  float *high;
  float *aleatoric_std; /* regression: sqrt of the mean aleatoric variance (noise_variance, or
                           variance_scale * exp(log-variance) per sample); NaN when none is declared */
  float *total_std;     /* regression: sqrt(epistemic variance + aleatoric variance) */
  /* Optional per-sample outputs (after calibration): `samples_capacity` rows of `size` floats,
   * sample-major. The first min(samples used, samples_capacity) rows are written. */
  float *samples;
  int samples_capacity;
  /* Filled for classification outputs: */
  int predicted;             /* index of the highest mean probability */
  float confidence;          /* that probability */
  double entropy;            /* of the mean probabilities (total uncertainty), nats */
  double mutual_information; /* entropy minus the mean per-sample entropy (BALD), nats */
  int abstain;               /* -1: no rule in the file; 0/1: the file's rule says keep/abstain */
} ek_output_result;

typedef struct ek_result {
  ek_output_result *outputs; /* caller-owned array of `num_outputs` entries */
  int num_outputs;           /* must equal ek_model_info.num_outputs */
  int samples;               /* MC samples used */
  double elapsed_ms;         /* wall time of the call (the budget's clock) */
  int budget_cut;            /* 1: the budget stopped sampling before `samples` was reached */
  int stopped_early;         /* 1: a stop rule (tolerance / lead_k) ended sampling */
} ek_result;

/* MC-dropout prediction for ONE input of ek_model_info.input_size float values (row-major).
 *
 * The trunk runs once; the stochastic signature runs at batch T (one invoke for T samples, or
 * a few chunks under a budget or a stop rule); masks are drawn as described at the top. Every
 * output buffer LiteRT writes is filled with NaN before the invoke, and what comes back is
 * checked: probabilities in [0, 1] summing to 1, values finite; anything else is EK_ERROR_OUTPUT
 * (a damaged file whose digest was recomputed, or a file LiteRT does not run as exported).
 *
 * The summaries are the Python runtime's (runtime/summaries.py, runtime/calibration.py), in
 * double precision. Class outputs: each sample's probabilities become softmax(log(p + 1e-12) /
 * tau) before averaging, with tau = temperature * exp(mi_slope * MI of the raw samples) when the
 * file carries a temperature (and ek_open_options.calibrated); the abstention score is taken on
 * the calibrated mean. Value outputs: mean, epistemic std, aleatoric std, total std and the
 * central interval; with an aleatoric part the interval is that of the predictive mixture
 * (1/T) sum_t N(mu_t, s_t^2) (s_t^2 the noise variance, or variance_scale * exp(log-variance) of
 * sample t), found by safeguarded Newton steps on its CDF; without one, the samples' quantiles
 * (linear interpolation, numpy's default).
 *
 * Budgets: with budget_ms > 0 the call aims to return within budget_ms (p99), drawing as many
 * samples as fit. A latency model cost(T) = fixed + per_sample * T (relative-error least squares
 * over recent invokes, with the machine's speed of the moment and a 99.5% margin learnt per size
 * range) sizes the work; sampling goes in chunks of at most a third of the budget, so a delay in
 * an early chunk is absorbed by the later ones, and the last chunk is the largest whose p99 fits
 * what is left minus a slack learnt from how often calls end late. At least 75% of the samples
 * that fit at the typical cost are drawn. The model is calibrated on the first budgeted call
 * (or by ek_warmup, which also allocates for the sizes the budget needs): the budget's clock
 * starts after that. A budget smaller than the fitted cost of one sample is EK_ERROR_BUDGET
 * (a result from zero samples would be garbage); one that is only tight draws one sample and
 * sets budget_cut.
 *
 * Stop rules (tolerance, lead_k) work alone and under a budget; they end sampling once every
 * output is settled, and set stopped_early.
 */
ek_status ek_predict(ek_model *model, const float *input, size_t input_count, const ek_predict_options *opts,
                     ek_result *result);

/* Calibrates the latency model (first call) and allocates for the samples `opts` will need, so
 * the first budgeted ek_predict pays neither. Optional. */
ek_status ek_warmup(ek_model *model, const ek_predict_options *opts);

/* ---- Profiling ---------------------------------------------------------------------------- */

typedef struct ek_profile_result {
  double invoke_ms;  /* median of the bare stochastic invoke at batch `samples`: inputs and masks
                        written once, only LiteRT's Run timed */
  double predict_ms; /* median of a whole ek_predict at `samples` (trunk, masks, invoke, checks,
                        statistics) */
  double trunk_ms;   /* median of the trunk at batch 1 (0 without a trunk) */
  int samples;
} ek_profile_result;

/* Times the parts of a prediction on `input`, interleaved (one of each per round, `repeats`
 * rounds after a warm-up), so a noisy neighbour hits them alike. */
ek_status ek_profile(ek_model *model, const float *input, size_t input_count, int samples, int repeats,
                     ek_profile_result *out);

/* ---- Integrity only ------------------------------------------------------------------------ */

/* Checks the digest of a file without LiteRT (nothing is loaded). EK_OK when it matches: then
 * sha256_hex (65 bytes) receives the digest. A file without edgekit metadata gives
 * EK_ERROR_INTEGRITY unless allow_unverified (then EK_OK, *verified = 0, and sha256_hex is the
 * file's plain SHA-256). The message goes to err (may be NULL). */
ek_status ek_verify_file(const char *path, int allow_unverified, char sha256_hex[65], int *verified, char *err,
                         size_t errlen);

/* The digest a file's edgekit metadata claims, read WITHOUT hashing the file (cheap): a key for
 * caches of facts about one content, such as edgekit-run's probe cache. It is not checked here
 * (ek_open checks it before LiteRT sees the file). Damaged entries and files without metadata are
 * refused as by ek_verify_file; with allow_unverified, a file without metadata gives its plain
 * SHA-256 (hashed) and *has_metadata = 0. */
ek_status ek_claimed_digest(const char *path, int allow_unverified, char sha256_hex[65], int *has_metadata, char *err,
                            size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* EDGEKIT_H_ */
