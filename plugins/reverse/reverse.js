// reverse: a sockets:plugin@0.1.0 `handler` plugin written in JavaScript.
//
// For every request (one UDP datagram, or one TCP frame with the framing
// already removed by the host) it replies with the payload's bytes in reverse
// order. It works on raw bytes, never on text, so it is binary-safe: a UTF-8
// payload such as "héllo" comes back as reversed *bytes* (the two bytes of
// "é" swap places), which is not valid UTF-8 any more. That is intended.
//
// An empty payload gets an empty reply (`ok(some([]))`), not `ok(none)`, so a
// client always hears back: on UDP an empty datagram, on TCP with newline
// framing a bare "\n".
//
// Built into a component by componentize-js (StarlingMonkey, a SpiderMonkey
// build for WASI); see build.mjs and README.md.
//
// How the WIT world maps to JavaScript (componentize-js / jco conventions):
// - the export `handle` is the exported function `handle` of this module;
// - the record `request` is a plain object {transport, peer, local, payload},
//   with `transport` one of the strings 'udp' / 'tcp' and `payload` a
//   Uint8Array;
// - the result `result<option<list<u8>>, string>`: returning a Uint8Array is
//   `ok(some(bytes))`, returning `undefined` is `ok(none)`, and throwing is
//   `err(message)`;
// - the import `log` is the module 'sockets:plugin/log@0.1.0', whose
//   `level` enum is passed as a lowercase string ('trace' ... 'error').

import { log } from 'sockets:plugin/log@0.1.0';

/**
 * Handle one request: reply with the payload reversed.
 *
 * @param {{transport: 'udp' | 'tcp', peer: string, local: string, payload: Uint8Array}} req
 * @returns {Uint8Array} the reply bytes
 */
export function handle(req) {
  const payload = req.payload;
  // The one use of the `log` import: a debug line per request (kept or
  // dropped by the host's RUST_LOG filter).
  log('debug', `reverse: ${payload.length} bytes over ${req.transport} from ${req.peer}`);
  // Copy, then reverse the copy in place (Uint8Array.prototype.reverse is
  // in-place, and the argument belongs to the bindings). slice() is a native
  // memcpy; measured inside the host, this takes ~15 ms for a 900 kB payload,
  // while Uint8Array.from(payload) (iterator per byte, interpreted) took ~1 s
  // and tripped the host's default 500 ms --timeout.
  return payload.slice().reverse();
}
