//! A plugin's stdout and stderr: complete lines go to the host's log,
//! tagged with the plugin's name and version (stdout at info, stderr at
//! warn), and nothing a plugin prints can trap it or grow without bound.
//!
//! - Each call may print [`MAX_PLUGIN_OUTPUT`] bytes (stdout and stderr
//!   together); the rest is dropped silently and counted, and the end of the
//!   call says once how many bytes were dropped.
//! - A line is kept in a buffer until its newline, at most
//!   [`MAX_LOG_MESSAGE`] bytes: a longer line is logged cut, and the rest of
//!   it skipped.
//! - Every write "succeeds" and [`OutputStream::check_write`] always reports
//!   room: a failed write would make a guest's `println!` panic (a trap).
//! - Lines are rate-limited per plugin version (see [`PluginInfo`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::{MAX_LOG_MESSAGE, MAX_PLUGIN_OUTPUT, PluginInfo};

/// What [`OutputStream::check_write`] grants: the most one `write` is
/// expected to carry. Bigger writes are accepted too; this only sizes what
/// `write-zeroes` may allocate.
const WRITE_PERMIT: usize = 4 << 10;

/// The stdout and stderr of one store, with one budget between them.
/// Clones share the state: WASI hands a guest a new stream object every
/// time it asks for stdout.
#[derive(Clone)]
pub(super) struct PluginOutput(Arc<Mutex<Output>>);

/// One of the two streams of a [`PluginOutput`], as WASI sees it.
#[derive(Clone)]
pub(super) struct Stream {
    output: PluginOutput,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stdout = 0,
    Stderr = 1,
}

struct Output {
    info: Arc<PluginInfo>,
    /// Bytes the current call may still print.
    budget: usize,
    /// Bytes the current call printed past its budget.
    dropped: u64,
    /// The partial line of stdout and of stderr.
    lines: [Line; 2],
}

#[derive(Default)]
struct Line {
    /// At most [`MAX_LOG_MESSAGE`] bytes.
    buf: Vec<u8>,
    /// The start of this line was logged cut: skip up to the newline.
    skipping: bool,
}

impl PluginOutput {
    pub(super) fn new(info: Arc<PluginInfo>) -> Self {
        let output = Output { info, budget: MAX_PLUGIN_OUTPUT, dropped: 0, lines: Default::default() };
        Self(Arc::new(Mutex::new(output)))
    }

    pub(super) fn stdout(&self) -> Stream {
        Stream { output: self.clone(), kind: Kind::Stdout }
    }

    pub(super) fn stderr(&self) -> Stream {
        Stream { output: self.clone(), kind: Kind::Stderr }
    }

    /// A call starts: a fresh budget.
    pub(super) fn begin_call(&self) {
        let mut out = self.lock();
        out.budget = MAX_PLUGIN_OUTPUT;
        out.dropped = 0;
    }

    /// A call ended: log the partial lines, and what was dropped.
    pub(super) fn end_call(&self) {
        self.lock().end_call();
    }

    fn lock(&self) -> MutexGuard<'_, Output> {
        // Nothing panics while holding the lock; if something did, the
        // buffers are still consistent enough for log lines.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Output {
    fn end_call(&mut self) {
        for kind in [Kind::Stdout, Kind::Stderr] {
            let line = std::mem::take(&mut self.lines[kind as usize]);
            if !line.skipping && !line.buf.is_empty() {
                self.log(kind, &line.buf, false);
            }
        }
        let dropped = std::mem::take(&mut self.dropped);
        if dropped > 0 {
            let info = &self.info;
            info.log_note(|suppressed| {
                tracing::warn!(
                    plugin = %info.name,
                    version = %info.version,
                    suppressed,
                    "{dropped} bytes of output dropped (over {} KiB per request)",
                    MAX_PLUGIN_OUTPUT >> 10
                )
            });
        }
    }

    fn write(&mut self, kind: Kind, bytes: &[u8]) {
        let kept = bytes.len().min(self.budget);
        self.budget -= kept;
        self.dropped += (bytes.len() - kept) as u64;
        let mut rest = &bytes[..kept];
        while !rest.is_empty() {
            let (part, newline) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], Some(i)),
                None => (rest, None),
            };
            rest = newline.map_or(&[][..], |i| &rest[i + 1..]);
            let line = &mut self.lines[kind as usize];
            if !line.skipping {
                let room = MAX_LOG_MESSAGE - line.buf.len();
                if part.len() > room {
                    line.buf.extend_from_slice(&part[..room]);
                    line.skipping = true;
                    let buf = std::mem::take(&mut line.buf);
                    self.log(kind, &buf, true);
                } else {
                    line.buf.extend_from_slice(part);
                }
            }
            if newline.is_some() {
                let line = std::mem::take(&mut self.lines[kind as usize]);
                if !line.skipping {
                    self.log(kind, &line.buf, false);
                }
            }
        }
    }

    fn log(&self, kind: Kind, line: &[u8], cut: bool) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        let more = if cut { "..." } else { "" };
        let (info, name, version) = (&self.info, &self.info.name, &self.info.version);
        match kind {
            Kind::Stdout => info.log_line(
                tracing::Level::INFO,
                |suppressed| tracing::info!(plugin = %name, %version, stream = "stdout", suppressed, "{text}{more}"),
            ),
            Kind::Stderr => info.log_line(
                tracing::Level::WARN,
                |suppressed| tracing::warn!(plugin = %name, %version, stream = "stderr", suppressed, "{text}{more}"),
            ),
        }
    }
}

/// A call cut off (`--timeout`) never reaches its end: what it printed is
/// logged when its instance is dropped.
impl Drop for Output {
    fn drop(&mut self) {
        self.end_call();
    }
}

impl IsTerminal for Stream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Stream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Stream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.lock().write(self.kind, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Lines are logged as they complete; a partial line waits for its
        // newline or the end of the call.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Stream {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.output.lock().write(self.kind, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `f` with a subscriber that captures log lines; returns them.
    fn logged(f: impl FnOnce(&PluginOutput)) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let info = Arc::new(PluginInfo::new(
            "p".into(),
            "0123456789abcdef".into(),
            "0123456789abcdef".into(),
            "p.wasm".into(),
        ));
        tracing::subscriber::with_default(subscriber, || f(&PluginOutput::new(info)));
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    fn write(stream: &mut Stream, bytes: &[u8]) {
        assert!(stream.check_write().unwrap() > 0);
        stream.write(Bytes::copy_from_slice(bytes)).unwrap();
    }

    #[test]
    fn lines_are_logged_as_they_complete_and_the_rest_at_the_end_of_the_call() {
        let lines = logged(|out| {
            let (mut stdout, mut stderr) = (out.stdout(), out.stderr());
            write(&mut stdout, b"one\ntw");
            write(&mut stderr, b"err\r\n");
            write(&mut stdout, b"o\nthr");
            write(&mut stdout, b"ee");
            out.end_call();
        });
        let ends: Vec<_> = lines.iter().map(|l| l.split(": ").nth(1).unwrap()).collect();
        assert_eq!(
            ends,
            [
                "one plugin=p version=0123456789ab stream=\"stdout\"",
                "err plugin=p version=0123456789ab stream=\"stderr\"",
                "two plugin=p version=0123456789ab stream=\"stdout\"",
                "three plugin=p version=0123456789ab stream=\"stdout\"",
            ]
        );
        assert!(lines[1].contains("WARN"), "{}", lines[1]);
    }

    #[test]
    fn a_call_cut_off_is_logged_when_its_instance_is_dropped() {
        let lines = logged(|out| write(&mut out.stderr(), b"half a line"));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("half a line"), "{}", lines[0]);
    }

    #[test]
    fn a_long_line_is_cut_and_its_rest_skipped() {
        let lines = logged(|out| {
            let mut stdout = out.stdout();
            write(&mut stdout, &[b'a'; 3000]);
            write(&mut stdout, &[b'b'; 3000]);
            write(&mut stdout, b"bbb\nnext\n");
            out.end_call();
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let cut = format!("{}{}... ", "a".repeat(3000), "b".repeat(MAX_LOG_MESSAGE - 3000));
        assert!(lines[0].contains(&cut), "{}", lines[0]);
        assert!(lines[1].contains(" next "), "{}", lines[1]);
    }

    #[test]
    fn output_over_the_budget_is_dropped_counted_and_reset_per_call() {
        let lines = logged(|out| {
            let mut stdout = out.stdout();
            for _ in 0..2 {
                out.begin_call();
                let line = [b"x".repeat(99), b"\n".to_vec()].concat();
                for _ in 0..200 {
                    write(&mut stdout, &line);
                }
                out.end_call();
            }
        });
        let notes: Vec<_> = lines.iter().filter(|l| l.contains("dropped")).collect();
        assert_eq!(notes.len(), 2, "{notes:?}");
        let dropped = 200 * 100 - MAX_PLUGIN_OUTPUT;
        for note in notes {
            assert!(note.contains(&format!("{dropped} bytes of output dropped (over 16 KiB per request)")), "{note}");
        }
        // 163 whole lines and the start of the 164th, per call, less what the
        // rate limit left out of the second call.
        let printed = lines.iter().filter(|l| l.contains("xxx")).count();
        assert!(printed >= crate::ratelimit::LINES_PER_SECOND as usize, "{printed}");
    }
}
