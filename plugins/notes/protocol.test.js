// Unit tests of protocol.js (the protocol, without WebAssembly), with a fake
// host that has the shapes of the componentize-js bindings (see notes.js):
// errors thrown as an object with a `payload` variant, `undefined` for
// `none`, BigInt for u64, a Bucket object with methods and Symbol.dispose.
// Run from this folder with `node --test` (build.sh runs them before building).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BUCKET, MAX_KEY_PAGES, compareCodePoints, parse, run, witErrorText } from './protocol.js';

const enc = (s) => new TextEncoder().encode(s);
const dec = (b) => new TextDecoder().decode(b);

/** What the bindings throw for a WIT `err`: not an Error, a `payload`. */
class FakeComponentError {
  constructor(payload) {
    this.payload = payload;
    this.message = `${payload} (see error.payload)`;
  }
}

/** An in-memory host; `fail(op, arg)` returns an error variant to throw, or undefined. */
class FakeHost {
  constructor({ data = {}, vars = {}, fail = () => undefined, pageSize = 1000, endless = false } = {}) {
    this.data = new Map(Object.entries(data).map(([k, v]) => [k, enc(v)]));
    this.vars = new Map(Object.entries(vars));
    this.fail = fail;
    this.pageSize = pageSize;
    this.endless = endless;
    this.calls = [];
    this.open = this.open.bind(this);
    this.increment = this.increment.bind(this);
    this.configGet = this.configGet.bind(this);
  }

  check(op, arg) {
    this.calls.push([op, arg]);
    const variant = this.fail(op, arg);
    if (variant !== undefined) throw new FakeComponentError(variant);
  }

  open(name) {
    this.check('open', name);
    const host = this;
    return {
      name,
      get(key) {
        host.check('get', key);
        return host.data.get(key); // undefined: none
      },
      set(key, value) {
        assert.ok(value instanceof Uint8Array);
        host.check('set', key);
        host.data.set(key, value.slice());
      },
      delete(key) {
        host.check('delete', key);
        host.data.delete(key);
      },
      listKeys(cursor) {
        assert.ok(cursor === undefined || typeof cursor === 'bigint', `cursor ${cursor}`);
        host.check('listKeys', cursor);
        const all = [...host.data.keys()];
        const start = cursor === undefined ? 0 : Number(cursor);
        const end = start + host.pageSize;
        const more = host.endless || end < all.length;
        return { keys: all.slice(start, end), cursor: more ? BigInt(end) : undefined };
      },
      [Symbol.dispose]() {
        host.calls.push(['drop', name]);
      },
    };
  }

  increment(bucket, key, delta) {
    assert.equal(typeof delta, 'bigint');
    assert.equal(bucket.name, BUCKET);
    this.check('increment', key);
    const old = this.data.has(key) ? BigInt(dec(this.data.get(key))) : 0n;
    const n = BigInt.asUintN(64, old + delta);
    this.data.set(key, enc(String(n)));
    return n;
  }

  configGet(name) {
    this.check('config', name);
    return this.vars.get(name); // undefined: none
  }
}

/** Run one command (a string or bytes); the reply as a string. */
function cmd(host, line) {
  const reply = run(typeof line === 'string' ? enc(line) : line, host);
  assert.ok(reply instanceof Uint8Array);
  return dec(reply);
}

test('set, get, del', () => {
  const h = new FakeHost();
  assert.equal(cmd(h, 'get k'), '(nil)');
  assert.equal(cmd(h, 'set k hello world'), 'OK');
  assert.equal(cmd(h, 'get k'), 'hello world');
  assert.equal(cmd(h, 'set k  two  spaces '), 'OK');
  assert.equal(cmd(h, 'get k'), ' two  spaces ');
  assert.equal(cmd(h, 'set k '), 'OK');
  assert.equal(cmd(h, 'get k'), '');
  assert.equal(cmd(h, 'del k'), 'OK');
  assert.equal(cmd(h, 'get k'), '(nil)');
  assert.equal(cmd(h, 'del k'), 'OK');
});

test('values and keys are UTF-8; get returns the stored bytes as they are', () => {
  const h = new FakeHost();
  assert.equal(cmd(h, 'set clé grüße 🙂'), 'OK');
  assert.deepEqual(h.data.get('clé'), enc('grüße 🙂'));
  assert.equal(cmd(h, 'get clé'), 'grüße 🙂');
  h.data.set('bin', Uint8Array.of(0, 0xff, 0x0a));
  assert.deepEqual(run(enc('get bin'), h), Uint8Array.of(0, 0xff, 0x0a));
});

test('incr counts with BigInt, from nothing and past 2^53', () => {
  const h = new FakeHost({ data: { big: '9007199254740993' } });
  assert.equal(cmd(h, 'incr n'), '1');
  assert.equal(cmd(h, 'incr n'), '2');
  assert.equal(cmd(h, 'get n'), '2');
  assert.equal(cmd(h, 'incr big'), '9007199254740994');
  h.data.set('max', enc('18446744073709551614'));
  assert.equal(cmd(h, 'incr max'), '18446744073709551615');
});

test('keys: sorted by code point, unique, space separated; empty bucket is empty', () => {
  const h = new FakeHost();
  assert.equal(cmd(h, 'keys'), '');
  for (const k of ['b', 'a', 'B', 'é', '\u{1f642}', '\uff5e', 'aa', '10', '9']) cmd(h, `set ${k} x`);
  // U+FF5E sorts before U+1F642 by code point (not by UTF-16 units).
  assert.equal(cmd(h, 'keys'), '10 9 B a aa b é \uff5e \u{1f642}');
});

test('keys follows the cursor across pages', () => {
  const keys = Array.from({ length: 25 }, (_, i) => `k${String(i).padStart(2, '0')}`);
  const h = new FakeHost({ data: Object.fromEntries(keys.map((k) => [k, 'v'])), pageSize: 10 });
  assert.equal(cmd(h, 'keys'), keys.join(' '));
  const cursors = h.calls.filter(([op]) => op === 'listKeys').map(([, c]) => c);
  assert.deepEqual(cursors, [undefined, 10n, 20n]);
});

test('keys reads at most MAX_KEY_PAGES pages of an endless cursor', () => {
  const h = new FakeHost({ data: { a: '1', b: '2' }, pageSize: 1, endless: true });
  assert.equal(cmd(h, 'keys'), 'a b');
  assert.equal(h.calls.filter(([op]) => op === 'listKeys').length, MAX_KEY_PAGES);
});

test('var reads the configuration', () => {
  const h = new FakeHost({ vars: { greeting: 'bonjour tout le monde', empty: '' } });
  assert.equal(cmd(h, 'var greeting'), 'bonjour tout le monde');
  assert.equal(cmd(h, 'var empty'), '');
  assert.equal(cmd(h, 'var missing'), '(none)');
});

test('every command opens the bucket default and drops it', () => {
  for (const line of ['set k v', 'get k', 'del k', 'incr n', 'keys', 'var x']) {
    const h = new FakeHost();
    cmd(h, line);
    assert.deepEqual(h.calls[0], ['open', BUCKET], line);
    assert.deepEqual(h.calls.at(-1), ['drop', BUCKET], line);
  }
});

test('unknown commands touch nothing', () => {
  const h = new FakeHost();
  const unknown = [
    '', ' ', 'keys ', ' keys', 'KEYS', 'SET k v', 'set', 'set k', 'set  v', 'get', 'get ', 'get a b',
    'get  a', 'get a ', 'del', 'incr', 'incr a b', 'var', 'var a b', 'help', 'get\tk', 'setk v',
  ];
  for (const line of unknown) assert.equal(cmd(h, line), 'ERR unknown command', JSON.stringify(line));
  assert.equal(cmd(h, Uint8Array.of(0x67, 0x65, 0x74, 0x20, 0xff)), 'ERR unknown command'); // `get \xff`
  assert.equal(cmd(h, Uint8Array.of(0xef, 0xbb, 0xbf, 0x6b, 0x65, 0x79, 0x73)), 'ERR unknown command'); // BOM keys
  assert.deepEqual(h.calls, []);
});

test('one trailing \\r is removed', () => {
  const h = new FakeHost();
  assert.equal(cmd(h, 'set k v\r'), 'OK');
  assert.equal(cmd(h, 'get k\r'), 'v');
  assert.equal(cmd(h, 'keys\r'), 'k');
  assert.equal(cmd(h, 'keys\r\r'), 'ERR unknown command');
  assert.equal(cmd(h, 'set k v\r\r'), 'OK');
  assert.equal(cmd(h, 'get k'), 'v\r');
});

test('a value may hold any character after the key, newlines too', () => {
  const h = new FakeHost();
  assert.equal(cmd(h, 'set k a\nb'), 'OK');
  assert.equal(cmd(h, 'get k'), 'a\nb');
});

test('open errors are ERR replies', () => {
  for (const [variant, text] of [
    [{ tag: 'no-such-store' }, 'ERR no-such-store'],
    [{ tag: 'access-denied' }, 'ERR access-denied'],
    [{ tag: 'other', val: 'store is read-only' }, 'ERR store is read-only'],
  ]) {
    for (const line of ['set k v', 'get k', 'del k', 'incr k', 'keys', 'var x']) {
      const h = new FakeHost({ fail: (op) => (op === 'open' ? variant : undefined) });
      assert.equal(cmd(h, line), text, line);
      assert.deepEqual(h.calls, [['open', BUCKET]], line); // nothing else called, nothing to drop
    }
  }
});

test('errors of each call are ERR replies, and the bucket is still dropped', () => {
  const other = { tag: 'other', val: 'disk full' };
  for (const [line, op] of [
    ['set k v', 'set'],
    ['get k', 'get'],
    ['del k', 'delete'],
    ['incr k', 'increment'],
    ['keys', 'listKeys'],
  ]) {
    const h = new FakeHost({ fail: (o) => (o === op ? other : undefined) });
    assert.equal(cmd(h, line), 'ERR disk full', line);
    assert.deepEqual(h.calls.at(-1), ['drop', BUCKET], line);
  }
  const h = new FakeHost({ fail: (o) => (o === 'get' ? { tag: 'access-denied' } : undefined) });
  assert.equal(cmd(h, 'get k'), 'ERR access-denied');
});

test('a later page of keys failing is an ERR reply', () => {
  const h = new FakeHost({
    data: { a: '1', b: '2', c: '3' },
    pageSize: 1,
    fail: (op, cursor) => (op === 'listKeys' && cursor === 2n ? { tag: 'other', val: 'cursor expired' } : undefined),
  });
  assert.equal(cmd(h, 'keys'), 'ERR cursor expired');
});

test('configuration errors give their text', () => {
  for (const tag of ['upstream', 'io']) {
    const h = new FakeHost({ fail: (op) => (op === 'config' ? { tag, val: 'vault sealed' } : undefined) });
    assert.equal(cmd(h, 'var x'), 'ERR vault sealed');
  }
});

test('an exception that is not a WIT error is thrown on', () => {
  const h = new FakeHost();
  h.configGet = () => {
    throw new TypeError('bug');
  };
  assert.throws(() => run(enc('var x'), h), TypeError);
  assert.equal(witErrorText(new Error('x')), undefined);
  assert.equal(witErrorText('text'), undefined);
  assert.equal(witErrorText({ payload: 'a string' }), undefined);
  assert.equal(witErrorText(new FakeComponentError({ tag: 'other', val: '' })), '');
});

test('parse', () => {
  assert.deepEqual(parse(enc('set a b c')), { op: 'set', key: 'a', value: 'b c' });
  assert.deepEqual(parse(enc('incr x')), { op: 'incr', key: 'x' });
  assert.deepEqual(parse(enc('keys')), { op: 'keys' });
  assert.equal(parse(enc('nope')), undefined);
});

test('compareCodePoints is code point (UTF-8 byte) order', () => {
  const strings = ['', 'a', 'ab', 'b', '\u00e9', '\ud7ff', '\ue000', '\uf800', '\uffff', '\u{10000}', '\u{1f642}', '\u{10ffff}'];
  const shuffled = [...strings].reverse();
  shuffled.sort(compareCodePoints);
  assert.deepEqual(shuffled, strings);
  const byBytes = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b));
  for (const a of strings) for (const b of strings) assert.equal(Math.sign(compareCodePoints(a, b)), Math.sign(byBytes(a, b)), `${a} ${b}`);
});
