//! Page-aligned buffers, as O_DIRECT I/O and block records need: from the heap, or, from
//! 2 MiB up, mapped on their own in transparent huge pages.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every record and O_DIRECT buffer: one page, which also satisfies the logical
/// block size of every NVMe and SATA device.
pub const ALIGN: usize = 4096;

/// Rounds `n` up to a multiple of [`ALIGN`]. Panics if that overflows (no buffer is that big).
pub const fn align_up(n: usize) -> usize {
    match n.checked_add(ALIGN - 1) {
        Some(x) => x & !(ALIGN - 1),
        None => panic!("buffer size overflows"),
    }
}

/// A zero-initialised buffer whose start is aligned to [`ALIGN`] (to [`HUGE`] from that size,
/// unless the kernel refused the mapping and the heap served it).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Mapped by [`map_huge`] (unmapped on drop) rather than taken from the heap.
    mapped: bool,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

/// Buffers of at least this many bytes are mapped on their own, aligned to it, and offered to
/// the kernel for transparent huge pages (`MADV_HUGEPAGE`): a multi-MiB record then sits in a
/// few 2 MiB pages, which a disk takes in a few large segments instead of one per 4 KiB (raw
/// 4 MiB O_DIRECT I/O on this machine's virtio disk: reads 1.1-1.4 -> 3.2-3.7 GB/s, writes
/// 2.1-2.7 -> 3.4-4.3 GB/s, alternating runs of `kvtier bench pool`); pinning it for O_DIRECT
/// or `vmsplice` takes a reference per huge page instead of walking 512 page-table entries
/// each, and copies into it miss the TLB less.
/// (With the kernel's `defrag` setting at its default, `madvise`, a first touch may compact
/// memory to find a huge page; the hot paths take their buffers from a [`BufPool`], so that
/// happens once per buffer, not per request.)
pub const HUGE: usize = 2 << 20;

impl AlignedBuf {
    /// Allocates `len` zeroed bytes (at least one page is reserved for `len == 0`).
    pub fn zeroed(len: usize) -> Self {
        if len >= HUGE {
            if let Some(ptr) = map_huge(align_up(len)) {
                return AlignedBuf {
                    ptr,
                    len,
                    mapped: true,
                };
            }
        }
        let layout = Self::layout(len);
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf {
            ptr,
            len,
            mapped: false,
        }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(align_up(len.max(1)), ALIGN).expect("buffer size overflows")
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for the buffer's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: mapped by `map_huge` with this length, and not unmapped since.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), align_up(self.len)) };
            return;
        }
        // SAFETY: allocated in `zeroed` with the same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// Maps `len` (a multiple of [`ALIGN`]) zeroed bytes starting on a [`HUGE`] boundary, advised
/// for transparent huge pages; `None` if the kernel refuses the mapping.
fn map_huge(len: usize) -> Option<NonNull<u8>> {
    // Over-map by one huge page and trim, so the start is aligned. A length that overflows
    // is left to the heap path, whose layout check refuses it.
    let span = len
        .checked_add(HUGE)
        .filter(|s| *s <= isize::MAX as usize)?;
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        let start = p as usize;
        let aligned = (start + HUGE - 1) & !(HUGE - 1);
        if aligned > start {
            libc::munmap(p, aligned - start);
        }
        let tail = aligned + len;
        let end = start + span;
        if end > tail {
            libc::munmap(tail as *mut libc::c_void, end - tail);
        }
        // Advice only: without THP the buffer still works, in 4 KiB pages.
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        NonNull::new(aligned as *mut u8)
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// A free list of page-aligned buffers by length. Hot network paths (pool requests of a few
/// MiB each) take their buffers from here and give them back, so their pages stay mapped: a
/// fresh multi-MiB allocation costs page faults on first touch (one per 4 KiB, or the zeroing
/// and possibly compaction of each huge page), which is more than the copy itself. Buffers
/// taken from the pool hold stale bytes, not zeroes.
pub struct BufPool {
    free: parking_lot::Mutex<std::collections::HashMap<usize, Vec<AlignedBuf>>>,
    held: std::sync::atomic::AtomicUsize,
    max_bytes: usize,
}

impl BufPool {
    /// A pool that keeps at most `max_bytes` of idle buffers.
    pub fn new(max_bytes: usize) -> Self {
        BufPool {
            free: Default::default(),
            held: Default::default(),
            max_bytes,
        }
    }

    /// A buffer of exactly `len` bytes (reused if one is idle, else newly zeroed).
    pub fn take(&self, len: usize) -> AlignedBuf {
        use std::sync::atomic::Ordering;
        if let Some(b) = self.free.lock().get_mut(&len).and_then(|v| v.pop()) {
            self.held.fetch_sub(align_up(len.max(1)), Ordering::Relaxed);
            return b;
        }
        AlignedBuf::zeroed(len)
    }

    /// Returns a buffer for reuse (dropped if the pool is full).
    pub fn give(&self, buf: AlignedBuf) {
        use std::sync::atomic::Ordering;
        let size = align_up(buf.len().max(1));
        if self.held.load(Ordering::Relaxed) + size > self.max_bytes {
            return;
        }
        self.held.fetch_add(size, Ordering::Relaxed);
        self.free.lock().entry(buf.len()).or_default().push(buf);
    }

    /// Bytes of idle buffers held.
    pub fn idle_bytes(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for len in [0, 1, 4095, 4096, 4097, 1 << 20, HUGE, (4 << 20) + 4096] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            if len >= HUGE {
                assert_eq!(b.as_ptr() as usize % HUGE, 0, "{len} bytes on a huge page");
            }
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
            if len > 0 {
                b[len - 1] = 7;
                assert_eq!(b[len - 1], 7);
            }
        }
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(0), 0);
    }

    #[test]
    fn pool_reuses_buffers_up_to_its_bound() {
        let pool = BufPool::new(3 * 8192);
        let a = pool.take(8000);
        let p = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.idle_bytes(), 8192);
        let b = pool.take(8000);
        assert_eq!(b.as_ptr(), p, "the idle buffer is reused");
        assert_eq!(pool.idle_bytes(), 0);
        for _ in 0..5 {
            pool.give(AlignedBuf::zeroed(8192));
        }
        assert_eq!(pool.idle_bytes(), 3 * 8192, "bounded");
        assert_eq!(pool.take(100).len(), 100);
    }
}
