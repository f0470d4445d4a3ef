//! kv-probe: a test and benchmark fixture for the host services. Each
//! request is one command (a line over TCP, a datagram over UDP); the reply
//! is its result in text.
//!
//! | command | does | replies |
//! |---|---|---|
//! | `get K` | `get` | the value, or `(nil)` |
//! | `set K V` | `set` (V: the rest of the line) | `ok` |
//! | `del K` | `delete` | `ok` |
//! | `exists K` | `exists` | `true` or `false` |
//! | `incr K [N]` | `atomics::increment` by N (1) | the new value |
//! | `keys` | `list-keys`, every page | `N keys: K1 K2 ...` (sorted; at most 20 shown) |
//! | `getmany K...` | `batch::get-many` | `K=V` or `K=(nil)` for each |
//! | `setmany K=V...` | `batch::set-many` | `ok` |
//! | `delmany K...` | `batch::delete-many` | `ok` |
//! | `setsize K N` | `set` of an N-byte value | `ok` |
//! | `keysize N` | `set` of an N-byte key | `ok` |
//! | `loop N` | N `get`s in one call | `ok` or the first error |
//! | `var NAME` | `wasi:config` `get` | the value, or `(none)` |
//! | `vars` | `get-all` | `A=1 B=2 ...` |
//! | `log LEVEL CONTEXT MESSAGE` | `wasi:logging` `log` | `ok` |
//!
//! Prefix a key-value command with `in BUCKET ` to use a bucket other than
//! `default`. Errors reply `err: no-such-store`, `err: access-denied` or
//! `err: other: TEXT`.

use sockets_plugin::keyvalue::{atomics, batch, store};
use sockets_plugin::{Plugin, Request, config, logging};

struct KvProbe;

impl Plugin for KvProbe {
    fn handle(req: Request) -> Result<Option<Vec<u8>>, String> {
        let line = String::from_utf8_lossy(&req.payload);
        let line = line.trim_end_matches(['\r', '\n']);
        let reply = match run(line) {
            Ok(text) => text,
            Err(e) => format!("err: {}", describe(&e)),
        };
        Ok(Some(reply.into_bytes()))
    }
}

fn describe(e: &store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no-such-store".into(),
        store::Error::AccessDenied => "access-denied".into(),
        store::Error::Other(text) => format!("other: {text}"),
    }
}

fn run(line: &str) -> Result<String, store::Error> {
    let (bucket, line) = match line.strip_prefix("in ").and_then(|rest| rest.split_once(' ')) {
        Some((bucket, rest)) => (bucket, rest),
        None => ("default", line),
    };
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let args: Vec<&str> = rest.split(' ').filter(|a| !a.is_empty()).collect();
    let arg = |i: usize| args.get(i).copied().unwrap_or("");
    match cmd {
        "var" => return Ok(config::get(arg(0)).ok().flatten().unwrap_or_else(|| "(none)".into())),
        "vars" => {
            let all = config::get_all().unwrap_or_default();
            return Ok(all.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
        }
        "log" => {
            let mut parts = rest.splitn(3, ' ');
            let level = match parts.next().unwrap_or("") {
                "trace" => logging::Level::Trace,
                "debug" => logging::Level::Debug,
                "warn" => logging::Level::Warn,
                "error" => logging::Level::Error,
                "critical" => logging::Level::Critical,
                _ => logging::Level::Info,
            };
            logging::log(level, parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            return Ok("ok".into());
        }
        _ => {}
    }
    let b = store::open(bucket)?;
    Ok(match cmd {
        "open" => "ok".into(),
        "get" => match b.get(arg(0))? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => "(nil)".into(),
        },
        "set" => {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            b.set(key, value.as_bytes())?;
            "ok".into()
        }
        "del" => {
            b.delete(arg(0))?;
            "ok".into()
        }
        "exists" => b.exists(arg(0))?.to_string(),
        "incr" => atomics::increment(&b, arg(0), arg(1).parse().unwrap_or(1))?.to_string(),
        "keys" => {
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                let page = b.list_keys(cursor)?;
                keys.extend(page.keys);
                cursor = page.cursor;
                if cursor.is_none() {
                    break;
                }
            }
            keys.sort();
            let shown: Vec<&str> = keys.iter().take(20).map(String::as_str).collect();
            format!("{} keys: {}", keys.len(), shown.join(" "))
        }
        "getmany" => {
            let keys: Vec<String> = args.iter().map(|k| k.to_string()).collect();
            let values = batch::get_many(&b, &keys)?;
            keys.iter()
                .zip(values)
                .map(|(k, v)| match v {
                    Some((_, v)) => format!("{k}={}", String::from_utf8_lossy(&v)),
                    None => format!("{k}=(nil)"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        }
        "setmany" => {
            let pairs: Vec<(String, Vec<u8>)> = args
                .iter()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), v.as_bytes().to_vec())
                })
                .collect();
            batch::set_many(&b, &pairs)?;
            "ok".into()
        }
        "delmany" => {
            let keys: Vec<String> = args.iter().map(|k| k.to_string()).collect();
            batch::delete_many(&b, &keys)?;
            "ok".into()
        }
        "setsize" => {
            b.set(arg(0), &vec![b'v'; arg(1).parse().unwrap_or(0)])?;
            "ok".into()
        }
        "keysize" => {
            b.set(&"k".repeat(arg(0).parse().unwrap_or(0)), b"v")?;
            "ok".into()
        }
        "loop" => {
            for _ in 0..arg(0).parse::<u32>().unwrap_or(0) {
                b.get("loop")?;
            }
            "ok".into()
        }
        _ => "err: unknown command".into(),
    })
}

sockets_plugin::export!(KvProbe);
