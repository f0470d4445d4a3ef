"""Unit tests of visits.py (the logic, without WebAssembly), with fake services.

Run with a plain python3 from this folder: `python3 -m unittest -v test_visits`
(build.sh runs them before building the component).
"""

import unittest

from visits import MAX_NAME, ConfigError, StoreError, visit


class FakeServices:
    """In-memory services that record every call."""

    def __init__(self, vars=None, store_error=None, config_error=None):
        self.vars = dict(vars or {})
        self.counters = {}
        self.store_error = store_error
        self.config_error = config_error
        self.calls = []
        self.logs = []

    def config_get(self, key):
        self.calls.append(("config_get", key))
        if self.config_error is not None:
            raise ConfigError(self.config_error)
        return self.vars.get(key)

    def increment(self, bucket, key, delta):
        self.calls.append(("increment", bucket, key, delta))
        if self.store_error is not None:
            raise StoreError(self.store_error)
        self.counters[key] = self.counters.get(key, 0) + delta
        return self.counters[key]

    def log_info(self, context, message):
        self.logs.append((context, message))


class VisitsTest(unittest.TestCase):
    def test_visits_are_counted_per_name(self):
        s = FakeServices()
        self.assertEqual(visit(b"ada", s), b"hello, ada! visit 1")
        self.assertEqual(visit(b"ada", s), b"hello, ada! visit 2")
        self.assertEqual(visit(b"bob", s), b"hello, bob! visit 1")
        self.assertEqual(visit(b"ada", s), b"hello, ada! visit 3")
        self.assertEqual(s.counters, {"visits/ada": 3, "visits/bob": 1})
        self.assertIn(("increment", "default", "visits/ada", 1), s.calls)
        self.assertIn(("config_get", "greeting"), s.calls)

    def test_one_info_line_per_visit(self):
        s = FakeServices()
        visit(b"ada", s)
        visit(b"  ada\t", s)
        self.assertEqual(s.logs, [("visits", "ada visit 1"), ("visits", "ada visit 2")])

    def test_the_greeting_comes_from_the_configuration(self):
        s = FakeServices(vars={"greeting": "bonjour"})
        self.assertEqual(visit(b"ada", s), b"bonjour, ada! visit 1")
        s = FakeServices(vars={"greeting": ""})
        self.assertEqual(visit(b"ada", s), b", ada! visit 1")

    def test_whitespace_is_stripped_and_empty_is_world(self):
        s = FakeServices()
        self.assertEqual(visit(b"", s), b"hello, world! visit 1")
        self.assertEqual(visit(b" \t\r", s), b"hello, world! visit 2")
        self.assertEqual(visit(b"  ada lovelace \r", s), b"hello, ada lovelace! visit 1")
        self.assertEqual(set(s.counters), {"visits/world", "visits/ada lovelace"})

    def test_utf8_names(self):
        s = FakeServices(vars={"greeting": "grüß dich"})
        self.assertEqual(visit("Zoë".encode(), s), "grüß dich, Zoë! visit 1".encode())
        self.assertEqual(s.counters, {"visits/Zoë": 1})

    def test_a_name_that_is_not_utf8_touches_nothing(self):
        s = FakeServices()
        self.assertEqual(visit(b"\xff\xfe", s), b"name is not utf-8")
        self.assertEqual(s.calls, [])
        self.assertEqual(s.logs, [])

    def test_name_length_limit_in_bytes(self):
        s = FakeServices()
        self.assertEqual(visit(b"x" * MAX_NAME, s), b"hello, " + b"x" * MAX_NAME + b"! visit 1")
        self.assertEqual(visit(b"  " + b"x" * MAX_NAME + b"\n", s), b"hello, " + b"x" * MAX_NAME + b"! visit 2")
        calls = len(s.calls)
        self.assertEqual(visit(b"x" * (MAX_NAME + 1), s), b"name too long")
        # 100 two-byte characters are 200 bytes; 101 are 202.
        self.assertEqual(visit("é".encode() * 100, s), ("hello, " + "é" * 100 + "! visit 1").encode())
        calls += 2
        self.assertEqual(visit("é".encode() * 101, s), b"name too long")
        self.assertEqual(len(s.calls), calls)

    def test_store_errors_are_replies(self):
        for detail in ["no-such-store", "access-denied", "disk full: /var/lib/kv"]:
            s = FakeServices(store_error=detail)
            self.assertEqual(visit(b"ada", s), f"store unavailable: {detail}".encode())
            self.assertEqual(s.logs, [])

    def test_config_errors_are_replies_and_count_no_visit(self):
        s = FakeServices(config_error="vault sealed")
        self.assertEqual(visit(b"ada", s), b"config unavailable: vault sealed")
        self.assertEqual(s.calls, [("config_get", "greeting")])
        self.assertEqual(s.logs, [])

    def test_big_counters(self):
        s = FakeServices()
        s.counters["visits/ada"] = 2**64 - 2
        self.assertEqual(visit(b"ada", s), b"hello, ada! visit 18446744073709551615")


if __name__ == "__main__":
    unittest.main()
