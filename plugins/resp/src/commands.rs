//! The commands: each request (its arguments) becomes store calls and one
//! RESP2 reply, with Redis's texts for errors a client can cause.
//!
//! The store is behind the [`Kv`] trait so that the commands are tested
//! natively against a map ([`tests`]) and served against `wasi:keyvalue`
//! in the plugin. A store error is answered `-ERR store: TEXT` (the host's
//! text, which names the limit or the backend's failure) and the
//! connection stays usable.

use crate::protocol::{parse_i64, reply};
use crate::{keys, server};

/// The key-value operations the commands use: `wasi:keyvalue`'s, on one
/// bucket, with string keys (see [`keys`]) and the host's error text.
pub trait Kv {
    /// `store.get`.
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// `store.set`.
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String>;
    /// `store.exists`.
    fn exists(&mut self, key: &str) -> Result<bool, String>;
    /// `batch.delete-many`.
    fn delete_many(&mut self, keys: &[String]) -> Result<(), String>;
    /// `atomics.increment`.
    fn increment(&mut self, key: &str, delta: u64) -> Result<u64, String>;
    /// `batch.get-many`: the values, in the order of `keys`.
    fn get_many(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String>;
    /// `batch.set-many`.
    fn set_many(&mut self, pairs: &[(String, Vec<u8>)]) -> Result<(), String>;
    /// `store.list-keys`: one page and the cursor of the next.
    fn list_keys(&mut self, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), String>;
}

/// What the connection does after a command's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read the next command.
    Continue,
    /// Close the connection after the reply (`QUIT`).
    Close,
}

/// The state a connection keeps between commands, and its limits.
#[derive(Debug)]
pub struct Client {
    /// Set by `CLIENT SETNAME` or `HELLO ... SETNAME`.
    pub name: Option<Vec<u8>>,
    /// Most bytes of replies to one read of the connection
    /// (`resp-max-output`): see [`run_all`].
    pub max_output: usize,
    /// Most keys one `get-many` reads (at least 1), so that the values
    /// in memory at once stay bounded whatever the pipeline or `MGET`.
    pub get_batch: usize,
}

/// Default [`Client::max_output`]: the host's default `--max-reply`
/// (1 MiB) less a margin for the small replies of writes, which are never
/// dropped (see [`run_all`]).
pub const DEFAULT_MAX_OUTPUT: usize = (1 << 20) - (16 << 10);
/// Default [`Client::get_batch`]: 16 values of the largest default size
/// (1 MiB) at most, a quarter of a plugin's default 64 MiB of memory.
pub const DEFAULT_GET_BATCH: usize = 16;

impl Default for Client {
    fn default() -> Self {
        Client { name: None, max_output: DEFAULT_MAX_OUTPUT, get_batch: DEFAULT_GET_BATCH }
    }
}

const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
const OVERFLOW: &str = "ERR increment or decrement would overflow";

/// Run `requests` (each never empty) in order, appending their replies to
/// `out`; stops after one that closes the connection. Consecutive `GET`s
/// are one `get-many` (one read of the store instead of one per key,
/// which is most of a `GET`'s cost on the embedded store; at most
/// [`Client::get_batch`] keys a call), and consecutive plain
/// `SET key value`s one `set-many` (one commit instead of one per key).
/// The replies are the same as one command at a time, and if a batch
/// fails (one key over the host's limit, say), each is run alone so that
/// only the bad one gets an error (a plain `SET` run again sets the same
/// value: harmless where a failed batch kept some keys).
///
/// The output is bounded by [`Client::max_output`], as Redis closes a
/// client whose output buffer passes `client-output-buffer-limit`: once
/// the replies reach it, the rest of the requests are not run and the
/// connection is closed; a reply that would take them past it is dropped
/// (the client gets every reply before it, whole, then the close). Two
/// exceptions, so that the client never gets nothing: the first reply of
/// a call is kept whatever its size (a `GET` of a large value; the
/// host's `--max-reply` is the last word), and the replies of writes
/// (`+OK`, a count) are kept, as the write happened.
pub fn run_all(kv: &mut impl Kv, client: &mut Client, requests: &[Vec<Vec<u8>>], out: &mut Vec<u8>) -> After {
    let is_get = |args: &Vec<Vec<u8>>| args.len() == 2 && args[0].eq_ignore_ascii_case(b"get");
    let is_set = |args: &Vec<Vec<u8>>| args.len() == 3 && args[0].eq_ignore_ascii_case(b"set");
    let max = client.max_output;
    let mut i = 0;
    while i < requests.len() {
        if out.len() >= max {
            return After::Close;
        }
        let gets = requests[i..].iter().take_while(|r| is_get(r)).take(client.get_batch.max(1)).count();
        let sets = requests[i..].iter().take_while(|r| is_set(r)).count();
        if gets > 1 {
            let names: Vec<String> = requests[i..i + gets].iter().map(|r| keys::encode(&r[1])).collect();
            if let Ok(values) = kv.get_many(&names) {
                for v in values {
                    if out.len() >= max {
                        return After::Close;
                    }
                    let before = out.len();
                    match v {
                        Some(v) => reply::bulk(out, &v),
                        None => reply::nil(out),
                    }
                    if dropped(out, before, max) {
                        return After::Close;
                    }
                }
                i += gets;
                continue;
            }
        } else if sets > 1 {
            let pairs: Vec<(String, Vec<u8>)> =
                requests[i..i + sets].iter().map(|r| (keys::encode(&r[1]), r[2].clone())).collect();
            if kv.set_many(&pairs).is_ok() {
                (0..sets).for_each(|_| reply::simple(out, "OK"));
                i += sets;
                continue;
            }
        }
        let alone = gets.max(sets).max(1);
        for args in &requests[i..i + alone] {
            if out.len() >= max {
                return After::Close;
            }
            let before = out.len();
            if run(kv, client, args, out) == After::Close || (!writes(&args[0]) && dropped(out, before, max)) {
                return After::Close;
            }
        }
        i += alone;
    }
    After::Continue
}

/// Whether the reply that starts at `out[before]` took the output past
/// `max` and was dropped (it is kept when it is the first).
fn dropped(out: &mut Vec<u8>, before: usize, max: usize) -> bool {
    if out.len() > max && before > 0 {
        out.truncate(before);
        return true;
    }
    false
}

/// Whether the command `name` changes data (its reply is small and never
/// dropped).
fn writes(name: &[u8]) -> bool {
    ["set", "del", "incr", "incrby", "decr", "decrby", "mset"].iter().any(|w| name.eq_ignore_ascii_case(w.as_bytes()))
}

/// An array reply (`MGET`, `KEYS`) that started at `out[mark]` and passed
/// `max`: dropped, and replaced by an error if it was the first reply, so
/// that the client learns why the connection closes.
fn too_big(out: &mut Vec<u8>, mark: usize, max: usize) -> After {
    out.truncate(mark);
    if mark == 0 {
        reply::error(out, &format!("ERR reply of more than {max} bytes (resp-max-output)"));
    }
    After::Close
}

/// Run the request `args` (never empty) and append its reply to `out`.
pub fn run(kv: &mut impl Kv, client: &mut Client, args: &[Vec<u8>], out: &mut Vec<u8>) -> After {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let argc = args.len();
    // Arity as Redis's command table has it: exact (n) or at least (-n).
    let arity: i32 = match name.as_str() {
        "ping" => -1,
        "echo" | "get" | "incr" | "decr" | "keys" | "select" => 2,
        "set" => -3,
        "del" | "exists" | "mget" | "auth" => -2,
        "incrby" | "decrby" => 3,
        "mset" => -3,
        "dbsize" => 1,
        // Redis ignores QUIT's arguments.
        "command" | "info" | "hello" | "quit" => -1,
        "config" | "client" => -2,
        _ => {
            reply::error(out, &unknown_command(args));
            return After::Continue;
        }
    };
    let arity_ok = if arity >= 0 { argc == arity as usize } else { argc >= arity.unsigned_abs() as usize };
    if !arity_ok || (name == "mset" && argc.is_multiple_of(2)) || (name == "ping" && argc > 2) {
        reply::error(out, &format!("ERR wrong number of arguments for '{name}' command"));
        return After::Continue;
    }
    let result = match name.as_str() {
        "ping" => {
            match args.get(1) {
                Some(msg) => reply::bulk(out, msg),
                None => reply::simple(out, "PONG"),
            }
            Ok(())
        }
        "echo" => {
            reply::bulk(out, &args[1]);
            Ok(())
        }
        "quit" => {
            reply::simple(out, "OK");
            return After::Close;
        }
        "get" => kv.get(&keys::encode(&args[1])).map(|v| match v {
            Some(v) => reply::bulk(out, &v),
            None => reply::nil(out),
        }),
        "set" => set(kv, args, out),
        "del" => del(kv, &args[1..], out),
        "exists" => {
            let mut n = 0u64;
            args[1..]
                .iter()
                .try_for_each(|k| kv.exists(&keys::encode(k)).map(|e| n += u64::from(e)))
                .map(|()| reply::integer(out, n))
        }
        "incr" => add(kv, &args[1], Ok(1), out),
        "decr" => add(kv, &args[1], Ok(-1), out),
        "incrby" => add(kv, &args[1], parse_i64(&args[2]).ok_or(()), out),
        "decrby" => match parse_i64(&args[2]) {
            Some(i64::MIN) => {
                reply::error(out, "ERR decrement would overflow");
                Ok(())
            }
            n => add(kv, &args[1], n.map(|n| -n).ok_or(()), out),
        },
        "mget" => match mget(kv, client, &args[1..], out) {
            Ok(After::Close) => return After::Close,
            result => result.map(drop),
        },
        "mset" => {
            let pairs: Vec<(String, Vec<u8>)> =
                args[1..].chunks(2).map(|kv| (keys::encode(&kv[0]), kv[1].clone())).collect();
            kv.set_many(&pairs).map(|()| reply::simple(out, "OK"))
        }
        "dbsize" => all_keys(kv).map(|k| reply::integer(out, k.len())),
        "keys" => match all_keys(kv) {
            Ok(stored) => {
                // `*` is every key, the empty one too, which Redis's glob
                // itself does not match.
                let every = args[1] == b"*";
                let matched: Vec<Vec<u8>> =
                    stored.iter().map(|k| keys::decode(k)).filter(|k| every || keys::glob(&args[1], k)).collect();
                let mark = out.len();
                reply::array(out, matched.len());
                for k in &matched {
                    reply::bulk(out, k);
                }
                if out.len() > client.max_output {
                    return too_big(out, mark, client.max_output);
                }
                Ok(())
            }
            Err(e) => Err(e),
        },
        "select" => {
            match parse_i64(&args[1]) {
                Some(0) => reply::simple(out, "OK"),
                Some(_) => reply::error(out, "ERR DB index is out of range"),
                None => reply::error(out, NOT_AN_INTEGER),
            }
            Ok(())
        }
        "auth" => {
            auth(args, out);
            Ok(())
        }
        "command" => {
            server::command(args, out);
            Ok(())
        }
        "config" => {
            server::config(args, out);
            Ok(())
        }
        "client" => {
            server::client(client, args, out);
            Ok(())
        }
        "hello" => {
            server::hello(client, args, out);
            Ok(())
        }
        "info" => {
            server::info(out);
            Ok(())
        }
        _ => unreachable!("every name with an arity is handled"),
    };
    if let Err(e) = result {
        reply::error(out, &format!("ERR store: {e}"));
    }
    After::Continue
}

/// Redis's text for a command it does not know: the name and the start of
/// the arguments, each quoted, 128 bytes at most.
fn unknown_command(args: &[Vec<u8>]) -> String {
    let name = String::from_utf8_lossy(&args[0]);
    let name: String = name.chars().take(128).collect();
    let mut rest = String::new();
    for arg in &args[1..] {
        if rest.len() >= 128 {
            break;
        }
        let arg = String::from_utf8_lossy(arg);
        let room = 128 - rest.len();
        let cut: String = arg.char_indices().take_while(|(i, c)| i + c.len_utf8() <= room).map(|(_, c)| c).collect();
        rest.push_str(&format!("'{cut}' "));
    }
    format!("ERR unknown command '{name}', with args beginning with: {rest}")
}

/// `MGET key...`, read [`Client::get_batch`] keys at a time; `Close` when
/// the reply passed [`Client::max_output`] (then it is not in `out`).
fn mget(kv: &mut impl Kv, client: &Client, args: &[Vec<u8>], out: &mut Vec<u8>) -> Result<After, String> {
    let mark = out.len();
    reply::array(out, args.len());
    for chunk in args.chunks(client.get_batch.max(1)) {
        let names: Vec<String> = chunk.iter().map(|k| keys::encode(k)).collect();
        let values = kv.get_many(&names).inspect_err(|_| out.truncate(mark))?;
        for v in values {
            match v {
                Some(v) => reply::bulk(out, &v),
                None => reply::nil(out),
            }
            if out.len() > client.max_output {
                return Ok(too_big(out, mark, client.max_output));
            }
        }
    }
    Ok(After::Continue)
}

/// `AUTH [user] password`, as a Redis without a password answers it: its
/// `default` user takes any password, no other user exists.
fn auth(args: &[Vec<u8>], out: &mut Vec<u8>) {
    match args.len() {
        2 => reply::error(
            out,
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ),
        3 if args[1] == b"default" => reply::simple(out, "OK"),
        3 => reply::error(out, "WRONGPASS invalid username-password pair or user is disabled."),
        _ => reply::error(out, "ERR syntax error"),
    }
}

/// `SET key value [NX|XX]`. NX and XX are an `exists` then a `set`: two
/// calls, so not atomic against another connection's write in between.
fn set(kv: &mut impl Kv, args: &[Vec<u8>], out: &mut Vec<u8>) -> Result<(), String> {
    let (mut nx, mut xx) = (false, false);
    for opt in &args[3..] {
        match opt.to_ascii_uppercase().as_slice() {
            b"NX" if !xx => nx = true,
            b"XX" if !nx => xx = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" | b"KEEPTTL" | b"GET" => {
                reply::error(
                    out,
                    "ERR SET options EX, PX, EXAT, PXAT, KEEPTTL and GET are not supported: keys do not expire here",
                );
                return Ok(());
            }
            _ => {
                reply::error(out, "ERR syntax error");
                return Ok(());
            }
        }
    }
    let key = keys::encode(&args[1]);
    if (nx || xx) && kv.exists(&key)? == nx {
        reply::nil(out);
        return Ok(());
    }
    kv.set(&key, &args[2])?;
    reply::simple(out, "OK");
    Ok(())
}

/// `DEL key...`: the count is of the keys that `exists` found just before
/// the delete (so a key another connection deletes in between may be
/// counted twice, once by each).
fn del(kv: &mut impl Kv, args: &[Vec<u8>], out: &mut Vec<u8>) -> Result<(), String> {
    let mut found: Vec<String> = Vec::new();
    for key in args {
        let key = keys::encode(key);
        if !found.contains(&key) && kv.exists(&key)? {
            found.push(key);
        }
    }
    if !found.is_empty() {
        kv.delete_many(&found)?;
    }
    reply::integer(out, found.len());
    Ok(())
}

/// `INCR`, `DECR`, `INCRBY`, `DECRBY`: `delta` is `Err` when the argument is
/// not an integer. A non-negative delta on a missing key or a non-negative
/// counter is one `atomics.increment` (atomic across connections and
/// hosts); a negative delta or a negative value is a `get` then a `set`,
/// which is not: the store's `increment` adds a `u64` to a counter of
/// digits only.
fn add(kv: &mut impl Kv, key: &[u8], delta: Result<i64, ()>, out: &mut Vec<u8>) -> Result<(), String> {
    let Ok(delta) = delta else {
        reply::error(out, NOT_AN_INTEGER);
        return Ok(());
    };
    let key = keys::encode(key);
    if delta >= 0 {
        match kv.increment(&key, delta as u64) {
            // The embedded store counts to 2^64-1, Redis to 2^63-1 (and a
            // client cannot read a larger integer reply): put the value
            // back and refuse, as Redis does (a value that was already
            // over 2^63-1 is not an integer to Redis). Not atomic: an
            // increment by another connection in between is lost.
            Ok(n) if n > i64::MAX as u64 => {
                let old = n - delta as u64;
                kv.set(&key, old.to_string().as_bytes())?;
                reply::error(out, if old > i64::MAX as u64 { NOT_AN_INTEGER } else { OVERFLOW });
                return Ok(());
            }
            Ok(n) => {
                reply::integer(out, n);
                return Ok(());
            }
            // The host's texts: "... is not a decimal counter" (a value
            // of anything but digits, such as a negative number) and
            // "... overflows" (past 2^64-1 on the embedded store, past
            // 2^63-1 on Redis): Redis's overflow if the value was an i64,
            // else it was not an integer to Redis.
            Err(e) if e.contains("overflows") => {
                let was_i64 = kv.get(&key)?.is_some_and(|v| parse_i64(&v).is_some());
                reply::error(out, if was_i64 { OVERFLOW } else { NOT_AN_INTEGER });
                return Ok(());
            }
            Err(e) if !e.contains("not a decimal counter") => return Err(e),
            Err(_) => {}
        }
    }
    let current = match kv.get(&key)? {
        None => 0,
        Some(v) => match parse_i64(&v) {
            Some(n) => n,
            None => {
                reply::error(out, NOT_AN_INTEGER);
                return Ok(());
            }
        },
    };
    let Some(next) = current.checked_add(delta) else {
        reply::error(out, OVERFLOW);
        return Ok(());
    };
    kv.set(&key, next.to_string().as_bytes())?;
    reply::integer(out, next);
    Ok(())
}

/// Every key of the bucket, page by page (one store operation a page of
/// up to 1,000 keys).
fn all_keys(kv: &mut impl Kv) -> Result<Vec<String>, String> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = kv.list_keys(cursor)?;
        all.extend(page);
        match next {
            Some(c) => cursor = Some(c),
            None => return Ok(all),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The host's semantics on a map: counters are digits only, up to u64.
    #[derive(Default)]
    pub(crate) struct MapKv(pub BTreeMap<String, Vec<u8>>);

    impl Kv for MapKv {
        fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.get(key).cloned())
        }
        fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
            self.0.insert(key.into(), value.to_vec());
            Ok(())
        }
        fn exists(&mut self, key: &str) -> Result<bool, String> {
            Ok(self.0.contains_key(key))
        }
        fn delete_many(&mut self, keys: &[String]) -> Result<(), String> {
            keys.iter().for_each(|k| drop(self.0.remove(k)));
            Ok(())
        }
        fn increment(&mut self, key: &str, delta: u64) -> Result<u64, String> {
            let now = match self.0.get(key) {
                None => 0,
                Some(v) if v.iter().all(u8::is_ascii_digit) && !v.is_empty() && (v[0] != b'0' || v.len() == 1) => {
                    String::from_utf8_lossy(v).parse::<u64>().map_err(|_| format!("key {key:?} overflows"))?
                }
                Some(_) => return Err(format!("the value of key {key:?} is not a decimal counter")),
            };
            let next = now.checked_add(delta).ok_or_else(|| format!("incrementing key {key:?} overflows"))?;
            self.0.insert(key.into(), next.to_string().into_bytes());
            Ok(next)
        }
        fn get_many(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
            Ok(keys.iter().map(|k| self.0.get(k).cloned()).collect())
        }
        fn set_many(&mut self, pairs: &[(String, Vec<u8>)]) -> Result<(), String> {
            pairs.iter().for_each(|(k, v)| drop(self.0.insert(k.clone(), v.clone())));
            Ok(())
        }
        fn list_keys(&mut self, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), String> {
            let start = cursor.unwrap_or(0) as usize;
            let page: Vec<String> = self.0.keys().skip(start).take(2).cloned().collect();
            let next = (start + page.len() < self.0.len()).then_some((start + page.len()) as u64);
            Ok((page, next))
        }
    }

    fn run_bounded(kv: &mut MapKv, max_output: usize, requests: &[&[&[u8]]]) -> (String, After) {
        let mut client = Client { max_output, get_batch: 2, ..Client::default() };
        let requests: Vec<Vec<Vec<u8>>> = requests.iter().map(|r| r.iter().map(|a| a.to_vec()).collect()).collect();
        let mut out = Vec::new();
        let after = run_all(kv, &mut client, &requests, &mut out);
        (String::from_utf8_lossy(&out).into_owned(), after)
    }

    #[test]
    fn the_replies_of_one_call_are_bounded_and_what_fits_is_sent_whole() {
        let mut kv = MapKv::default();
        kv.set("v", b"0123456789").unwrap();
        let value = "$10\r\n0123456789\r\n"; // 17 bytes
        let get: &[&[u8]] = &[b"GET", b"v"];
        let mget: &[&[u8]] = &[b"MGET", b"v", b"v", b"v"];
        let ping: &[&[u8]] = &[b"PING"];
        use After::{Close, Continue};
        // Under the bound: everything; past it: what fits, then a close.
        assert_eq!(run_bounded(&mut kv, 100, &[get, get, get]), (value.repeat(3), Continue));
        assert_eq!(run_bounded(&mut kv, 40, &[get, get, get, get, get]), (value.repeat(2), Close));
        assert_eq!(run_bounded(&mut kv, 40, &[get, ping, get, get]), (value.to_string() + "+PONG\r\n", Close));
        // The first reply is kept whatever its size; nothing runs after it.
        assert_eq!(run_bounded(&mut kv, 10, &[get, get]), (value.to_string(), Close));
        assert_eq!(run_bounded(&mut kv, 10, &[get]), (value.to_string(), Continue));
        // An array that passes it: dropped, or an error if it is the first.
        assert_eq!(run_bounded(&mut kv, 30, &[ping, mget, ping]), ("+PONG\r\n".to_string(), Close));
        let error = "-ERR reply of more than 30 bytes (resp-max-output)\r\n";
        assert_eq!(run_bounded(&mut kv, 30, &[mget, ping]), (error.to_string(), Close));
        assert_eq!(run_bounded(&mut kv, 30, &[&[b"KEYS", b"*"], &[b"KEYS", b"*"]]).1, Continue);
        // The replies of writes are kept: the writes happened.
        let (set, sety): (&[&[u8]], &[&[u8]]) = (&[b"SET", b"x", b"y"], &[b"SET", b"y", b"z"]);
        assert_eq!(
            run_bounded(&mut kv, 20, &[ping, &[b"INCR", b"n"], set, set, sety, ping]),
            ("+PONG\r\n:1\r\n+OK\r\n+OK\r\n+OK\r\n".to_string(), Close)
        );
    }

    fn exchange(kv: &mut MapKv, line: &[&[u8]]) -> String {
        let args: Vec<Vec<u8>> = line.iter().map(|a| a.to_vec()).collect();
        let mut out = Vec::new();
        run(kv, &mut Client::default(), &args, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn commands_answer_as_redis_does() {
        let mut kv = MapKv::default();
        let cases: &[(&[&[u8]], &str)] = &[
            (&[b"PING"], "+PONG\r\n"),
            (&[b"ping", b"hi"], "$2\r\nhi\r\n"),
            (&[b"ping", b"a", b"b"], "-ERR wrong number of arguments for 'ping' command\r\n"),
            (&[b"get", b"k"], "$-1\r\n"),
            (&[b"set", b"k", b"v"], "+OK\r\n"),
            (&[b"set", b"k", b"w", b"nx"], "$-1\r\n"),
            (&[b"set", b"k2", b"w", b"xx"], "$-1\r\n"),
            (&[b"set", b"k", b"w", b"xx"], "+OK\r\n"),
            (&[b"set", b"k", b"w", b"nx", b"xx"], "-ERR syntax error\r\n"),
            (&[b"get", b"k"], "$1\r\nw\r\n"),
            (&[b"incr", b"k"], "-ERR value is not an integer or out of range\r\n"),
            (&[b"incr", b"n"], ":1\r\n"),
            (&[b"incrby", b"n", b"41"], ":42\r\n"),
            (&[b"decr", b"n"], ":41\r\n"),
            (&[b"decrby", b"n", b"50"], ":-9\r\n"),
            (&[b"incr", b"n"], ":-8\r\n"),
            (&[b"incrby", b"n", b"x"], "-ERR value is not an integer or out of range\r\n"),
            (&[b"set", b"big", b"9223372036854775807"], "+OK\r\n"),
            (&[b"set", b"small", b"-9223372036854775808"], "+OK\r\n"),
            (&[b"decr", b"small"], "-ERR increment or decrement would overflow\r\n"),
            (&[b"incr", b"big"], "-ERR increment or decrement would overflow\r\n"),
            (&[b"get", b"big"], "$19\r\n9223372036854775807\r\n"),
            (&[b"exists", b"k", b"k", b"nope"], ":2\r\n"),
            (&[b"mset", b"a", b"1", b"b", b"2"], "+OK\r\n"),
            (&[b"mset", b"a", b"1", b"b"], "-ERR wrong number of arguments for 'mset' command\r\n"),
            (&[b"mget", b"a", b"x", b"b"], "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n"),
            (&[b"del", b"a", b"a", b"x"], ":1\r\n"),
            (&[b"select", b"0"], "+OK\r\n"),
            (&[b"select", b"1"], "-ERR DB index is out of range\r\n"),
            (&[b"select", b"x"], "-ERR value is not an integer or out of range\r\n"),
            (&[b"get"], "-ERR wrong number of arguments for 'get' command\r\n"),
            (&[b"foo", b"a", b"b"], "-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n"),
            (&[b"config", b"get", b"save"], "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
            (&[b"config", b"get", b"nothing"], "*0\r\n"),
            (&[b"command", b"docs"], "*0\r\n"),
            (&[b"command", b"count"], ":22\r\n"),
            (&[b"hello", b"3"], "-NOPROTO unsupported protocol version\r\n"),
            (
                &[b"client", b"setname", b"a b"],
                "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
            ),
            (&[b"client", b"list"], "-ERR unknown subcommand 'list'. Try CLIENT HELP.\r\n"),
            (
                &[b"config", b"set", b"save", b""],
                "-ERR CONFIG SET, RESETSTAT and REWRITE are not supported by this server\r\n",
            ),
            (
                &[b"auth", b"pw"],
                "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
            ),
            (&[b"decrby", b"n", b"-9223372036854775808"], "-ERR decrement would overflow\r\n"),
            (&[b"set", b"u64", b"18446744073709551615"], "+OK\r\n"),
            (&[b"incr", b"u64"], "-ERR value is not an integer or out of range\r\n"),
            (&[b"set", b"u64", b"9223372036854775808"], "+OK\r\n"),
            (&[b"incrby", b"u64", b"0"], "-ERR value is not an integer or out of range\r\n"),
            (&[b"get", b"u64"], "$19\r\n9223372036854775808\r\n"),
            (&[b"del", b"u64"], ":1\r\n"),
            (&[b"auth", b"a", b"b"], "-WRONGPASS invalid username-password pair or user is disabled.\r\n"),
            (&[b"auth", b"default", b"b"], "+OK\r\n"),
            (&[b"auth", b"a", b"b", b"c"], "-ERR syntax error\r\n"),
            (&[b"quit"], "+OK\r\n"),
            (&[b"quit", b"x"], "+OK\r\n"),
        ];
        for (line, want) in cases {
            assert_eq!(exchange(&mut kv, line), *want, "{line:?}");
        }
        assert_eq!(exchange(&mut kv, &[b"dbsize"]), ":5\r\n");
        let mut client = Client::default();
        let mut out = Vec::new();
        for line in
            [&[&b"CLIENT"[..], b"SETNAME", b"bench"][..], &[b"client", b"getname"], &[b"hello", b"2"], &[b"info"]]
        {
            let args: Vec<Vec<u8>> = line.iter().map(|a| a.to_vec()).collect();
            run(&mut kv, &mut client, &args, &mut out);
        }
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("+OK\r\n$5\r\nbench\r\n*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n"), "{text}");
        assert!(text.contains("redis_version:7.0.15\r\n"), "{text}");
        // A run of GETs is one batch, with the same replies.
        let reqs: Vec<Vec<Vec<u8>>> =
            [&b"k"[..], b"x", b"b", b"k"].iter().map(|k| vec![b"GET".to_vec(), k.to_vec()]).collect();
        let mut out = Vec::new();
        let mut batch = reqs.clone();
        batch.insert(2, vec![b"PING".to_vec()]);
        batch.push(vec![b"QUIT".to_vec()]);
        batch.push(vec![b"PING".to_vec()]);
        assert_eq!(run_all(&mut kv, &mut Client::default(), &batch, &mut out), After::Close);
        assert_eq!(String::from_utf8(out).unwrap(), "$1\r\nw\r\n$-1\r\n+PONG\r\n$1\r\n2\r\n$1\r\nw\r\n+OK\r\n");
        assert_eq!(exchange(&mut kv, &[b"keys", b"[bk]*"]), "*3\r\n$1\r\nb\r\n$3\r\nbig\r\n$1\r\nk\r\n");
        // So is a run of plain SETs (a SET with options runs alone), in
        // order: the last value of a repeated key wins.
        let set = |k: &[u8], v: &[u8]| vec![b"SET".to_vec(), k.to_vec(), v.to_vec()];
        let batch = vec![
            set(b"s1", b"a"),
            set(b"s2", b"b"),
            set(b"s1", b"c"),
            [set(b"s3", b"d"), vec![b"NX".to_vec()]].concat(),
        ];
        let mut out = Vec::new();
        assert_eq!(run_all(&mut kv, &mut Client::default(), &batch, &mut out), After::Continue);
        assert_eq!(String::from_utf8(out).unwrap(), "+OK\r\n+OK\r\n+OK\r\n+OK\r\n");
        assert_eq!(exchange(&mut kv, &[b"mget", b"s1", b"s2", b"s3"]), "*3\r\n$1\r\nc\r\n$1\r\nb\r\n$1\r\nd\r\n");
    }
}
