//! The shared-directory pool: a POSIX directory mounted on every node (a parallel file system
//! such as WEKA, 3FS, Lustre, CephFS, or NFS over RDMA) holds one file per block object. No
//! kvtier server is involved: every agent writes and reads the directory itself.
//!
//! - Write: the record goes to `tmp/<key>.<pid>.<n>` with O_DIRECT (where the file system
//!   allows), optionally `fdatasync`ed, then is renamed to `objects/<k0k1>/<key>`. Readers see a
//!   whole object or none; two writers of the same key race harmlessly (same bytes, last rename
//!   wins).
//! - Read: the file is read whole and verified (header, key, payload checksum). A file that
//!   fails is removed and counted: a miss, never wrong bytes.
//! - Capacity: each process tracks the directory's size from a scan plus what it wrote since;
//!   past the bound it rescans and deletes the least recently used files (by access time, which
//!   reads set explicitly, so `noatime` mounts work too) down to 90 % of the bound. Deleting a
//!   file another node is reading is safe: its open descriptor keeps the bytes.
//! - Left-over temporary files (a writer that crashed mid-write) older than ten minutes are
//!   removed when a store opens.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::backend::PoolBackend;
use kvtier_core::block::verify_record;
use kvtier_core::block::{BlockHeader, VerifyError};
use kvtier_core::buf::ALIGN;
use kvtier_core::error::{Error, Result};
use kvtier_core::key::BlockKey;
use kvtier_core::metrics::{StoreCounters, StoreStats};
use kvtier_core::tier::io::open_file;
use kvtier_core::tier::segment::Durability;

/// Configuration of a [`SharedDirStore`].
#[derive(Debug, Clone)]
pub struct SharedDirConfig {
    /// The shared directory (the same path on every node).
    pub dir: PathBuf,
    /// Bound on the bytes of object files. Default 64 GiB.
    pub capacity_bytes: u64,
    /// O_DIRECT where the file system allows. Default `true`.
    pub direct_io: bool,
    /// `Synced`: `fdatasync` before the rename. Default `Written`.
    pub durability: Durability,
    /// Create the directory if missing. Default `false` (catches an unmounted path).
    pub create_dir: bool,
}

impl SharedDirConfig {
    /// Checks the values; the error names the bad field (see [`Error::bad_field`]).
    pub fn validate(&self) -> Result<()> {
        if self.capacity_bytes < ALIGN as u64 {
            return Err(Error::bad_field(
                "shared directory",
                "capacity_bytes",
                format!(
                    "{} bytes; the shared directory needs room (at least 4096)",
                    self.capacity_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SharedDirConfig {
            dir: dir.into(),
            capacity_bytes: 64 << 30,
            direct_io: true,
            durability: Durability::Written,
            create_dir: false,
        }
    }
}

/// A pool backend on a shared directory.
pub struct SharedDirStore {
    cfg: SharedDirConfig,
    objects: PathBuf,
    tmp: PathBuf,
    /// Estimated bytes of object files (last scan plus our writes since).
    used: AtomicU64,
    evicting: AtomicBool,
    seq: AtomicU64,
    scan_lock: Mutex<()>,
    counters: StoreCounters,
}

impl std::fmt::Debug for SharedDirStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDirStore")
            .field("dir", &self.cfg.dir)
            .finish()
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(what.to_string(), e).with_context("path", path.display())
}

impl SharedDirStore {
    /// Opens the directory (creating `objects/` and `tmp/` inside), sizes what is there and
    /// removes stale temporary files.
    pub fn open(cfg: SharedDirConfig) -> Result<SharedDirStore> {
        cfg.validate()?;
        match std::fs::metadata(&cfg.dir) {
            Ok(m) if !m.is_dir() => {
                return Err(Error::invalid("the shared pool path is not a directory")
                    .with_context("path", cfg.dir.display()))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && cfg.create_dir => {
                std::fs::create_dir_all(&cfg.dir)
                    .map_err(|e| io_err("creating the shared pool directory", &cfg.dir, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::new(
                    kvtier_core::ErrorKind::NotFound,
                    "the shared pool directory does not exist (is the file system mounted? set `create_dir` to create it)",
                )
                .with_context("path", cfg.dir.display()))
            }
            Err(e) => return Err(io_err("reading the shared pool directory", &cfg.dir, e)),
        }
        let objects = cfg.dir.join("objects");
        let tmp = cfg.dir.join("tmp");
        for d in [&objects, &tmp] {
            std::fs::create_dir_all(d).map_err(|e| io_err("creating a pool subdirectory", d, e))?;
        }
        let store = SharedDirStore {
            cfg,
            objects,
            tmp,
            used: AtomicU64::new(0),
            evicting: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            scan_lock: Mutex::new(()),
            counters: StoreCounters::default(),
        };
        store.clean_tmp();
        let files = store.scan();
        store
            .used
            .store(files.iter().map(|f| f.size).sum(), Ordering::Relaxed);
        Ok(store)
    }

    fn path_of(&self, key: BlockKey) -> PathBuf {
        let hex = key.to_string();
        self.objects.join(&hex[..2]).join(hex)
    }

    fn clean_tmp(&self) {
        let Ok(rd) = std::fs::read_dir(&self.tmp) else {
            return;
        };
        let cutoff = SystemTime::now() - Duration::from_secs(600);
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                if m.modified().is_ok_and(|t| t < cutoff) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Every object file: path, size, access time.
    fn scan(&self) -> Vec<FileInfo> {
        let mut out = Vec::new();
        let Ok(shards) = std::fs::read_dir(&self.objects) else {
            return out;
        };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                if let Ok(m) = f.metadata() {
                    out.push(FileInfo {
                        path: f.path(),
                        size: m.len(),
                        atime: (m.atime(), m.atime_nsec()),
                    });
                }
            }
        }
        out
    }

    /// Deletes least recently used files until the directory is at 90 % of its bound.
    fn evict(&self) {
        if self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let _g = self.scan_lock.lock();
        let mut files = self.scan();
        let mut total: u64 = files.iter().map(|f| f.size).sum();
        let target = self.cfg.capacity_bytes / 10 * 9;
        if total > self.cfg.capacity_bytes {
            files.sort_by_key(|f| f.atime);
            for f in files {
                if total <= target {
                    break;
                }
                if std::fs::remove_file(&f.path).is_ok() {
                    self.counters.evictions.inc();
                }
                // Gone either way (another node may have evicted it first).
                total = total.saturating_sub(f.size);
            }
        }
        self.used.store(total, Ordering::Relaxed);
        self.evicting.store(false, Ordering::Release);
    }

    /// Bytes of object files as this process last counted them.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts files and bytes now (a directory scan).
    pub fn scan_usage(&self) -> (usize, u64) {
        let files = self.scan();
        (files.len(), files.iter().map(|f| f.size).sum())
    }

    /// Objects that failed verification, by reason.
    pub fn corrupt_count(&self, reason: VerifyError) -> u64 {
        self.counters.corrupt.get(reason)
    }

    /// Removes `key`'s file. True if it existed.
    pub fn remove(&self, key: BlockKey) -> bool {
        std::fs::remove_file(self.path_of(key)).is_ok()
    }

    fn write_tmp(&self, tmp: &Path, record: &[u8]) -> Result<()> {
        let (f, direct) = open_file(tmp, true, true, self.cfg.direct_io)
            .map_err(|e| io_err("creating a pool object file", tmp, e))?;
        debug_assert!(!direct || record.len() % ALIGN == 0);
        f.write_all_at(record, 0)
            .map_err(|e| io_err("writing a pool object file", tmp, e))?;
        if self.cfg.durability == Durability::Synced {
            f.sync_data()
                .map_err(|e| io_err("syncing a pool object file", tmp, e))?;
        }
        Ok(())
    }
}

struct FileInfo {
    path: PathBuf,
    size: u64,
    atime: (i64, i64),
}

impl PoolBackend for SharedDirStore {
    fn kind(&self) -> &'static str {
        "shared-dir"
    }

    fn put_record(&self, record: &[u8]) -> Result<()> {
        let h = BlockHeader::decode(record).map_err(Error::from)?;
        let len = h.record_len();
        if record.len() < len || record.as_ptr() as usize % ALIGN != 0 {
            return Err(Error::invalid(
                "a record must be page-aligned and hold its whole payload",
            ));
        }
        let key = h.key();
        let dst = self.path_of(key);
        let tmp = self.tmp.join(format!(
            "{key}.{}.{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        if let Err(e) = self.write_tmp(&tmp, &record[..len]) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let parent = dst.parent().expect("objects/<shard>/<key>");
        let renamed = std::fs::rename(&tmp, &dst).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                std::fs::create_dir_all(parent)?;
                std::fs::rename(&tmp, &dst)
            } else {
                Err(e)
            }
        });
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err("renaming a pool object into place", &dst, e));
        }
        self.counters.puts.inc();
        self.counters.bytes_in.add(h.payload_len());
        if self.used.fetch_add(len as u64, Ordering::Relaxed) + len as u64 > self.cfg.capacity_bytes
        {
            self.evict();
        }
        Ok(())
    }

    fn get_into_slice(&self, key: BlockKey, buf: &mut [u8]) -> Result<Option<BlockHeader>> {
        let path = self.path_of(key);
        let (f, _) = match open_file(&path, false, false, self.cfg.direct_io) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.counters.misses.inc();
                return Ok(None);
            }
            Err(e) => return Err(io_err("opening a pool object file", &path, e)),
        };
        let len = f
            .metadata()
            .map_err(|e| io_err("reading a pool object file's size", &path, e))?
            .len() as usize;
        if buf.len() < len || buf.as_ptr() as usize % ALIGN != 0 {
            self.counters.misses.inc();
            return Err(Error::invalid(format!(
                "read buffer of {} bytes (page-aligned: {}) for a {len}-byte object file",
                buf.len(),
                buf.as_ptr() as usize % ALIGN == 0
            ))
            .with_context("path", path.display()));
        }
        let verdict = match read_full(&f, &mut buf[..len]) {
            Ok(()) => verify_record(&buf[..len], Some(key), None),
            Err(e) if is_short(&e) => Err(VerifyError::Length),
            // EIO, ESTALE (a file server's hiccup): a miss now, the object kept for later.
            Err(e) => {
                self.counters.misses.inc();
                return Err(io_err("reading a pool object file", &path, e));
            }
        };
        match verdict {
            Ok(h) if h.record_len() == len => {
                touch_atime(&f);
                self.counters.hits.inc();
                self.counters.bytes_out.add(h.payload_len());
                Ok(Some(h))
            }
            Ok(_) => self.drop_corrupt(key, &path, VerifyError::Length),
            Err(reason) => self.drop_corrupt(key, &path, reason),
        }
    }

    fn contains(&self, key: BlockKey) -> bool {
        self.path_of(key).exists()
    }

    fn stats(&self) -> StoreStats {
        self.counters
            .snapshot(0, self.used_bytes(), self.cfg.capacity_bytes)
    }
}

impl SharedDirStore {
    fn drop_corrupt(
        &self,
        key: BlockKey,
        path: &Path,
        reason: VerifyError,
    ) -> Result<Option<BlockHeader>> {
        self.counters.corrupt.record(reason);
        self.counters.misses.inc();
        tracing::warn!(%key, path = %path.display(), reason = reason.as_str(), "removing a corrupt pool object file");
        let _ = std::fs::remove_file(path);
        Ok(None)
    }
}

/// Whether a failed read means the file itself is short (truncated: corrupt, removed), as
/// opposed to the file system failing (EIO, ESTALE, ...: the object may be fine).
fn is_short(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::UnexpectedEof
}

fn read_full(f: &File, buf: &mut [u8]) -> std::io::Result<()> {
    f.read_exact_at(buf, 0)
}

/// Marks a file as just used (access time only), for eviction order.
fn touch_atime(f: &File) {
    use std::os::fd::AsRawFd;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    // SAFETY: a valid descriptor and a two-element array, as futimens requires.
    unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) };
}

#[cfg(test)]
mod tests {
    use super::is_short;
    use std::io::{Error, ErrorKind};

    #[test]
    fn only_a_short_file_is_corrupt_not_a_failing_file_system() {
        assert!(is_short(&Error::from(ErrorKind::UnexpectedEof)));
        for errno in [libc::EIO, libc::ESTALE, libc::EINTR, libc::ENOMEM] {
            assert!(!is_short(&Error::from_raw_os_error(errno)), "errno {errno}");
        }
    }
}
