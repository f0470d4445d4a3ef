//! Every plugin under plugins/, in every language, served through the host
//! over UDP and TCP, checking the exact reply bytes: ASCII, non-ASCII UTF-8,
//! binary (not UTF-8) and empty payloads.

use std::io::Write;
use std::time::Duration;

use crate::support::*;

/// What a plugin must answer to a payload: `Some(bytes)`, or `None` for no
/// reply at all (`ok(none)`).
type Case = (&'static [u8], Option<&'static [u8]>);

/// Serve `name` and check every case over UDP, TCP with newline framing
/// (cases without `\n`) and TCP with u32 length prefixes (all cases).
fn serves(name: &str, cases: &[Case]) {
    let path = plugin(name).display().to_string();
    let common = ["--plugin", path.as_str()];
    let lines = Host::start(&[&common[..], &["--listen", "127.0.0.1:0"]].concat());
    let prefixed = Host::start(&[&common[..], &["--tcp", "127.0.0.1:0", "--framing", "u32"]].concat());
    for (payload, want) in cases {
        let shown = String::from_utf8_lossy(payload);
        let got =
            udp_exchange(lines.udp(), payload, if want.is_some() { REPLY_TIMEOUT } else { Duration::from_millis(300) });
        assert_eq!(got.as_deref(), *want, "{name} over UDP, payload {shown:?}");

        let mut s = tcp_connect(prefixed.tcp());
        s.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
        s.write_all(payload).unwrap();
        // A marker frame after it: its reply shows the first got none.
        s.write_all(b"\x00\x00\x00\x05probe").unwrap();
        if let Some(want) = want {
            let len = u32::from_be_bytes(read_n(&mut s, 4).try_into().unwrap()) as usize;
            assert_eq!(read_n(&mut s, len), *want, "{name} over TCP u32, payload {shown:?}");
        }
        let len = u32::from_be_bytes(read_n(&mut s, 4).try_into().unwrap()) as usize;
        read_n(&mut s, len);

        if payload.contains(&b'\n') || want.is_some_and(|w| w.contains(&b'\n')) {
            continue;
        }
        let mut s = tcp_connect(lines.tcp());
        s.write_all(payload).unwrap();
        s.write_all(b"\nprobe\n").unwrap();
        if let Some(want) = want {
            assert_eq!(read_line(&mut s), [*want, b"\n"].concat(), "{name} over TCP lines, payload {shown:?}");
        }
        read_line(&mut s);
    }
}

#[test]
fn rust_echo() {
    serves(
        "echo",
        &[
            (b"hello", Some(b"hello")),
            ("héllo wörld ✓".as_bytes(), Some("héllo wörld ✓".as_bytes())),
            (b"\x00\x01\xff\xfe binary\n", Some(b"\x00\x01\xff\xfe binary\n")),
            (b"", Some(b"")),
        ],
    );
}

#[test]
fn rust_upper() {
    serves(
        "upper",
        &[
            (b"hello", Some(b"HELLO")),
            // ASCII letters only; UTF-8 sequences pass through untouched.
            ("héllo".as_bytes(), Some("HéLLO".as_bytes())),
            (b"\x00\x01\xffabc", Some(b"\x00\x01\xffABC")),
            // `ok(none)`: no reply to an empty payload.
            (b"", None),
        ],
    );
}

#[test]
fn python_json_summary() {
    serves(
        "json-summary",
        &[
            (br#"{"a":1,"b":[1,2]}"#, Some(br#"{"type":"object","keys":["a","b"],"bytes":17}"#)),
            (r#"{"é":"ü"}"#.as_bytes(), Some(r#"{"type":"object","keys":["é"],"bytes":11}"#.as_bytes())),
            (b"[1, 2, 3]", Some(br#"{"type":"array","length":3,"bytes":9}"#)),
            (b"\xff\xfe\x00", Some(br#"{"error":"not utf-8","bytes":3}"#)),
            (b"", Some(br#"{"error":"empty","bytes":0}"#)),
        ],
    );
}

#[test]
fn javascript_reverse() {
    serves(
        "reverse",
        &[
            (b"hello", Some(b"olleh")),
            // Bytes are reversed, not characters: the result is not UTF-8.
            ("héllo".as_bytes(), Some(b"oll\xa9\xc3h")),
            (b"\x00\x01\xff", Some(b"\xff\x01\x00")),
            (b"", Some(b"")),
        ],
    );
}

#[test]
fn c_rot13() {
    serves(
        "rot13",
        &[
            (b"Hello, World!", Some(b"Uryyb, Jbeyq!")),
            ("héllo".as_bytes(), Some("uéyyb".as_bytes())),
            (b"\x00\x01\xffabc\n", Some(b"\x00\x01\xffnop\n")),
            (b"", Some(b"")),
        ],
    );
}

#[test]
fn a_missing_import_is_named_in_one_line() {
    // A component that needs wasi:http, which the host does not provide.
    let wat = r#"(component
        (import "wasi:http/outgoing-handler@0.2.0" (instance
            (export "handle" (func (param "x" u32) (result u32)))))
    )"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("needs-http.wasm");
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    let (code, stderr) = run_host(&["--plugin", &path.display().to_string(), "--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2));
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(&path.display().to_string()), "{}", errors[0]);
    assert!(errors[0].contains("wasi:http/outgoing-handler@0.2.0"), "{}", errors[0]);
}

#[test]
fn readme_example_hello() {
    serves(
        "hello",
        &[
            (b"ada", Some(b"hello, ada!")),
            ("Grace Hopper ✓".as_bytes(), Some("hello, Grace Hopper ✓!".as_bytes())),
            // `err(..)`: logged, nothing sent, the connection stays open.
            (b"\xff\xfe", None),
            (b"", Some(b"hello, !")),
        ],
    );
}
