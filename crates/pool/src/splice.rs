//! Zero-copy sends of large bodies over TCP: the body's pages are mapped into a pipe with
//! `vmsplice(2)` and moved into the socket with `splice(2)`, so the kernel references them
//! instead of copying them into socket buffers; on a NIC the card reads the pages itself. The
//! pool client does this for servers on other hosts only, by default (over loopback the
//! receiver's copy out of the sender's 4 KiB pages is slower than copying twice: see
//! [`super::client::Splice`]).
//!
//! The kernel reads the pages after [`SplicePipe::send`] returns (until the peer has read the
//! bytes, and until they are acknowledged). The pool client only sends this way a record that
//! nobody can change before the server answers: it is behind an `Arc`, the connection keeps a
//! clone until the answer arrives or the connection is gone (even when the caller gave up on
//! the put), and the server answers a put only after reading its whole body. And every record
//! carries a checksum the server verifies: bytes changed in flight would make a put that is
//! refused, never a wrong record.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bodies at least this long are spliced (a threshold chosen, not tuned: mapping a body costs
/// a few system calls that a small one need not pay; only 4 MiB records were measured).
pub const SPLICE_MIN: usize = 256 << 10;

/// A pipe for splicing bodies into one connection's socket.
pub struct SplicePipe {
    r: OwnedFd,
    w: OwnedFd,
    /// The pipe's capacity in bytes.
    cap: usize,
}

impl SplicePipe {
    /// A non-blocking pipe of up to 1 MiB (what `/proc/sys/fs/pipe-max-size` allows).
    pub fn new() -> io::Result<Self> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just opened and are owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; failure leaves the default size.
        let cap = unsafe {
            libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
            libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        if cap <= 0 {
            return Err(io::Error::last_os_error());
        }
        // A pipe left at a few pages (a user past `pipe-user-pages-soft`) would cost a pair of
        // system calls per page: copying is better then.
        if (cap as usize) < SPLICE_MIN {
            return Err(io::Error::other(format!(
                "the pipe holds only {cap} bytes, less than a record worth splicing"
            )));
        }
        Ok(SplicePipe {
            r,
            w,
            cap: cap as usize,
        })
    }

    /// Maps `bytes` into the (empty) pipe; the count mapped, or -1 with `errno` set.
    fn map(&self, bytes: &[u8]) -> isize {
        let iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: `iov` points into `bytes`, valid for its length; the pipe is empty here
        // (every earlier mapping was spliced out), so this does not block.
        unsafe { libc::vmsplice(self.w.as_raw_fd(), &iov, 1, libc::SPLICE_F_NONBLOCK) }
    }

    /// Sends `bytes` on `sock` without copying them (see the module's note on when the
    /// memory may change again). `Ok(false)`: the kernel (or a seccomp profile) refuses
    /// `vmsplice` and nothing was sent; copy instead. An error leaves the connection unusable.
    pub async fn send(&self, sock: &TcpStream, mut bytes: &[u8]) -> io::Result<bool> {
        let mut first = true;
        while !bytes.is_empty() {
            let n = self.map(&bytes[..bytes.len().min(self.cap)]);
            if first && n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EINVAL)
                ) {
                    return Ok(false);
                }
                return Err(e);
            }
            first = false;
            // "More is coming" only while it is: on the last piece it would hold the final
            // segment back (corked) for up to 200 ms.
            let more = if bytes.len() > n.max(0) as usize {
                libc::SPLICE_F_MORE
            } else {
                0
            };
            let flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE | more;
            if n <= 0 {
                return Err(if n == 0 {
                    io::ErrorKind::WriteZero.into()
                } else {
                    io::Error::last_os_error()
                });
            }
            let mut left = n as usize;
            while left > 0 {
                sock.writable().await?;
                let moved = sock.try_io(Interest::WRITABLE, || {
                    // SAFETY: splicing between two descriptors we hold open.
                    let k = unsafe {
                        libc::splice(
                            self.r.as_raw_fd(),
                            std::ptr::null_mut(),
                            sock.as_raw_fd(),
                            std::ptr::null_mut(),
                            left,
                            flags,
                        )
                    };
                    if k < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(k as usize)
                    }
                });
                match moved {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(k) => left -= k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            bytes = &bytes[n as usize..];
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn spliced_bodies_arrive_whole_and_in_order() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let body: Vec<u8> = (0..5_000_000u32)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let expect = body.clone();
        let reader = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let s = TcpStream::connect(addr).await.unwrap();
        let pipe = SplicePipe::new().unwrap();
        // Twice, unaligned, so pages are mapped part-way and the pipe is reused.
        assert!(pipe.send(&s, &body[3..2_000_001]).await.unwrap());
        assert!(pipe.send(&s, &body[2_000_001..]).await.unwrap());
        drop(s);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), expect.len() - 3);
        assert!(got == expect[3..], "spliced bytes differ");
    }
}
