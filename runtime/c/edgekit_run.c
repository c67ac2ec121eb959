/*
 * edgekit-run: MC-dropout prediction with an edgekit .tflite file, from a device shell.
 *
 *   edgekit-run MODEL.tflite INPUT.npy [--samples T] [--budget-ms B] [--threads N] [--json] ...
 *
 * A thin tool over the library (edgekit.h): it reads the .npy input, checks its shape, loads
 * the model (after a crash probe in a child process, see below), predicts every row and prints
 * a table, or with --json the document of `edgekit predict --json` (see write_json). Errors: one line on stderr
 * starting with "Error:", exit 1; usage errors exit 2.
 *
 * The crash probe: the library refuses every file whose digest does not match before LiteRT
 * sees it, but a file damaged and then re-signed (or a file without metadata, with
 * --allow-unverified) can still crash LiteRT's native code. So the first time a file (by its
 * digest) is used with a thread count, it is loaded in a child process first; a child killed by
 * a signal, or one that does not finish within 60 s, becomes a clear error here. Passing files
 * are remembered in $XDG_CACHE_HOME/edgekit/probed-native/ (or ~/.cache/...), so the probe
 * costs once. --no-probe skips it (trusted files only).
 *
 * LiteRT and TFLite print INFO lines on stderr; the tool sends LiteRT's own stderr to /dev/null
 * unless --verbose, so its one-line messages stay readable.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "edgekit.h"
#include "npy.h"

#define PROBE_TIMEOUT_S 60 /* as runtime/safety.py's probe */

static FILE *err_out; /* the real stderr (fd 2 may point at /dev/null while LiteRT runs) */

static const char USAGE[] =
    "Usage: edgekit-run MODEL.tflite INPUT.npy [options]\n"
    "\n"
    "MC-dropout prediction with an edgekit .tflite file, without Python: the mean class\n"
    "probabilities (or values), their spread, and the uncertainty, for every input.\n"
    "INPUT.npy holds one input (the model's input shape) or a batch (N, *shape), float32\n"
    "or float64, already scaled as the model expects.\n"
    "\n"
    "Options:\n"
    "  -T, --samples T        MC samples per input (default 100; with --tolerance or --lead,\n"
    "                         the cap). Exclusive with --budget-ms.\n"
    "      --budget-ms B      latency budget per input in ms: as many samples as fit (p99)\n"
    "      --tolerance E      stop once the standard error is below E (e.g. 0.01)\n"
    "      --lead K           stop once the top class leads the runner-up by K standard errors\n"
    "      --seed S           seed for the masks the runtime draws (reproducible results)\n"
    "      --threads N        XNNPACK threads (default 1)\n"
    "      --json             JSON output (the keys of `edgekit predict --json`)\n"
    "      --samples-out F    also write the per-sample outputs to F.npy, float32\n"
    "                         [inputs, T, size] (fixed T only; F.<name>.npy per output when\n"
    "                         the model has several)\n"
    "      --profile R        time the bare stochastic invoke and the whole prediction on the\n"
    "                         first input, R interleaved rounds; print JSON medians\n"
    "      --no-probe         skip the child-process load probe (trusted files only)\n"
    "      --probe-timeout S  seconds the probe may take before it counts as a hang (default 60)\n"
    "      --allow-unverified run a file without edgekit metadata (its integrity cannot be checked)\n"
    "      --uncalibrated     ignore the temperatures the file carries (the raw MC probabilities)\n"
    "      --verbose          keep LiteRT's own log on stderr\n"
    "      --version          print the version\n"
    "  -h, --help             show this help\n"
    "\n"
    "Examples:\n"
    "  edgekit-run model.tflite shoe.npy --budget-ms 5\n"
    "  edgekit-run model.tflite batch.npy --samples 200 --json\n";

typedef struct {
  const char *model, *input;
  int samples;
  double budget_ms, tolerance, lead;
  int has_seed;
  unsigned long long seed;
  int threads;
  int json;
  const char *samples_out;
  int profile;
  int probe, allow_unverified, verbose, uncalibrated;
  double probe_timeout_s;
} args;

static void say_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("Error: ", err_out);
  vfprintf(err_out, fmt, ap);
  fputc('\n', err_out);
  va_end(ap);
  fflush(err_out);
}

static int usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("Error: ", err_out);
  vfprintf(err_out, fmt, ap);
  fputs(" (see edgekit-run --help)\n", err_out);
  va_end(ap);
  fflush(err_out);
  return 2;
}

/* ---- Arguments -------------------------------------------------------------------------------- */

static int parse_int(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return 0;
  *out = v;
  return 1;
}

static int parse_double(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !isfinite(v)) return 0;
  *out = v;
  return 1;
}

static int parse_args(int argc, char **argv, args *a) {
  memset(a, 0, sizeof *a);
  a->threads = 1;
  a->probe = 1;
  a->probe_timeout_s = PROBE_TIMEOUT_S;
  const char *positional[2];
  int n_pos = 0, have_samples = 0, have_budget = 0;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    const char *value = NULL;
    char name[40];
    if (arg[0] == '-' && arg[1] == '-' && strchr(arg, '=')) { /* --opt=value */
      size_t k = (size_t)(strchr(arg, '=') - arg);
      if (k >= sizeof name) return usage_error("Unknown option '%s'.", arg);
      memcpy(name, arg, k);
      name[k] = '\0';
      value = arg + k + 1;
      arg = name;
    }
#define TAKES_VALUE()                                                              \
  do {                                                                             \
    if (value == NULL) {                                                           \
      if (i + 1 >= argc) return usage_error("Option %s expects a value.", arg);   \
      value = argv[++i];                                                           \
    }                                                                              \
  } while (0)
    long iv;
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      fputs(USAGE, stdout);
      exit(0);
    } else if (strcmp(arg, "--version") == 0) {
      printf("edgekit-run %s\n", ek_version());
      exit(0);
    } else if (strcmp(arg, "-T") == 0 || strcmp(arg, "--samples") == 0) {
      TAKES_VALUE();
      if (!parse_int(value, 1, 65536, &iv))
        return usage_error("Invalid value for --samples. Expected an integer in [1, 65536]. Received: '%s'", value);
      a->samples = (int)iv;
      have_samples = 1;
    } else if (strcmp(arg, "--budget-ms") == 0) {
      TAKES_VALUE();
      if (!parse_double(value, &a->budget_ms) || a->budget_ms <= 0)
        return usage_error("Invalid value for --budget-ms. Expected a number > 0. Received: '%s'", value);
      have_budget = 1;
    } else if (strcmp(arg, "--tolerance") == 0) {
      TAKES_VALUE();
      if (!parse_double(value, &a->tolerance) || !(a->tolerance > 0 && a->tolerance < 1))
        return usage_error("Invalid value for --tolerance. Expected a number in (0, 1). Received: '%s'", value);
    } else if (strcmp(arg, "--lead") == 0) {
      TAKES_VALUE();
      if (!parse_double(value, &a->lead) || a->lead <= 0)
        return usage_error("Invalid value for --lead. Expected a number > 0. Received: '%s'", value);
    } else if (strcmp(arg, "--seed") == 0) {
      TAKES_VALUE();
      char *end;
      errno = 0;
      a->seed = strtoull(value, &end, 10);
      if (errno || end == value || *end || value[0] == '-')
        return usage_error("Invalid value for --seed. Expected a non-negative integer. Received: '%s'", value);
      a->has_seed = 1;
    } else if (strcmp(arg, "--threads") == 0) {
      TAKES_VALUE();
      if (!parse_int(value, 1, 256, &iv))
        return usage_error("Invalid value for --threads. Expected an integer in [1, 256]. Received: '%s'", value);
      a->threads = (int)iv;
    } else if (strcmp(arg, "--probe-timeout") == 0) {
      TAKES_VALUE();
      if (!parse_double(value, &a->probe_timeout_s) || a->probe_timeout_s <= 0)
        return usage_error("Invalid value for --probe-timeout. Expected a number of seconds > 0. Received: '%s'", value);
    } else if (strcmp(arg, "--samples-out") == 0) {
      TAKES_VALUE();
      a->samples_out = value;
    } else if (strcmp(arg, "--profile") == 0) {
      TAKES_VALUE();
      if (!parse_int(value, 1, 100000, &iv))
        return usage_error("Invalid value for --profile. Expected an integer in [1, 100000]. Received: '%s'", value);
      a->profile = (int)iv;
    } else if (strcmp(arg, "--json") == 0 && value == NULL) {
      a->json = 1;
    } else if (strcmp(arg, "--no-probe") == 0 && value == NULL) {
      a->probe = 0;
    } else if (strcmp(arg, "--allow-unverified") == 0 && value == NULL) {
      a->allow_unverified = 1;
    } else if (strcmp(arg, "--uncalibrated") == 0 && value == NULL) {
      a->uncalibrated = 1;
    } else if (strcmp(arg, "--verbose") == 0 && value == NULL) {
      a->verbose = 1;
    } else if (arg[0] == '-' && arg[1] != '\0') {
      return usage_error("Unknown option '%s'.", arg);
    } else {
      if (n_pos == 2) return usage_error("Expected two arguments, MODEL.tflite and INPUT.npy. Received a third: '%s'", arg);
      positional[n_pos++] = arg;
    }
#undef TAKES_VALUE
  }
  if (n_pos != 2) return usage_error("Expected two arguments, MODEL.tflite and INPUT.npy. Received: %d", n_pos);
  if (have_samples && have_budget) return usage_error("--samples and --budget-ms are exclusive: give one of them.");
  if (a->samples_out && (have_budget || a->tolerance > 0 || a->lead > 0))
    return usage_error("--samples-out needs a fixed T: it cannot be combined with --budget-ms, --tolerance or --lead.");
  a->model = positional[0];
  a->input = positional[1];
  return 0;
}

/* ---- stderr while LiteRT runs -------------------------------------------------------------- */

static void quiet_litert(int verbose) {
  int saved = dup(2);
  err_out = saved >= 0 ? fdopen(saved, "w") : stderr;
  if (err_out == NULL) err_out = stderr;
  if (!verbose) {
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
      dup2(devnull, 2);
      close(devnull);
    }
  }
}

/* ---- The crash probe -------------------------------------------------------------------------- */

static int cache_path(char *out, size_t n, const char *sha, int threads) {
  const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  char base[PATH_MAX];
  if (xdg && *xdg) snprintf(base, sizeof base, "%s", xdg);
  else if (home && *home) snprintf(base, sizeof base, "%s/.cache", home);
  else return 0;
  int w = snprintf(out, n, "%s/edgekit/probed-native/%s-t%d-%s", base, sha, threads, ek_version());
  return w > 0 && (size_t)w < n;
}

static void mkdirs(const char *path) {
  char buf[PATH_MAX];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(buf, 0755);
      *p = '/';
    }
}

static void remember_probe(const char *marker) {
  mkdirs(marker);
  char tmp[PATH_MAX + 32];
  snprintf(tmp, sizeof tmp, "%s.%ld", marker, (long)getpid());
  FILE *f = fopen(tmp, "w");
  if (f == NULL) return;
  fputs("ok\n", f);
  if (fclose(f) == 0) rename(tmp, marker);
  else remove(tmp);
}

static const char *signal_name(int sig) {
  switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGABRT: return "SIGABRT";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGKILL: return "SIGKILL";
    default: return "a signal";
  }
}

/* 0: the file loads; 1: an error was printed. */
static int probe(const args *a, const ek_open_options *opts) {
  int fds[2];
  if (pipe(fds) != 0) {
    say_error("Cannot start the load probe: %s", strerror(errno));
    return 1;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    say_error("Cannot start the load probe: %s", strerror(errno));
    return 1;
  }
  if (pid == 0) {
    close(fds[0]);
    ek_model *m = NULL;
    ek_status st = ek_open(a->model, opts, &m);
    char msg[1024];
    int n = snprintf(msg, sizeof msg, "%d %s", (int)st, st == EK_OK ? "" : ek_errmsg(m));
    ssize_t w = write(fds[1], msg, (size_t)(n < (int)sizeof msg ? n : (int)sizeof msg - 1));
    (void)w;
    ek_close(m);
    _exit(0);
  }
  close(fds[1]);
  char msg[1024];
  size_t got = 0;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int timed_out = 0;
  for (;;) {
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double left = a->probe_timeout_s - (double)(t1.tv_sec - t0.tv_sec) - (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (left <= 0) {
      timed_out = 1;
      break;
    }
    struct pollfd p = {fds[0], POLLIN, 0};
    int r = poll(&p, 1, (int)(left * 1000) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t k = read(fds[0], msg + got, sizeof msg - 1 - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    got += (size_t)k;
    if (got == sizeof msg - 1) break;
  }
  close(fds[0]);
  msg[got] = '\0';
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    say_error("Loading %s did not finish within %g s in the probe process (killed): the file is damaged or LiteRT "
              "cannot run it.",
              a->model, a->probe_timeout_s);
    return 1;
  }
  if (WIFSIGNALED(status)) {
    say_error("LiteRT crashed (%s) while loading %s in the probe process: the file is damaged or LiteRT cannot run it.",
              signal_name(WTERMSIG(status)), a->model);
    return 1;
  }
  int code = -1;
  char *rest = NULL;
  if (got > 0) code = (int)strtol(msg, &rest, 10);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || code < 0 || rest == NULL) {
    say_error("The probe process loading %s failed (exit status %d): the file is damaged or LiteRT cannot run it.",
              a->model, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 1;
  }
  if (code != EK_OK) {
    say_error("%s", rest + (*rest == ' '));
    return 1;
  }
  return 0;
}

/* ---- JSON output (one place: every key `edgekit predict --json` writes) ------------------------ */

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
    else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
    else fputc(*p, f);
  }
  fputc('"', f);
}

static void json_float(FILE *f, double v, int digits) {
  if (isfinite(v)) fprintf(f, "%.*g", digits, v);
  else fputs("null", f);
}

static void json_floats(FILE *f, const float *v, size_t n) {
  fputc('[', f);
  for (size_t i = 0; i < n; i++) {
    if (i) fputs(", ", f);
    json_float(f, v[i], 9); /* float32: 9 significant digits round-trip */
  }
  fputc(']', f);
}

static void json_names(FILE *f, const ek_output_info *oi) {
  fputc('[', f);
  for (size_t i = 0; i < oi->size; i++) {
    if (i) fputs(", ", f);
    json_string(f, oi->class_names[i]);
  }
  fputc(']', f);
}

typedef struct {
  ek_output_result *outs; /* per input, per output */
  float *storage;
  ek_result *results;
} run_results;

/* One output's summary for one input: runtime/summaries.py's ClassOutput.row / ValueOutput.row. */
static void json_output_row(FILE *f, const ek_output_info *oi, const ek_output_result *r) {
  if (oi->task == EK_TASK_CLASSIFICATION) {
    fprintf(f, "{\"predicted\": %d, \"label\": ", r->predicted);
    json_string(f, oi->class_names[r->predicted]);
    fputs(", \"confidence\": ", f);
    json_float(f, r->confidence, 9);
    fputs(", \"mean\": ", f);
    json_floats(f, r->mean, oi->size);
    fputs(", \"std\": ", f);
    json_floats(f, r->std, oi->size);
    fputs(", \"entropy\": ", f);
    json_float(f, r->entropy, 17);
    fputs(", \"mutual_information\": ", f);
    json_float(f, r->mutual_information, 17);
    fprintf(f, ", \"calibrated\": %s", oi->calibrated ? "true" : "false");
    if (oi->has_abstain) fprintf(f, ", \"abstain\": %s", r->abstain == 1 ? "true" : "false");
  } else {
    fputs("{\"mean\": ", f);
    json_floats(f, r->mean, oi->size);
    fputs(", \"std\": ", f);
    json_floats(f, r->std, oi->size);
    fputs(", \"aleatoric_std\": ", f);
    if (oi->aleatoric == EK_ALEATORIC_NONE) fputs("null", f);
    else json_floats(f, r->aleatoric_std, oi->size);
    fputs(", \"total_std\": ", f);
    json_floats(f, r->total_std, oi->size);
    fprintf(f, ", \"interval\": {\"level\": %.17g, \"low\": ", oi->interval);
    json_floats(f, r->low, oi->size);
    fputs(", \"high\": ", f);
    json_floats(f, r->high, oi->size);
    fputc('}', f);
  }
  fputc('}', f);
}

/* The document `edgekit predict --json` writes (edgekit/commands/predict.py and
 * MCPrediction.to_dict): the model, every output described, the first output's class names, the
 * notes, and per input the first output's fields at the top level plus every output under
 * "outputs". Every key is written here and nowhere else. */
static void write_json(FILE *f, const args *a, const ek_model_info *info, const ek_output_info *ois, int n_inputs,
                       const run_results *rr) {
  fputs("{\"model\": ", f);
  json_string(f, a->model);
  fputs(", \"stochastic\": ", f);
  json_string(f, info->stochastic);
  fprintf(f, ", \"verified\": %s, \"outputs\": [", info->verified ? "true" : "false");
  for (int o = 0; o < info->num_outputs; o++) {
    const ek_output_info *oi = &ois[o];
    fputs(o ? ", {\"name\": " : "{\"name\": ", f);
    json_string(f, oi->name);
    if (oi->task == EK_TASK_CLASSIFICATION) {
      fputs(", \"task\": \"classification\", \"class_names\": ", f);
      json_names(f, oi);
    } else {
      fputs(", \"task\": \"regression\", \"shape\": [", f);
      for (int d = 0; d < oi->rank; d++) fprintf(f, d ? ", %d" : "%d", oi->shape[d]);
      fputc(']', f);
    }
    fputc('}', f);
  }
  fputs("], \"class_names\": ", f);
  if (ois[0].task == EK_TASK_CLASSIFICATION) json_names(f, &ois[0]);
  else fputs("null", f);
  fputs(", \"notes\": [", f);
  for (int k = 0; k < info->num_notes; k++) {
    if (k) fputs(", ", f);
    json_string(f, info->notes[k]);
  }
  fputs("], \"predictions\": [", f);
  for (int i = 0; i < n_inputs; i++) {
    const ek_result *res = &rr->results[i];
    /* the first output's row, opened up for the run's own keys */
    char *first = NULL;
    size_t first_len = 0;
    FILE *mem = open_memstream(&first, &first_len);
    if (mem == NULL) return;
    json_output_row(mem, &ois[0], &res->outputs[0]);
    fclose(mem);
    fputs(i ? ", " : "", f);
    fwrite(first, 1, first_len - 1, f); /* without its closing brace */
    free(first);
    fprintf(f, ", \"samples\": %d, \"elapsed_ms\": ", res->samples);
    json_float(f, res->elapsed_ms, 17);
    fprintf(f, ", \"budget_cut\": %s, \"outputs\": {", res->budget_cut ? "true" : "false");
    for (int o = 0; o < info->num_outputs; o++) {
      if (o) fputs(", ", f);
      json_string(f, ois[o].name);
      fputs(": ", f);
      json_output_row(f, &ois[o], &res->outputs[o]);
    }
    fputs("}}", f);
  }
  fputs("]}\n", f);
}

/* ---- Table output ----------------------------------------------------------------------------- */

static void write_table(FILE *f, const ek_model_info *info, const ek_output_info *ois, int n_inputs,
                        const run_results *rr) {
  for (int i = 0; i < n_inputs; i++) {
    const ek_result *res = &rr->results[i];
    if (n_inputs > 1) fprintf(f, "%sinput %d\n", i ? "\n" : "", i);
    for (int o = 0; o < info->num_outputs; o++) {
      const ek_output_info *oi = &ois[o];
      const ek_output_result *r = &res->outputs[o];
      if (info->num_outputs > 1) fprintf(f, "output %s\n", oi->name);
      if (oi->task == EK_TASK_CLASSIFICATION) {
        size_t w = 5;
        for (size_t c = 0; c < oi->size; c++)
          if (strlen(oi->class_names[c]) > w) w = strlen(oi->class_names[c]);
        fprintf(f, "%-*s  %7s  %7s\n", (int)w, "class", "mean", "std");
        /* classes by decreasing mean */
        int *order = malloc(oi->size * sizeof *order);
        if (order == NULL) return;
        for (size_t c = 0; c < oi->size; c++) order[c] = (int)c;
        for (size_t x = 1; x < oi->size; x++)
          for (size_t y = x; y > 0 && r->mean[order[y]] > r->mean[order[y - 1]]; y--) {
            int t = order[y];
            order[y] = order[y - 1];
            order[y - 1] = t;
          }
        for (size_t c = 0; c < oi->size; c++) {
          int k = order[c];
          fprintf(f, "%-*s  %7.4f  %7.4f%s\n", (int)w, oi->class_names[k], r->mean[k], r->std[k],
                  k == r->predicted ? " <" : "");
        }
        free(order);
        fprintf(f, "\npredicted: %s (%.4f)   entropy: %.4f nats   mutual information: %.4f nats\n",
                oi->class_names[r->predicted], r->confidence, r->entropy, r->mutual_information);
        if (oi->has_abstain) fprintf(f, "abstain: %s\n", r->abstain == 1 ? "yes" : "no");
      } else {
        fprintf(f, "%5s  %12s  %12s  %12s  %12s\n", "value", "mean", "std", "low", "high");
        for (size_t k = 0; k < oi->size; k++)
          fprintf(f, "%5zu  %12.6g  %12.6g  %12.6g  %12.6g\n", k, r->mean[k], r->std[k], r->low[k], r->high[k]);
        fprintf(f, "(interval: central %.0f%%%s)\n", oi->interval * 100,
                oi->aleatoric == EK_ALEATORIC_NONE ? ", from the samples alone" : ", epistemic + aleatoric");
      }
    }
    fprintf(f, "samples: %d%s   time: %.2f ms\n", res->samples, res->budget_cut ? " (cut by the budget)" : "",
            res->elapsed_ms);
  }
}

/* ---- Main ------------------------------------------------------------------------------------- */

static int same_file(const char *a, const char *b) {
  struct stat x, y;
  return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

static void shape_text(char *out, size_t n, const int *shape, int rank, int batch) {
  size_t w = (size_t)snprintf(out, n, "(%s", batch ? "batch, " : "");
  for (int d = 0; d < rank && w < n; d++)
    w += (size_t)snprintf(out + w, n - w, "%d%s", shape[d], rank == 1 && !batch ? "," : d + 1 < rank ? ", " : "");
  if (w < n) snprintf(out + w, n - w, ")");
}

static void npy_shape_text(char *out, size_t n, const npy_array *x) {
  size_t w = (size_t)snprintf(out, n, "(");
  for (int d = 0; d < x->rank && w < n; d++)
    w += (size_t)snprintf(out + w, n - w, "%lld%s", x->shape[d], x->rank == 1 ? "," : d + 1 < x->rank ? ", " : "");
  if (w < n) snprintf(out + w, n - w, ")");
}

int main(int argc, char **argv) {
  err_out = stderr;
  args a;
  int rc = parse_args(argc, argv, &a);
  if (rc) return rc;
  quiet_litert(a.verbose);

  ek_open_options opts;
  ek_open_options_init(&opts);
  opts.threads = a.threads;
  opts.has_seed = a.has_seed;
  opts.seed = a.seed;
  opts.allow_unverified = a.allow_unverified;
  opts.calibrated = !a.uncalibrated;
  opts.litert_log = a.verbose ? EK_LITERT_LOG_INFO : EK_LITERT_LOG_SILENT;
  if (a.samples > opts.max_samples) opts.max_samples = a.samples;

  /* 1. The file's digest, without LiteRT: the key of the probe cache. ek_open checks it (the
   * claimed digest is not hashed twice); a damaged entry or a missing file fails here already. */
  char sha[65], msg[1024];
  int verified = 0;
  if (ek_claimed_digest(a.model, a.allow_unverified, sha, &verified, msg, sizeof msg) != EK_OK) {
    say_error("%s", msg);
    return 1;
  }
  if (!verified) fprintf(err_out, "Warning: %s has no edgekit metadata, so its integrity cannot be verified; running it as is.\n", a.model);
  /* 2. The input, before anything is loaded. */
  npy_array x;
  if (npy_read(a.input, &x, msg, sizeof msg) != 0) {
    say_error("%s", msg);
    return 1;
  }
  if (a.samples_out && (same_file(a.samples_out, a.model) || same_file(a.samples_out, a.input))) {
    npy_free(&x);
    return usage_error("--samples-out must not overwrite an input. Received: '%s'", a.samples_out);
  }
  /* 3. The crash probe, then the model in this process. */
  char marker[PATH_MAX];
  int cached = 0;
  if (a.probe) {
    struct stat st;
    cached = cache_path(marker, sizeof marker, sha, a.threads) && stat(marker, &st) == 0;
    if (!cached) {
      if (probe(&a, &opts) != 0) {
        npy_free(&x);
        return 1;
      }
      if (cache_path(marker, sizeof marker, sha, a.threads)) remember_probe(marker);
    }
  }
  ek_model *m = NULL;
  if (ek_open(a.model, &opts, &m) != EK_OK) {
    say_error("%s", ek_errmsg(m));
    ek_close(m);
    npy_free(&x);
    return 1;
  }
  ek_model_info info;
  ek_get_info(m, &info);
  if (info.note) fprintf(err_out, "Note: %s\n", info.note);
  /* 4. The input's shape: one input, or a batch. */
  int single = x.rank == info.input_rank, n_inputs = 1, ok = 1;
  if (single) {
    for (int d = 0; d < info.input_rank; d++) ok &= x.shape[d] == info.input_shape[d];
  } else if (x.rank == info.input_rank + 1) {
    for (int d = 0; d < info.input_rank; d++) ok &= x.shape[d + 1] == info.input_shape[d];
    n_inputs = (int)(x.shape[0] < INT32_MAX ? x.shape[0] : INT32_MAX);
  } else {
    ok = 0;
  }
  if (!ok || n_inputs == 0) {
    char want[128], want_b[128], got[160];
    shape_text(want, sizeof want, info.input_shape, info.input_rank, 0);
    shape_text(want_b, sizeof want_b, info.input_shape, info.input_rank, 1);
    npy_shape_text(got, sizeof got, &x);
    if (ok && n_inputs == 0)
      say_error("Input batch is empty. Expected at least one input of shape %s. Received: shape=%s", want, got);
    else
      say_error("Input has the wrong shape. Expected %s for one input or %s for a batch. Received: shape=%s", want, want_b,
                got);
    ek_close(m);
    npy_free(&x);
    return 1;
  }
  /* 5. Predict. */
  ek_output_info ois[64];
  size_t per_input = 0;
  for (int o = 0; o < info.num_outputs; o++) {
    ek_get_output_info(m, o, &ois[o]);
    per_input += 6 * ois[o].size;
  }
  ek_predict_options po;
  ek_predict_options_init(&po);
  po.samples = a.samples;
  po.budget_ms = a.budget_ms;
  po.tolerance = a.tolerance;
  po.lead_k = a.lead;
  if (a.profile) {
    ek_profile_result pr;
    int T = a.samples ? a.samples : 100;
    if (ek_profile(m, x.data, info.input_size, T, a.profile, &pr) != EK_OK) {
      say_error("%s", ek_errmsg(m));
      rc = 1;
    } else {
      printf("{\"model\": ");
      json_string(stdout, a.model);
      printf(", \"plan\": \"%s\", \"samples\": %d, \"rounds\": %d, \"threads\": %d, \"invoke_ms\": %.6g, \"predict_ms\": "
             "%.6g, \"trunk_ms\": %.6g, \"predict_over_invoke\": %.4f}\n",
             info.plan, pr.samples, a.profile, a.threads, pr.invoke_ms, pr.predict_ms, pr.trunk_ms,
             pr.predict_ms / pr.invoke_ms);
    }
    ek_close(m);
    npy_free(&x);
    return rc;
  }
  int fixed_t = a.budget_ms <= 0 && a.tolerance <= 0 && a.lead <= 0;
  int T = a.samples ? a.samples : 100;
  if (info.sampler_batch) T = (T + info.sampler_batch - 1) / info.sampler_batch * info.sampler_batch;
  run_results rr;
  rr.outs = calloc((size_t)n_inputs * (size_t)info.num_outputs, sizeof *rr.outs);
  rr.results = calloc((size_t)n_inputs, sizeof *rr.results);
  rr.storage = malloc((size_t)n_inputs * per_input * sizeof(float) + 1);
  size_t sample_values = 0;
  for (int o = 0; o < info.num_outputs; o++) sample_values += (size_t)T * ois[o].size;
  float *samples_buf = a.samples_out ? malloc((size_t)n_inputs * sample_values * sizeof(float) + 1) : NULL;
  if (!rr.outs || !rr.results || !rr.storage || (a.samples_out && !samples_buf)) {
    say_error("out of memory (%d inputs)", n_inputs);
    return 1;
  }
  if (a.budget_ms > 0 && ek_warmup(m, &po) != EK_OK) { /* calibrate and allocate outside the budget */
    say_error("%s", ek_errmsg(m));
    return 1;
  }
  float *cursor = rr.storage, *scursor = samples_buf;
  for (int i = 0; i < n_inputs && rc == 0; i++) {
    ek_output_result *outs = rr.outs + (size_t)i * (size_t)info.num_outputs;
    for (int o = 0; o < info.num_outputs; o++) {
      size_t s = ois[o].size;
      outs[o].mean = cursor;
      outs[o].std = cursor + s;
      outs[o].low = cursor + 2 * s;
      outs[o].high = cursor + 3 * s;
      outs[o].aleatoric_std = cursor + 4 * s;
      outs[o].total_std = cursor + 5 * s;
      cursor += 6 * s;
      if (samples_buf) {
        outs[o].samples = scursor;
        outs[o].samples_capacity = T;
        scursor += (size_t)T * s;
      }
    }
    ek_result *res = &rr.results[i];
    res->outputs = outs;
    res->num_outputs = info.num_outputs;
    if (ek_predict(m, x.data + (size_t)i * info.input_size, info.input_size, &po, res) != EK_OK) {
      say_error("%s", ek_errmsg(m));
      rc = 1;
    }
  }
  if (rc == 0) {
    if (a.json) write_json(stdout, &a, &info, ois, n_inputs, &rr);
    else write_table(stdout, &info, ois, n_inputs, &rr);
    fflush(stdout);
  }
  if (rc == 0 && samples_buf && fixed_t) {
    /* per output: [inputs, T, size], from the interleaved per-input blocks */
    size_t offset = 0;
    for (int o = 0; o < info.num_outputs && rc == 0; o++) {
      size_t block = (size_t)T * ois[o].size;
      float *arr = malloc((size_t)n_inputs * block * sizeof(float) + 1);
      if (arr == NULL) {
        say_error("out of memory");
        rc = 1;
        break;
      }
      for (int i = 0; i < n_inputs; i++) memcpy(arr + (size_t)i * block, samples_buf + (size_t)i * sample_values + offset, block * sizeof(float));
      offset += block;
      char path[PATH_MAX];
      if (info.num_outputs == 1) {
        snprintf(path, sizeof path, "%s", a.samples_out);
      } else {
        size_t len = strlen(a.samples_out);
        int has_ext = len > 4 && strcmp(a.samples_out + len - 4, ".npy") == 0;
        snprintf(path, sizeof path, "%.*s.%s.npy", (int)(has_ext ? len - 4 : len), a.samples_out, ois[o].name);
      }
      long long shape[3] = {n_inputs, T, (long long)ois[o].size};
      if (npy_write(path, arr, 3, shape, msg, sizeof msg) != 0) {
        say_error("%s", msg);
        rc = 1;
      }
      free(arr);
    }
  }
  free(samples_buf);
  free(rr.outs);
  free(rr.results);
  free(rr.storage);
  ek_close(m);
  npy_free(&x);
  return rc;
}
