//! `hostile`: a test fixture that misbehaves on command.
//!
//! The payload picks the behaviour, so one host can serve hostile and good
//! requests side by side and the tests can check that the good ones are
//! still answered:
//!
//! | payload     | behaviour                                              |
//! |-------------|--------------------------------------------------------|
//! | `loop`      | spins forever (cut off by `--timeout`)                  |
//! | `sleep`     | blocks in a WASI sleep for an hour (a host call)        |
//! | `sleep:MS`  | sleeps MS milliseconds, then replies `slept`            |
//! | `spin:MS`   | busy-loops MS milliseconds, then replies `spun`         |
//! | `alloc`     | grows memory without end (trapped at `--max-memory`)    |
//! | `recurse`   | recurses without end on the shadow stack in linear memory (out of bounds trap) |
//! | `deep`      | recurses without end on the wasm stack (stack overflow trap) |
//! | `panic`     | panics (a trap)                                         |
//! | `big:N`     | replies with N bytes of `x`                             |
//! | `count`     | bumps a global counter and replies with it              |
//! | `print`     | writes to stdout and stderr, then replies `printed`     |
//! | `print:N`   | writes N bytes to stdout in lines of 100 (`print line I ...`), then replies `printed` |
//! | `logspam:N` | calls the `log` import N times (`logspam I`), then replies `logged` |
//! | `err`       | returns `err("refused")`                                |
//! | `none`      | returns `ok(none)`                                      |
//! | `whoami`    | replies `TRANSPORT PEER LOCAL`, as the host passed them |
//! | anything else | echoes the payload                                    |
use std::sync::atomic::{AtomicU64, Ordering};

use sockets_plugin::{Plugin, Request};

static COUNT: AtomicU64 = AtomicU64::new(0);

struct Hostile;

impl Plugin for Hostile {
    fn handle(req: Request) -> Result<Option<Vec<u8>>, String> {
        let p = req.payload;
        match p.as_slice() {
            b"loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            b"sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(Some(b"woke".to_vec()))
            }
            b"alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            b"recurse" => Ok(Some(recurse(std::hint::black_box(1)).to_le_bytes().to_vec())),
            b"deep" => Ok(Some(deep(std::hint::black_box(1)).to_le_bytes().to_vec())),
            b"panic" => panic!("asked to panic"),
            b"count" => Ok(Some((COUNT.fetch_add(1, Ordering::SeqCst) + 1).to_string().into_bytes())),
            b"print" => {
                println!("hello from stdout");
                eprintln!("hello from stderr");
                Ok(Some(b"printed".to_vec()))
            }
            b"err" => Err("refused".into()),
            b"none" => Ok(None),
            b"whoami" => {
                let transport = match req.transport {
                    sockets_plugin::Transport::Udp => "udp",
                    sockets_plugin::Transport::Tcp => "tcp",
                };
                Ok(Some(format!("{transport} {} {}", req.peer, req.local).into_bytes()))
            }
            _ if p.starts_with(b"big:") => Ok(Some(vec![b'x'; number(&p[4..])? as usize])),
            _ if p.starts_with(b"print:") => {
                print_lines(number(&p[6..])? as usize);
                Ok(Some(b"printed".to_vec()))
            }
            _ if p.starts_with(b"logspam:") => {
                for i in 0..number(&p[8..])? {
                    sockets_plugin::log::info(&format!("logspam {i}"));
                }
                Ok(Some(b"logged".to_vec()))
            }
            _ if p.starts_with(b"sleep:") => {
                std::thread::sleep(std::time::Duration::from_millis(number(&p[6..])?));
                Ok(Some(b"slept".to_vec()))
            }
            _ if p.starts_with(b"spin:") => {
                let until = std::time::Instant::now() + std::time::Duration::from_millis(number(&p[5..])?);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
                Ok(Some(b"spun".to_vec()))
            }
            _ => Ok(Some(p)),
        }
    }
}

/// Print `total` bytes to stdout: lines of 100 bytes (newline included),
/// each starting `print line I `; the last one may be shorter.
fn print_lines(total: usize) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let mut left = total;
    let mut i = 0;
    while left > 0 {
        let mut line = format!("print line {i} ").into_bytes();
        line.resize(99, b'.');
        line.push(b'\n');
        line.truncate(left);
        out.write_all(&line).expect("stdout");
        left -= line.len();
        i += 1;
    }
    out.flush().expect("stdout");
}

fn number(digits: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(digits).ok().and_then(|s| s.parse().ok()).ok_or_else(|| "bad number".to_string())
}

/// Only scalars: every frame lives on the wasm stack, none in linear memory.
fn deep(n: u64) -> u64 {
    if n == 0 { 0 } else { deep(std::hint::black_box(n + 1)).wrapping_add(n) }
}

/// An array whose address escapes: every frame takes shadow-stack memory.
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 16]);
    recurse(frame[3] + 1) + frame[5]
}

sockets_plugin::export!(Hostile);
