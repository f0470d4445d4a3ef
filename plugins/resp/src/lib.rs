//! `resp`: a Redis-compatible key-value server, as a connection plugin.
//!
//! It speaks RESP2 to `redis-cli`, `redis-benchmark` and client libraries
//! and keeps the data in the host's `wasi:keyvalue` bucket `default`, on
//! the embedded store or on Redis (`--kv redis://...`): the plugin never
//! opens a socket of its own. The framing is the plugin's (the host hands
//! it the stream split anywhere): [`protocol`] reads requests, [`commands`]
//! answers them ([`server`]: the commands about the server and the
//! connection), [`keys`] maps Redis's byte keys to the store's string keys.
//!
//! Limits, read from `wasi:config` at the connection's start (`--var`):
//!
//! | variable | default | what |
//! |---|---|---|
//! | `resp-max-bulk` | 1048576 (the host's `--kv-max-value` default) | largest bulk string of a request |
//! | `resp-max-request` | 8388608 | most bytes one request holds |
//! | `resp-max-output` | 1032192 (1 MiB less 16 KiB) | most bytes of replies to one read |
//!
//! A request over either of the first two is a protocol error:
//! `-ERR Protocol error: ...` and the connection is closed, as Redis
//! closes it. Replies past `resp-max-output` are dropped and the
//! connection is closed ([`commands::run_all`]), as Redis closes a client
//! past its output buffer limit: without it, 60 pipelined `GET`s of a
//! 1 MB value made 60 MB of output, over the plugin's memory and the
//! host's `--max-reply`, and the client got nothing.

pub mod commands;
pub mod keys;
pub mod protocol;
pub mod server;

use sockets_plugin::connection::{Connection, ConnectionInfo, Output};
use sockets_plugin::keyvalue::{atomics, batch, store};

use crate::commands::{After, Client, DEFAULT_MAX_OUTPUT, Kv};
use crate::protocol::{Limits, Parser, reply};

/// The bucket the commands use.
pub const BUCKET: &str = "default";
/// Default largest bulk string: the host's default `--kv-max-value`.
pub const DEFAULT_MAX_BULK: usize = 1 << 20;
/// Default most bytes one request holds.
pub const DEFAULT_MAX_REQUEST: usize = 8 << 20;

/// One connection: its parser, its client state and its bucket.
pub struct Resp {
    parser: Parser,
    client: Client,
    kv: Bucket,
}

impl Connection for Resp {
    fn new(_info: ConnectionInfo) -> Self {
        let var = |name: &str, default: usize| {
            sockets_plugin::config::get(name).ok().flatten().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
        };
        let limits = Limits {
            max_bulk: var("resp-max-bulk", DEFAULT_MAX_BULK),
            max_request: var("resp-max-request", DEFAULT_MAX_REQUEST),
        };
        // Values in memory at once: 16 MiB of the largest at most.
        let get_batch = ((16 << 20) / limits.max_bulk.max(1)).clamp(1, 1024);
        let client = Client { name: None, max_output: var("resp-max-output", DEFAULT_MAX_OUTPUT), get_batch };
        Resp { parser: Parser::new(limits), client, kv: Bucket(None) }
    }

    fn on_data(&mut self, data: Vec<u8>) -> Result<Output, String> {
        self.parser.feed(&data);
        // Every complete request of this call first, then run them: a run
        // of pipelined GETs becomes one store call.
        let mut requests = Vec::new();
        let parsed = loop {
            match self.parser.next_request() {
                Ok(Some(args)) => requests.push(args),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let mut out = Vec::new();
        if commands::run_all(&mut self.kv, &mut self.client, &requests, &mut out) == After::Close {
            return Ok(Output::reply_and_close(out));
        }
        match parsed {
            Ok(()) => Ok(Output::reply(out)),
            Err(e) => {
                reply::error(&mut out, &format!("ERR Protocol error: {}", e.0));
                Ok(Output::reply_and_close(out))
            }
        }
    }
}

sockets_plugin::export_connection!(Resp);

/// The bucket, opened at the first command that needs it and kept for the
/// connection.
struct Bucket(Option<store::Bucket>);

impl Bucket {
    fn open(&mut self) -> Result<&store::Bucket, String> {
        if self.0.is_none() {
            self.0 = Some(store::open(BUCKET).map_err(text)?);
        }
        self.0.as_ref().ok_or_else(|| "no bucket".to_string())
    }
}

fn text(e: store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no such store".into(),
        store::Error::AccessDenied => format!("access denied to bucket {BUCKET:?} (--kv-bucket)"),
        store::Error::Other(text) => text,
    }
}

impl Kv for Bucket {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.open()?.get(key).map_err(text)
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        self.open()?.set(key, value).map_err(text)
    }
    fn exists(&mut self, key: &str) -> Result<bool, String> {
        self.open()?.exists(key).map_err(text)
    }
    fn delete_many(&mut self, keys: &[String]) -> Result<(), String> {
        batch::delete_many(self.open()?, keys).map_err(text)
    }
    fn increment(&mut self, key: &str, delta: u64) -> Result<u64, String> {
        atomics::increment(self.open()?, key, delta).map_err(text)
    }
    fn get_many(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        let values = batch::get_many(self.open()?, keys).map_err(text)?;
        Ok(values.into_iter().map(|v| v.map(|(_, v)| v)).collect())
    }
    fn set_many(&mut self, pairs: &[(String, Vec<u8>)]) -> Result<(), String> {
        batch::set_many(self.open()?, pairs).map_err(text)
    }
    fn list_keys(&mut self, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), String> {
        let page = self.open()?.list_keys(cursor).map_err(text)?;
        Ok((page.keys, page.cursor))
    }
}
