//! The embedded key-value store: one SQLite file, `kv.sqlite3` in the data
//! directory, in WAL mode.
//!
//! Durability: with `journal_mode=WAL` and `synchronous=NORMAL` a commit is
//! written to the WAL file (a `write`, no `fsync`) before it returns, so a
//! `set` that returned survives a crash of the host process (SIGKILL, a
//! panic, the OOM killer); the WAL is synced at checkpoints, so a crash of
//! the whole machine may lose the last writes but never corrupts the file.
//! This is what SQLite recommends for WAL and what Spin's SQLite key-value
//! store runs with.
//!
//! Calls are short (microseconds, the pages are in SQLite's cache) and are
//! made on the calling thread under one mutex, like taking a lock: a
//! `spawn_blocking` round trip would cost more than the query. Checkpoints,
//! which `fsync`, run on a thread of their own ([`Checkpointer`]): with
//! SQLite's automatic checkpoint, one commit in about a thousand paid 3 to
//! 7 ms for it (measured, README "State and configuration"). Several host processes may share one data
//! directory (for example during an upgrade): SQLite locks the file, and a
//! writer waits up to [`BUSY_TIMEOUT`] for another process's write.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{BucketId, Error, LIST_PAGE};

/// The file in the data directory.
pub const FILE_NAME: &str = "kv.sqlite3";
/// How long a write waits for another process's write to the same file.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the WAL is copied into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// WAL pages (4 KiB) past which a checkpoint makes the WAL start over.
const RESTART_FRAMES: i64 = 4096;

const SCHEMA: &str = "
    -- One row per key. The rowid orders keys by first insertion: it is the
    -- list-keys cursor, stable while other keys are written.
    CREATE TABLE IF NOT EXISTS kv (
        id INTEGER PRIMARY KEY,
        ns TEXT NOT NULL,
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        UNIQUE (ns, bucket, key)
    );
    -- Bytes of keys and values per bucket, for the bucket cap.
    CREATE TABLE IF NOT EXISTS buckets (
        ns TEXT NOT NULL,
        bucket TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (ns, bucket)
    ) WITHOUT ROWID;
";

/// The store: a connection for requests and a checkpointing thread.
pub struct Embedded {
    conn: Mutex<Connection>,
    path: PathBuf,
    _checkpointer: Checkpointer,
}

impl Embedded {
    /// Open (or create) `dir/kv.sqlite3`, creating `dir` readable by this
    /// user only.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        super::create_private_dir(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let conn = connect(&path).with_context(|| format!("cannot open the key-value store {}", path.display()))?;
        conn.execute_batch(SCHEMA).with_context(|| format!("cannot create the tables in {}", path.display()))?;
        let checkpointer = Checkpointer::start(&path)?;
        Ok(Self { conn: Mutex::new(conn), path, _checkpointer: checkpointer })
    }

    /// The SQLite file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open
        // (rusqlite rolls back on drop), so the connection is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, b: &BucketId, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT value FROM kv WHERE ns = ?1 AND bucket = ?2 AND key = ?3").map_err(fail)?;
        stmt.query_row(params![&*b.namespace, &*b.name, key], |row| row.get(0)).optional().map_err(fail)
    }

    pub(super) fn exists(&self, b: &BucketId, key: &str) -> Result<bool, Error> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT 1 FROM kv WHERE ns = ?1 AND bucket = ?2 AND key = ?3").map_err(fail)?;
        stmt.exists(params![&*b.namespace, &*b.name, key]).map_err(fail)
    }

    pub(super) fn set(&self, b: &BucketId, key: &str, value: &[u8], max_bucket: u64) -> Result<(), Error> {
        self.write(b, key, max_bucket, |_| Ok(value.to_vec())).map(drop)
    }

    pub(super) fn increment(&self, b: &BucketId, key: &str, delta: u64, max_bucket: u64) -> Result<u64, Error> {
        let mut sum = 0;
        self.write(b, key, max_bucket, |old| {
            let n = match old {
                None => 0,
                Some(v) => parse_counter(key, v)?,
            };
            sum =
                n.checked_add(delta).ok_or_else(|| Error::Other(format!("incrementing key {key:?} overflows u64")))?;
            Ok(sum.to_string().into_bytes())
        })?;
        Ok(sum)
    }

    /// Replace the value of `key` with what `new` makes of the old one, in
    /// one transaction that also keeps the bucket's byte count and cap.
    fn write(
        &self,
        b: &BucketId,
        key: &str,
        max_bucket: u64,
        new: impl FnOnce(Option<&[u8]>) -> Result<Vec<u8>, Error>,
    ) -> Result<(), Error> {
        let (ns, bucket) = (&*b.namespace, &*b.name);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail)?;
        let old: Option<Vec<u8>> = tx
            .prepare_cached("SELECT value FROM kv WHERE ns = ?1 AND bucket = ?2 AND key = ?3")
            .and_then(|mut s| s.query_row(params![ns, bucket, key], |row| row.get(0)).optional())
            .map_err(fail)?;
        let value = new(old.as_deref())?;
        let old_size = old.as_ref().map_or(0, |v| (key.len() + v.len()) as i64);
        let new_size = (key.len() + value.len()) as i64;
        if new_size > old_size {
            let total: i64 = tx
                .prepare_cached("SELECT bytes FROM buckets WHERE ns = ?1 AND bucket = ?2")
                .and_then(|mut s| s.query_row(params![ns, bucket], |row| row.get(0)).optional())
                .map_err(fail)?
                .unwrap_or(0);
            let after = (total - old_size + new_size) as u64;
            if after > max_bucket {
                return Err(over_cap(b, after, max_bucket));
            }
        }
        tx.prepare_cached(
            "INSERT INTO kv (ns, bucket, key, value) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (ns, bucket, key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut s| s.execute(params![ns, bucket, key, value]))
        .map_err(fail)?;
        add_bytes(&tx, b, new_size - old_size)?;
        tx.commit().map_err(fail)
    }

    pub(super) fn delete(&self, b: &BucketId, key: &str) -> Result<(), Error> {
        let (ns, bucket) = (&*b.namespace, &*b.name);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail)?;
        let removed: Option<i64> = tx
            .prepare_cached("DELETE FROM kv WHERE ns = ?1 AND bucket = ?2 AND key = ?3 RETURNING length(value)")
            .and_then(|mut s| s.query_row(params![ns, bucket, key], |row| row.get(0)).optional())
            .map_err(fail)?;
        if let Some(len) = removed {
            add_bytes(&tx, b, -(key.len() as i64 + len))?;
        }
        tx.commit().map_err(fail)
    }

    pub(super) fn list_keys(&self, b: &BucketId, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), Error> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT id, key FROM kv WHERE ns = ?1 AND bucket = ?2 AND id > ?3 ORDER BY id LIMIT ?4")
            .map_err(fail)?;
        let after = cursor.map_or(0, |c| c.min(i64::MAX as u64) as i64);
        let rows = stmt
            .query_map(params![&*b.namespace, &*b.name, after, LIST_PAGE as i64 + 1], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(fail)?;
        let mut keys = Vec::new();
        let mut last = 0;
        for row in rows {
            let (id, key) = row.map_err(fail)?;
            if keys.len() == LIST_PAGE {
                // There is at least one more key: the next page starts after
                // the last one returned.
                return Ok((keys, Some(last as u64)));
            }
            last = id;
            keys.push(key);
        }
        Ok((keys, None))
    }
}

fn add_bytes(tx: &rusqlite::Transaction<'_>, b: &BucketId, delta: i64) -> Result<(), Error> {
    if delta == 0 {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO buckets (ns, bucket, bytes) VALUES (?1, ?2, ?3)
         ON CONFLICT (ns, bucket) DO UPDATE SET bytes = bytes + excluded.bytes",
    )
    .and_then(|mut s| s.execute(params![&*b.namespace, &*b.name, delta]))
    .map(drop)
    .map_err(fail)
}

/// A counter's value: decimal ASCII, as `increment` writes it.
pub(super) fn parse_counter(key: &str, value: &[u8]) -> Result<u64, Error> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Error::Other(format!("the value of key {key:?} is not a decimal counter")))
}

pub(super) fn over_cap(b: &BucketId, after: u64, max: u64) -> Error {
    Error::Other(format!(
        "bucket {:?} would hold {after} bytes, over its cap of {max} (--kv-max-bucket-bytes)",
        &*b.name
    ))
}

/// An SQLite error as the plugin sees it, logged for the operator: a full
/// disk or a locked file is the operator's to fix.
fn fail(e: rusqlite::Error) -> Error {
    crate::ratelimit::log_limited!(warn, "embedded key-value store: {e}");
    Error::Other(format!("embedded store: {e}"))
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints run on their own thread ([`Checkpointer`]), never in a
    // request's commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Truncate the WAL back to this size after a checkpoint, so one burst
    // of writes does not keep a large file.
    conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
    Ok(conn)
}

/// A thread that checkpoints the WAL into the database every
/// [`CHECKPOINT_EVERY`], on a connection of its own, and stops when
/// dropped.
struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> anyhow::Result<Self> {
        let conn = connect(path)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("kv-checkpoint".into()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                // PASSIVE copies what it can without waiting for writers.
                // Under a steady stream of writes it never catches up with
                // the end of the WAL, and only a checkpoint that does lets
                // the WAL start over: past RESTART_FRAMES, RESTART waits for
                // the writer (a request pays for one short fsync) and
                // catches up.
                let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1));
                let result = match frames {
                    Ok(frames) if frames > RESTART_FRAMES => {
                        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
                    }
                    other => other.map(drop),
                };
                if let Err(e) = result {
                    crate::ratelimit::log_limited!(warn, "embedded key-value store: checkpoint failed: {e}");
                }
            }
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        })?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(ns: &str, name: &str) -> BucketId {
        BucketId { namespace: ns.into(), name: name.into() }
    }

    #[test]
    fn values_counters_caps_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = Embedded::open(dir.path()).unwrap();
        let (a, b) = (bucket("svc", "default"), bucket("other", "default"));
        assert_eq!(s.get(&a, "k").unwrap(), None);
        s.set(&a, "k", b"v1", 1 << 20).unwrap();
        assert_eq!(s.get(&a, "k").unwrap().as_deref(), Some(&b"v1"[..]));
        assert_eq!(s.get(&b, "k").unwrap(), None, "namespaces are separate");
        assert_eq!(s.increment(&a, "n", 5, 1 << 20).unwrap(), 5);
        assert_eq!(s.increment(&a, "n", 2, 1 << 20).unwrap(), 7);
        assert_eq!(s.get(&a, "n").unwrap().as_deref(), Some(&b"7"[..]));
        assert!(matches!(s.increment(&a, "k", 1, 1 << 20), Err(Error::Other(m)) if m.contains("not a decimal")));
        assert!(matches!(s.increment(&a, "n", u64::MAX, 1 << 20), Err(Error::Other(m)) if m.contains("overflows")));
        // Cap: "k"+"v1" and "n"+"7" take 5 bytes.
        assert!(matches!(s.set(&a, "x", b"123456", 10), Err(Error::Other(m)) if m.contains("over its cap")));
        s.set(&a, "x", b"1234", 10).unwrap();
        s.delete(&a, "x").unwrap();
        s.delete(&a, "x").unwrap();
        s.set(&a, "x", b"1234", 10).unwrap();
        assert!(s.exists(&a, "x").unwrap());
        for i in 0..LIST_PAGE + 5 {
            s.set(&b, &format!("key{i}"), b"", u64::MAX).unwrap();
        }
        let (page, cursor) = s.list_keys(&b, None).unwrap();
        assert_eq!(page.len(), LIST_PAGE);
        let (rest, end) = s.list_keys(&b, cursor).unwrap();
        assert_eq!((rest.len(), end), (5, None));
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let a = bucket("svc", "default");
        Embedded::open(dir.path()).unwrap().set(&a, "k", b"v", 1 << 20).unwrap();
        let s = Embedded::open(dir.path()).unwrap();
        assert_eq!(s.get(&a, "k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
