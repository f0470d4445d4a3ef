//! The commands about the server and the connection rather than the
//! data, answered as Redis answers them so that `redis-cli`,
//! `redis-benchmark` and client libraries start without warnings:
//! `COMMAND`, `CONFIG GET`, `CLIENT`, `HELLO`, `INFO`.

use crate::commands::Client;
use crate::keys;
use crate::protocol::{parse_i64, reply};

/// The `redis_version` `INFO` and `HELLO` report: the Redis whose
/// behaviour the commands follow.
pub const REDIS_VERSION: &str = "7.0.15";

/// The commands this server knows, for `COMMAND COUNT`.
const COMMANDS: &[&str] = &[
    "auth", "client", "command", "config", "dbsize", "decr", "decrby", "del", "echo", "exists", "get", "hello", "incr",
    "incrby", "info", "keys", "mget", "mset", "ping", "quit", "select", "set",
];

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`: no documentation is served
/// (`redis-cli` then shows no hints), the count is of the commands here.
pub(crate) fn command(args: &[Vec<u8>], out: &mut Vec<u8>) {
    let sub = args.get(1).map(|s| s.to_ascii_lowercase());
    match sub.as_deref() {
        None | Some(b"docs") | Some(b"info") => reply::array(out, 0),
        Some(b"count") => reply::integer(out, COMMANDS.len()),
        Some(_) => reply::error(out, &unknown_subcommand(&args[1], "COMMAND")),
    }
}

fn unknown_subcommand(sub: &[u8], command: &str) -> String {
    format!("ERR unknown subcommand '{}'. Try {command} HELP.", String::from_utf8_lossy(sub))
}

/// `CONFIG GET pattern...`: the few parameters clients ask for, with what
/// is true of this server (no RDB snapshots, no AOF: durability is the
/// host's store). `CONFIG SET` and the rest are refused.
pub(crate) fn config(args: &[Vec<u8>], out: &mut Vec<u8>) {
    const PARAMS: &[(&str, &str)] = &[("appendonly", "no"), ("databases", "1"), ("save", "")];
    match args[1].to_ascii_lowercase().as_slice() {
        b"get" if args.len() >= 3 => {
            let found: Vec<&(&str, &str)> = PARAMS
                .iter()
                .filter(|(name, _)| args[2..].iter().any(|p| keys::glob(&p.to_ascii_lowercase(), name.as_bytes())))
                .collect();
            reply::array(out, found.len() * 2);
            for (name, value) in found {
                reply::bulk(out, name.as_bytes());
                reply::bulk(out, value.as_bytes());
            }
        }
        b"get" => reply::error(out, "ERR wrong number of arguments for 'config|get' command"),
        b"set" | b"resetstat" | b"rewrite" => {
            reply::error(out, "ERR CONFIG SET, RESETSTAT and REWRITE are not supported by this server")
        }
        _ => reply::error(out, &unknown_subcommand(&args[1], "CONFIG")),
    }
}

/// `CLIENT SETNAME`, `GETNAME`, `ID`; the rest are refused as Redis
/// refuses an unknown subcommand.
pub(crate) fn client(client: &mut Client, args: &[Vec<u8>], out: &mut Vec<u8>) {
    match (args[1].to_ascii_lowercase().as_slice(), args.len()) {
        (b"setname", 3) => {
            if args[2].iter().any(|&b| b <= b' ' || b > b'~') {
                reply::error(out, "ERR Client names cannot contain spaces, newlines or special characters.");
            } else {
                client.name = Some(args[2].clone()).filter(|n| !n.is_empty());
                reply::simple(out, "OK");
            }
        }
        (b"getname", 2) => match &client.name {
            Some(n) => reply::bulk(out, n),
            None => reply::nil(out),
        },
        (b"id", 2) => reply::integer(out, 1),
        (sub @ (b"setname" | b"getname" | b"id"), _) => reply::error(
            out,
            &format!("ERR wrong number of arguments for 'client|{}' command", String::from_utf8_lossy(sub)),
        ),
        _ => reply::error(out, &unknown_subcommand(&args[1], "CLIENT")),
    }
}

/// `HELLO [2 [SETNAME name]]`: RESP2 only; `HELLO 3` is `-NOPROTO`, as a
/// Redis that does not speak RESP3 answers, so clients fall back to RESP2.
pub(crate) fn hello(client: &mut Client, args: &[Vec<u8>], out: &mut Vec<u8>) {
    if let Some(version) = args.get(1) {
        match parse_i64(version) {
            Some(2) => {}
            Some(_) => return reply::error(out, "NOPROTO unsupported protocol version"),
            None => return reply::error(out, "ERR Protocol version is not an integer or out of range"),
        }
    }
    let mut i = 2;
    while i < args.len() {
        match args[i].to_ascii_lowercase().as_slice() {
            b"setname" if i + 1 < args.len() => {
                client.name = Some(args[i + 1].clone());
                i += 2;
            }
            b"auth" if i + 2 < args.len() => {
                return reply::error(out, "WRONGPASS invalid username-password pair or user is disabled.");
            }
            _ => {
                return reply::error(
                    out,
                    &format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(&args[i])),
                );
            }
        }
    }
    reply::array(out, 14);
    for (k, v) in [("server", "redis"), ("version", REDIS_VERSION)] {
        reply::bulk(out, k.as_bytes());
        reply::bulk(out, v.as_bytes());
    }
    reply::bulk(out, b"proto");
    reply::integer(out, 2);
    reply::bulk(out, b"id");
    reply::integer(out, 1);
    for (k, v) in [("mode", "standalone"), ("role", "master")] {
        reply::bulk(out, k.as_bytes());
        reply::bulk(out, v.as_bytes());
    }
    reply::bulk(out, b"modules");
    reply::array(out, 0);
}

/// `INFO [section]`: a short server section (the sections are not told
/// apart).
pub(crate) fn info(out: &mut Vec<u8>) {
    let text = format!(
        "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nserver:wasm-sockets resp plugin\r\n\
         \r\n# Persistence\r\nloading:0\r\naof_enabled:0\r\n\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"
    );
    reply::bulk(out, text.as_bytes());
}
