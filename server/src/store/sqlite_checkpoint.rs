//! The WAL's checkpoints, on a thread and a connection of their own.
//!
//! A checkpoint copies the pages the WAL holds back into the database file. Run by the
//! append thread between batches, it held up every append that arrived meanwhile: at
//! 22,500 deliveries/s a checkpoint every 20 ms copied ~450 pages in 0.8–3.2 ms, and the
//! notes that waited behind one made the delivery p99 (docs/benchmarks.md). SQLite lets a
//! checkpoint run beside the one writer (`PASSIVE` takes no lock the writer needs), so
//! the append thread asks for one and goes on appending while this thread copies.
//!
//! What this thread cannot do is rewind the WAL. SQLite writes the WAL from its start
//! again only when a write transaction begins with every frame copied, and a pass racing
//! the writer always ends a commit or two short: left alone, the file only grows, and
//! every read looks pages up in a longer index. So once the WAL holds
//! [`REWIND_FRAMES`] and a pass has copied everything committed before it began, the
//! append thread runs one more pass itself, between two batches: it copies only what
//! was committed during the background pass, and the next transaction starts the WAL
//! over.
//!
//! SQLite syncs the database file only after a pass that copied everything, so the
//! passes racing the writer left their copies to the kernel, and the rewind's pass had
//! to flush them all: 4–9 ms in line on the append thread, five times a second at 22,500
//! deliveries/s, and the delivery p99 was the notes that waited behind it. This thread
//! syncs the database file after every pass, so the disk takes the copies a pass at a
//! time, beside the commits, and a rewind flushes only the pages it copied itself.
//! (Syncing only the pass before a rewind left one large flush to compete with the
//! commits' own, and the p99 where it was.)
//!
//! The thread runs at the lowest priority (nice 19): a pass can wait, the appends and
//! deliveries that share the core with it cannot. Should a requested pass still not
//! have run after [`STARVED_AFTER`] (a core busy without a pause), the append thread
//! copies in line, as it did before this thread existed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::StoreError;

/// Frames (4 KiB pages) the WAL may hold before the append thread rewinds it: 16 MiB,
/// one segment of SQLite's WAL index. About every 200 ms at 22,500 deliveries/s.
const REWIND_FRAMES: i64 = 4 * 1024;

/// How long a requested pass may wait for the core before the append thread copies in
/// line instead: two of the heavy-load checkpoint intervals.
const STARVED_AFTER: Duration = Duration::from_millis(500);

/// The checkpointing thread. Dropping it stops the thread after the pass in hand.
pub(super) struct Checkpointer {
    wake: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
}

/// What the passes have seen, shared between the two threads.
struct Progress {
    /// Frames in the WAL when the last pass began.
    wal_frames: AtomicI64,
    /// Set when a pass has copied every frame committed before it began.
    caught_up: AtomicBool,
    /// When the oldest request not yet served was made, in milliseconds after `epoch`
    /// plus one; 0 when none is waiting.
    waiting_since: AtomicU64,
    epoch: Instant,
}

impl Progress {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }
}

impl Checkpointer {
    /// Opens a connection of its own to `path` (a WAL database) and starts the thread.
    pub(super) fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        let progress = Arc::new(Progress {
            wal_frames: AtomicI64::new(0),
            caught_up: AtomicBool::new(false),
            waiting_since: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        // One request waiting is enough: a pass copies everything committed before it.
        let (wake, requests) = mpsc::sync_channel::<()>(1);
        let seen = progress.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                lower_priority();
                while requests.recv().is_ok() {
                    seen.waiting_since.store(0, Ordering::Relaxed);
                    if let Some(pass) = checkpoint(&connection) {
                        sync_database_file(&connection);
                        seen.wal_frames.store(pass.wal_frames, Ordering::Relaxed);
                        if pass.complete() {
                            seen.caught_up.store(true, Ordering::Release);
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            wake: Some(wake),
            thread: Some(thread),
            progress,
        })
    }

    /// Asks for a pass; returns at once (a request already waiting covers this one).
    pub(super) fn request(&self) {
        let now = self.progress.now();
        let _ = self.progress.waiting_since.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }

    /// Called by the append thread between batches: copies in line on `connection` (the
    /// writer's) when the WAL is due to be rewound. Returns at once otherwise.
    pub(super) fn rewind_if_due(&self, connection: &Connection) {
        let progress = &self.progress;
        let frames = progress.wal_frames.load(Ordering::Relaxed);
        let rewind = frames >= REWIND_FRAMES && progress.caught_up.load(Ordering::Acquire);
        let now = progress.now();
        let waiting_since = progress.waiting_since.load(Ordering::Relaxed);
        let starved = waiting_since != 0
            && Duration::from_millis(now.saturating_sub(waiting_since)) >= STARVED_AFTER;
        if !rewind && !starved {
            return;
        }
        if starved {
            // Restart the clock: the next copy in line, if still starved, comes as late.
            progress.waiting_since.store(now, Ordering::Relaxed);
        }
        // Unless the background pass holds the checkpoint lock or a reader holds frames
        // (then again after the next batch), everything is copied and the writer's next
        // transaction starts the WAL over.
        if checkpoint(connection).is_some_and(|pass| pass.complete()) {
            progress.wal_frames.store(0, Ordering::Relaxed);
            progress.caught_up.store(false, Ordering::Relaxed);
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the SQLite checkpoint thread ended abnormally");
            }
        }
    }
}

/// What one checkpoint pass did.
pub(super) struct Pass {
    /// Another checkpoint was running, or a reader kept the pass from finishing.
    busy: bool,
    /// Frames in the WAL when the pass began.
    wal_frames: i64,
    /// Frames copied into the database file, in all.
    copied_frames: i64,
}

impl Pass {
    fn complete(&self) -> bool {
        !self.busy && self.copied_frames >= self.wal_frames
    }
}

/// Copies what the WAL holds back into the database file, without waiting for readers
/// or the writer (a frame a reader still needs is copied next time). The WAL is durable
/// already: a failed checkpoint loses nothing, it is only logged.
pub(super) fn checkpoint(connection: &Connection) -> Option<Pass> {
    let done = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Pass {
            busy: row.get::<_, i64>(0)? != 0,
            wal_frames: row.get(1)?,
            copied_frames: row.get(2)?,
        })
    });
    match done {
        Ok(pass) => Some(pass),
        Err(e) => {
            tracing::warn!("WAL checkpoint failed: {e}");
            None
        }
    }
}

/// Puts the calling thread last in line for the CPU (nice 19): a pass can wait, the
/// appends and deliveries sharing the core with it cannot. Lowering one's own priority
/// needs no privilege; on Linux the nice value is per thread.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers; `0` with PRIO_PROCESS is the calling
    // thread on Linux.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS, 0, 19) != 0 {
            tracing::debug!(
                "cannot lower the checkpoint thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Flushes the database file to disk through the pass's own connection, whose file
/// handle SQLite lends for the call (`SQLITE_FCNTL_FILE_POINTER`): no second descriptor
/// is opened, so none can be closed under SQLite's POSIX locks. A failure is only
/// logged: the pages stay in the WAL, durable, until a complete pass syncs them.
fn sync_database_file(connection: &Connection) {
    use rusqlite::ffi;
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: the handle is this thread's open connection; FILE_POINTER writes one
    // pointer to the connection's open database file into `file`, valid while the
    // connection is, and xSync is called on it from the thread that owns the connection.
    let rc = unsafe {
        let found = ffi::sqlite3_file_control(
            connection.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&mut file as *mut *mut ffi::sqlite3_file).cast(),
        );
        if found != ffi::SQLITE_OK {
            found
        } else if file.is_null() || (*file).pMethods.is_null() {
            ffi::SQLITE_MISUSE
        } else {
            match (*(*file).pMethods).xSync {
                Some(sync) => sync(file, ffi::SQLITE_SYNC_NORMAL),
                None => ffi::SQLITE_MISUSE,
            }
        }
    };
    if rc != ffi::SQLITE_OK {
        tracing::warn!("cannot sync the database file after a checkpoint: SQLite code {rc}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL database with a table, written to by `writer` as the append thread would.
    fn database(dir: &Path) -> (std::path::PathBuf, Connection) {
        let path = dir.join("wal.db");
        let writer = Connection::open(&path).expect("open");
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        // The test is about frames, not durability.
        writer
            .pragma_update(None, "synchronous", "OFF")
            .expect("synchronous");
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .expect("no automatic checkpoints");
        writer
            .execute_batch("CREATE TABLE rows (body BLOB NOT NULL)")
            .expect("schema");
        (path, writer)
    }

    /// Commits `commits` transactions of about a page each.
    fn write(writer: &Connection, commits: usize) {
        for _ in 0..commits {
            writer
                .execute("INSERT INTO rows (body) VALUES (zeroblob(3000))", [])
                .expect("insert");
        }
    }

    /// Frames the WAL holds now (read by a pass from a third connection).
    fn wal_frames(path: &Path) -> i64 {
        let reader = Connection::open(path).expect("open");
        checkpoint(&reader).expect("a pass").wal_frames
    }

    /// The append thread's turn between two batches, then the next batch: returns the
    /// frames the WAL holds after it (a handful if the WAL started over).
    fn rewind_then_commit(checkpointer: &Checkpointer, writer: &Connection, path: &Path) -> i64 {
        checkpointer.rewind_if_due(writer);
        write(writer, 1);
        wal_frames(path)
    }

    /// Runs a background pass while a batch is in progress, as happens in use: the batch
    /// commits after the pass, so the WAL is not all copied, and left alone it would never
    /// start over.
    fn pass_during_a_batch(writer: &Connection, checkpointer: &Checkpointer) {
        writer
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO rows (body) VALUES (zeroblob(3000))")
            .expect("a batch in progress");
        checkpointer.request();
        wait_until("the pass has copied the WAL", || {
            checkpointer.progress.caught_up.load(Ordering::Acquire)
        });
        writer.execute_batch("COMMIT").expect("the batch commits");
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_writer_rewinds_a_wal_the_background_pass_has_copied() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (path, writer) = database(dir.path());
        let checkpointer = Checkpointer::start(&path).expect("start");

        write(&writer, REWIND_FRAMES as usize + 500);
        pass_during_a_batch(&writer, &checkpointer);
        assert!(checkpointer.progress.wal_frames.load(Ordering::Relaxed) >= REWIND_FRAMES);
        let frames = rewind_then_commit(&checkpointer, &writer, &path);
        assert!(
            frames < 10,
            "the next commit starts the WAL over: {frames} frames"
        );
    }

    /// Pages of the file at `path` that the kernel holds but has not written to disk
    /// (dirty or being written back), from cachestat(2) (Linux 6.5).
    #[cfg(target_os = "linux")]
    fn unwritten_pages(path: &Path) -> u64 {
        use std::os::fd::AsRawFd;
        /// New system calls have one number on every architecture.
        const SYS_CACHESTAT: libc::c_long = 451;
        #[repr(C)]
        struct Range {
            offset: u64,
            /// 0: to the end of the file.
            length: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct CacheStat {
            cached: u64,
            dirty: u64,
            writeback: u64,
            evicted: u64,
            recently_evicted: u64,
        }
        let file = std::fs::File::open(path).expect("open the database file");
        let range = Range {
            offset: 0,
            length: 0,
        };
        let mut stat = CacheStat::default();
        // SAFETY: both pointers are to live `repr(C)` values of the layout cachestat(2)
        // reads and writes, and the descriptor is open for the call.
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const Range,
                &mut stat as *mut CacheStat,
                0u32,
            )
        };
        assert_eq!(rc, 0, "cachestat: {}", std::io::Error::last_os_error());
        stat.dirty + stat.writeback
    }

    /// A pass that cannot copy everything (here a reader holds an old snapshot; in use,
    /// the writer commits meanwhile) is not synced by SQLite; left to the kernel, its
    /// copies were flushed by the append thread's rewind, in line.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_background_pass_leaves_the_database_file_on_disk() {
        // Beside the test binary, on the build's disk: on a tmpfs (many a /tmp) every
        // page counts as dirty and a sync changes nothing.
        let binary = std::env::current_exe().expect("the test binary's path");
        let beside = binary.parent().expect("the test binary's directory");
        let dir = tempfile::tempdir_in(beside).expect("temporary directory");
        let (path, writer) = database(dir.path());
        let checkpointer = Checkpointer::start(&path).expect("start");

        write(&writer, 1000);
        let reader = Connection::open(&path).expect("open");
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM rows")
            .expect("a reader's snapshot");
        write(&writer, 500);
        checkpointer.request();
        wait_until("the pass has run", || {
            checkpointer.progress.wal_frames.load(Ordering::Relaxed) > 0
        });

        let copied = std::fs::metadata(&path).expect("database file").len() / 4096;
        assert!(copied >= 1000, "the pass copied {copied} pages");
        let unwritten = unwritten_pages(&path);
        assert_eq!(unwritten, 0, "pages the pass copied still in memory only");
        reader.execute_batch("COMMIT").expect("the reader ends");
    }

    #[test]
    fn a_short_wal_is_left_to_grow() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (path, writer) = database(dir.path());
        let checkpointer = Checkpointer::start(&path).expect("start");

        write(&writer, 100);
        pass_during_a_batch(&writer, &checkpointer);
        write(&writer, 50);
        assert!(
            rewind_then_commit(&checkpointer, &writer, &path) > 50,
            "no copy in line below {REWIND_FRAMES} frames"
        );
    }

    #[test]
    fn a_pass_the_thread_does_not_get_to_is_done_in_line() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (path, writer) = database(dir.path());
        // A checkpointer whose thread never serves a request: starved.
        let (wake, _requests) = mpsc::sync_channel::<()>(1);
        let checkpointer = Checkpointer {
            wake: Some(wake),
            thread: None,
            progress: Arc::new(Progress {
                wal_frames: AtomicI64::new(0),
                caught_up: AtomicBool::new(false),
                waiting_since: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        };

        write(&writer, 1000);
        checkpointer.request();
        assert!(
            rewind_then_commit(&checkpointer, &writer, &path) > 1000,
            "a request just made is waited for"
        );

        std::thread::sleep(STARVED_AFTER);
        let frames = rewind_then_commit(&checkpointer, &writer, &path);
        assert!(
            frames < 10,
            "copied in line and started over: {frames} frames"
        );
    }
}
