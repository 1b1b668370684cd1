/*
 * The RETR encoder's inner loop (src/protocol/dot-stuff.ts explains the
 * rules): every line end goes out as CRLF, a CR not followed by LF passes
 * through, and a line that begins with "." gets one more "." in front.
 *
 *   stuff(chunk, state) -> Buffer (the chunk itself when nothing changes)
 *   stuffInto(src, state, dst, consumed) -> bytes written to dst
 *   readStuffedInto(fd, position, dst, state, consumed) -> bytes written, or -1
 *
 * state (Uint8Array of 2): [the next byte starts a line, the last byte was
 * CR]; read before and updated after every call, so a message may be fed in
 * any pieces. consumed (Float64Array of 1) receives how many input bytes the
 * output covers: the *Into calls stop when dst is full and the caller goes on
 * from there. Writing into a caller's buffer lets the RETR path reuse a few
 * buffers instead of allocating one per chunk.
 *
 * One pass: 16 bytes at a time are copied while the same bytes are compared
 * with LF; only a line end leaves the vector loop (SSE2, which every x86-64
 * has; elsewhere memchr and memcpy do the same work).
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Per-thread scratch buffers, grown on demand and kept (a worker thread may load the module too). */
typedef struct {
  uint8_t *p;
  size_t cap;
} scratch_t;

static __thread scratch_t scratch_in, scratch_out;

static uint8_t *reserve(scratch_t *s, size_t n) {
  if (s->cap < n) {
    uint8_t *p = realloc(s->p, n);
    if (p == NULL) return NULL;
    s->p = p;
    s->cap = n;
  }
  return s->p;
}

/* Worst case: every byte is LF followed by a dot, or a leading dot: 2 * len + 1, plus one vector of slack. */
#define OUT_BOUND(len) (2 * (len) + 1 + 16)

/*
 * Encode in[0..len) into out[0..cap) and return the bytes written; *consumed
 * is how much input that covers (less than len when out is full). Each input
 * byte is consumed together with everything it produces, so the state of the
 * next call follows from the last consumed byte alone. The vector loop only
 * stores where 16 bytes fit below cap.
 */
static size_t encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, const uint8_t *state, size_t *consumed) {
  size_t i = 0, o = 0;
#if defined(__SSE2__)
  const __m128i lf = _mm_set1_epi8('\n');
#endif
  if (len > 0 && state[0] && in[0] == '.') {
    if (cap < 2) goto done;
    out[o++] = '.';
    out[o++] = '.';
    i = 1;
  }
  while (i < len) {
#if defined(__SSE2__)
    if (i + 16 <= len && o + 16 <= cap) {
      const __m128i v = _mm_loadu_si128((const __m128i *)(in + i));
      _mm_storeu_si128((__m128i *)(out + o), v);
      const unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, lf));
      if (m == 0) {
        i += 16;
        o += 16;
        continue;
      }
      const unsigned k = (unsigned)__builtin_ctz(m);
      i += k;
      o += k;
    } else
#endif
    {
      if (o >= cap) break;
      const uint8_t *p = memchr(in + i, '\n', len - i);
      size_t end = p ? (size_t)(p - in) : len;
      if (end - i > cap - o) end = i + (cap - o);
      memcpy(out + o, in + i, end - i);
      o += end - i;
      i = end;
      if (i == len || in[i] != '\n') continue;
    }
    /* in[i] is LF: it goes out as CRLF, and a dot right after it is doubled. */
    if (o + 2 > cap) break;
    if (!(i > 0 ? in[i - 1] == '\r' : state[1])) out[o++] = '\r';
    out[o++] = '\n';
    i++;
    if (i < len && in[i] == '.') {
      if (o + 2 > cap) break;
      out[o++] = '.';
      out[o++] = '.';
      i++;
    }
  }
done:
  *consumed = i;
  return o;
}

static void set_state(uint8_t *state, const uint8_t *in, size_t consumed) {
  if (consumed > 0) {
    state[0] = in[consumed - 1] == '\n';
    state[1] = in[consumed - 1] == '\r';
  }
}

static int get_buffer(napi_env env, napi_value v, uint8_t **data, size_t *len, const char *what) {
  void *p = NULL;
  if (napi_get_buffer_info(env, v, &p, len) != napi_ok) {
    napi_throw_type_error(env, NULL, what);
    return 0;
  }
  *data = p;
  return 1;
}

static int get_typed(napi_env env, napi_value v, napi_typedarray_type want, size_t min, void **data, const char *what) {
  napi_typedarray_type type;
  size_t n = 0;
  if (napi_get_typedarray_info(env, v, &type, &n, data, NULL, NULL) != napi_ok || type != want || n < min) {
    napi_throw_type_error(env, NULL, what);
    return 0;
  }
  return 1;
}

#define STATE_ERR "state must be a Uint8Array of 2"
#define CONSUMED_ERR "consumed must be a Float64Array of 1"

/* stuff(chunk, state): the encoded chunk as a new Buffer, or the chunk itself when nothing changes. */
static napi_value stuff(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  uint8_t *in, *state;
  size_t len, used;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) {
    napi_throw_type_error(env, NULL, "stuff(chunk, state) needs two arguments");
    return NULL;
  }
  if (!get_buffer(env, argv[0], &in, &len, "chunk must be a Buffer")) return NULL;
  if (!get_typed(env, argv[1], napi_uint8_array, 2, (void **)&state, STATE_ERR)) return NULL;
  uint8_t *out = reserve(&scratch_out, OUT_BOUND(len));
  if (out == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  const size_t total = encode(in, len, out, OUT_BOUND(len), state, &used);
  set_state(state, in, used);
  if (total == len) return argv[0]; /* nothing was inserted, so nothing changed */
  napi_value result;
  if (napi_create_buffer_copy(env, total, out, NULL, &result) != napi_ok) return NULL;
  return result;
}

/* stuffInto(src, state, dst, consumed): encode into dst as far as it holds; bytes written, consumed[0] = src bytes used. */
static napi_value stuff_into(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  uint8_t *in, *state, *dst;
  double *consumed;
  size_t len, cap, used;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4) {
    napi_throw_type_error(env, NULL, "stuffInto(src, state, dst, consumed) needs four arguments");
    return NULL;
  }
  if (!get_buffer(env, argv[0], &in, &len, "src must be a Buffer")) return NULL;
  if (!get_typed(env, argv[1], napi_uint8_array, 2, (void **)&state, STATE_ERR)) return NULL;
  if (!get_buffer(env, argv[2], &dst, &cap, "dst must be a Buffer")) return NULL;
  if (!get_typed(env, argv[3], napi_float64_array, 1, (void **)&consumed, CONSUMED_ERR)) return NULL;
  if (cap < 16) {
    napi_throw_range_error(env, NULL, "dst must hold at least 16 bytes");
    return NULL;
  }
  const size_t total = encode(in, len, dst, cap, state, &used);
  set_state(state, in, used);
  *consumed = (double)used;
  napi_value result;
  napi_create_double(env, (double)total, &result);
  return result;
}

/*
 * readStuffedInto(fd, position, dst, state, consumed): like stuffInto with the
 * file's bytes from position on, read only if the page cache holds them
 * (preadv2 with RWF_NOWAIT). Returns -1 when the read would wait for the
 * disk, when the kernel cannot promise it would not, and on any error; the
 * caller then reads on the thread pool, which also reports a real error the
 * way Node reports any read error. At the end of the file: 0, consumed 0.
 */
static napi_value read_stuffed_into(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  int32_t fd;
  int64_t position;
  uint8_t *state, *dst;
  double *consumed;
  size_t cap;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5) {
    napi_throw_type_error(env, NULL, "readStuffedInto(fd, position, dst, state, consumed) needs five arguments");
    return NULL;
  }
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &position) != napi_ok || position < 0) {
    napi_throw_type_error(env, NULL, "fd and position must be non-negative numbers");
    return NULL;
  }
  if (!get_buffer(env, argv[2], &dst, &cap, "dst must be a Buffer")) return NULL;
  if (!get_typed(env, argv[3], napi_uint8_array, 2, (void **)&state, STATE_ERR)) return NULL;
  if (!get_typed(env, argv[4], napi_float64_array, 1, (void **)&consumed, CONSUMED_ERR)) return NULL;
  if (cap < 16) {
    napi_throw_range_error(env, NULL, "dst must hold at least 16 bytes");
    return NULL;
  }
  napi_value result;
  double written = -1;
#if defined(__linux__) && defined(RWF_NOWAIT)
  uint8_t *in = reserve(&scratch_in, cap);
  if (in != NULL) {
    struct iovec iov = {in, cap};
    ssize_t n;
    do n = preadv2(fd, &iov, 1, (off_t)position, RWF_NOWAIT);
    while (n < 0 && errno == EINTR);
    if (n >= 0) {
      size_t used;
      written = (double)encode(in, (size_t)n, dst, cap, state, &used);
      set_state(state, in, used);
      *consumed = (double)used;
    }
  }
#else
  (void)fd; (void)position; (void)state; (void)consumed;
#endif
  napi_create_double(env, written, &result);
  return result;
}

/* native/crlfsize.c */
napi_value crlf_sizes(napi_env env, napi_callback_info info);
/* native/maildirwrite.c */
napi_value write_message(napi_env env, napi_callback_info info);
napi_value fsync_close(napi_env env, napi_callback_info info);

static napi_value init(napi_env env, napi_value exports) {
  static const struct { const char *name; napi_callback fn; } fns[] = {
    {"stuff", stuff},
    {"stuffInto", stuff_into},
    {"readStuffedInto", read_stuffed_into},
    {"crlfSizes", crlf_sizes},
    {"writeMessage", write_message},
    {"fsyncClose", fsync_close},
  };
  for (size_t k = 0; k < sizeof fns / sizeof fns[0]; k++) {
    napi_value fn;
    if (napi_create_function(env, fns[k].name, NAPI_AUTO_LENGTH, fns[k].fn, NULL, &fn) != napi_ok) return NULL;
    if (napi_set_named_property(env, exports, fns[k].name, fn) != napi_ok) return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
