// The protocol of the `notes` plugin, without any WebAssembly bindings.
//
// Plain JavaScript with no imports, so that it can be unit-tested with node
// (protocol.test.js, with a fake host); notes.js passes it the real imports.
//
// One command per request (one UDP datagram, or one line of a TCP
// connection with `--framing lines`), UTF-8, case-sensitive, words separated
// by exactly one space:
//
//   set KEY VALUE   -> OK              VALUE: the rest after the space after KEY
//                                      (may hold spaces, may be empty: `set k `)
//   get KEY         -> the value's bytes, or `(nil)`
//   del KEY         -> OK              (also when KEY did not exist)
//   incr KEY        -> the new value, decimal (atomics.increment, delta 1)
//   keys            -> every key of the bucket, sorted (by code point, i.e.
//                      by UTF-8 bytes), unique, joined by single spaces;
//                      empty if there are none
//   var NAME        -> the configuration variable NAME, or `(none)`
//   anything else   -> ERR unknown command
//
// KEY and NAME are one or more characters, none of them a space. A single
// `\r` at the end of the payload is removed first (so CRLF clients work).
// A payload that is not UTF-8 (or is empty) is `anything else`.
//
// Every command (not `ERR unknown command`) opens the bucket `default`
// first, `var` included. A WIT error of any call (open, get, set, delete,
// increment, list-keys, config get) is answered `ERR ` + the error case's
// name (`no-such-store`, `access-denied`) or, for a case with a string
// (`other(s)`; config's `upstream(s)`, `io(s)`), the string. Any other
// exception is a bug and is thrown on (notes.js makes it `err(...)`).
//
// `keys` follows the list-keys cursor until there is none, at most
// MAX_KEY_PAGES pages; the keys of the pages read are the reply.
//
// Replies carry no trailing newline: on a TCP listener with `--framing
// lines` the host adds the `\n` (as for every `handler` plugin), and a UDP
// reply is one datagram.
//
// `host` has the shapes of the componentize-js bindings (see notes.js):
// `open(name)` returns a bucket with `get`, `set`, `delete`, `listKeys`
// (and `[Symbol.dispose]`, called when the command is done);
// `increment(bucket, key, delta)` takes and returns a BigInt;
// `configGet(name)` returns a string or undefined. WIT `err` is thrown as an
// object whose `payload` is the error variant, `{tag}` or `{tag, val}`.

/** The bucket every command uses. */
export const BUCKET = 'default';
/** Most list-keys pages `keys` reads. */
export const MAX_KEY_PAGES = 100;

const UTF8 = new TextEncoder();
// fatal: invalid UTF-8 throws instead of becoming U+FFFD; ignoreBOM: a
// leading BOM is kept as part of the text instead of being dropped.
const UTF8_STRICT = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

const SET = /^set ([^ ]+) (.*)$/s;
const ONE_ARG = /^(get|del|incr|var) ([^ ]+)$/s;

/**
 * Parse one payload.
 *
 * @param {Uint8Array} payload
 * @returns {{op: string, key?: string, value?: string} | undefined} undefined: unknown command
 */
export function parse(payload) {
  let text;
  try {
    text = UTF8_STRICT.decode(payload);
  } catch {
    return undefined;
  }
  if (text.endsWith('\r')) text = text.slice(0, -1);
  if (text === 'keys') return { op: 'keys' };
  let m = SET.exec(text);
  if (m !== null) return { op: 'set', key: m[1], value: m[2] };
  m = ONE_ARG.exec(text);
  if (m !== null) return { op: m[1], key: m[2] };
  return undefined;
}

/**
 * The reply text for an error thrown by an import, or undefined if `e` is
 * not a WIT error (a bug).
 */
export function witErrorText(e) {
  if (e === null || typeof e !== 'object' || !Object.hasOwn(e, 'payload')) return undefined;
  const variant = e.payload;
  if (variant === null || typeof variant !== 'object' || typeof variant.tag !== 'string') return undefined;
  return Object.hasOwn(variant, 'val') ? String(variant.val) : variant.tag;
}

/** Compare two strings by code point (= by their UTF-8 bytes). */
export function compareCodePoints(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x !== y) {
      // UTF-16 order differs from code point order only between a surrogate
      // (0xd800-0xdfff, half of a code point above 0xffff) and a unit in
      // 0xe000-0xffff: move the surrogates above all of those (to
      // 0xf800-0xffff) and those down by 0x800 (to 0xd800-0xf7ff).
      if (x >= 0xd800 && y >= 0xd800) {
        x += x < 0xe000 ? 0x2000 : -0x800;
        y += y < 0xe000 ? 0x2000 : -0x800;
      }
      return x - y;
    }
  }
  return a.length - b.length;
}

function allKeys(bucket) {
  const keys = new Set();
  let cursor; // undefined: option `none`, the first page
  for (let page = 0; page < MAX_KEY_PAGES; page++) {
    const response = bucket.listKeys(cursor);
    for (const key of response.keys) keys.add(key);
    cursor = response.cursor;
    if (cursor === undefined || cursor === null) break;
  }
  return [...keys].sort(compareCodePoints).join(' ');
}

function execute(cmd, bucket, host) {
  switch (cmd.op) {
    case 'set':
      bucket.set(cmd.key, UTF8.encode(cmd.value));
      return 'OK';
    case 'get': {
      const value = bucket.get(cmd.key);
      return value === undefined || value === null ? '(nil)' : value;
    }
    case 'del':
      bucket.delete(cmd.key);
      return 'OK';
    case 'incr':
      // u64 is a BigInt both ways in the bindings.
      return String(host.increment(bucket, cmd.key, 1n));
    case 'keys':
      return allKeys(bucket);
    case 'var': {
      const value = host.configGet(cmd.key);
      return value === undefined || value === null ? '(none)' : value;
    }
  }
  throw new Error(`notes: no command ${cmd.op}`); // parse() returns no other op
}

function bytes(reply) {
  return typeof reply === 'string' ? UTF8.encode(reply) : reply;
}

/**
 * Handle one request: the reply's bytes. Throws only for a bug (an
 * exception that is not a WIT error).
 *
 * @param {Uint8Array} payload
 * @param {{open: Function, increment: Function, configGet: Function}} host
 * @returns {Uint8Array}
 */
export function run(payload, host) {
  const cmd = parse(payload);
  if (cmd === undefined) return bytes('ERR unknown command');
  let bucket;
  try {
    bucket = host.open(BUCKET);
    return bytes(execute(cmd, bucket, host));
  } catch (e) {
    const text = witErrorText(e);
    if (text === undefined) throw e;
    return bytes(`ERR ${text}`);
  } finally {
    // Drop the bucket's handle now rather than when the instance ends.
    bucket?.[Symbol.dispose]?.();
  }
}
