"""Unit tests of http_proto (plain python3): the cases of the Rust plugin's
proto tests, so that both plugins answer alike."""

import re
import unittest

from http_proto import Http, KvError, Limits

HELLO = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class Fake:
    def __init__(self):
        self.data = {}

    def get(self, key):
        return self.data.get(key)

    def exists(self, key):
        return key in self.data

    def set(self, key, value):
        if len(key) > 256:
            raise KvError("key of 300 bytes is over the 256-byte limit (--kv-max-key)")
        self.data[key] = bytes(value)

    def delete(self, key):
        self.data.pop(key, None)

    def date(self):
        return "Thu, 01 Jan 1970 00:00:00 GMT"

# The cases both plugins' unit tests share (plugins/http/src/proto/tests.rs
# has the same table): a request, then the status, whether the connection
# closes, and the body of the (last) response.
AGREE = [
    (b"PUT /kv/caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"
     b"GET /kv/caf%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n", 200, False, b"v"),
    (b"GET /kv/\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400, True, b"Bad Request malformed request: invalid token\n"),
    (b"GET /kv/%ff HTTP/1.1\r\nHost: x\r\n\r\n", 400, False, b"Bad Request: the key is not UTF-8 once decoded\n"),
    (b"\r\n" * 5000 + HELLO, 431, True, b"Request Header Fields Too Large request header fields too large\n"),
    (b"\n" * 9000, 431, True, b"Request Header Fields Too Large request header fields too large\n"),
    (b"\r\n\n" + HELLO, 200, False, b"Hello, World!\n"),
    (b"\rGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, True, b"Bad Request malformed request: invalid new line\n"),
    (b"GET / http/1.1\r\nHost: x\r\n\r\n", 400, True, b"Bad Request malformed request: invalid HTTP version\n"),
    (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505, True,
     b"HTTP Version Not Supported the versions served are HTTP/1.0 and 1.1\n"),
    (b"GET / HTTP/1.1x\r\nHost: x\r\n\r\n", 400, True, b"Bad Request malformed request: invalid new line\n"),
    (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400, True, b"Bad Request malformed request: invalid token\n"),
    (b"GARBAGE\r\n\r\n", 400, True, b"Bad Request malformed request: invalid token\n"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", 400, True,
     b"Bad Request malformed request: invalid header name\n"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, True,
     b"Bad Request malformed request: invalid header name\n"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", 400, True,
     b"Bad Request malformed request: invalid header value\n"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\rX: 1\r\n\r\n", 400, True, b"Bad Request malformed request: invalid new line\n"),
    # Refused before the head has all arrived, as httparse does.
    (b"\x16\x03\x01\x02\x00", 400, True, b"Bad Request malformed request: invalid token\n"),
    (b"GET / FOO", 400, True, b"Bad Request malformed request: invalid HTTP version\n"),
    (b"GET / HTTP/2", 505, True, b"HTTP Version Not Supported the versions served are HTTP/1.0 and 1.1\n"),
]


def http():
    return Http(Fake(), Limits())


def statuses(out):
    return [m.decode() for m in re.findall(rb"HTTP/1\.1 (\d\d\d)", out)]


class HttpTest(unittest.TestCase):
    def test_hello(self):
        out, close = http().feed(HELLO)
        self.assertEqual(out, b"HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
                              b"Content-Type: text/plain\r\nContent-Length: 14\r\n\r\nHello, World!\n")
        self.assertFalse(close)

    def test_pipelined_and_split_at_every_byte(self):
        two = HELLO + b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" \
            + b"GET /kv/a HTTP/1.1\r\nHost: x\r\n\r\n"
        whole = http().feed(two)[0]
        for cut in range(len(two) + 1):
            h = http()
            got = h.feed(two[:cut])[0] + h.feed(two[cut:])[0]
            self.assertEqual(got, whole, cut)
        h = http()
        self.assertEqual(b"".join(h.feed(two[i:i + 1])[0] for i in range(len(two))), whole)
        self.assertTrue(whole.endswith(b"abc") and b"201 Created" in whole)

    def test_kv_routes(self):
        h = http()
        self.assertEqual(statuses(h.feed(b"GET /kv/nope HTTP/1.1\r\nHost: x\r\n\r\n")[0]), ["404"])
        put = b"PUT /kv/a%20b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n"
        self.assertEqual(statuses(h.feed(put + b"1" + put + b"2")[0]), ["201", "204"])
        self.assertEqual(h.services.data["a b"], b"2")
        out = h.feed(b"HEAD /kv/a%20b HTTP/1.1\r\nHost: x\r\n\r\n")[0]
        self.assertTrue(out.endswith(b"Content-Length: 1\r\n\r\n"), out)
        delete = b"DELETE /kv/a%20b HTTP/1.1\r\nHost: x\r\n\r\n"
        self.assertEqual(statuses(h.feed(delete + delete)[0]), ["204", "204"])
        out = h.feed(b"POST /kv/a HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /kv/ HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n")[0]
        self.assertEqual(statuses(out), ["405", "405", "404", "404"])
        self.assertIn(b"Allow: GET, HEAD, PUT, DELETE\r\n", out)
        self.assertIn(b"Allow: GET, HEAD\r\n", out)
        out, close = h.feed(b"GET /kv/%zz HTTP/1.1\r\nHost: x\r\n\r\nGET /kv/%ff HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((statuses(out), close), (["400", "400"], False))
        long = b"PUT /kv/" + b"k" * 300 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        self.assertEqual(statuses(h.feed(long)[0]), ["414"])
        self.assertEqual(statuses(h.feed(b"GET http://example.com/?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")[0]), ["200"])

    def test_errors_close(self):
        for req, status in [
            (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", "411"),
            (b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "400"),
            (b"GARBAGE\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", "400"),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "505"),
            (b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n", "413"),
            (b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", "413"),
            (b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", "413"),
            (b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n", "417"),
            (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
        ]:
            out, close = http().feed(req)
            self.assertEqual(statuses(out), [status], req)
            self.assertTrue(close and b"Connection: close\r\n" in out)

    def test_header_limits(self):
        out, close = http().feed(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000)
        self.assertEqual((statuses(out), close), (["431"], True))
        h = http()
        replies = b""
        for _ in range(100):
            out, close = h.feed(b"a" * 100)
            replies += out
            if close:
                break
        self.assertTrue(replies.startswith(b"HTTP/1.1 431"), replies)
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(101))
        self.assertEqual(statuses(http().feed(b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")[0]), ["431"])

    def test_connection_handling(self):
        out, close = http().feed(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + HELLO)
        self.assertEqual((statuses(out), close), (["200"], True))
        out, close = http().feed(b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n")
        self.assertEqual((statuses(out), close), (["200"], True))
        out, close = http().feed(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        self.assertFalse(close)
        self.assertIn(b"Connection: keep-alive\r\n", out)

    def test_expect_continue_once_and_only_while_waiting(self):
        h = http()
        out, _ = h.feed(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        self.assertEqual(out, b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(h.feed(b"ab")[0], b"")
        self.assertEqual(statuses(h.feed(b"cd")[0]), ["201"])
        out, _ = h.feed(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx")
        self.assertEqual(statuses(out), ["204"])

    def test_a_bad_config_value_is_answered_500(self):
        out, _ = Http(Fake(), 'wasi:config max-body="x" is wrong').feed(HELLO)
        self.assertEqual(statuses(out), ["500"])
        self.assertIn(b"max-body", out)

    def test_a_large_body_in_many_reads(self):
        h = Http(Fake(), Limits(max_body=4 << 20))
        body = bytes(range(256)) * (4 << 12)
        out, _ = h.feed(b"PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 8192):
            out += h.feed(body[i:i + 8192])[0]
        self.assertEqual(statuses(out), ["201"])
        self.assertEqual(h.services.data["big"], body)

    def test_bare_lf_line_ends_and_empty_lines_before_a_request(self):
        out, close = http().feed(b"\r\n\r\nGET / HTTP/1.1\nHost: x\n\nGET / HTTP/1.1\r\nHost: x\n\r\n")
        self.assertEqual((statuses(out), close), (["200", "200"], False))
        out, close = http().feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertEqual((statuses(out), close), (["505"], True))
        out, close = http().feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertEqual((statuses(out), close), (["400"], True))

    def test_pipelined_responses_past_max_output_end_the_read_and_close(self):
        h = Http(Fake(), Limits(max_output=1000))
        h.services.data["v"] = b"x" * 600
        gets = b"GET /kv/v HTTP/1.1\r\nHost: x\r\n\r\n" * 5
        # The first response fits; the second passes 1000 bytes: it is sent,
        # says Connection: close, and the other three are not answered.
        out, close = h.feed(gets)
        self.assertEqual((statuses(out), close), (["200", "200"], True))
        self.assertEqual(out.count(b"Connection: close\r\n"), 1)
        self.assertTrue(out.endswith(b"Connection: close\r\n\r\n" + b"x" * 600), out)
        # A response over max_output with nothing after it keeps the connection.
        h = Http(Fake(), Limits(max_output=100))
        h.services.data["v"] = b"x" * 600
        for _ in range(2):
            out, close = h.feed(gets[:len(gets) // 5])
            self.assertEqual((statuses(out), close), (["200"], False))

    def test_cases_both_plugins_agree_on(self):
        for req, status, closes, body in AGREE:
            out, close = http().feed(req)
            self.assertEqual((statuses(out)[-1:], close), ([str(status)], closes), req[:80])
            self.assertTrue(out.endswith(b"\r\n\r\n" + body), (req[:80], out))
        # Empty lines alone are kept (they count in the head) and wait.
        h = http()
        self.assertEqual(h.feed(b"\r\n\r"), (b"", False))
        self.assertEqual(statuses(h.feed(b"\n" + HELLO)[0]), ["200"])

    def test_past_max_moved_the_response_closes(self):
        h = Http(Fake(), Limits(max_moved=2500))
        h.services.data["v"] = b"x" * 1000
        get = b"GET /kv/v HTTP/1.1\r\nHost: x\r\n\r\n"
        self.assertEqual(h.feed(get)[1], False)
        self.assertEqual(h.feed(get)[1], False)
        out, close = h.feed(get + get)
        self.assertEqual((statuses(out), close), (["200"], True))
        self.assertIn(b"Connection: close\r\n", out)


if __name__ == "__main__":
    unittest.main()
