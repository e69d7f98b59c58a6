//! One framed connection's reading and writing, shared by the pool's client, its server and
//! the UCX side: frames ([`read_frame`], [`write_frame`]), bodies read whole or hashed while they
//! arrive ([`read_body_hashed`], [`PayloadHasher`]), and the reader's wake-up mark for large
//! bodies ([`RcvLowat`]).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Frame, FrameError, HEADER_LEN};
use kvtier_core::block::{BlockHeader, HEADER_LEN as BLOCK_HEADER_LEN};
use kvtier_core::buf::{AlignedBuf, BufPool};
use kvtier_core::error::{Error, ErrorKind};

/// Why reading a frame stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The header was invalid.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection failed or ended inside a frame.
    #[error("{}", io_text(.0))]
    Io(#[source] std::io::Error),
}

fn io_text(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "truncated frame: the connection ended inside it".into()
    } else {
        e.to_string()
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Error {
        match e {
            ReadError::Frame(f) => f.into(),
            other => Error::new(ErrorKind::Unavailable, other.to_string()),
        }
    }
}

/// Writes a frame's header and body together, in one system call when the socket takes it
/// all: a header written on its own would cross as a segment of its own and wake the peer for
/// it alone.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() || !body.is_empty() {
        let parts = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
        let n = wr.write_vectored(&parts).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let h = n.min(head.len());
        head = &head[h..];
        body = &body[n - h..];
    }
    Ok(())
}

/// Reads one small frame (a handshake's): header, then its body into a new buffer.
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    max_body: u32,
) -> std::result::Result<(Frame, AlignedBuf), ReadError> {
    let f = read_header(rd, max_body).await?;
    let body = read_body(rd, &f, None).await?;
    Ok((f, body))
}

/// Reads and checks one frame header. A clean close before it is [`ReadError::Closed`];
/// inside it, an error.
pub async fn read_header<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    max_body: u32,
) -> std::result::Result<Frame, ReadError> {
    let mut h = [0u8; HEADER_LEN];
    let n = rd.read(&mut h).await.map_err(ReadError::Io)?;
    if n == 0 {
        return Err(ReadError::Closed);
    }
    rd.read_exact(&mut h[n..]).await.map_err(ReadError::Io)?;
    Frame::decode(&h, max_body).map_err(ReadError::Frame)
}

/// Checksums a record's payload while the record arrives, front to back, into one buffer:
/// verifying it then costs nothing after its last byte, and each piece is hashed while it is
/// still in the cache the receive copy left it in.
pub struct PayloadHasher {
    hasher: xxhash_rust::xxh3::Xxh3,
    /// Where the payload ends, once the record header has arrived (`Some(None)`: the first
    /// bytes are not a record header, or the record is longer than the body).
    end: Option<Option<usize>>,
    /// Bytes of the record hashed or skipped so far.
    hashed: usize,
}

impl Default for PayloadHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl PayloadHasher {
    /// A hasher for one body.
    pub fn new() -> Self {
        PayloadHasher {
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            end: None,
            hashed: 0,
        }
    }

    /// A hasher for a record whose header is already checked: `h`'s payload.
    pub fn for_header(h: &BlockHeader) -> Self {
        PayloadHasher {
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            end: Some(Some(BLOCK_HEADER_LEN + h.payload_len() as usize)),
            hashed: BLOCK_HEADER_LEN,
        }
    }

    /// `arrived` is the body's first bytes, all that has arrived so far (growing from call to
    /// call, within one body of `len` bytes): hashes what is new of the payload.
    pub fn advance(&mut self, arrived: &[u8], len: usize) {
        if self.end.is_none() && arrived.len() >= BLOCK_HEADER_LEN {
            self.end = Some(
                BlockHeader::decode(&arrived[..BLOCK_HEADER_LEN])
                    .ok()
                    .and_then(|h| {
                        let end = BLOCK_HEADER_LEN + h.payload_len() as usize;
                        (end <= len).then_some(end)
                    }),
            );
            self.hashed = BLOCK_HEADER_LEN;
        }
        self.feed(0, arrived);
    }

    /// `bytes` are the record's bytes from offset `at`, which follow what was fed before
    /// (a gap makes the digest `None`): hashes the payload among them.
    pub fn feed(&mut self, at: usize, bytes: &[u8]) {
        let Some(Some(end)) = self.end else {
            return;
        };
        if at > self.hashed {
            self.end = Some(None);
            return;
        }
        let upto = (at + bytes.len()).min(end);
        if upto > self.hashed {
            self.hasher.update(&bytes[self.hashed - at..upto - at]);
            self.hashed = upto;
        }
    }

    /// The payload's xxh3-64, once all of it has been seen; `None` before, or when the body
    /// is not a record (the caller's own check then says why).
    pub fn digest(&self) -> Option<u64> {
        match self.end {
            Some(Some(end)) if self.hashed == end => Some(self.hasher.digest()),
            _ => None,
        }
    }
}

/// Reads exactly `body.len()` bytes into `body`, hashing its record's payload on the way
/// ([`PayloadHasher`]); the payload's xxh3-64 when `body` holds a whole record. `sock`: the
/// TCP socket `rd` reads from (it must be that one), if it is one, to be woken only when a
/// good piece has arrived ([`RcvLowat`]).
pub async fn read_body_hashed<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    body: &mut [u8],
    sock: Option<std::os::fd::RawFd>,
) -> std::result::Result<Option<u64>, ReadError> {
    let len = body.len();
    let mut hasher = PayloadHasher::new();
    // Made (one getsockopt) only once a first read leaves a large rest: a body that came
    // whole with it never sets a mark.
    let mut lowat: Option<RcvLowat> = None;
    let mut at = 0;
    while at < len {
        if at > 0 && (lowat.is_some() || len - at >= RcvLowat::MIN) {
            if let Some(fd) = sock {
                lowat
                    .get_or_insert_with(|| RcvLowat::new(fd))
                    .want(len - at);
            }
        }
        let n = rd.read(&mut body[at..]).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        at += n;
        hasher.advance(&body[..at], len);
    }
    Ok(hasher.digest())
}

/// A large body's reader asks to be woken only once a good piece of it has arrived
/// (`SO_RCVLOWAT`), not for every segment the peer's stack delivers. The mark is never above
/// what is still to come of the body (so the last bytes always wake the reader), nor above a
/// quarter of the socket's receive buffer (half its usable space: the buffer can always hold
/// that much, on any kernel), nor above [`RcvLowat::MAX`]; it is set back to 1 byte when the
/// body is done (also when the read fails or is dropped). If the kernel refuses a value the
/// reader gives the mechanism up for that body, at 1 byte again.
pub struct RcvLowat {
    fd: std::os::fd::RawFd,
    /// The mark in force.
    set: usize,
    /// The highest mark allowed (`None`: the mechanism is off for this body).
    cap: Option<usize>,
}

impl RcvLowat {
    /// The most a reader waits for before it is woken.
    const MAX: usize = 512 << 10;
    /// Smaller rests of a body are read as they come (setting the mark would cost more
    /// system calls than it saves).
    const MIN: usize = 64 << 10;

    /// For the TCP socket `fd`, which the body is read from.
    fn new(fd: std::os::fd::RawFd) -> Self {
        let mut rcvbuf: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on the caller's open socket into a c_int of the given length.
        let ok = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &mut rcvbuf as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        } == 0;
        // SO_RCVBUF reads back doubled (bookkeeping included): a quarter is half the data.
        let cap = (ok && rcvbuf > 0).then(|| (rcvbuf as usize / 4).min(Self::MAX));
        RcvLowat { fd, set: 1, cap }
    }

    /// `left` bytes of the body are still to come.
    fn want(&mut self, left: usize) {
        let Some(cap) = self.cap else {
            return;
        };
        if self.set == 1 && left < Self::MIN {
            return;
        }
        if !self.apply(left.min(cap).max(1)) {
            // Never leave a mark above what is left: back to 1 byte, and no more marks.
            self.cap = None;
            self.apply(1);
        }
    }

    /// Sets the mark; false if the kernel refused it (the old one stays in force).
    fn apply(&mut self, v: usize) -> bool {
        if v == self.set {
            return true;
        }
        let c = v as libc::c_int;
        // SAFETY: setsockopt on the caller's open socket with a c_int.
        let ok = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                &c as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if ok {
            self.set = v;
        }
        ok
    }
}

impl Drop for RcvLowat {
    fn drop(&mut self) {
        if !self.apply(1) {
            tracing::warn!(
                fd = self.fd,
                "could not set SO_RCVLOWAT back to 1 byte; this connection may stall"
            );
        }
    }
}

/// Reads the body of `f` into a page-aligned buffer (from `bufs` when given).
pub async fn read_body<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    f: &Frame,
    bufs: Option<&BufPool>,
) -> std::result::Result<AlignedBuf, ReadError> {
    let mut body = match bufs {
        Some(p) if f.body_len > 0 => p.take(f.body_len as usize),
        _ => AlignedBuf::zeroed(f.body_len as usize),
    };
    rd.read_exact(&mut body).await.map_err(ReadError::Io)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_core::block::BlockObject;
    use kvtier_core::key::BlockKey;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    fn record(payload_len: usize) -> (AlignedBuf, u64) {
        let mut o = BlockObject::new(payload_len).unwrap();
        for (i, b) in o.payload_mut().iter_mut().enumerate() {
            *b = (i * 31 + i / 4096) as u8;
        }
        o.seal(BlockKey::from_u128(5), 0, 0);
        let r = o.into_record();
        let h = BlockHeader::decode(&r).unwrap();
        (r, h.payload_checksum())
    }

    fn rcvlowat(fd: std::os::fd::RawFd) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on an open socket into a c_int of the given length.
        unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        v
    }

    /// A body arriving in paused pieces is read whole with the wake-up mark in use, and the
    /// mark is back at 1 byte after it: a lone small frame that follows is read at once.
    #[tokio::test]
    async fn a_large_body_read_with_a_wakeup_mark_ends_and_the_next_small_frame_still_arrives() {
        use tokio::io::AsyncWriteExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut peer, _) = l.accept().await.unwrap();
        let body: Vec<u8> = (0..1_500_000u32)
            .map(|i| (i * 13 + i / 977) as u8)
            .collect();
        let sent = body.clone();
        let sender = tokio::spawn(async move {
            for piece in sent.chunks(400_000) {
                peer.write_all(piece).await.unwrap();
                // Pacing only: the reader must wait for the rest with its mark set.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peer.write_all(&[7u8; 64]).await.unwrap();
            peer
        });
        let (mut rd, _wr) = c.into_split();
        let fd = std::os::fd::AsRawFd::as_raw_fd(rd.as_ref());
        let mut got = vec![0u8; body.len()];
        let read = read_body_hashed(&mut rd, &mut got, Some(fd));
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the body is read whole")
            .unwrap();
        assert!(got == body, "the body arrived intact");
        assert_eq!(rcvlowat(fd), 1, "the mark is back at 1 byte");
        let mut small = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(5), rd.read_exact(&mut small))
            .await
            .expect("a small frame after the body is not held back")
            .unwrap();
        assert_eq!(small, [7u8; 64]);
        drop(sender.await.unwrap());
    }

    #[test]
    fn payload_hashed_in_any_pieces_matches_the_header_and_gaps_or_junk_do_not() {
        let (r, sum) = record(300_000);
        let len = r.len();
        // Arriving in uneven pieces, the first shorter than a record header.
        for step in [1000, 4096, 33_333, len] {
            let mut h = PayloadHasher::new();
            let mut at = 0;
            while at < len {
                at = (at + step).min(len);
                h.advance(&r[..at], len);
                if at < BLOCK_HEADER_LEN + 300_000 {
                    assert_eq!(h.digest(), None, "not before the payload's last byte");
                }
            }
            assert_eq!(h.digest(), Some(sum), "pieces of {step}");
        }
        // Fed in chunks after the header was checked.
        let hdr = BlockHeader::decode(&r).unwrap();
        let mut h = PayloadHasher::for_header(&hdr);
        for (i, c) in r.chunks(65_536).enumerate() {
            h.feed(i * 65_536, c);
        }
        assert_eq!(h.digest(), Some(sum));
        // A chunk skipped: no digest, whatever comes after.
        let mut h = PayloadHasher::for_header(&hdr);
        for (i, c) in r.chunks(65_536).enumerate().filter(|(i, _)| *i != 2) {
            h.feed(i * 65_536, c);
        }
        assert_eq!(h.digest(), None);
        // A flipped payload byte changes the digest; junk instead of a header gives none.
        let mut bad = AlignedBuf::zeroed(len);
        bad.copy_from_slice(&r);
        bad[len / 2] ^= 1;
        let mut h = PayloadHasher::new();
        h.advance(&bad, len);
        assert_ne!(h.digest(), Some(sum));
        let junk = AlignedBuf::zeroed(len);
        let mut h = PayloadHasher::new();
        h.advance(&junk, len);
        assert_eq!(h.digest(), None);
    }
}
