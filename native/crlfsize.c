/*
 * POP3 sizes of many message files at once, on the libuv thread pool
 * (src/protocol/message-size.ts defines the size: the file's octets plus one
 * for every LF not preceded by CR).
 *
 *   crlfSizes(paths: string[]) -> Promise<Float64Array>
 *
 * Each entry is the file's size, or -errno when it could not be opened or
 * read, is a symbolic link (ELOOP), or is not a regular file (EISDIR,
 * EINVAL). A first login on a Maildir without sizes in its uidlist or file
 * names measures every file; doing a batch of them in one thread-pool job (open,
 * read, count, close) instead of four round trips per file through the event
 * loop is what makes that login fast, and the event loop stays free meanwhile.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include "settle.h"
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  size_t n;
  char **paths;
  double *sizes;
} batch_t;

static double file_crlf_size(const char *path, uint8_t *buf, size_t cap) {
  int fd;
  /* O_NOFOLLOW: a symbolic link in cur/ is refused (ELOOP), never measured through. O_NONBLOCK: a FIFO or
     device planted in cur/ must not hold a thread-pool thread; it is refused below (fstat: regular files only). */
  do fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return -(double)errno;
  struct stat st;
  const int err = fstat(fd, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : !S_ISREG(st.st_mode) ? EINVAL : 0;
  if (err != 0) {
    close(fd);
    return -(double)err;
  }
  double total = 0;
  int prev_cr = 0;
  for (;;) {
    ssize_t r = read(fd, buf, cap);
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      close(fd);
      return -(double)err;
    }
    if (r == 0) break;
    size_t extra = 0;
    const uint8_t *p = buf, *end = buf + r;
    while (p < end) {
      const uint8_t *lf = memchr(p, '\n', (size_t)(end - p));
      if (lf == NULL) break;
      if (!(lf > buf ? lf[-1] == '\r' : prev_cr)) extra++;
      p = lf + 1;
    }
    prev_cr = buf[r - 1] == '\r';
    total += (double)r + (double)extra;
  }
  close(fd);
  return total;
}

static void execute(napi_env env, void *data) {
  (void)env;
  batch_t *b = data;
  const size_t cap = 64 * 1024;
  uint8_t *buf = malloc(cap);
  for (size_t i = 0; i < b->n; i++) b->sizes[i] = buf == NULL ? -(double)ENOMEM : file_crlf_size(b->paths[i], buf, cap);
  free(buf);
}

static void free_batch(batch_t *b) {
  for (size_t i = 0; i < b->n; i++) free(b->paths[i]);
  free(b->paths);
  free(b->sizes);
  free(b);
}

static void complete(napi_env env, napi_status status, void *data) {
  batch_t *b = data;
  settle_typed_array(env, status, b->deferred, napi_float64_array, sizeof(double), b->n, b->sizes, "crlfSizes failed");
  napi_delete_async_work(env, b->work);
  free_batch(b);
}

napi_value crlf_sizes(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool is_array = false;
  uint32_t n = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_is_array(env, argv[0], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[0], &n) != napi_ok) {
    napi_throw_type_error(env, NULL, "crlfSizes(paths) needs an array of strings");
    return NULL;
  }
  batch_t *b = calloc(1, sizeof *b);
  if (b == NULL) goto nomem;
  b->paths = calloc(n ? n : 1, sizeof *b->paths);
  b->sizes = calloc(n ? n : 1, sizeof *b->sizes);
  if (b->paths == NULL || b->sizes == NULL) goto nomem;
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    size_t len = 0;
    if (napi_get_element(env, argv[0], i, &v) != napi_ok || napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
      free_batch(b);
      napi_throw_type_error(env, NULL, "crlfSizes(paths): every path must be a string");
      return NULL;
    }
    b->paths[i] = malloc(len + 1);
    b->n = i + 1; /* so that free_batch frees what is there */
    if (b->paths[i] == NULL) goto nomem;
    napi_get_value_string_utf8(env, v, b->paths[i], len + 1, &len);
    if (strlen(b->paths[i]) != len) {
      free_batch(b);
      napi_throw_type_error(env, NULL, "crlfSizes(paths): a path contains a NUL byte");
      return NULL;
    }
  }
  b->n = n;
  napi_value promise, name;
  if (napi_create_promise(env, &b->deferred, &promise) != napi_ok) goto fail;
  napi_create_string_utf8(env, "poplar.crlfSizes", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, execute, complete, b, &b->work) != napi_ok) goto fail;
  if (napi_queue_async_work(env, b->work) != napi_ok) {
    napi_delete_async_work(env, b->work);
    goto fail;
  }
  return promise;
nomem:
  if (b != NULL) free_batch(b);
  napi_throw_error(env, "ENOMEM", "out of memory");
  return NULL;
fail:
  free_batch(b);
  napi_throw_error(env, NULL, "crlfSizes could not queue its work");
  return NULL;
}
