// Unit tests of protocol.js (the protocol, without WebAssembly).
// Run from this folder with `node --test` (build.sh runs them before building).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LineTooLong, MAX_LINE, Shout } from './protocol.js';

const bytes = (s) => Uint8Array.from(Buffer.from(s, 'latin1'));
const text = (b) => Buffer.from(b).toString('latin1');

/** Feed chunks to a fresh session; return [written, closed, session]. */
function feedAll(chunks) {
  const s = new Shout();
  let out = '';
  for (const chunk of chunks) {
    const { bytes: b, close } = s.feed(bytes(chunk));
    assert.ok(b instanceof Uint8Array);
    out += text(b);
    if (close) return [out, true, s];
  }
  return [out, false, s];
}

/** The protocol, written as simply as possible (on latin1 strings). */
function reference(stream) {
  let out = '';
  for (const line of stream.split('\n').slice(0, -1)) {
    if (line === 'quit') return [out + 'BYE\n', true];
    const up = (s) => s.replace(/[a-z]/g, (c) => c.toUpperCase());
    out += line.startsWith('name ') ? `HELLO ${up(line.slice(5))}\n` : `${up(line)}\n`;
  }
  return [out, false];
}

test('lines are upper-cased, ASCII only', () => {
  const s = new Shout();
  const r = s.feed(bytes('hello, World 1\n\xc3\xa9t\xe9\x00\xff\n\n'));
  assert.equal(text(r.bytes), 'HELLO, WORLD 1\n\xc3\xa9T\xe9\x00\xff\n\n');
  assert.equal(r.close, false);
  assert.equal(text(s.end()), 'END\n');
});

test('partial lines are kept across calls', () => {
  const s = new Shout();
  assert.equal(text(s.feed(bytes('ab')).bytes), '');
  assert.equal(text(s.feed(bytes('c')).bytes), '');
  assert.equal(text(s.feed(bytes('d\nef')).bytes), 'ABCD\n');
  assert.equal(text(s.feed(bytes('\n')).bytes), 'EF\n');
});

test('name is stored and answered', () => {
  const s = new Shout();
  assert.equal(text(s.feed(bytes('name ada lovelace\n')).bytes), 'HELLO ADA LOVELACE\n');
  assert.equal(text(s.name), 'ada lovelace');
  assert.equal(text(s.feed(bytes('name \nname\nNAME x\nnamex\n')).bytes), 'HELLO \nNAME\nNAME X\nNAMEX\n');
  assert.equal(text(s.name), '');
  assert.equal(text(s.feed(bytes('name x\nname y\xe9\nhi\n')).bytes), 'HELLO X\nHELLO Y\xe9\nHI\n');
  assert.equal(text(s.name), 'y\xe9');
  s.feed(bytes('other\n'));
  assert.equal(text(s.name), 'y\xe9');
});

test('quit closes and ignores the rest', () => {
  assert.deepEqual(feedAll(['a\nquit\nb\nquit\n']).slice(0, 2), ['A\nBYE\n', true]);
  assert.deepEqual(feedAll(['x\nqu', 'it', '\ny\n']).slice(0, 2), ['X\nBYE\n', true]);
  assert.deepEqual(feedAll(['quit \nQUIT\nquit\r\n']).slice(0, 2), ['QUIT \nQUIT\nQUIT\r\n', false]);
  assert.deepEqual(feedAll(['quit\n' + 'x'.repeat(MAX_LINE + 1)]).slice(0, 2), ['BYE\n', true]);
});

test('every split of a stream gives the same bytes', () => {
  const stream = 'one\nname bob\n\nquit?\r\nquit\nafter\n';
  const want = reference(stream);
  for (let i = 0; i <= stream.length; i++) {
    for (let j = i; j <= stream.length; j++) {
      const [out, closed] = feedAll([stream.slice(0, i), stream.slice(i, j), stream.slice(j)]);
      assert.deepEqual([out, closed], want, `${i} ${j}`);
    }
  }
  assert.deepEqual(feedAll([...stream]).slice(0, 2), want);
});

test('random streams and splits match the reference', () => {
  let seed = 7;
  const rand = (n) => ((seed = (seed * 1103515245 + 12345) % 2147483648), seed % n);
  const long = 'the quick brown fox jumps over the lazy dog '.repeat(3);
  const words = ['', 'a', 'quit', 'quit\r', '\x00\xff', 'hello world', 'name ', 'name zed', 'Quit', 'é', long];
  for (let k = 0; k < 3000; k++) {
    let stream = '';
    for (let n = rand(k % 2 ? 12 : 60); n > 0; n--) stream += words[rand(words.length)] + (rand(2) ? '\n' : '');
    const cuts = Array.from({ length: rand(4) }, () => rand(stream.length + 1)).sort((a, b) => a - b);
    const bounds = [0, ...cuts, stream.length];
    const chunks = bounds.slice(1).map((e, i) => stream.slice(bounds[i], e));
    const [out, closed, s] = feedAll(chunks);
    assert.deepEqual([out, closed], reference(stream), JSON.stringify(chunks));
    if (!closed) assert.equal(text(s.end()), 'END\n');
  }
});

test('ASCII, sparse and dense non-ASCII data are upper-cased alike', () => {
  const cases = [
    'plain ascii text\n'.repeat(100), // all ASCII
    ('a'.repeat(100) + '\xe9\xdf\xb5\xff').repeat(50) + '\nname \xe9t\xe9\n', // few non-ASCII runs
    Array.from({ length: 256 }, (_, i) => String.fromCharCode(i, 0x7a)).join('').repeat(3) + '\n', // binary
  ];
  for (const stream of cases) {
    assert.deepEqual(feedAll([stream]).slice(0, 2), reference(stream));
    assert.deepEqual(feedAll([stream.slice(0, 777), stream.slice(777)]).slice(0, 2), reference(stream));
  }
});

test('many lines near MAX_LINE', () => {
  const ok = ('x'.repeat(MAX_LINE) + '\n' + 'y\n'.repeat(5)).repeat(4);
  assert.deepEqual(feedAll([ok]).slice(0, 2), reference(ok));
  assert.throws(() => new Shout().feed(bytes(ok + 'z'.repeat(MAX_LINE + 1) + '\n' + ok)), LineTooLong);
  assert.throws(() => new Shout().feed(bytes(ok + 'z'.repeat(MAX_LINE + 1) + '\nquit\n')), LineTooLong);
  assert.deepEqual(feedAll([ok + 'quit\n' + 'z'.repeat(MAX_LINE + 1) + '\n']).slice(0, 2), reference(ok + 'quit\n'));
});

test('a line of MAX_LINE bytes is fine', () => {
  const line = 'x'.repeat(MAX_LINE);
  assert.equal(feedAll([line + '\n'])[0], line.toUpperCase() + '\n');
  assert.equal(feedAll([line.slice(0, 1000), line.slice(1000), '\n'])[0], line.toUpperCase() + '\n');
});

test('a partial line over MAX_LINE throws', () => {
  const s = new Shout();
  s.feed(bytes('x'.repeat(MAX_LINE)));
  assert.throws(() => s.feed(bytes('y')), LineTooLong);
  assert.throws(() => new Shout().feed(bytes('ok\n' + 'x'.repeat(MAX_LINE + 1))), LineTooLong);
});

test('a complete line over MAX_LINE throws', () => {
  assert.throws(() => new Shout().feed(bytes('a\n' + 'x'.repeat(MAX_LINE + 1) + '\nquit\n')), {
    message: 'line too long',
  });
});

test('the input is not modified, and the partial line is a copy', () => {
  const s = new Shout();
  const data = bytes('abc\ndef');
  s.feed(data);
  assert.equal(text(data), 'abc\ndef');
  data.fill(0x21);
  assert.equal(text(s.feed(bytes('\n')).bytes), 'DEF\n');
});
