// rot13: a sockets:plugin@0.1.0 `handler` plugin written in C.
//
// It replies to every request with its payload ROT13-encoded: ASCII letters
// a-z and A-Z are rotated by 13 places, every other byte (digits, punctuation,
// NUL, bytes >= 0x80 of UTF-8 sequences, ...) is passed through unchanged. The
// payload is treated as raw bytes, never as a C string, so it is binary-safe.
// An empty payload gets an empty reply (`ok(some([]))`), not "no reply".
//
// Every request is also logged once at debug level through the imported
// `sockets:plugin/log` interface, to show that imports work from C.
//
// The bindings (handler.h, handler.c, handler_component_type.o) are generated
// at build time by `wit-bindgen c wit/` (see build.sh); they are not in git.
//
// Memory ownership, per wit-bindgen's C conventions (see handler.c):
//
//   * Arguments of an EXPORTED function are OWNED by the callee. `req` and the
//     buffers it points to (peer, local, payload) were allocated in our linear
//     memory by the host through `cabi_realloc` (i.e. malloc/realloc); we must
//     free them, or hand them on, before returning.
//   * Results of an exported function are handed OVER to the generated glue:
//     the ok-list and the err-string must be malloc'ed (or be an owned buffer
//     we received), because the generated `cabi_post_handle` calls free() on
//     them after the host has copied them out. Never return a string literal or
//     a stack buffer, e.g. never `handler_string_set(err, "oops")`: use
//     `handler_string_dup(err, "oops")`.
//   * A zero-length list or string is never freed by the glue, and the host may
//     pass one with a dangling (non-NULL, non-malloc'ed) pointer: never free()
//     an empty buffer yourself either; the generated *_free helpers check this.
//   * Arguments of an IMPORTED function (here `log`'s message) are BORROWED:
//     we keep ownership and free them ourselves after the call, if needed.

#include "handler.h"

#include <stdio.h>
#include <stdlib.h>

// ROT13 of one byte. Only the 52 ASCII letters change; written with explicit
// ranges rather than isalpha() so the result never depends on a locale.
static uint8_t rot13_byte(uint8_t c) {
  if (c >= 'a' && c <= 'z') return (uint8_t)('a' + (c - 'a' + 13) % 26);
  if (c >= 'A' && c <= 'Z') return (uint8_t)('A' + (c - 'A' + 13) % 26);
  return c;
}

// Log one debug line: "N byte(s) over udp|tcp from PEER" (the host adds
// the plugin's name and version to it).
//
// The message is a WIT `string`, which must be valid UTF-8 (the host traps
// otherwise), so it is formatted into a buffer of exactly the right size
// instead of a fixed one that could cut a multi-byte character in half.
static void log_request(const handler_request_t *req) {
  const char *transport =
      req->transport == SOCKETS_PLUGIN_TYPES_TRANSPORT_TCP ? "tcp" : "udp";
  const char *fmt = "%zu byte(s) over %s from %.*s";
  int peer_len = (int)req->peer.len;
  const char *peer = (const char *)req->peer.ptr;

  int n = snprintf(NULL, 0, fmt, req->payload.len, transport, peer_len, peer);
  if (n < 0) return;  // cannot happen with this format; logging is optional
  char *buf = malloc((size_t)n + 1);  // +1: snprintf writes a trailing NUL
  if (buf == NULL) return;
  snprintf(buf, (size_t)n + 1, fmt, req->payload.len, transport, peer_len, peer);

  // The message is borrowed by the import: we still own `buf` afterwards.
  handler_string_t msg = {.ptr = (uint8_t *)buf, .len = (size_t)n};
  sockets_plugin_log_log(SOCKETS_PLUGIN_LOG_LEVEL_DEBUG, &msg);
  free(buf);
}

// The export: `handle: func(req: request) -> result<option<list<u8>>, string>`.
//
// wit-bindgen flattens the result into a bool return value plus out-params:
// return true and fill `*ret` for `ok(...)`, or return false and fill `*err`
// (a malloc'ed string) for `err(...)`. `ret->is_some = false` means `ok(none)`.
bool exports_handler_handle(handler_request_t *req, handler_option_list_u8_t *ret,
                            handler_string_t *err) {
  (void)err;  // this plugin never fails
  log_request(req);

  // We own the payload buffer, so encode it in place and hand the very same
  // buffer back as the reply: no copy, no extra allocation. The generated
  // post-return function frees it once the host has read it (or does nothing
  // when it is empty, which is how an empty payload gets an empty reply).
  handler_list_u8_t payload = req->payload;
  for (size_t i = 0; i < payload.len; i++) {
    payload.ptr[i] = rot13_byte(payload.ptr[i]);
  }
  ret->is_some = true;
  ret->val = payload;

  // Ownership of the payload moved to `ret`: free only the rest of `req`.
  // (Calling handler_request_free(req) here would free the reply too.)
  handler_string_free(&req->peer);
  handler_string_free(&req->local);
  return true;
}
