//! SQLite's own page cache, with one of its keys relabelled so a commit does not scan the
//! whole cache.
//!
//! When a B-tree split leaves its new sibling pages out of order, SQLite renumbers them
//! (`balance_nonroot` in btree.c), parking one page for a moment at the lock-byte page's
//! number: the page at byte 1 GiB, 262,145 with 4 KiB pages, never a real page. The
//! default cache (pcache1) remembers the largest key it has seen since its last
//! truncation, and the truncation every commit does (drop the pages past the end of the
//! file) scans only the keys between the file's end and that largest one, or the whole
//! hash table when that range is wider than the table. One parked page makes it the
//! whole table: ~4,000 cached pages walked at nearly every commit, 5.5 % of the server's
//! CPU in `bc-load fanout` (docs/benchmarks.md).
//!
//! This layer hands SQLite pcache1 itself (SQLite's own methods, fetched with
//! `SQLITE_CONFIG_GETPCACHE2`), and swaps two keys on the way through: the lock-byte
//! page's number and 0. Neither is ever a real page (pages are numbered from 1), so the
//! swap relabels nothing real; the parked page sits at 0 for the moment it is parked,
//! below every truncation's limit, and the largest key stays near the end of the file.
//! Everything else passes through untouched.
//!
//! It must be installed before SQLite initializes (before any connection, rusqlite's or
//! sqlx's, is opened in the process); [`install`] is called by
//! [`super::sqlite::configure_process`], which [`super::sqlite::SqliteStore::open`] calls,
//! and does nothing after the first call. If SQLite was initialized already, it stays
//! on the plain cache: slower commits, same results.

use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_uint};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// SQLite's default page cache, which every call below ends in.
static DEFAULT: OnceLock<Methods> = OnceLock::new();

/// A page cache's methods, as SQLite hands them out.
struct Methods(ffi::sqlite3_pcache_methods2);

// SAFETY: the struct is function pointers and `pArg`, an argument SQLite passes only to
// `xInit` and `xShutdown` (null for its default cache). SQLite calls a page cache's
// methods from any thread and guards the cache's state with its own mutexes.
unsafe impl Send for Methods {}
unsafe impl Sync for Methods {}

/// Whether the relabelling cache is SQLite's page cache in this process.
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// How many times a page was parked at the lock-byte page's number, for the tests.
static PARKED: AtomicU64 = AtomicU64::new(0);

/// The byte whose page SQLite never uses (`PENDING_BYTE`; only SQLite's own test builds
/// move it).
const PENDING_BYTE: c_uint = 0x4000_0000;

/// One cache: pcache1's, and the key this cache's page size makes the lock-byte page.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    lock_byte_page: c_uint,
}

/// Installs the relabelling cache as SQLite's page cache, once per process. Returns
/// whether it is installed (false when SQLite had already been initialized).
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        // SAFETY: sqlite3_config is called with the argument type each option takes: a
        // pointer to a methods struct to fill (GETPCACHE2) or to copy (PCACHE2). Before
        // SQLite initializes both succeed; after, they return SQLITE_MISUSE and change
        // nothing. The struct passed to PCACHE2 is copied by SQLite.
        unsafe {
            let mut default = MaybeUninit::<ffi::sqlite3_pcache_methods2>::zeroed();
            if ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, default.as_mut_ptr())
                != ffi::SQLITE_OK
            {
                return false;
            }
            let default = default.assume_init();
            if default.xCreate.is_none()
                || default.xFetch.is_none()
                || default.xRekey.is_none()
                || default.xTruncate.is_none()
                || default.xDestroy.is_none()
            {
                return false;
            }
            let default = DEFAULT.get_or_init(|| Methods(default)).0;
            let methods = ffi::sqlite3_pcache_methods2 {
                iVersion: default.iVersion,
                pArg: default.pArg,
                xInit: default.xInit,
                xShutdown: default.xShutdown,
                xCreate: Some(create),
                xCachesize: Some(cachesize),
                xPagecount: Some(pagecount),
                xFetch: Some(fetch),
                xUnpin: Some(unpin),
                xRekey: Some(rekey),
                xTruncate: Some(truncate),
                xDestroy: Some(destroy),
                xShrink: Some(shrink),
            };
            let installed = ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PCACHE2,
                &methods as *const ffi::sqlite3_pcache_methods2,
            ) == ffi::SQLITE_OK;
            if !installed {
                tracing::debug!("SQLite was initialized already: its plain page cache stays");
            }
            installed
        }
    })
}

/// How many pages were parked at the lock-byte page's number (and relabelled) so far.
pub fn parked_pages() -> u64 {
    PARKED.load(Ordering::Relaxed)
}

/// SQLite's default methods. Set before the methods below are registered, so always
/// there when they are called; never a panic across the C boundary if it were not.
fn default() -> Option<&'static ffi::sqlite3_pcache_methods2> {
    DEFAULT.get().map(|methods| &methods.0)
}

/// The key pcache1 keeps `key` under: the lock-byte page's number and 0 trade places.
fn relabel(cache: &Cache, key: c_uint) -> c_uint {
    if key == cache.lock_byte_page {
        0
    } else if key == 0 {
        cache.lock_byte_page
    } else {
        key
    }
}

/// # Safety
/// `cache` is a pointer `create` returned and `destroy` has not freed.
unsafe fn cache<'a>(cache: *mut ffi::sqlite3_pcache) -> &'a Cache {
    &*cache.cast::<Cache>()
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let Some(create) = default().and_then(|d| d.xCreate) else {
        return std::ptr::null_mut();
    };
    let inner = create(page_size, extra, purgeable);
    if inner.is_null() {
        return inner;
    }
    let lock_byte_page = match c_uint::try_from(page_size) {
        Ok(size) if size > 0 => PENDING_BYTE / size + 1,
        // No page size, no lock-byte page: 0 then relabels nothing.
        _ => 0,
    };
    Box::into_raw(Box::new(Cache {
        inner,
        lock_byte_page,
    }))
    .cast()
}

unsafe extern "C" fn cachesize(c: *mut ffi::sqlite3_pcache, pages: c_int) {
    if let Some(f) = default().and_then(|d| d.xCachesize) {
        f(cache(c).inner, pages)
    }
}

unsafe extern "C" fn pagecount(c: *mut ffi::sqlite3_pcache) -> c_int {
    match default().and_then(|d| d.xPagecount) {
        Some(f) => f(cache(c).inner),
        None => 0,
    }
}

unsafe extern "C" fn fetch(
    c: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let c = cache(c);
    match default().and_then(|d| d.xFetch) {
        Some(f) => f(c.inner, relabel(c, key), create),
        None => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn unpin(
    c: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    if let Some(f) = default().and_then(|d| d.xUnpin) {
        f(cache(c).inner, page, discard)
    }
}

unsafe extern "C" fn rekey(
    c: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let c = cache(c);
    if new == c.lock_byte_page && new != 0 {
        PARKED.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(f) = default().and_then(|d| d.xRekey) {
        f(c.inner, page, relabel(c, old), relabel(c, new))
    }
}

unsafe extern "C" fn truncate(c: *mut ffi::sqlite3_pcache, limit: c_uint) {
    // Pages from `limit` on are dropped. The relabelled key is only ever held for the
    // moment of a swap, never across a truncation, so the limit passes as it is.
    if let Some(f) = default().and_then(|d| d.xTruncate) {
        f(cache(c).inner, limit)
    }
}

unsafe extern "C" fn destroy(c: *mut ffi::sqlite3_pcache) {
    let boxed = Box::from_raw(c.cast::<Cache>());
    if let Some(f) = default().and_then(|d| d.xDestroy) {
        f(boxed.inner)
    }
}

unsafe extern "C" fn shrink(c: *mut ffi::sqlite3_pcache) {
    if let Some(f) = default().and_then(|d| d.xShrink) {
        f(cache(c).inner)
    }
}
