"""Unit tests of app.py (the glue to the host's imports), without WebAssembly.

They import app.py with the bindings componentize-py generates (`wit_world`,
`componentize_py_types`: the same classes as in the component, but with the
import functions left unimplemented) and replace the import functions with
fakes that behave as the component's do: return T for `ok`, raise
`Err(variant)` for `err`. So they check how the WIT errors are told apart,
that the bucket is opened, used and dropped, and what is logged.

build.sh generates the bindings into a scratch folder and runs these tests
with it on PYTHONPATH. Alone:

    bash scripts/componentize-py.sh -d wit/services -w handler bindings /tmp/b
    cd plugins/visits && PYTHONPATH=/tmp/b python3 -m unittest -v test_app

Without the bindings on the path, the tests are skipped.
"""

import unittest

try:
    from componentize_py_types import Err
    from wit_world.imports import atomics, types, wasi_config_store, wasi_keyvalue_store
    from wit_world.imports import logging as wasi_logging

    import app
except ImportError as e:  # no bindings on PYTHONPATH (or Python < 3.11)
    app = None
    _skip_reason = f"componentize-py bindings not importable: {e}"
else:
    _skip_reason = ""

    class FakeBucket(wasi_keyvalue_store.Bucket):
        def __init__(self, host, name):
            self.host = host
            self.name = name
            self.dropped = False

        def __exit__(self, *exc):
            self.dropped = True
            self.host.calls.append(("drop", self.name))
            return None


class FakeHost:
    """The imports app.py calls, replaced in the binding modules."""

    def __init__(self, vars=None, open_error=None, increment_error=None, config_error=None):
        self.vars = dict(vars or {})
        self.counters = {}
        self.open_error = open_error
        self.increment_error = increment_error
        self.config_error = config_error
        self.calls = []
        self.logs = []
        self.buckets = []

    def open(self, identifier):
        self.calls.append(("open", identifier))
        if self.open_error is not None:
            raise Err(self.open_error)
        b = FakeBucket(self, identifier)
        self.buckets.append(b)
        return b

    def increment(self, bucket, key, delta):
        assert isinstance(bucket, wasi_keyvalue_store.Bucket) and not bucket.dropped
        self.calls.append(("increment", bucket.name, key, delta))
        if self.increment_error is not None:
            raise Err(self.increment_error)
        self.counters[key] = self.counters.get(key, 0) + delta
        return self.counters[key]

    def config_get(self, key):
        self.calls.append(("config", key))
        if self.config_error is not None:
            raise Err(self.config_error)
        return self.vars.get(key)

    def log(self, level, context, message):
        self.logs.append((level, context, message))


def request(payload: bytes, transport=None):
    return types.Request(
        transport=transport or types.Transport.TCP, peer="127.0.0.1:5000", local="127.0.0.1:7000", payload=payload
    )


@unittest.skipIf(app is None, _skip_reason)
class AppTest(unittest.TestCase):
    def setUp(self):
        self.host = FakeHost()
        saved = [
            (wasi_keyvalue_store, "open"),
            (atomics, "increment"),
            (wasi_config_store, "get"),
            (wasi_logging, "log"),
        ]
        for module, name in saved:
            self.addCleanup(setattr, module, name, getattr(module, name))
        wasi_keyvalue_store.open = lambda identifier: self.host.open(identifier)
        atomics.increment = lambda b, k, d: self.host.increment(b, k, d)
        wasi_config_store.get = lambda key: self.host.config_get(key)
        wasi_logging.log = lambda level, context, message: self.host.log(level, context, message)

    def handle(self, payload: bytes, **kw):
        return app.WitWorld().handle(request(payload, **kw))

    def test_a_visit(self):
        self.host.vars["greeting"] = "hi"
        self.assertEqual(self.handle(b"ada\r"), b"hi, ada! visit 1")
        self.assertEqual(self.handle(b"ada", transport=types.Transport.UDP), b"hi, ada! visit 2")
        self.assertEqual(
            self.host.calls,
            [("config", "greeting"), ("open", "default"), ("increment", "default", "visits/ada", 1), ("drop", "default")]
            * 2,
        )
        self.assertEqual(
            self.host.logs,
            [(wasi_logging.Level.INFO, "visits", "ada visit 1"), (wasi_logging.Level.INFO, "visits", "ada visit 2")],
        )

    def test_missing_greeting(self):
        self.assertEqual(self.handle(b""), b"hello, world! visit 1")

    def test_open_errors(self):
        for error, detail in [
            (wasi_keyvalue_store.Error_NoSuchStore(), "no-such-store"),
            (wasi_keyvalue_store.Error_AccessDenied(), "access-denied"),
            (wasi_keyvalue_store.Error_Other("database is locked"), "database is locked"),
        ]:
            self.host.open_error = error
            self.assertEqual(self.handle(b"ada"), f"store unavailable: {detail}".encode())
        self.assertEqual(self.host.logs, [])

    def test_increment_error_drops_the_bucket(self):
        self.host.increment_error = wasi_keyvalue_store.Error_Other("value is not a number")
        self.assertEqual(self.handle(b"ada"), b"store unavailable: value is not a number")
        self.assertEqual(self.host.calls[-1], ("drop", "default"))
        self.assertTrue(all(b.dropped for b in self.host.buckets))

    def test_config_errors(self):
        for error in [wasi_config_store.Error_Upstream("vault sealed"), wasi_config_store.Error_Io("vault sealed")]:
            self.host.config_error = error
            self.assertEqual(self.handle(b"ada"), b"config unavailable: vault sealed")
        self.assertNotIn("open", [c[0] for c in self.host.calls])

    def test_refusals_touch_nothing(self):
        self.assertEqual(self.handle(b"x" * 201), b"name too long")
        self.assertEqual(self.handle(b"\xc3"), b"name is not utf-8")
        self.assertEqual(self.host.calls, [])

    def test_a_bug_is_err_with_a_message(self):
        wasi_logging.log = None  # calling it raises TypeError
        with self.assertRaises(Err) as cm:
            self.handle(b"ada")
        self.assertIsInstance(cm.exception.value, str)
        self.assertTrue(cm.exception.value.startswith("visits internal error: TypeError"))


if __name__ == "__main__":
    unittest.main()
