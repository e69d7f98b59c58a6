//! Where bytes touch the disk: positioned reads and writes of aligned buffers, behind one small
//! trait so psync and io_uring are interchangeable and faults can be injected in tests.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use parking_lot::Mutex;

/// Positioned I/O on a file. Buffers and offsets passed by the stores are page-aligned, so the
/// same calls work on files opened with `O_DIRECT`. Implementations complete the whole buffer
/// or fail.
pub trait IoEngine: Send + Sync + 'static {
    /// Reads exactly `buf.len()` bytes at `offset`; a short file is `UnexpectedEof`.
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Reserves `len` bytes of disk for `file` (so later writes cannot hit ENOSPC).
    fn allocate(&self, file: &File, len: u64) -> std::io::Result<()> {
        // SAFETY: plain syscall on a valid fd.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    /// Makes written data durable (fdatasync).
    fn sync(&self, file: &File) -> std::io::Result<()> {
        file.sync_data()
    }
    /// A short name for logs and bench output (`psync`, `io_uring`).
    fn name(&self) -> &'static str;
}

/// `pread`/`pwrite`.
#[derive(Debug, Default)]
pub struct Psync;

impl IoEngine for Psync {
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        file.read_exact_at(buf, offset)
    }
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        file.write_all_at(buf, offset)
    }
    fn name(&self) -> &'static str {
        "psync"
    }
}

/// io_uring: one ring per concurrent caller, taken from a small pool.
pub struct Uring {
    rings: Mutex<Vec<io_uring::IoUring>>,
}

impl Uring {
    /// Creates a first ring to check that io_uring works here (kernels or sandboxes may
    /// forbid it).
    pub fn new() -> std::io::Result<Self> {
        let ring = io_uring::IoUring::new(8)?;
        Ok(Uring {
            rings: Mutex::new(vec![ring]),
        })
    }

    fn with_ring<T>(
        &self,
        f: impl FnOnce(&mut io_uring::IoUring) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let ring = self.rings.lock().pop();
        let mut ring = match ring {
            Some(r) => r,
            None => io_uring::IoUring::new(8)?,
        };
        let out = f(&mut ring);
        self.rings.lock().push(ring);
        out
    }

    fn rw(
        &self,
        file: &File,
        ptr: *mut u8,
        len: usize,
        offset: u64,
        write: bool,
    ) -> std::io::Result<()> {
        use io_uring::{opcode, types};
        self.with_ring(|ring| {
            let mut done = 0usize;
            while done < len {
                let chunk = (len - done).min(1 << 30) as u32;
                // SAFETY: ptr+done..ptr+len is a live buffer borrowed by our caller for the
                // whole call; we wait for the completion before returning.
                let p = unsafe { ptr.add(done) };
                let fd = types::Fd(file.as_raw_fd());
                // Tagged, so that only this operation's own completion ends the wait.
                let tag = TAG.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let sqe = if write {
                    opcode::Write::new(fd, p as *const u8, chunk)
                        .offset(offset + done as u64)
                        .build()
                } else {
                    opcode::Read::new(fd, p, chunk)
                        .offset(offset + done as u64)
                        .build()
                }
                .user_data(tag);
                // SAFETY: the buffer outlives the operation (we wait below).
                unsafe {
                    ring.submission()
                        .push(&sqe)
                        .map_err(|_| std::io::Error::other("io_uring submission queue full"))?;
                }
                let res = wait_for(ring, tag)?;
                if res < 0 {
                    return Err(std::io::Error::from_raw_os_error(-res));
                }
                if res == 0 {
                    return Err(if write {
                        std::io::Error::from(std::io::ErrorKind::WriteZero)
                    } else {
                        std::io::Error::from(std::io::ErrorKind::UnexpectedEof)
                    });
                }
                done += res as usize;
            }
            Ok(())
        })
    }
}

/// Tags of io_uring operations (their `user_data`), unique in the process.
static TAG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Waits for the completion tagged `tag` and returns its result. The kernel owns the buffer
/// until then, so a wait interrupted by a signal (`EINTR`), or one the kernel asks to retry, is
/// retried rather than returned; completions of other tags (none are expected: every
/// operation reaps its own) are skipped.
fn wait_for(ring: &mut io_uring::IoUring, tag: u64) -> std::io::Result<i32> {
    loop {
        if let Some(res) = ring
            .completion()
            .find(|c| c.user_data() == tag)
            .map(|c| c.result())
        {
            return Ok(res);
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            // A refused io_uring_enter: the operation was not taken, or the ring is unusable.
            Err(e) => return Err(e),
        }
    }
}

impl IoEngine for Uring {
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.rw(file, buf.as_mut_ptr(), buf.len(), offset, false)
    }
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        // The kernel only reads from the buffer for a write.
        self.rw(file, buf.as_ptr() as *mut u8, buf.len(), offset, true)
    }
    fn name(&self) -> &'static str {
        "io_uring"
    }
}

/// Which I/O engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    /// io_uring where the kernel allows it, psync otherwise (one warning, one fallback count).
    #[default]
    Auto,
    /// psync only.
    Psync,
    /// io_uring; fail if unavailable.
    IoUring,
}

impl IoMode {
    /// Parses `auto`, `psync` or `io_uring`.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "psync" => Ok(IoMode::Psync),
            "io_uring" | "uring" => Ok(IoMode::IoUring),
            _ => Err(crate::Error::invalid(format!(
                "unknown I/O engine `{s}`; expected auto, psync or io_uring"
            ))),
        }
    }

    /// Builds the engine. `Auto` falls back to psync when io_uring cannot be set up.
    pub fn build(self) -> crate::Result<std::sync::Arc<dyn IoEngine>> {
        match self {
            IoMode::Psync => Ok(std::sync::Arc::new(Psync)),
            IoMode::IoUring => Uring::new()
                .map(|u| std::sync::Arc::new(u) as std::sync::Arc<dyn IoEngine>)
                .map_err(|e| crate::Error::io("io_uring is not available on this kernel", e)),
            IoMode::Auto => match Uring::new() {
                Ok(u) => Ok(std::sync::Arc::new(u)),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable; falling back to psync");
                    crate::metrics::Fallback::UringToPsync.count();
                    Ok(std::sync::Arc::new(Psync))
                }
            },
        }
    }
}

/// Opens `path` for O_DIRECT I/O when `direct` is set and the file system supports it. Returns
/// the file and whether it is actually direct (tmpfs and some FUSE mounts refuse O_DIRECT).
pub fn open_file(
    path: &Path,
    create_new: bool,
    write: bool,
    direct: bool,
) -> std::io::Result<(File, bool)> {
    let open = |flags: i32| {
        let mut o = OpenOptions::new();
        o.read(true).write(write).custom_flags(flags);
        if create_new {
            o.create_new(true);
        }
        o.open(path)
    };
    if direct {
        match open(libc::O_DIRECT) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                if create_new {
                    // The failed O_DIRECT open may have created the file.
                    let _ = std::fs::remove_file(path);
                }
                crate::metrics::Fallback::DirectToBuffered.count();
            }
            Err(e) => return Err(e),
        }
    }
    open(0).map(|f| (f, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::AlignedBuf;

    #[test]
    fn engines_round_trip_on_direct_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut engines: Vec<Box<dyn IoEngine>> = vec![Box::new(Psync)];
        if let Ok(u) = Uring::new() {
            engines.push(Box::new(u));
        }
        for (i, io) in engines.iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            let (f, _direct) = open_file(&path, true, true, true).unwrap();
            io.allocate(&f, 1 << 20).unwrap();
            let mut w = AlignedBuf::zeroed(8192);
            w.iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (j * 7 + i) as u8);
            io.write_at(&f, &w, 4096).unwrap();
            let mut r = AlignedBuf::zeroed(8192);
            io.read_at(&f, &mut r, 4096).unwrap();
            assert_eq!(&r[..], &w[..], "{}", io.name());
            let mut past = AlignedBuf::zeroed(4096);
            let e = io.read_at(&f, &mut past, 2 << 20).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{}", io.name());
        }
    }
}
