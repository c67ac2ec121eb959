/*
 * A small strict JSON reader (RFC 8259) for the edgekit metadata entry: a tree of nodes in one
 * arena, freed at once. It is written for untrusted bytes (the metadata is parsed before the
 * digest can be checked, since the digest lives inside it): every read is bounds-checked,
 * nesting is limited, the text must be UTF-8, and any error is a message, never a crash.
 *
 * Duplicate keys: the last one wins (as Python's json module). NaN/Infinity literals are
 * refused (edgekit writes its metadata with allow_nan=False).
 *
 * Numbers are converted without strtod, whose decimal point follows the process locale: the
 * usual fast path (at most 15 significant digits, a power of ten of at most 22) is exact,
 * other numbers are within a few ulp.
 */
#include "ek_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

typedef struct block {
  struct block *next;
  size_t used, cap;
  max_align_t align[]; /* storage */
} block;

struct ek_json_doc {
  block *blocks;
  ek_json *root;
};

typedef struct {
  const char *p, *end, *start;
  ek_json_doc *doc;
  char *err;
  size_t errlen;
  int failed;
} parser;

static void *arena_alloc(ek_json_doc *doc, size_t n) {
  n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
  block *b = doc->blocks;
  if (b == NULL || b->cap - b->used < n) {
    size_t cap = n > 4096 ? n : 4096;
    b = malloc(sizeof(block) + cap);
    if (b == NULL) return NULL;
    b->next = doc->blocks;
    b->used = 0;
    b->cap = cap;
    doc->blocks = b;
  }
  void *out = (char *)b->align + b->used;
  b->used += n;
  return out;
}

static void fail(parser *ps, const char *what) {
  if (ps->failed) return;
  ps->failed = 1;
  snprintf(ps->err, ps->errlen, "%s at byte %ld", what, (long)(ps->p - ps->start));
}

static void skip_ws(parser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t len;
    unsigned min;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, min = 0x80, c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, min = 0x800, c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, min = 0x10000, c &= 0x07;
    } else {
      return 0;
    }
    if (n - i < len) return 0;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      c = c << 6 | (s[i + k] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    i += len;
  }
  return 1;
}

static size_t put_utf8(char *out, unsigned cp) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | cp >> 6);
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | cp >> 12);
    out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | cp >> 18);
  out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
  out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

static int hex4(parser *ps, unsigned *out) {
  if (ps->end - ps->p < 4) return 0;
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = ps->p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return 0;
  }
  ps->p += 4;
  *out = v;
  return 1;
}

/* Parses a string at ps->p (which is at the opening quote) into the arena. */
static char *parse_string(parser *ps, size_t *len_out) {
  ps->p++; /* opening quote */
  const char *q = ps->p;
  while (q < ps->end && *q != '"') {
    if (*q == '\\' && ps->end - q > 1) q++;
    q++;
  }
  if (q >= ps->end) {
    fail(ps, "unterminated string");
    return NULL;
  }
  /* Decoded UTF-8 is never longer than the escaped text (a \uXXXX of 6 bytes gives at most 3,
   * a surrogate pair of 12 bytes gives 4). */
  char *out = arena_alloc(ps->doc, (size_t)(q - ps->p) + 1);
  if (out == NULL) {
    fail(ps, "out of memory");
    return NULL;
  }
  size_t n = 0;
  while (*ps->p != '"') {
    unsigned char c = (unsigned char)*ps->p;
    if (c < 0x20) {
      fail(ps, "control character in string");
      return NULL;
    }
    if (c != '\\') {
      out[n++] = (char)c;
      ps->p++;
      continue;
    }
    ps->p++;
    if (ps->p >= ps->end) {
      fail(ps, "bad escape");
      return NULL;
    }
    char e = *ps->p++;
    switch (e) {
      case '"': out[n++] = '"'; break;
      case '\\': out[n++] = '\\'; break;
      case '/': out[n++] = '/'; break;
      case 'b': out[n++] = '\b'; break;
      case 'f': out[n++] = '\f'; break;
      case 'n': out[n++] = '\n'; break;
      case 'r': out[n++] = '\r'; break;
      case 't': out[n++] = '\t'; break;
      case 'u': {
        unsigned cp;
        if (!hex4(ps, &cp)) {
          fail(ps, "bad \\u escape");
          return NULL;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          unsigned lo;
          if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u') {
            fail(ps, "unpaired surrogate");
            return NULL;
          }
          ps->p += 2;
          if (!hex4(ps, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
            fail(ps, "unpaired surrogate");
            return NULL;
          }
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          fail(ps, "unpaired surrogate");
          return NULL;
        }
        n += put_utf8(out + n, cp);
        break;
      }
      default:
        fail(ps, "bad escape");
        return NULL;
    }
  }
  ps->p++; /* closing quote */
  out[n] = '\0';
  if (len_out) *len_out = n;
  return out;
}

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static int parse_number(parser *ps, double *out) {
  const char *p = ps->p;
  int neg = 0;
  if (p < ps->end && *p == '-') neg = 1, p++;
  if (p >= ps->end || *p < '0' || *p > '9') return 0;
  uint64_t mant = 0;
  int digits = 0; /* significant digits kept in mant */
  long exp10 = 0;
  if (*p == '0') {
    p++;
  } else {
    while (p < ps->end && *p >= '0' && *p <= '9') {
      if (digits < 19) {
        if (mant || *p != '0') {
          mant = mant * 10 + (uint64_t)(*p - '0');
          if (mant) digits++;
        }
      } else {
        exp10++;
      }
      p++;
    }
  }
  if (p < ps->end && *p == '.') {
    p++;
    if (p >= ps->end || *p < '0' || *p > '9') return 0;
    while (p < ps->end && *p >= '0' && *p <= '9') {
      if (digits < 19) {
        mant = mant * 10 + (uint64_t)(*p - '0');
        if (mant) digits++;
        exp10--;
      }
      p++;
    }
  }
  if (p < ps->end && (*p == 'e' || *p == 'E')) {
    p++;
    int eneg = 0;
    if (p < ps->end && (*p == '+' || *p == '-')) eneg = *p == '-', p++;
    if (p >= ps->end || *p < '0' || *p > '9') return 0;
    long e = 0;
    while (p < ps->end && *p >= '0' && *p <= '9') {
      if (e < 100000) e = e * 10 + (*p - '0');
      p++;
    }
    exp10 += eneg ? -e : e;
  }
  double v;
  if (mant == 0) {
    v = 0.0;
  } else if (digits <= 15 && exp10 >= -22 && exp10 <= 22) {
    v = exp10 >= 0 ? (double)mant * POW10[exp10] : (double)mant / POW10[-exp10];
  } else {
    v = (double)mant * pow(10.0, (double)exp10);
  }
  *out = neg ? -v : v;
  ps->p = p;
  return 1;
}

static ek_json *new_node(parser *ps, ek_jtype type) {
  ek_json *n = arena_alloc(ps->doc, sizeof *n);
  if (n == NULL) {
    fail(ps, "out of memory");
    return NULL;
  }
  memset(n, 0, sizeof *n);
  n->type = type;
  return n;
}

static ek_json *parse_value(parser *ps, int depth);

static ek_json *parse_container(parser *ps, int depth, int object) {
  ek_json *node = new_node(ps, object ? EK_JSON_OBJECT : EK_JSON_ARRAY);
  if (node == NULL) return NULL;
  ps->p++;
  skip_ws(ps);
  char close = object ? '}' : ']';
  if (ps->p < ps->end && *ps->p == close) {
    ps->p++;
    return node;
  }
  ek_json **tail = &node->child;
  for (;;) {
    const char *key = NULL;
    skip_ws(ps);
    if (object) {
      if (ps->p >= ps->end || *ps->p != '"') {
        fail(ps, "expected a string key");
        return NULL;
      }
      key = parse_string(ps, NULL);
      if (key == NULL) return NULL;
      skip_ws(ps);
      if (ps->p >= ps->end || *ps->p != ':') {
        fail(ps, "expected ':'");
        return NULL;
      }
      ps->p++;
    }
    ek_json *child = parse_value(ps, depth + 1);
    if (child == NULL) return NULL;
    child->key = key;
    *tail = child;
    tail = &child->next;
    node->count++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ',') {
      ps->p++;
      continue;
    }
    if (ps->p < ps->end && *ps->p == close) {
      ps->p++;
      return node;
    }
    fail(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
    return NULL;
  }
}

static int literal(parser *ps, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return 0;
  ps->p += n;
  return 1;
}

static ek_json *parse_value(parser *ps, int depth) {
  if (depth > MAX_DEPTH) {
    fail(ps, "nesting too deep");
    return NULL;
  }
  skip_ws(ps);
  if (ps->p >= ps->end) {
    fail(ps, "unexpected end");
    return NULL;
  }
  char c = *ps->p;
  if (c == '{' || c == '[') return parse_container(ps, depth, c == '{');
  if (c == '"') {
    ek_json *n = new_node(ps, EK_JSON_STRING);
    if (n == NULL) return NULL;
    n->str = parse_string(ps, &n->len);
    return n->str ? n : NULL;
  }
  if (c == '-' || (c >= '0' && c <= '9')) {
    ek_json *n = new_node(ps, EK_JSON_NUMBER);
    if (n == NULL) return NULL;
    if (!parse_number(ps, &n->num)) {
      fail(ps, "bad number");
      return NULL;
    }
    return n;
  }
  if (literal(ps, "true")) return new_node(ps, EK_JSON_TRUE);
  if (literal(ps, "false")) return new_node(ps, EK_JSON_FALSE);
  if (literal(ps, "null")) return new_node(ps, EK_JSON_NULL);
  fail(ps, "unexpected character");
  return NULL;
}

ek_json_doc *ek_json_parse(const char *text, size_t n, char *err, size_t errlen) {
  ek_json_doc *doc = calloc(1, sizeof *doc);
  if (doc == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  parser ps = {text, text + n, text, doc, err, errlen, 0};
  if (!utf8_valid((const unsigned char *)text, n)) {
    snprintf(err, errlen, "not UTF-8");
    ek_json_free(doc);
    return NULL;
  }
  doc->root = parse_value(&ps, 0);
  if (doc->root != NULL) {
    skip_ws(&ps);
    if (ps.p != ps.end) fail(&ps, "extra data after the JSON value");
  }
  if (ps.failed || doc->root == NULL) {
    if (!ps.failed) snprintf(err, errlen, "unreadable JSON");
    ek_json_free(doc);
    return NULL;
  }
  return doc;
}

const ek_json *ek_json_root(const ek_json_doc *doc) { return doc ? doc->root : NULL; }

void ek_json_free(ek_json_doc *doc) {
  if (doc == NULL) return;
  for (block *b = doc->blocks; b != NULL;) {
    block *next = b->next;
    free(b);
    b = next;
  }
  free(doc);
}

const ek_json *ek_json_get(const ek_json *obj, const char *key) {
  if (obj == NULL || obj->type != EK_JSON_OBJECT) return NULL;
  const ek_json *found = NULL;
  for (const ek_json *c = obj->child; c != NULL; c = c->next)
    if (strcmp(c->key, key) == 0) found = c; /* the last duplicate wins */
  return found;
}

const ek_json *ek_json_at(const ek_json *arr, size_t i) {
  if (arr == NULL || arr->type != EK_JSON_ARRAY) return NULL;
  const ek_json *c = arr->child;
  while (c != NULL && i--) c = c->next;
  return c;
}

const char *ek_json_string(const ek_json *v) { return v && v->type == EK_JSON_STRING ? v->str : NULL; }

int ek_json_is_null(const ek_json *v) { return v == NULL || v->type == EK_JSON_NULL; }
