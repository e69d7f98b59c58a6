//! Passing the arena's file descriptor to engine processes over a Unix socket (`SCM_RIGHTS`).
//!
//! The agent sends one message per connection: 16 bytes (a session token, and the arena size)
//! with the memfd attached, or 16 zero bytes without a descriptor when it refuses the peer
//! (its credentials allow it no tenant). The engine keeps the connection open for as long as it
//! lives; when it closes (the engine exited or died), the agent reclaims everything the token's
//! sessions held. The engine connects within its deadline ([`connect_within`]), so a stopped
//! agent is a timeout, not a hang.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Room for one control message carrying one descriptor (CMSG_SPACE(4) is 24 on Linux).
const CMSG_BUF: usize = 64;

/// A message header over one data buffer and a control buffer for one descriptor.
fn message(iov: &mut libc::iovec, cbuf: &mut [u8; CMSG_BUF]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zeroed is a valid initial state. CMSG_SPACE is pure.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: a pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as _;
    debug_assert!(msg.msg_controllen as usize <= CMSG_BUF);
    msg
}

/// Sends `token` and `len` with `fd` attached.
pub fn send_fd(sock: &UnixStream, fd: BorrowedFd<'_>, token: u64, len: u64) -> io::Result<()> {
    let mut data = [0u8; 16];
    data[..8].copy_from_slice(&token.to_le_bytes());
    data[8..].copy_from_slice(&len.to_le_bytes());
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut cbuf = [0u8; CMSG_BUF];
    let msg = message(&mut iov, &mut cbuf);
    // SAFETY: msg_control points to a buffer with room for one cmsg with one fd.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd.as_raw_fd());
    }
    // SAFETY: a valid socket and message.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
    }
    Ok(())
}

/// Tells the peer it is refused: 16 zero bytes, no descriptor.
pub fn send_refusal(sock: &UnixStream) -> io::Result<()> {
    // SAFETY: a valid socket and a 16-byte buffer.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            [0u8; 16].as_ptr().cast(),
            16,
            libc::MSG_NOSIGNAL,
        )
    };
    if n != 16 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives what [`send_fd`] sent: `(fd, token, len)`. A refusal ([`send_refusal`]) is a
/// `PermissionDenied` error.
pub fn recv_fd(sock: &UnixStream) -> io::Result<(OwnedFd, u64, u64)> {
    let mut data = [0u8; 16];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut cbuf = [0u8; CMSG_BUF];
    let mut msg = message(&mut iov, &mut cbuf);
    // SAFETY: a valid socket and buffers.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // Take ownership of any descriptor first, so that a short message does not leak it.
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR handles an empty control buffer, and a
    // descriptor passed with SCM_RIGHTS is a new one that we now own.
    let fd = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            None
        } else {
            Some(OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                libc::CMSG_DATA(cmsg) as *const RawFd,
            )))
        }
    };
    if n as usize != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the agent closed the descriptor socket",
        ));
    }
    if fd.is_none() && data == [0u8; 16] {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the agent refused this process: its uid and groups may use none of the agent's \
             tenants (agent.tenants)",
        ));
    }
    let fd = fd.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no descriptor in the agent's message",
        )
    })?;
    let token = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(data[8..].try_into().expect("8 bytes"));
    Ok((fd, token, len))
}

/// Connects a Unix stream socket to `path` by `deadline`. A listener whose backlog is full (an
/// agent stopped or too busy to accept) makes a blocking connect wait forever; a non-blocking
/// one fails at once with `EAGAIN`, so this retries, backing off to 5 ms, until the deadline
/// (`TimedOut`).
pub fn connect_within(
    path: &std::path::Path,
    deadline: std::time::Instant,
) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path longer than {} bytes", addr.sun_path.len() - 1),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    // SAFETY: a plain syscall; the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let sock = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut pause = std::time::Duration::from_micros(100);
    loop {
        // SAFETY: a valid socket and address of the size given.
        let r = unsafe {
            libc::connect(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if r == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => {}
            _ => return Err(e),
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the listener's backlog stayed full",
            ));
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(std::time::Duration::from_millis(5));
    }
    sock.set_nonblocking(false)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_descriptor_crosses_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &file, b"shared bytes").unwrap();
        send_fd(&a, file.as_fd(), 42, 12).unwrap();
        let (fd, token, len) = recv_fd(&b).unwrap();
        assert_eq!((token, len), (42, 12));
        let mut buf = [0u8; 12];
        let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 12, 0) };
        assert_eq!(n, 12);
        assert_eq!(&buf, b"shared bytes");
        send_refusal(&a).unwrap();
        let e = recv_fd(&b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        drop(a);
        assert!(recv_fd(&b).is_err(), "EOF after the agent closes");
    }
}
