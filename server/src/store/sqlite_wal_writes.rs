//! The append connection's WAL file, written a transaction at a time rather than half a
//! frame at a time.
//!
//! SQLite writes each WAL frame with two `write`s, its 24-byte header and then its page,
//! so a commit of 30 pages costs 60 system calls, and since a frame (4,120 bytes) is not
//! a multiple of the kernel's 4 KiB folios, each call partly fills one or two of them.
//! In `bc-load fanout`'s fixed step those writes were ~10 % of the server's CPU, and the
//! same 30 frames cost a quarter as much written in one call (docs/benchmarks-log.md,
//! seventh session).
//!
//! This is a VFS shim: a copy of SQLite's default VFS (`unix`) whose `xOpen` hands every
//! file but a WAL straight to the default VFS, and wraps a WAL so that the frames SQLite
//! appends are held in memory and written in one call, as soon as the frame carrying the
//! transaction's commit mark is complete (or the buffer is full). Only the append
//! connection (`sqlite_append.rs`) opens it; every other connection, and every byte's
//! meaning in the files, is SQLite's own.
//!
//! Why this is safe, whatever `synchronous` says:
//! - The file sees every byte in the order SQLite wrote it. Only whole frames appended
//!   at their place in the log are held (a 24-byte header where a frame starts, then a
//!   page right behind it; the page size is learned from the first frame, which goes to
//!   the file as it comes). Any other write (the WAL's header after a restart, a page
//!   overwritten in place, checksums rewritten, a frame split at a sector boundary)
//!   first writes out what is held, then goes to the file directly.
//! - A commit is in the file before anyone can see it. SQLite publishes a commit in the
//!   wal-index (shared memory, no VFS call) right after its last frame, so the shim
//!   writes out what it holds when the commit frame's page arrives: padding frames carry
//!   the mark too, and rewritten checksums and split frames go straight to the file.
//! - This connection never reads, syncs, truncates or sizes the WAL past a held byte:
//!   each of those writes out what is held first. A failed write is reported by the
//!   call that made it, and SQLite rolls the transaction back.
//!
//! Registered on first use, after SQLite initialized (`sqlite_page_cache.rs` must come
//! first); if registration fails the append connection opens on the default VFS:
//! slower commits, same results.

#[cfg(test)]
use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the append connection opens the shim by.
const VFS_NAME: &CStr = c"backchannel-wal-writes";
/// Most bytes held before they are written: 31 frames of 4 KiB pages, a whole commit at
/// light load. It is also the most the `unix` VFS writes in one call (`seekAndWriteFd`
/// masks the length with `0x1ffff`; a longer write fails as a full disk).
const HELD_BYTES: usize = 0x1ffff;
/// A WAL frame header's size, and where its commit mark (the database's size in pages
/// after the commit, 0 in other frames) sits in it (sqlite.org/walformat.html).
const FRAME_HEADER_BYTES: usize = 24;
const COMMIT_MARK: std::ops::Range<usize> = 4..8;
/// The WAL file's own header, before its first frame.
const WAL_HEADER_BYTES: i64 = 32;

/// The default VFS this one wraps, and this one, once registered.
static VFS: OnceLock<Option<Registered>> = OnceLock::new();

struct Registered {
    default: *mut ffi::sqlite3_vfs,
}

// SAFETY: the pointer is to the default VFS, a static struct in SQLite that is never
// freed; SQLite calls a VFS's methods from any thread.
unsafe impl Send for Registered {}
unsafe impl Sync for Registered {}

#[cfg(test)]
thread_local! {
    /// Writes this thread made to WAL files through the shim, for the tests.
    static WAL_WRITE_CALLS: Cell<u64> = const { Cell::new(0) };
}

/// The name of the shim, registering it on the first call; `None` if it could not be
/// registered (the caller then opens on the default VFS).
pub(super) fn vfs_name() -> Option<&'static str> {
    let registered = VFS.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS (initializing SQLite
        // if needed). The copy keeps its methods and `pAppData` (which `unix` reads its
        // locking style from) and replaces only the name, the file size and `xOpen`;
        // it is leaked, so it outlives every connection, as SQLite requires of a
        // registered VFS.
        unsafe {
            let default = ffi::sqlite3_vfs_find(ptr::null());
            if default.is_null() || (*default).xOpen.is_none() {
                return None;
            }
            let mut vfs = *default;
            vfs.zName = VFS_NAME.as_ptr();
            vfs.pNext = ptr::null_mut();
            vfs.szOsFile = c_int::try_from(INNER_OFFSET).ok()? + (*default).szOsFile;
            vfs.xOpen = Some(open);
            let vfs: &'static mut ffi::sqlite3_vfs = Box::leak(Box::new(vfs));
            if ffi::sqlite3_vfs_register(vfs, 0) != ffi::SQLITE_OK {
                tracing::warn!(
                    "cannot register SQLite's WAL write shim: appends write frames one by one"
                );
                return None;
            }
            Some(Registered { default })
        }
    });
    registered.as_ref().map(|_| {
        VFS_NAME
            .to_str()
            .expect("the VFS name is a constant ASCII string")
    })
}

/// The writes this thread made to WAL files through the shim so far.
#[cfg(test)]
fn wal_write_calls() -> u64 {
    WAL_WRITE_CALLS.with(Cell::get)
}

/// A WAL file opened through the shim: SQLite's handle, what is held, and the default
/// VFS's own file (at [`INNER_OFFSET`], in the same allocation).
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    held: Held,
}

/// Where the default VFS's file starts inside a [`WalFile`]'s allocation.
const INNER_OFFSET: usize = std::mem::size_of::<WalFile>().next_multiple_of(16);

/// Frames appended and not yet written.
struct Held {
    bytes: Vec<u8>,
    /// The file offset of `bytes[0]`.
    start: i64,
    /// One past the last byte written or held: where an append goes.
    end: i64,
    /// What the next append is.
    next: Next,
    /// The log's page size, learned from its first frame written through this handle (a
    /// header, then a page right behind it): only whole frames, at a frame's place in
    /// the log, are held.
    page_size: Option<usize>,
    /// Where the last header written straight to the file ended, to learn the page size
    /// from the write that follows it.
    direct_header_end: Option<i64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A frame's header.
    Header,
    /// The page of the header just held; `commit` if that header carries the mark.
    Page { commit: bool },
}

impl Held {
    /// Writes out what is held, in one call.
    ///
    /// # Safety
    /// `inner` is an open file of the default VFS.
    unsafe fn write_out(&mut self, inner: *mut ffi::sqlite3_file) -> c_int {
        self.next = Next::Header;
        if self.bytes.is_empty() {
            return ffi::SQLITE_OK;
        }
        let rc = write_to(inner, &self.bytes, self.start);
        // Written or failed, it is no longer held: a failed write fails the transaction,
        // and SQLite writes its frames again.
        self.bytes.clear();
        rc
    }

    /// Holds an append at `offset` (which is `self.end`).
    fn hold(&mut self, data: &[u8], offset: i64) {
        if self.bytes.is_empty() {
            self.start = offset;
            self.bytes.reserve(HELD_BYTES);
        }
        self.bytes.extend_from_slice(data);
        self.end = offset + data.len() as i64;
    }
}

/// One write to the default VFS's file.
///
/// # Safety
/// `inner` is an open file of the default VFS.
unsafe fn write_to(inner: *mut ffi::sqlite3_file, data: &[u8], offset: i64) -> c_int {
    #[cfg(test)]
    WAL_WRITE_CALLS.with(|calls| calls.set(calls.get() + 1));
    let Ok(amount) = c_int::try_from(data.len()) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    match (*(*inner).pMethods).xWrite {
        Some(write) => write(inner, data.as_ptr().cast(), amount, offset),
        None => ffi::SQLITE_IOERR_WRITE,
    }
}

/// The held frames and the default VFS's file of a WAL opened through the shim.
///
/// # Safety
/// `file` was opened by [`open`] with the WAL's io methods, and not closed.
unsafe fn parts<'a>(file: *mut ffi::sqlite3_file) -> (&'a mut Held, *mut ffi::sqlite3_file) {
    let wal = file.cast::<WalFile>();
    let inner = file
        .cast::<u8>()
        .add(INNER_OFFSET)
        .cast::<ffi::sqlite3_file>();
    (&mut (*wal).held, inner)
}

/// The default VFS's methods for `inner`.
///
/// # Safety
/// `inner` is an open file of the default VFS (its methods are set).
unsafe fn methods<'a>(inner: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    &*(*inner).pMethods
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(Some(registered)) = VFS.get() else {
        return ffi::SQLITE_CANTOPEN;
    };
    let default = registered.default;
    let Some(default_open) = (*default).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Not a WAL: the default VFS's own file, in the same memory.
        return default_open(default, name, file, flags, out_flags);
    }
    let wal = file.cast::<WalFile>();
    let inner = file
        .cast::<u8>()
        .add(INNER_OFFSET)
        .cast::<ffi::sqlite3_file>();
    let rc = default_open(default, name, inner, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        // SQLite closes only what has methods: the inner file is ours to close.
        if !(*inner).pMethods.is_null() {
            if let Some(close) = methods(inner).xClose {
                close(inner);
            }
        }
        (*file).pMethods = ptr::null();
        return rc;
    }
    ptr::write(
        ptr::addr_of_mut!((*wal).held),
        Held {
            bytes: Vec::new(),
            start: 0,
            end: 0,
            next: Next::Header,
            page_size: None,
            direct_header_end: None,
        },
    );
    (*file).pMethods = &WAL_METHODS;
    ffi::SQLITE_OK
}

/// A WAL's methods: writes held as described in the module, the rest the default VFS's
/// after writing out what is held.
///
/// Safety of the functions below: SQLite calls them only with a file whose methods are
/// these, which [`open`] sets after initializing the file's [`Held`] and opening the
/// default VFS's file behind it; `wal_close` is the last call, and it drops both. A
/// connection's calls on a file come from one thread at a time (SQLite's own mutex).
static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(wal_sector_size),
    xDeviceCharacteristics: Some(wal_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn wal_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let (held, inner) = parts(file);
    let Ok(length) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let data = std::slice::from_raw_parts(data.cast::<u8>(), length);
    let appended = offset == held.end;
    match (held.next, held.page_size) {
        (Next::Header, Some(page_size))
            if appended && length == FRAME_HEADER_BYTES && is_frame_start(offset, page_size) =>
        {
            // A frame is written out whole: if it would not fit with its page, what is
            // held goes first.
            if held.bytes.len() + FRAME_HEADER_BYTES + page_size > HELD_BYTES {
                let rc = held.write_out(inner);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
            }
            let commit = data[COMMIT_MARK] != [0; 4];
            held.hold(data, offset);
            held.next = Next::Page { commit };
            ffi::SQLITE_OK
        }
        (Next::Page { commit }, Some(page_size)) if appended && length == page_size => {
            held.hold(data, offset);
            held.next = Next::Header;
            if commit {
                held.write_out(inner)
            } else {
                ffi::SQLITE_OK
            }
        }
        _ => {
            // Not a whole frame appended at its place: what is held, then this, go to
            // the file as they are.
            let rc = held.write_out(inner);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let rc = write_to(inner, data, offset);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            if length == FRAME_HEADER_BYTES {
                held.direct_header_end = Some(offset + i64::from(amount));
            } else {
                if held.page_size.is_none()
                    && held.direct_header_end == Some(offset)
                    && is_page_size(length)
                {
                    held.page_size = Some(length);
                }
                held.direct_header_end = None;
            }
            held.end = if offset == 0 {
                // The WAL's header: the log starts over after it.
                offset + i64::from(amount)
            } else {
                held.end.max(offset + i64::from(amount))
            };
            ffi::SQLITE_OK
        }
    }
}

/// Whether a frame of the log starts at `offset`.
fn is_frame_start(offset: i64, page_size: usize) -> bool {
    let frame = (FRAME_HEADER_BYTES + page_size) as i64;
    offset >= WAL_HEADER_BYTES && (offset - WAL_HEADER_BYTES) % frame == 0
}

/// Whether `length` is a page size SQLite allows.
fn is_page_size(length: usize) -> bool {
    length.is_power_of_two() && (512..=65536).contains(&length)
}

unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    let (held, inner) = parts(file);
    let written = held.write_out(inner);
    let closed = match methods(inner).xClose {
        Some(close) => close(inner),
        None => ffi::SQLITE_OK,
    };
    ptr::drop_in_place(held);
    (*file).pMethods = ptr::null();
    if written != ffi::SQLITE_OK {
        written
    } else {
        closed
    }
}

unsafe extern "C" fn wal_read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let (held, inner) = parts(file);
    let rc = held.write_out(inner);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    match methods(inner).xRead {
        Some(read) => read(inner, data, amount, offset),
        None => ffi::SQLITE_IOERR_READ,
    }
}

unsafe extern "C" fn wal_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let (held, inner) = parts(file);
    let rc = held.write_out(inner);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    held.end = held.end.min(size);
    match methods(inner).xTruncate {
        Some(truncate) => truncate(inner, size),
        None => ffi::SQLITE_IOERR_TRUNCATE,
    }
}

unsafe extern "C" fn wal_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let (held, inner) = parts(file);
    let rc = held.write_out(inner);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    match methods(inner).xSync {
        Some(sync) => sync(inner, flags),
        None => ffi::SQLITE_IOERR_FSYNC,
    }
}

unsafe extern "C" fn wal_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    let (held, inner) = parts(file);
    let rc = held.write_out(inner);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    match methods(inner).xFileSize {
        Some(file_size) => file_size(inner, size),
        None => ffi::SQLITE_IOERR_FSTAT,
    }
}

unsafe extern "C" fn wal_lock(file: *mut ffi::sqlite3_file, lock: c_int) -> c_int {
    let (_, inner) = parts(file);
    match methods(inner).xLock {
        Some(f) => f(inner, lock),
        None => ffi::SQLITE_IOERR_LOCK,
    }
}

unsafe extern "C" fn wal_unlock(file: *mut ffi::sqlite3_file, lock: c_int) -> c_int {
    let (_, inner) = parts(file);
    match methods(inner).xUnlock {
        Some(f) => f(inner, lock),
        None => ffi::SQLITE_IOERR_UNLOCK,
    }
}

unsafe extern "C" fn wal_check_reserved_lock(
    file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    let (_, inner) = parts(file);
    match methods(inner).xCheckReservedLock {
        Some(f) => f(inner, out),
        None => ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
    }
}

unsafe extern "C" fn wal_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    let (held, inner) = parts(file);
    // Whatever the control looks at (size hints, the file's state), it sees the file as
    // SQLite wrote it.
    let rc = held.write_out(inner);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    match methods(inner).xFileControl {
        Some(f) => f(inner, op, arg),
        None => ffi::SQLITE_NOTFOUND,
    }
}

unsafe extern "C" fn wal_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, inner) = parts(file);
    match methods(inner).xSectorSize {
        Some(f) => f(inner),
        None => 4096,
    }
}

unsafe extern "C" fn wal_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, inner) = parts(file);
    match methods(inner).xDeviceCharacteristics {
        Some(f) => f(inner),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};
    use std::path::Path;

    /// A connection through the shim, in WAL mode, with `synchronous` as given.
    fn writer(path: &Path, synchronous: &str) -> Connection {
        let name = vfs_name().expect("the shim registers");
        let connection = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), name)
            .expect("open through the shim");
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .expect("WAL");
        connection
            .pragma_update(None, "synchronous", synchronous)
            .expect("synchronous");
        connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .expect("no automatic checkpoints");
        connection
            .execute_batch("CREATE TABLE IF NOT EXISTS t (i INTEGER PRIMARY KEY, b BLOB NOT NULL)")
            .expect("table");
        connection
    }

    /// What a connection on the default VFS sees: rows, total blob bytes, and whether
    /// every blob holds the byte its row's number says.
    fn seen(reader: &Connection) -> (i64, i64, bool) {
        reader
            .query_row(
                "SELECT count(*), coalesce(sum(length(b)), 0), \
                 coalesce(min(b = zeroblob(length(b)) OR hex(substr(b, 1, 1)) = printf('%02X', i % 256)), 1) \
                 FROM t",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .expect("read")
    }

    /// Commits `rounds` transactions of 1–7 rows of 300–4,300 bytes through `connection`,
    /// and checks after each that `reader` sees every row, whole.
    fn commit_and_read_back(connection: &Connection, reader: &Connection, rounds: i64) {
        let mut rows = 0;
        for round in 0..rounds {
            let added = 1 + round % 7;
            connection.execute_batch("BEGIN").expect("begin");
            insert(connection, rows, added, 300 + (round as usize % 9) * 500);
            connection.execute_batch("COMMIT").expect("commit");
            rows += added;
            let (count, _, intact) = seen(reader);
            assert_eq!((count, intact), (rows, true), "after commit {round}");
        }
    }

    fn assert_intact(connection: &Connection) {
        let check: String = connection
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("integrity check");
        assert_eq!(check, "ok");
    }

    fn insert(connection: &Connection, from: i64, rows: i64, size: usize) {
        let mut statement = connection
            .prepare_cached("INSERT INTO t (i, b) VALUES (?1, ?2)")
            .expect("prepare");
        for i in from..from + rows {
            statement
                .execute(rusqlite::params![i, vec![(i % 256) as u8; size]])
                .expect("insert");
        }
    }

    #[test]
    fn a_transactions_frames_reach_the_file_in_one_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite3");
        let connection = writer(&path, "FULL");
        insert(&connection, 0, 1, 10);
        let wal_bytes = || {
            std::fs::metadata(dir.path().join("db.sqlite3-wal"))
                .expect("the WAL")
                .len()
        };
        let bytes_before = wal_bytes();
        let calls_before = wal_write_calls();
        connection.execute_batch("BEGIN").expect("begin");
        insert(&connection, 1, 60, 3000);
        connection.execute_batch("COMMIT").expect("commit");
        let calls = wal_write_calls() - calls_before;
        let frame_bytes = (FRAME_HEADER_BYTES + 4096) as u64;
        let frames = (wal_bytes() - bytes_before) / frame_bytes;
        // 60 rows of 3,000 bytes are ~60 pages. SQLite alone writes them in twice as many
        // calls as it has frames; held, they go 31 frames (128 KiB) to a call.
        assert!(frames >= 50, "{frames} frames in the commit");
        let frames_per_call = HELD_BYTES as u64 / frame_bytes;
        assert_eq!(
            calls,
            frames.div_ceil(frames_per_call),
            "writes for a commit of {frames} frames"
        );
        let reader = Connection::open(&path).expect("reader");
        assert_eq!(seen(&reader), (61, 10 + 60 * 3000, true));
    }

    #[test]
    fn every_commit_is_in_the_file_before_another_connection_can_see_it() {
        // With `synchronous=OFF` nothing syncs the WAL: only the shim's rule (write out
        // at the commit frame) puts the frames in the file before SQLite publishes them.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite3");
        let connection = writer(&path, "OFF");
        let reader = Connection::open(&path).expect("reader");
        commit_and_read_back(&connection, &reader, 200);
        assert_intact(&reader);
    }

    #[test]
    fn spilled_rewritten_and_rolled_back_frames_leave_a_log_that_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite3");
        let connection = writer(&path, "OFF");
        // A page cache of a few pages makes a large transaction spill frames into the
        // WAL before its commit, and write some of them again in place.
        connection
            .pragma_update(None, "cache_size", 4)
            .expect("cache size");
        let reader = Connection::open(&path).expect("reader");

        connection.execute_batch("BEGIN").expect("begin");
        insert(&connection, 0, 300, 700);
        connection
            .execute("UPDATE t SET b = zeroblob(10) WHERE i < 40", [])
            .expect("update spilled pages");
        connection.execute_batch("COMMIT").expect("commit");
        assert_eq!(seen(&reader), (300, 40 * 10 + 260 * 700, true));

        connection.execute_batch("BEGIN").expect("begin");
        insert(&connection, 300, 300, 700);
        connection.execute_batch("ROLLBACK").expect("rollback");
        assert_eq!(seen(&reader), (300, 40 * 10 + 260 * 700, true));

        connection.execute_batch("BEGIN").expect("begin");
        insert(&connection, 300, 20, 700);
        connection.execute_batch("COMMIT").expect("commit");
        assert_eq!(seen(&reader), (320, 40 * 10 + 280 * 700, true));

        // A copy of the files without the wal-index makes SQLite recover from the WAL
        // alone, checking every frame's checksum: each commit must be there, whole.
        let copy = tempfile::tempdir().expect("tempdir");
        std::fs::copy(&path, copy.path().join("db.sqlite3")).expect("copy database");
        std::fs::copy(
            dir.path().join("db.sqlite3-wal"),
            copy.path().join("db.sqlite3-wal"),
        )
        .expect("copy WAL");
        let recovered = Connection::open(copy.path().join("db.sqlite3")).expect("open copy");
        assert_eq!(seen(&recovered), (320, 40 * 10 + 280 * 700, true));
        assert_intact(&recovered);
    }

    #[test]
    fn padded_and_split_commits_are_whole_when_published() {
        // Without power-safe overwrite SQLite pads each commit with copies of its last
        // frame up to a sector boundary and splits the frame that crosses it around the
        // sync: neither the padding nor the split parts may stay held.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite3");
        let uri = format!("file:{}?psow=0", path.display());
        let connection = writer(Path::new(&uri), "FULL");
        let reader = Connection::open(&path).expect("reader");
        commit_and_read_back(&connection, &reader, 100);
    }
}
