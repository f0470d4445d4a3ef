"""visits: a `sockets:services@0.1.0` `handler` plugin written in Python.

Each request is a name; the plugin counts the name's visits in the host's
key-value store and greets it with the greeting from the host's
configuration: `ada` -> `hello, ada! visit 3`. The logic is in visits.py
(pure Python, unit-tested); this module connects it to the host. See
README.md.

World `handler` of wit/services: sockets:plugin@0.2.0's `handler` (export
`handle`, import `log`) plus wasi:keyvalue (store, atomics, batch),
wasi:config/store and wasi:logging/logging. componentize-py imports every
interface of the world into the component, whether the code calls it or not
(this module calls neither `batch` nor `sockets:plugin/log`).

How componentize-py 0.25.1 maps the imports used here (read in the
bindings it generates: `bash scripts/componentize-py.sh -d wit/services -w
handler bindings OUTDIR`):

- an imported interface is a module of `wit_world.imports`, named after the
  interface; two interfaces named `store` are told apart by their package:
  `wasi_keyvalue_store` and `wasi_config_store`; `wasi:logging/logging` is
  `wit_world.imports.logging` (imported here as `wasi_logging`, so that it
  is not mistaken for Python's `logging`);
- `result<T, error>`: the function returns T for `ok`, and **raises**
  `componentize_py_types.Err(value)` for `err`, `value` being the error
  variant. A variant is one dataclass per case: `Error_NoSuchStore()`,
  `Error_AccessDenied()`, `Error_Other(value=str)` (keyvalue) and
  `Error_Upstream(value=str)`, `Error_Io(value=str)` (config).
  HostServices catches them and visits.py turns them into replies (a store
  error is an answer, not a failed request);
- `option<T>` is T or None (`wasi_config_store.get` returns `str | None`);
- `u64` is a Python int, both ways (`atomics.increment(bucket, key, 1)`);
- the resource `bucket` is the class `wasi_keyvalue_store.Bucket`; `open`
  returns one, and `borrow<bucket>` parameters take it. It is a context
  manager: leaving the `with` drops the host's handle at once (otherwise it
  is dropped when Python collects the object);
- the enum `level` is `wasi_logging.Level.INFO` (an `Enum`).

The export: class `WitWorld` with `handle(self, req) -> bytes | None`;
returning bytes is `ok(some(bytes))`, raising `Err(message)` is
`err(message)`.
"""

from typing import Optional

from componentize_py_types import Err
from wit_world import WitWorld as _WitWorldProtocol
from wit_world.imports import atomics, types, wasi_config_store, wasi_keyvalue_store
from wit_world.imports import logging as wasi_logging

from visits import ConfigError, StoreError, visit


def store_error_detail(error: wasi_keyvalue_store.Error) -> str:
    """The text a reply shows for a wasi:keyvalue error."""
    if isinstance(error, wasi_keyvalue_store.Error_NoSuchStore):
        return "no-such-store"
    if isinstance(error, wasi_keyvalue_store.Error_AccessDenied):
        return "access-denied"
    if isinstance(error, wasi_keyvalue_store.Error_Other):
        return error.value
    return repr(error)  # not a case of the WIT variant: cannot happen


def config_error_detail(error: wasi_config_store.Error) -> str:
    """The text a reply shows for a wasi:config error."""
    if isinstance(error, (wasi_config_store.Error_Upstream, wasi_config_store.Error_Io)):
        return error.value
    return repr(error)  # not a case of the WIT variant: cannot happen


class HostServices:
    """visits.Services on the host's imports: WIT errors become StoreError/ConfigError."""

    def config_get(self, key: str) -> Optional[str]:
        try:
            return wasi_config_store.get(key)
        except Err as e:
            raise ConfigError(config_error_detail(e.value)) from None

    def increment(self, bucket: str, key: str, delta: int) -> int:
        try:
            # `with`: the bucket handle is dropped as soon as it is not needed.
            with wasi_keyvalue_store.open(bucket) as b:
                return atomics.increment(b, key, delta)
        except Err as e:
            raise StoreError(store_error_detail(e.value)) from None

    def log_info(self, context: str, message: str) -> None:
        wasi_logging.log(wasi_logging.Level.INFO, context, message)


_HOST = HostServices()


class WitWorld(_WitWorldProtocol):
    """The export of world `handler`: `handle(req) -> result<option<list<u8>>, string>`.

    Always replies (`ok(some(..))`), store and configuration errors included;
    only a bug here ends as `err(...)` (logged by the host, nothing sent).
    """

    def handle(self, req: types.Request) -> bytes:
        try:
            return visit(bytes(req.payload), _HOST)
        except Exception as e:
            raise Err(f"visits internal error: {type(e).__name__}: {e}")
