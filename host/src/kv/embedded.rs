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
//! No call blocks a worker thread for longer than a short read or an
//! uncontended commit. When the writer is idle, a write commits on the
//! caller's thread, but only if the file's write lock is free at once.
//! Otherwise (another process writes, or writes are queued) it goes to the
//! writer thread, which may wait for the lock (up to [`BUSY_TIMEOUT`]) and
//! is awaited, so the request's `--timeout` still cuts the caller off. The
//! writer commits the writes that queued up while it was busy in one
//! transaction (group commit, each write in a savepoint of its own so one
//! failing write undoes only itself), and answers them only once that
//! transaction is committed: one WAL write for many requests, and no `ok`
//! before the data is in the WAL. Reads use a connection of their own (in
//! WAL mode a reader does not wait for a writer) and run on the calling
//! thread when that connection is free, else on the blocking pool.
//! Checkpoints, which `fsync`, run on a thread of their own
//! (`start_checkpointer`): with SQLite's automatic checkpoint, one commit
//! in about a thousand paid 3 to 7 ms for it (measured, README "State and
//! configuration"). Several host processes may share one data directory
//! (during an upgrade, say): SQLite locks the file between them.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{BucketId, Error, LIST_PAGE};

/// The file in the data directory.
pub const FILE_NAME: &str = "kv.sqlite3";
/// How long a write waits for another process's write to the same file.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a read may wait for a lock (only while SQLite recovers the WAL
/// index after a crash, or a checkpoint resets it): reads may run on a
/// worker thread.
const READ_BUSY_TIMEOUT: Duration = Duration::from_millis(20);
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

/// Most keys a `get-many` reads on the caller's thread (more go to the
/// blocking pool).
const INLINE_MANY: usize = 32;
/// Most writes committed in one transaction.
const MAX_GROUP: usize = 256;
/// Writes that may wait for the writer thread; past this, callers wait to
/// queue (async, not on a thread).
const WRITE_QUEUE: usize = 1024;

/// The store: a connection for reads, a writer thread and a checkpointing
/// thread.
pub struct Embedded {
    db: Arc<Db>,
    writes: tokio::sync::mpsc::Sender<Write>,
    path: PathBuf,
    _writer: Thread,
    _checkpointer: Thread,
}

struct Db {
    reader: Mutex<Connection>,
    /// Held by the writer thread while it commits a group, and by a
    /// caller committing a write of its own ([`Embedded::write`]).
    writer: Mutex<Connection>,
}

/// One write for the writer thread: what to do inside the transaction, and
/// where to send its result (a counter's new value, or 0).
struct Write {
    run: WriteFn,
    reply: Reply,
}

/// A write's work, run inside the writer's transaction.
type WriteFn = Box<dyn FnOnce(&Connection) -> Result<u64, Error> + Send>;

/// Lock `m`: a panic while holding it cannot leave a transaction open
/// (rusqlite rolls back on drop), so the connection is still usable.
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Embedded {
    /// Open (or create) `dir/kv.sqlite3`, creating `dir` and the file
    /// readable by this user only.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        super::create_private_dir(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let what = || format!("cannot open the key-value store {}", path.display());
        create_private_file(&path).with_context(what)?;
        let writer = connect(&path, BUSY_TIMEOUT).with_context(what)?;
        writer.execute_batch(SCHEMA).with_context(|| format!("cannot create the tables in {}", path.display()))?;
        let reader = connect(&path, READ_BUSY_TIMEOUT).with_context(what)?;
        let checkpointer = start_checkpointer(&path)?;
        let (writes, queue) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let db = Arc::new(Db { reader: Mutex::new(reader), writer: Mutex::new(writer) });
        let for_writer = db.clone();
        let writer = Thread::spawn("kv-writer", move |_stop| write_groups(&for_writer.writer, queue))?;
        Ok(Self { db, writes, path, _writer: writer, _checkpointer: checkpointer })
    }

    /// The SQLite file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the read connection: here if it is free, else on the
    /// blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        match self.db.reader.try_lock() {
            Ok(conn) => return f(&conn),
            Err(TryLockError::Poisoned(conn)) => return f(&conn.into_inner()),
            Err(TryLockError::WouldBlock) => {}
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&lock(&db.reader))).await.map_err(Error::other)?
    }

    /// Run `run` on the writer thread, inside its next transaction, and
    /// return its result once that transaction is committed.
    ///
    /// When the writer is idle and nothing is queued, the caller commits
    /// the write itself, here, without waiting for any lock (another
    /// process's included): no thread switch, and a UDP request stays in
    /// its receive batch. Under load, writes queue and commit in groups.
    async fn write(&self, run: impl FnOnce(&Connection) -> Result<u64, Error> + Send + 'static) -> Result<u64, Error> {
        let idle = self.writes.capacity() == self.writes.max_capacity();
        let run = match self.db.writer.try_lock() {
            Ok(mut conn) if idle => match commit_here(&mut conn, run) {
                Ok(result) => return result,
                Err(run) => run,
            },
            _ => Box::new(run),
        };
        let (reply, result) = tokio::sync::oneshot::channel();
        let gone = || Error::Other("embedded store: the writer thread has stopped".into());
        self.writes.send(Write { run, reply }).await.map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }

    pub(super) async fn get(&self, b: &BucketId, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let (b, key) = (b.clone(), key.to_string());
        self.read(move |conn| select_value(conn, &b, &key)).await
    }

    pub(super) async fn exists(&self, b: &BucketId, key: &str) -> Result<bool, Error> {
        let (b, key) = (b.clone(), key.to_string());
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT 1 FROM kv WHERE ns = ?1 AND bucket = ?2 AND key = ?3").map_err(fail)?;
            stmt.exists(params![&*b.namespace, &*b.name, key]).map_err(fail)
        })
        .await
    }

    /// The values of `keys`, stopping with an error once they add up to
    /// more than `max_bytes`.
    pub(super) async fn get_many(
        &self,
        b: &BucketId,
        keys: Vec<String>,
        max_bytes: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let b = b.clone();
        // A few keys are read like one (on this thread when the read
        // connection is free): a pipeline's run of GETs is a handful of
        // keys. Many are read on the blocking pool: they can take a while.
        if keys.len() <= INLINE_MANY {
            return self.read(move |conn| read_many(conn, &b, &keys, max_bytes)).await;
        }
        let db = self.db.clone();
        let read = move || read_many(&lock(&db.reader), &b, &keys, max_bytes);
        tokio::task::spawn_blocking(read).await.map_err(Error::other)?
    }

    pub(super) async fn set(&self, b: &BucketId, key: &str, value: Vec<u8>, max_bucket: u64) -> Result<(), Error> {
        let (b, key) = (b.clone(), key.to_string());
        self.write(move |conn| update(conn, &b, &key, max_bucket, |_| Ok(value)).map(|()| 0)).await.map(drop)
    }

    /// Every pair in one write: one commit for all of them, and the
    /// writer's savepoint makes the batch all or nothing.
    pub(super) async fn set_many(
        &self,
        b: &BucketId,
        pairs: Vec<(String, Vec<u8>)>,
        max_bucket: u64,
    ) -> Result<(), Error> {
        let b = b.clone();
        self.write(move |conn| {
            for (key, value) in pairs {
                update(conn, &b, &key, max_bucket, |_| Ok(value))?;
            }
            Ok(0)
        })
        .await
        .map(drop)
    }

    pub(super) async fn increment(&self, b: &BucketId, key: &str, delta: u64, max_bucket: u64) -> Result<u64, Error> {
        let (b, key) = (b.clone(), key.to_string());
        self.write(move |conn| {
            let mut sum = 0;
            update(conn, &b, &key, max_bucket, |old| {
                let n = match old {
                    None => 0,
                    Some(v) => parse_counter(&key, v)?,
                };
                sum = n.checked_add(delta).ok_or_else(|| super::overflow(&key))?;
                Ok(sum.to_string().into_bytes())
            })?;
            Ok(sum)
        })
        .await
    }

    pub(super) async fn delete(&self, b: &BucketId, key: &str) -> Result<(), Error> {
        let (b, key) = (b.clone(), key.to_string());
        self.write(move |conn| {
            let removed: Option<i64> = conn
                .prepare_cached("DELETE FROM kv WHERE ns = ?1 AND bucket = ?2 AND key = ?3 RETURNING length(value)")
                .and_then(|mut s| s.query_row(params![&*b.namespace, &*b.name, key], |row| row.get(0)).optional())
                .map_err(fail)?;
            if let Some(len) = removed {
                add_bytes(conn, &b, -(key.len() as i64 + len))?;
            }
            Ok(0)
        })
        .await
        .map(drop)
    }

    pub(super) async fn list_keys(
        &self,
        b: &BucketId,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), Error> {
        let b = b.clone();
        self.read(move |conn| {
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
                    // There is at least one more key: the next page starts
                    // after the last one returned.
                    return Ok((keys, Some(last as u64)));
                }
                last = id;
                keys.push(key);
            }
            Ok((keys, None))
        })
        .await
    }
}

/// The values of `keys` on `conn`, stopping with an error once they add up
/// to more than `max_bytes`.
fn read_many(
    conn: &Connection,
    b: &BucketId,
    keys: &[String],
    max_bytes: usize,
) -> Result<Vec<Option<Vec<u8>>>, Error> {
    // One read transaction: one snapshot, and SQLite's WAL locks taken
    // once for all the keys instead of once per key.
    let tx = conn.unchecked_transaction().map_err(fail)?;
    let mut total = 0usize;
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        let value = select_value(&tx, b, key)?;
        total += value.as_ref().map_or(0, Vec::len);
        if total > max_bytes {
            return Err(super::over_read(max_bytes));
        }
        values.push(value);
    }
    tx.commit().map_err(fail)?;
    Ok(values)
}

fn select_value(conn: &Connection, b: &BucketId, key: &str) -> Result<Option<Vec<u8>>, Error> {
    let mut stmt =
        conn.prepare_cached("SELECT value FROM kv WHERE ns = ?1 AND bucket = ?2 AND key = ?3").map_err(fail)?;
    stmt.query_row(params![&*b.namespace, &*b.name, key], |row| row.get(0)).optional().map_err(fail)
}

/// The writer thread: take the writes queued up, run each in a savepoint
/// of one transaction, commit, then answer them all.
fn write_groups(writer: &Mutex<Connection>, mut queue: tokio::sync::mpsc::Receiver<Write>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut results = Vec::with_capacity(MAX_GROUP);
    // Ends when the store is dropped (every sender gone).
    while let Some(first) = queue.blocking_recv() {
        // The lock first (a caller may be committing on its own): the
        // group is then everything that queued up meanwhile.
        let mut conn = lock(writer);
        group.push(first);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(write) => group.push(write),
                Err(_) => break,
            }
        }
        // The thread may wait for another process's lock.
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
        let committed = run_group(&mut conn, &mut group, &mut results);
        drop(conn);
        // If the transaction could not even begin, the group is still
        // there: every write in it gets the error.
        for write in group.drain(..) {
            results.push((write.reply, Ok(0)));
        }
        for (reply, result) in results.drain(..) {
            let _ = reply.send(committed.clone().and(result));
        }
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<u64, Error>>;

/// Commit `run` alone on `conn` if the file's write lock is free right now;
/// if it is not (another process writes), give `run` back, not run.
fn commit_here(
    conn: &mut Connection,
    run: impl FnOnce(&Connection) -> Result<u64, Error> + Send + 'static,
) -> Result<Result<u64, Error>, WriteFn> {
    let _ = conn.busy_timeout(Duration::ZERO);
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(_) => return Err(Box::new(run)),
    };
    let result = run(&tx);
    // Dropping `tx` without a commit rolls the failed write back.
    Ok(result.and_then(|n| tx.commit().map(|()| n).map_err(fail)))
}

/// Run `group` in one transaction, each write in a savepoint of its own;
/// its results go to `results`, to be sent once the commit is known.
fn run_group(
    conn: &mut Connection,
    group: &mut Vec<Write>,
    results: &mut Vec<(Reply, Result<u64, Error>)>,
) -> Result<(), Error> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail)?;
    for write in group.drain(..) {
        let result = match tx.savepoint() {
            Ok(mut savepoint) => {
                let result = (write.run)(&savepoint);
                // A failed write undoes whatever it did before failing.
                let end = if result.is_ok() { savepoint.commit() } else { savepoint.rollback() };
                end.map_err(fail).and(result)
            }
            Err(e) => Err(fail(e)),
        };
        results.push((write.reply, result));
    }
    tx.commit().map_err(fail)
}

/// Replace the value of `key` with what `new` makes of the old one, keeping
/// the bucket's byte count and cap (inside the writer's transaction).
fn update(
    conn: &Connection,
    b: &BucketId,
    key: &str,
    max_bucket: u64,
    new: impl FnOnce(Option<&[u8]>) -> Result<Vec<u8>, Error>,
) -> Result<(), Error> {
    let (ns, bucket) = (&*b.namespace, &*b.name);
    let tx = conn;
    let old = select_value(tx, b, key)?;
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
    add_bytes(tx, b, new_size - old_size)
}

/// Create `path` readable and writable by this user only, if it does not
/// exist; SQLite creates its `-wal` and `-shm` files with the same mode.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(drop),
    }
}

fn add_bytes(tx: &Connection, b: &BucketId, delta: i64) -> Result<(), Error> {
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

/// A counter's value, in the one form both backends accept
/// ([`super::is_counter`]).
fn parse_counter(key: &str, value: &[u8]) -> Result<u64, Error> {
    if !super::is_counter(value) {
        return Err(super::not_a_counter(key));
    }
    // Digits only, so the one way to fail is being past u64::MAX.
    std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).ok_or_else(|| super::overflow(key))
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

fn connect(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints run on their own thread (`start_checkpointer`), never in a
    // request's commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Truncate the WAL back to this size after a checkpoint, so one burst
    // of writes does not keep a large file.
    conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
    Ok(conn)
}

/// Start the thread that checkpoints the WAL into the database every
/// [`CHECKPOINT_EVERY`], on a connection of its own.
fn start_checkpointer(path: &Path) -> anyhow::Result<Thread> {
    let conn = connect(path, BUSY_TIMEOUT)?;
    Thread::spawn("kv-checkpoint", move |stop| {
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
            // PASSIVE copies what it can without waiting for writers. Under
            // a steady stream of writes it never catches up with the end of
            // the WAL, and only a checkpoint that does lets the WAL start
            // over: past RESTART_FRAMES, RESTART waits for the writer (one
            // group of writes waits for one short fsync) and catches up.
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
    })
}

/// A thread of the store's, told to stop (its `stop` receiver disconnects)
/// and joined when dropped.
struct Thread {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Thread {
    fn spawn(name: &str, body: impl FnOnce(mpsc::Receiver<()>) + Send + 'static) -> anyhow::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || body(stopped))?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Thread {
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

    #[tokio::test]
    async fn values_counters_caps_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = Embedded::open(dir.path()).unwrap();
        let (a, b) = (bucket("svc", "default"), bucket("other", "default"));
        assert_eq!(s.get(&a, "k").await.unwrap(), None);
        s.set(&a, "k", b"v1".to_vec(), 1 << 20).await.unwrap();
        assert_eq!(s.get(&a, "k").await.unwrap().as_deref(), Some(&b"v1"[..]));
        assert_eq!(s.get(&b, "k").await.unwrap(), None, "namespaces are separate");
        assert_eq!(s.increment(&a, "n", 5, 1 << 20).await.unwrap(), 5);
        assert_eq!(s.increment(&a, "n", 2, 1 << 20).await.unwrap(), 7);
        assert_eq!(s.get(&a, "n").await.unwrap().as_deref(), Some(&b"7"[..]));
        assert!(matches!(s.increment(&a, "k", 1, 1 << 20).await, Err(Error::Other(m)) if m.contains("not a decimal")));
        assert!(
            matches!(s.increment(&a, "n", u64::MAX, 1 << 20).await, Err(Error::Other(m)) if m.contains("overflows"))
        );
        // Cap: "k"+"v1" and "n"+"7" take 5 bytes.
        assert!(
            matches!(s.set(&a, "x", b"123456".to_vec(), 10).await, Err(Error::Other(m)) if m.contains("over its cap"))
        );
        s.set(&a, "x", b"1234".to_vec(), 10).await.unwrap();
        s.delete(&a, "x").await.unwrap();
        s.delete(&a, "x").await.unwrap();
        s.set(&a, "x", b"1234".to_vec(), 10).await.unwrap();
        assert!(s.exists(&a, "x").await.unwrap());
        for i in 0..LIST_PAGE + 5 {
            s.set(&b, &format!("key{i}"), b"".to_vec(), u64::MAX).await.unwrap();
        }
        let (page, cursor) = s.list_keys(&b, None).await.unwrap();
        assert_eq!(page.len(), LIST_PAGE);
        let (rest, end) = s.list_keys(&b, cursor).await.unwrap();
        assert_eq!((rest.len(), end), (5, None));
        // Counters have one form on both backends.
        for (text, want) in [("007", "not a decimal"), ("+5", "not a decimal"), ("99999999999999999999", "overflows")] {
            s.set(&a, "c", text.as_bytes().to_vec(), 1 << 20).await.unwrap();
            assert!(
                matches!(s.increment(&a, "c", 1, 1 << 20).await, Err(Error::Other(m)) if m.contains(want)),
                "{text}"
            );
        }
        let keys = vec!["k".to_string(), "k".to_string(), "none".to_string()];
        assert_eq!(s.get_many(&a, keys.clone(), 4).await.unwrap(), [Some(b"v1".to_vec()), Some(b"v1".to_vec()), None]);
        assert!(matches!(s.get_many(&a, keys, 3).await, Err(Error::Other(m)) if m.contains("bytes")));
    }

    /// `set-many` is one commit: a batch that would take the bucket over
    /// its cap sets nothing, one that fits sets every key (the last of a
    /// repeated key wins).
    #[tokio::test]
    async fn set_many_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Embedded::open(dir.path()).unwrap();
        let a = bucket("svc", "default");
        let pair = |k: &str, v: &str| (k.to_string(), v.as_bytes().to_vec());
        let over = vec![pair("a", "1"), pair("b", "2"), pair("c", "123456789")];
        assert!(matches!(s.set_many(&a, over, 10).await, Err(Error::Other(m)) if m.contains("over its cap")));
        assert_eq!(s.get(&a, "a").await.unwrap(), None, "nothing of a failed batch is kept");
        s.set_many(&a, vec![pair("a", "1"), pair("b", "2"), pair("a", "3")], 10).await.unwrap();
        let keys = vec!["a".to_string(), "b".to_string()];
        assert_eq!(s.get_many(&a, keys, 10).await.unwrap(), [Some(b"3".to_vec()), Some(b"2".to_vec())]);
    }

    /// While the writer is busy, writes queue and commit as one group; one
    /// that fails undoes only itself, and each is answered after the commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_commit_as_a_group_and_a_failing_one_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Embedded::open(dir.path()).unwrap());
        let a = bucket("svc", "default");
        // Another thread holds the writer's lock, as a caller committing
        // on its own would.
        let (release, released) = mpsc::channel::<()>();
        let (locked, is_locked) = mpsc::channel::<()>();
        let db = s.db.clone();
        let holder = std::thread::spawn(move || {
            let _busy = db.writer.lock().unwrap();
            locked.send(()).unwrap();
            let _ = released.recv();
        });
        is_locked.recv().unwrap();
        let mut increments = Vec::new();
        for _ in 0..10 {
            let (s, a) = (s.clone(), a.clone());
            increments.push(tokio::spawn(async move { s.increment(&a, "n", 1, 1 << 20).await }));
        }
        let over = {
            let (s, a) = (s.clone(), a.clone());
            tokio::spawn(async move { s.set(&a, "big", vec![0; 100], 50).await })
        };
        // The writer thread has taken the first and waits for the lock.
        while s.writes.max_capacity() - s.writes.capacity() < 10 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        release.send(()).unwrap();
        holder.join().unwrap();
        let mut counts = Vec::new();
        for task in increments {
            counts.push(task.await.unwrap().unwrap());
        }
        counts.sort_unstable();
        assert_eq!(counts, (1..=10).collect::<Vec<_>>());
        assert!(matches!(over.await.unwrap(), Err(Error::Other(m)) if m.contains("over its cap")));
        assert_eq!(s.get(&a, "big").await.unwrap(), None);
        assert_eq!(s.get(&a, "n").await.unwrap().as_deref(), Some(&b"10"[..]));
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let a = bucket("svc", "default");
        Embedded::open(dir.path()).unwrap().set(&a, "k", b"v".to_vec(), 1 << 20).await.unwrap();
        let s = Embedded::open(dir.path()).unwrap();
        assert_eq!(s.get(&a, "k").await.unwrap().as_deref(), Some(&b"v"[..]));
    }
}
