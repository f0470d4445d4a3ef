// notes: a sockets:services@0.1.0 `handler` plugin in JavaScript.
//
// A line protocol over the host's key-value store and configuration: `set`,
// `get`, `del`, `incr`, `keys` on the bucket `default`, and `var` for the
// configuration; see protocol.js for the protocol, and README.md.
//
// World `handler` of wit/services: sockets:plugin@0.2.0's `handler` (export
// `handle`, import `log`) plus wasi:keyvalue (store, atomics, batch),
// wasi:config/store and wasi:logging/logging. componentize-js imports every
// interface of the world into the component, used or not: this one calls
// neither `batch`, nor `wasi:logging`, nor `sockets:plugin/log`.
//
// How componentize-js 0.23.0 maps the imports (jco conventions; checked by
// building a probe component and running it under `jco transpile` with a
// fake host, see README.md):
// - an imported interface is the module 'NAMESPACE:PACKAGE/INTERFACE@VERSION',
//   e.g. 'wasi:keyvalue/store@0.2.0-draft'; its functions are named exports
//   in camelCase (`listKeys`), its resources classes (`Bucket`);
// - `result<T, error>`: `ok` returns T (`undefined` for `result<_, error>`);
//   `err` THROWS a ComponentError whose `payload` is the error, and the
//   error variant is `{tag: 'no-such-store'}`, `{tag: 'access-denied'}`,
//   `{tag: 'other', val: 'text'}` (config: `{tag: 'upstream' | 'io', val}`).
//   The ComponentError is not `instanceof Error` inside the component, and
//   its `message` is `[object Object] (see error.payload)`: look at
//   `payload`, never at `message`;
// - `option<T>`: `undefined` for `none`, the value itself for `some` (`get`
//   of a missing key is `undefined`; `cursor` of the last page is
//   `undefined`; to pass `none`, pass `undefined`);
// - `u64`: a BigInt both ways. `increment` returns a BigInt (`1n`), and
//   `cursor` is a BigInt; a Number argument is converted (`BigInt(1)`), but
//   this code passes `1n`;
// - `list<u8>`: a Uint8Array both ways; `string`: a string;
// - the resource `bucket`: `open` returns an object of class `Bucket` whose
//   methods are the WIT methods (`bucket.get(key)`, `bucket.listKeys(c)`);
//   a `borrow<bucket>` parameter (`increment(bucket, ...)`) takes that
//   object. `bucket[Symbol.dispose]()` drops the handle at once;
// - records (`key-response`) are plain objects, fields in camelCase
//   (`{keys, cursor}`).
// And the export (as in reverse): `handle(req)` gets `{transport, peer,
// local, payload}` (`transport` is 'udp' or 'tcp', `payload` a Uint8Array);
// returning a Uint8Array is `ok(some(bytes))`; throwing a string is
// `err(string)` (throwing an Error object would trap the instance instead,
// see shout.js).

import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft';
import { get as configGet } from 'wasi:config/store@0.2.0-rc.1';
import { run } from './protocol.js';

/** The host's imports, in the shape protocol.js's `run` takes. */
const HOST = { open, increment, configGet };

/**
 * Handle one request: run its command.
 *
 * @param {{transport: 'udp' | 'tcp', peer: string, local: string, payload: Uint8Array}} req
 * @returns {Uint8Array} the reply
 */
export function handle(req) {
  try {
    return run(req.payload, HOST);
  } catch (e) {
    // Only a bug gets here (WIT errors are replies). A string, not the
    // Error: see the top of this file.
    throw `notes: internal error: ${e}`;
  }
}
