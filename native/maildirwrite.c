/*
 * The fetch's Maildir write path for a message already in memory, in one
 * call instead of a dozen (src/fetch/sinks/maildir.ts; the JavaScript path
 * in src/store/maildir/writer.ts does the same steps and gives the same
 * files):
 *
 *   writeMessage(tmp, newPrefix, data, toLf, mode, out) -> string | undefined
 *
 * tmp/<unique> is created (O_CREAT|O_EXCL|O_NOFOLLOW, `mode`) and `data`
 * written to it, with every CR that stands right before an LF dropped when
 * `toLf` (CRLF stored as LF; a bare CR stays). out[0] = the descriptor, left
 * open for the caller's fsync, out[1] = octets written (,S=), out[2] = octets
 * with every line end as CRLF (,W=: one more for each LF not preceded by CR,
 * the rule of src/protocol/message-size.ts).
 *
 * With `newPrefix` (a string), the file is then hard-linked to
 * `<newPrefix>,S=<octets>,W=<crlf octets>` (renamed where the file system has
 * no hard links) and tmp/<unique> unlinked; the new path is returned. With
 * `newPrefix` null nothing is linked (the caller fsyncs first).
 *
 * A failure throws an Error shaped like Node's (code, errno, syscall, path);
 * nothing is left behind (the descriptor is closed, tmp/<unique> removed).
 *
 *   fsyncClose(fds: Int32Array) -> Promise<Int32Array>
 *
 * fsync and close each descriptor, in order, in one thread-pool job; each
 * entry of the result is 0 or the fsync's errno (every descriptor is closed
 * either way). The caller runs several of these at once so that fsyncs still
 * wait on the disk together and share its cache flushes.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include "settle.h"
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Scratch for the converted message, one per thread (the module may be loaded in worker threads). */
static __thread uint8_t *scratch;
static __thread size_t scratch_cap;

static uint8_t *reserve_scratch(size_t n) {
  if (n <= scratch_cap) return scratch;
  size_t cap = scratch_cap ? scratch_cap : 64 * 1024;
  while (cap < n) cap *= 2;
  uint8_t *p = realloc(scratch, cap);
  if (p == NULL) return NULL;
  scratch = p;
  scratch_cap = cap;
  return p;
}

static void throw_errno(napi_env env, int err, const char *syscall, const char *path) {
  const char *code = strerrorname_np(err);
  if (code == NULL) code = "EIO";
  char msg[4200];
  snprintf(msg, sizeof msg, "%s: %s, %s '%s'", code, strerror(err), syscall, path);
  napi_value m, c, e, v;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_error(env, c, m, &e);
  napi_create_int32(env, -err, &v);
  napi_set_named_property(env, e, "errno", v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, e, "syscall", v);
  napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, e, "path", v);
  napi_throw(env, e);
}

/* A string argument as a NUL-terminated path in buf (cap bytes); false (with a TypeError thrown) if it is not one. */
static bool get_path(napi_env env, napi_value v, char *buf, size_t cap, const char *what) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, buf, cap, &len) != napi_ok || len + 1 >= cap || strlen(buf) != len) {
    napi_throw_type_error(env, NULL, what);
    return false;
  }
  return true;
}

/* CRLF -> LF of in[0..len) into out; returns the octets written. */
static size_t to_lf(const uint8_t *in, size_t len, uint8_t *out) {
  size_t o = 0;
  const uint8_t *p = in, *end = in + len;
  while (p < end) {
    const uint8_t *lf = memchr(p, '\n', (size_t)(end - p));
    if (lf == NULL) {
      memcpy(out + o, p, (size_t)(end - p));
      o += (size_t)(end - p);
      break;
    }
    size_t n = (size_t)(lf - p);
    if (lf > p && lf[-1] == '\r') n--; /* the CR right before this LF */
    memcpy(out + o, p, n);
    o += n;
    out[o++] = '\n';
    p = lf + 1;
  }
  return o;
}

/* Octets with every LF not preceded by CR counted as CRLF. */
static double crlf_size(const uint8_t *b, size_t len) {
  size_t extra = 0;
  const uint8_t *p = b, *end = b + len;
  while (p < end) {
    const uint8_t *lf = memchr(p, '\n', (size_t)(end - p));
    if (lf == NULL) break;
    if (lf == b || lf[-1] != '\r') extra++;
    p = lf + 1;
  }
  return (double)len + (double)extra;
}

static bool no_link(int err) {
  return err == EPERM || err == ENOTSUP || err == EOPNOTSUPP || err == ENOSYS || err == EMLINK;
}

napi_value write_message(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  char tmp[4096], final[4200];
  bool has_prefix = false, to_lf_on = false;
  uint8_t *data;
  size_t len;
  int32_t mode;
  double *out;
  size_t out_len;
  napi_typedarray_type type;
  napi_valuetype vt;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6) {
    napi_throw_type_error(env, NULL, "writeMessage(tmp, newPrefix, data, toLf, mode, out) needs six arguments");
    return NULL;
  }
  if (!get_path(env, argv[0], tmp, sizeof tmp, "tmp must be a path")) return NULL;
  if (napi_typeof(env, argv[1], &vt) != napi_ok) return NULL;
  if (vt == napi_string) {
    if (!get_path(env, argv[1], final, sizeof final - 64, "newPrefix must be a path or null")) return NULL;
    has_prefix = true;
  }
  if (napi_get_buffer_info(env, argv[2], (void **)&data, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "data must be a Buffer");
    return NULL;
  }
  if (napi_get_value_bool(env, argv[3], &to_lf_on) != napi_ok || napi_get_value_int32(env, argv[4], &mode) != napi_ok) {
    napi_throw_type_error(env, NULL, "toLf must be a boolean and mode a number");
    return NULL;
  }
  if (napi_get_typedarray_info(env, argv[5], &type, &out_len, (void **)&out, NULL, NULL) != napi_ok || type != napi_float64_array || out_len < 3) {
    napi_throw_type_error(env, NULL, "out must be a Float64Array of 3");
    return NULL;
  }

  const uint8_t *body = data;
  size_t n = len;
  if (to_lf_on && len > 0 && memchr(data, '\r', len) != NULL) {
    uint8_t *s = reserve_scratch(len);
    if (s == NULL) {
      throw_errno(env, ENOMEM, "open", tmp);
      return NULL;
    }
    n = to_lf(data, len, s);
    body = s;
  }
  const double crlf = crlf_size(body, n);

  int fd;
  do fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    throw_errno(env, errno, "open", tmp);
    return NULL;
  }
  for (size_t off = 0; off < n;) {
    ssize_t w = write(fd, body + off, n - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      close(fd);
      unlink(tmp);
      throw_errno(env, err, "write", tmp);
      return NULL;
    }
    off += (size_t)w;
  }
  out[0] = fd;
  out[1] = (double)n;
  out[2] = crlf;
  if (!has_prefix) return NULL;

  const size_t plen = strlen(final);
  snprintf(final + plen, sizeof final - plen, ",S=%zu,W=%.0f", n, crlf);
  if (link(tmp, final) != 0) {
    int err = errno;
    if (no_link(err)) err = rename(tmp, final) == 0 ? 0 : errno; /* the name is unique: rename replaces nothing */
    if (err != 0) {
      close(fd);
      unlink(tmp);
      throw_errno(env, err, "link", tmp);
      return NULL;
    }
  } else {
    unlink(tmp);
  }
  napi_value result;
  napi_create_string_utf8(env, final, NAPI_AUTO_LENGTH, &result);
  return result;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  size_t n;
  int32_t *fds; /* in: descriptors; out: 0 or errno */
} fsync_batch_t;

static void fsync_execute(napi_env env, void *data) {
  (void)env;
  fsync_batch_t *b = data;
  for (size_t i = 0; i < b->n; i++) {
    const int fd = b->fds[i];
    int err = fsync(fd) == 0 ? 0 : errno;
    close(fd);
    b->fds[i] = err;
  }
}

static void fsync_complete(napi_env env, napi_status status, void *data) {
  fsync_batch_t *b = data;
  settle_typed_array(env, status, b->deferred, napi_int32_array, sizeof(int32_t), b->n, b->fds, "fsyncClose failed");
  napi_delete_async_work(env, b->work);
  free(b->fds);
  free(b);
}

napi_value fsync_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_typedarray_type type;
  size_t n = 0;
  int32_t *fds = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_typedarray_info(env, argv[0], &type, &n, (void **)&fds, NULL, NULL) != napi_ok || type != napi_int32_array) {
    napi_throw_type_error(env, NULL, "fsyncClose(fds) needs an Int32Array");
    return NULL;
  }
  fsync_batch_t *b = calloc(1, sizeof *b);
  if (b != NULL) b->fds = malloc((n ? n : 1) * sizeof(int32_t));
  if (b == NULL || b->fds == NULL) {
    free(b);
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  b->n = n;
  if (n > 0) memcpy(b->fds, fds, n * sizeof(int32_t));
  napi_value promise, name;
  if (napi_create_promise(env, &b->deferred, &promise) != napi_ok) goto fail;
  napi_create_string_utf8(env, "poplar.fsyncClose", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, fsync_execute, fsync_complete, b, &b->work) != napi_ok) goto fail;
  if (napi_queue_async_work(env, b->work) != napi_ok) {
    napi_delete_async_work(env, b->work);
    goto fail;
  }
  return promise;
fail:
  free(b->fds);
  free(b);
  napi_throw_error(env, NULL, "fsyncClose could not queue its work");
  return NULL;
}
