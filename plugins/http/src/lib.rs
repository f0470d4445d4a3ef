//! `http-rs`: an HTTP/1.1 server as a connection plugin (world
//! `connection-handler` of `sockets:services@0.1.0`).
//!
//! - `GET /` (and `HEAD`): `200`, `Hello, World!\n`, `text/plain`.
//! - `GET`, `HEAD`, `PUT`, `DELETE` of `/kv/{key}`: the value of the
//!   percent-decoded `key` in bucket `default` of `wasi:keyvalue`.
//!
//! The protocol (framing, limits, routes) is in [`proto`], free of
//! bindings; this file connects it to the session resource, the store, the
//! clock and `wasi:config`:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `max-body` | 1048576 | largest request body, bytes (413 above) |
//! | `max-header-bytes` | 8192 | largest request head, bytes (431 above) |
//! | `max-headers` | 100 | most header fields (431 above); at most 1000 |
//! | `max-output` | 1048576 | bytes of responses to one read after which the rest of its pipelined requests is left unanswered and the connection closed |
//!
//! A value that is not a positive integer (or over the cap) is reported:
//! every request of the connection is answered 500 naming it.

use std::time::SystemTime;

use sockets_plugin::config;
use sockets_plugin::connection::{Connection, ConnectionInfo, Output, log};
use sockets_plugin::keyvalue::store;

pub mod proto;

use proto::{DEFAULT_LIMITS, Http, KvError, Limits, MAX_HEADERS_CAP, Services};

/// The bucket the key-value routes use.
const BUCKET: &str = "default";

/// One TCP connection.
pub struct Session(Http<Host>);

impl Connection for Session {
    fn new(_info: ConnectionInfo) -> Self {
        let limits = limits();
        if let Err(e) = &limits {
            log::error(e);
        }
        Session(Http::new(Host { bucket: None, date: (0, String::new()) }, limits))
    }

    fn on_data(&mut self, data: Vec<u8>) -> Result<Output, String> {
        let reply = self.0.feed(&data);
        Ok(Output { bytes: reply.bytes, close: reply.close })
    }
}

sockets_plugin::export_connection!(Session);

/// The limits from `wasi:config`, or why one is unusable.
fn limits() -> Result<Limits, String> {
    let var = |name: &str, default: usize, max: usize| -> Result<usize, String> {
        match config::get(name) {
            Ok(None) => Ok(default),
            Ok(Some(text)) => match text.trim().parse::<usize>() {
                Ok(n) if n > 0 && n <= max => Ok(n),
                _ => Err(format!("wasi:config {name}={text:?} is not a whole number from 1 to {max}")),
            },
            Err(e) => Err(format!("wasi:config {name}: {e:?}")),
        }
    };
    Ok(Limits {
        max_body: var("max-body", DEFAULT_LIMITS.max_body, usize::MAX / 2)?,
        max_header_bytes: var("max-header-bytes", DEFAULT_LIMITS.max_header_bytes, usize::MAX / 2)?,
        max_headers: var("max-headers", DEFAULT_LIMITS.max_headers, MAX_HEADERS_CAP)?,
        max_output: var("max-output", DEFAULT_LIMITS.max_output, usize::MAX / 2)?,
    })
}

/// The host's services: bucket `default`, opened at the first key-value
/// request of the connection and kept for the rest.
pub struct Host {
    bucket: Option<store::Bucket>,
    /// The last `Date` made, and the second it is for: formatted once a
    /// second, not once a call.
    date: (u64, String),
}

impl Host {
    fn bucket(&mut self) -> Result<&store::Bucket, KvError> {
        if self.bucket.is_none() {
            self.bucket = Some(store::open(BUCKET).map_err(kv_error)?);
        }
        self.bucket.as_ref().ok_or_else(|| KvError("no bucket".into()))
    }
}

fn kv_error(e: store::Error) -> KvError {
    KvError(match e {
        store::Error::NoSuchStore => "no such store".into(),
        store::Error::AccessDenied => format!("access to bucket {BUCKET:?} denied (--kv-bucket)"),
        store::Error::Other(text) => text,
    })
}

impl Services for Host {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.bucket()?.get(key).map_err(kv_error)
    }
    fn exists(&mut self, key: &str) -> Result<bool, KvError> {
        self.bucket()?.exists(key).map_err(kv_error)
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.bucket()?.set(key, value).map_err(kv_error)
    }
    fn delete(&mut self, key: &str) -> Result<(), KvError> {
        self.bucket()?.delete(key).map_err(kv_error)
    }
    fn date(&mut self) -> String {
        let now = SystemTime::now();
        let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.date.0 || self.date.1.is_empty() {
            self.date = (secs, httpdate::fmt_http_date(now));
        }
        self.date.1.clone()
    }
}
