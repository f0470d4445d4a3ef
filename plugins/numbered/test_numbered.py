"""Unit tests of numbered.py (the protocol, without WebAssembly).

Run with a plain python3 from this folder: `python3 -m unittest -v`
(build.sh runs them before building the component).
"""

import random
import unittest

from numbered import MAX_LINE, LineTooLong, Numbered


def reference(stream: bytes):
    """The protocol, written as simply as possible: (written bytes, closed)."""
    out = b""
    for n, line in enumerate(stream.split(b"\n")[:-1], start=1):
        if line == b"quit":
            return out + b"bye\n", True
        out += b"%d %s\n" % (n, line)
    return out, False


def feed_all(chunks):
    """Feed chunks to a fresh session; return (written bytes, closed, session)."""
    s = Numbered()
    out = b""
    for chunk in chunks:
        data, close = s.feed(chunk)
        out += data
        if close:
            return out, True, s
    return out, False, s


class NumberedTest(unittest.TestCase):
    def test_lines_are_numbered(self):
        s = Numbered()
        self.assertEqual(s.feed(b"a\nbb\n"), (b"1 a\n2 bb\n", False))
        self.assertEqual(s.feed(b"c\n"), (b"3 c\n", False))
        self.assertEqual(s.end(), b"3 lines\n")

    def test_empty_and_binary_lines(self):
        s = Numbered()
        self.assertEqual(s.feed(b"\n\x00\xff\r\n"), (b"1 \n2 \x00\xff\r\n", False))

    def test_partial_lines_are_kept(self):
        s = Numbered()
        self.assertEqual(s.feed(b"hel"), (b"", False))
        self.assertEqual(s.feed(b"lo"), (b"", False))
        self.assertEqual(s.feed(b"\nwor"), (b"1 hello\n", False))
        self.assertEqual(s.feed(b"ld\n"), (b"2 world\n", False))

    def test_any_split_gives_the_same_bytes(self):
        stream = b"one\ntwo\n\nfour\xc3\xa9\nfive\n"
        want = b"1 one\n2 two\n3 \n4 four\xc3\xa9\n5 five\n"
        for i in range(len(stream) + 1):
            for j in range(i, len(stream) + 1):
                out, closed, s = feed_all([stream[:i], stream[i:j], stream[j:]])
                self.assertEqual((out, closed), (want, False), (i, j))
                self.assertEqual(s.end(), b"5 lines\n")
        out, _, _ = feed_all([bytes([b]) for b in stream])
        self.assertEqual(out, want)

    def test_quit_closes_and_ignores_the_rest(self):
        s = Numbered()
        self.assertEqual(s.feed(b"a\nquit\nb\nquit\n"), (b"1 a\nbye\n", True))

    def test_quit_split_across_calls(self):
        out, closed, _ = feed_all([b"x\nqu", b"it", b"\ny\n"])
        self.assertEqual((out, closed), (b"1 x\nbye\n", True))

    def test_quit_must_be_exact(self):
        s = Numbered()
        self.assertEqual(
            s.feed(b"quit \nQUIT\nquit\r\n quit\n"),
            (b"1 quit \n2 QUIT\n3 quit\r\n4  quit\n", False),
        )

    def test_partial_line_at_end_is_not_counted(self):
        s = Numbered()
        s.feed(b"a\nb")
        self.assertEqual(s.end(), b"1 lines\n")
        self.assertEqual(Numbered().end(), b"0 lines\n")

    def test_line_of_max_length_is_fine(self):
        line = b"x" * MAX_LINE
        out, _, _ = feed_all([line[:1000], line[1000:], b"\n"])
        self.assertEqual(out, b"1 " + line + b"\n")
        out, _, _ = feed_all([line + b"\n"])
        self.assertEqual(out, b"1 " + line + b"\n")

    def test_partial_line_over_the_limit_fails(self):
        s = Numbered()
        s.feed(b"x" * MAX_LINE)
        with self.assertRaises(LineTooLong):
            s.feed(b"y")
        s = Numbered()
        with self.assertRaises(LineTooLong):
            s.feed(b"ok\n" + b"x" * (MAX_LINE + 1))

    def test_complete_line_over_the_limit_fails(self):
        with self.assertRaises(LineTooLong):
            Numbered().feed(b"a\n" + b"x" * (MAX_LINE + 1) + b"\n")

    def test_quit_before_a_long_line_wins(self):
        s = Numbered()
        self.assertEqual(s.feed(b"quit\n" + b"x" * (MAX_LINE + 1)), (b"bye\n", True))

    def test_a_long_line_before_quit_fails(self):
        with self.assertRaises(LineTooLong):
            Numbered().feed(b"x" * (MAX_LINE + 1) + b"\nquit\n")

    def test_random_streams_and_splits_match_the_reference(self):
        rng = random.Random(7)
        words = [b"", b"a", b"quit", b"quit\r", b"\x00\xff", b"hello world", b"Quit"]
        for _ in range(2000):
            stream = b"".join(rng.choice(words) + rng.choice([b"\n", b""]) for _ in range(rng.randrange(12)))
            cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(4)))
            chunks = [stream[i:j] for i, j in zip([0] + cuts, cuts + [len(stream)])]
            out, closed, s = feed_all(chunks)
            self.assertEqual((out, closed), reference(stream), chunks)
            if not closed:
                self.assertEqual(s.end(), b"%d lines\n" % stream.count(b"\n"))

    def test_many_small_lines(self):
        s = Numbered()
        out, close = s.feed(b"a\n" * 100_000)
        self.assertFalse(close)
        self.assertTrue(out.startswith(b"1 a\n2 a\n"))
        self.assertTrue(out.endswith(b"100000 a\n"))
        self.assertEqual(s.end(), b"100000 lines\n")


if __name__ == "__main__":
    unittest.main()
