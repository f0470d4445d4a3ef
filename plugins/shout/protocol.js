// The protocol of the `shout` plugin, without any WebAssembly bindings.
//
// Plain JavaScript with no imports, so that it can be unit-tested with node
// (protocol.test.js); shout.js wraps it in the exported `session` resource.
//
// Protocol, per connection (all on bytes, never on text):
//
// - A line is the bytes before a `\n` (any bytes; `\r` is not special and
//   is part of the line). Bytes after the last `\n` are kept until the rest
//   of their line arrives, however the stream is split into calls.
// - Every line is answered with the line upper-cased, then `\n`. Only ASCII
//   `a`-`z` change; every other byte (UTF-8 included) is sent unchanged.
// - The line `name X` (exactly `name` and one space, then X, any bytes, maybe
//   empty) stores X, as it was sent, as this connection's name and is
//   answered `HELLO ` + X upper-cased + `\n`. A later `name` line replaces it.
// - The line `quit` (exactly these 4 bytes) is answered `BYE\n` and the
//   connection is closed after it; later lines in the same call are ignored.
// - End of stream: `END\n`. A partial line at the end (no `\n`) is dropped.
// - A line longer than MAX_LINE bytes (without its `\n`) throws LineTooLong
//   as soon as it is known: when the partial line kept between calls would
//   grow past the limit, or when a complete line over the limit arrives in
//   one call. The lines before it in the same call are not answered (the
//   whole call fails).

/** Longest line accepted, in bytes, not counting its `\n`. */
export const MAX_LINE = 64 * 1024;

const NL = 0x0a;
const EMPTY = new Uint8Array(0);
const ascii = (s) => Uint8Array.from(s, (c) => c.charCodeAt(0));
const BYE = ascii('BYE\n');
const HELLO = ascii('HELLO ');
const END = ascii('END\n');
// Byte -> the byte upper-cased: `a`-`z` -> `A`-`Z`, every other byte itself.
const UPPER = Uint8Array.from({ length: 256 }, (_, b) => (b >= 0x61 && b <= 0x7a ? b - 0x20 : b));

// Speed: the engine runs JavaScript interpreted inside WebAssembly, ~200 ns
// per iteration of a per-byte loop (~200 ms per MiB, measured), while the
// built-ins (TypedArray indexOf, TextDecoder, RegExp, toUpperCase,
// TextEncoder) are compiled C++. So bytes are decoded as a single-byte
// encoding, one UTF-16 code unit per byte, and matched with RegExps on that
// text: ASCII bytes are the same characters (`latin1` is windows-1252 in
// StarlingMonkey, ISO-8859-1 in node; both are one unit per byte). No
// per-byte or per-line JavaScript loop runs, except a per-byte one for dense
// non-ASCII data and one iteration per `name` line.
const SINGLE_BYTE = new TextDecoder('latin1');
const UTF8 = new TextEncoder();
// A `quit` line, and the start of a `name` line.
const QUIT_LINE = /(?<=^|\n)quit\n/;
const NAME_LINES = /(?<=^|\n)name /g;
const NON_ASCII = /[^\x00-\x7f]+/g;

/** Thrown for a line longer than MAX_LINE bytes. */
export class LineTooLong extends Error {
  constructor() {
    super('line too long');
    this.name = 'LineTooLong';
  }
}

// Write `bytes` upper-cased (ASCII only) into out[at..]; `text` is
// SINGLE_BYTE.decode(bytes).
function upperAscii(bytes, text, out, at) {
  const runs = text.match(NON_ASCII);
  if (runs === null) {
    // All ASCII: toUpperCase changes only `a`-`z`, and UTF-8 of ASCII is ASCII.
    UTF8.encodeInto(text.toUpperCase(), out.subarray(at));
  } else if (runs.length * 64 > bytes.length) {
    // Dense non-ASCII (binary data): per-run calls would cost more than a
    // table lookup per byte.
    for (let i = 0; i < bytes.length; i++) out[at + i] = UPPER[bytes[i]];
  } else {
    // ASCII stretches upper-cased as text; non-ASCII runs copied unchanged.
    let pos = 0;
    for (const run of text.matchAll(NON_ASCII)) {
      UTF8.encodeInto(text.slice(pos, run.index).toUpperCase(), out.subarray(at + pos));
      pos = run.index + run[0].length;
      out.set(bytes.subarray(run.index, pos), at + run.index);
    }
    UTF8.encodeInto(text.slice(pos).toUpperCase(), out.subarray(at + pos));
  }
}

// The start of the first `name` line at or after `from` (a line start), or -1.
function nextNameLine(text, from) {
  if (from === 0 && text.startsWith('name ')) return 0;
  const i = text.indexOf('\nname ', from === 0 ? 0 : from - 1);
  return i < 0 ? -1 : i + 1;
}

// Throw LineTooLong if a line in buf[0..end) (whole lines) is over MAX_LINE.
// Jumps to the last `\n` within reach, so it costs a few native calls per
// MAX_LINE bytes, not one per line.
function checkLines(buf, end) {
  for (let start = 0; end - start > MAX_LINE + 1; ) {
    const nl = buf.lastIndexOf(NL, start + MAX_LINE);
    if (nl < start) throw new LineTooLong();
    start = nl + 1;
  }
}

function concat(a, b) {
  const both = new Uint8Array(a.length + b.length);
  both.set(a, 0);
  both.set(b, a.length);
  return both;
}

/** The state of one connection: its name, and a partial line. */
export class Shout {
  constructor() {
    /** The last `name` given, as sent (a Uint8Array), or undefined. */
    this.name = undefined;
    /** The bytes after the last `\n` so far: the start of the next line. */
    this.partial = EMPTY;
  }

  /**
   * Take the next bytes of the stream.
   *
   * @param {Uint8Array} data
   * @returns {{bytes: Uint8Array, close: boolean}} what to write, and whether to close after it
   */
  feed(data) {
    const last = data.lastIndexOf(NL);
    if (last < 0) {
      if (this.partial.length + data.length > MAX_LINE) throw new LineTooLong();
      this.partial = concat(this.partial, data);
      return { bytes: EMPTY, close: false };
    }
    // buf[0..end) is whole lines, buf[end..] the start of the next one.
    const buf = this.partial.length > 0 ? concat(this.partial, data) : data;
    let end = this.partial.length + last + 1;
    let text = SINGLE_BYTE.decode(buf.subarray(0, end));
    // A `quit` line: the lines before it are answered, the rest ignored.
    const quit = QUIT_LINE.exec(text);
    if (quit !== null) {
      end = quit.index;
      text = text.slice(0, end);
    }
    checkLines(buf, end);
    // Every line is answered with its bytes upper-cased, except `name X`,
    // answered `HELLO ` + X upper-cased: one byte more per `name` line. The
    // upper-cased lines are written `names` bytes into `out`, then moved
    // down into place (copyWithin, no allocation per line), `NAME` becoming
    // `HELLO`.
    const names = (text.match(NAME_LINES) ?? []).length;
    const out = new Uint8Array(end + names + (quit !== null ? BYE.length : 0));
    upperAscii(buf.subarray(0, end), text, out, names);
    let o = 0;
    let pos = 0;
    let nameStart = -1; // the last name given is buf[nameStart..nameEnd)
    let nameEnd = -1;
    for (let start = nextNameLine(text, 0); start >= 0; start = nextNameLine(text, pos)) {
      out.copyWithin(o, names + pos, names + start);
      o += start - pos;
      const nl = buf.indexOf(NL, start);
      out.set(HELLO, o);
      out.copyWithin(o + HELLO.length, names + start + 5, names + nl + 1);
      o += HELLO.length + nl - start - 4;
      pos = nl + 1;
      nameStart = start + 5;
      nameEnd = nl;
    }
    out.copyWithin(o, names + pos, names + end);
    if (nameStart >= 0) this.name = buf.slice(nameStart, nameEnd);
    if (quit !== null) {
      out.set(BYE, out.length - BYE.length);
      this.partial = EMPTY;
      return { bytes: out, close: true };
    }
    const rest = buf.subarray(end);
    if (rest.length > MAX_LINE) throw new LineTooLong();
    // A copy: `data` belongs to the caller (the bindings).
    this.partial = rest.slice();
    return { bytes: out, close: false };
  }

  /** The peer closed its side: the last bytes to write. */
  end() {
    return END.slice();
  }
}
