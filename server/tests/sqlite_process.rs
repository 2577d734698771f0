//! SQLite's process-wide settings (`configure_process` in `server/src/store/sqlite.rs`) in
//! a process of their own: they can only be made before SQLite initializes, which the
//! other test binaries (storage, end-to-end) may already have done in theirs. Every test
//! here configures first, as the server does before its first connection.
//!
//! Memory statistics are off: SQLite no longer counts (under a process-wide mutex) what
//! it allocates. Nor is the bundled SQLite built with memory management, which would put
//! every connection's page cache behind one more (`.cargo/config.toml`).
//!
//! The relabelling page cache (`server/src/store/sqlite_page_cache.rs`): SQLite's
//! balance of a split B-tree parks pages at the lock-byte page's number while it
//! renumbers them; the cache relabels that key. Data written through it, with many such
//! renumberings, must read back exactly, pass SQLite's integrity check, and survive a
//! reopen.

use std::collections::BTreeMap;

use backchannel::store::{sqlite, sqlite_page_cache};
use rand::Rng;
use rusqlite::Connection;

#[test]
fn memory_statistics_are_off() {
    assert!(
        sqlite::configure_process(),
        "configured before the process's first SQLite connection"
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = Connection::open(dir.path().join("memory.db")).expect("open");
    db.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, value TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO items (value) SELECT hex(randomblob(100)) FROM n;",
    )
    .expect("rows written");
    let count: i64 = db
        .query_row("SELECT count(*) FROM items", [], |row| row.get(0))
        .expect("count");
    assert_eq!(count, 1000);
    // SAFETY: a plain read of SQLite's counter.
    let counted = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    assert_eq!(
        counted, 0,
        "with statistics on, SQLite counts every allocation (it holds a page cache and \
         a schema here)"
    );
}

#[test]
fn page_caches_are_per_connection_without_a_shared_mutex() {
    // SAFETY: a plain read of a compile-time option, given a NUL-terminated name.
    let used =
        unsafe { rusqlite::ffi::sqlite3_compileoption_used(c"ENABLE_MEMORY_MANAGEMENT".as_ptr()) };
    assert_eq!(
        used, 0,
        "SQLite was built with SQLITE_ENABLE_MEMORY_MANAGEMENT: every page fetch on the \
         append thread takes the page caches' shared mutex (LIBSQLITE3_FLAGS in \
         .cargo/config.toml undefines it)"
    );
}

#[test]
fn pages_parked_during_splits_are_relabelled_and_every_row_reads_back() {
    assert!(
        sqlite::configure_process(),
        "configured before the process's first SQLite connection"
    );
    assert!(sqlite_page_cache::install(), "installing again is a no-op");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("pages.db");
    let mut written = BTreeMap::new();
    {
        let mut db = Connection::open(&path).expect("open");
        db.pragma_update(None, "journal_mode", "WAL").expect("wal");
        // A small cache, so pages are also evicted and read back while swapped.
        db.pragma_update(None, "cache_size", 64)
            .expect("cache size");
        db.execute_batch(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, key TEXT NOT NULL, value TEXT NOT NULL);
             CREATE UNIQUE INDEX items_key ON items (key);",
        )
        .expect("schema");
        let mut rng = rand::rng();
        // Random keys land in the middle of the index: splits everywhere, and sibling
        // pages allocated out of order, which is what SQLite renumbers.
        for batch in 0..400 {
            let tx = db.transaction().expect("begin");
            for i in 0..50 {
                let key = format!("{:016x}", rng.random::<u64>());
                let value = format!("{batch}-{i}-{}", "v".repeat(rng.random_range(0..200)));
                tx.execute(
                    "INSERT INTO items (key, value) VALUES (?1, ?2)",
                    (&key, &value),
                )
                .expect("insert");
                written.insert(key, value);
            }
            // Some rows go again, so pages also empty and merge.
            if batch % 10 == 9 {
                let doomed: Vec<String> = written.keys().step_by(7).take(100).cloned().collect();
                for key in doomed {
                    tx.execute("DELETE FROM items WHERE key = ?1", [&key])
                        .expect("delete");
                    written.remove(&key);
                }
            }
            tx.commit().expect("commit");
        }
        assert_integrity(&db);
        assert_eq!(read_all(&db), written, "every row as written");
    }
    assert!(
        sqlite_page_cache::parked_pages() > 0,
        "SQLite renumbered split pages through the cache (otherwise this test proves nothing)"
    );

    // From a cold cache, in a new connection.
    let db = Connection::open(&path).expect("reopen");
    assert_integrity(&db);
    assert_eq!(read_all(&db), written, "every row after reopening");
}

fn assert_integrity(db: &Connection) {
    let result: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    assert_eq!(result, "ok");
}

fn read_all(db: &Connection) -> BTreeMap<String, String> {
    let mut statement = db
        .prepare("SELECT key, value FROM items ORDER BY key")
        .expect("prepare");
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query");
    rows.map(|row| row.expect("row")).collect()
}
