// echo-js: the echo plugin, in JavaScript (a sockets:plugin@0.1.0 `handler`).
//
// It replies with the payload's bytes unchanged: an empty payload gets an
// empty reply (`ok(some([]))`), not `ok(none)`. It does nothing else, so that
// `bench languages` measures what JavaScript itself costs a request (the
// engine's instance, the bindings' copies) and not the work of a plugin.
//
// Built into a component by componentize-js (see build.sh). The export
// `handle` is this module's exported function; `req.payload` is a
// Uint8Array, and returning a Uint8Array is `ok(some(bytes))`.

/**
 * @param {{transport: 'udp' | 'tcp', peer: string, local: string, payload: Uint8Array}} req
 * @returns {Uint8Array} the payload
 */
export function handle(req) {
  return req.payload;
}
