/*
 * Shared by the batch calls of native/crlfsize.c and native/maildirwrite.c:
 * a promise settled from a thread-pool job's results.
 */
#ifndef POPLAR_SETTLE_H
#define POPLAR_SETTLE_H

#include <node_api.h>
#include <string.h>

/*
 * Resolves `deferred` with a new typed array of `n` elements of `elem_size`
 * bytes copied from `data`; rejects it with the message `failure` when the
 * job did not run (`status`) or the array cannot be made.
 */
static inline void settle_typed_array(napi_env env, napi_status status, napi_deferred deferred, napi_typedarray_type type,
                                      size_t elem_size, size_t n, const void *data, const char *failure) {
  napi_value ab, result;
  void *out = NULL;
  if (status == napi_ok && napi_create_arraybuffer(env, n * elem_size, &out, &ab) == napi_ok &&
      napi_create_typedarray(env, type, n, ab, 0, &result) == napi_ok) {
    if (n > 0) memcpy(out, data, n * elem_size);
    napi_resolve_deferred(env, deferred, result);
  } else {
    napi_value msg, err;
    napi_create_string_utf8(env, failure, NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &err);
    napi_reject_deferred(env, deferred, err);
  }
}

#endif
