//! Block objects: a fixed 64-byte header followed by the payload (one engine block of one rank,
//! layer-major), padded to a page as a *record*. The same record format is used in the host
//! arena, in segment files and on the wire, so bytes move between tiers without re-encoding.
//!
//! On-disk format (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `KVTB` |
//! | 4 | 2 | format version (1) |
//! | 6 | 2 | flags (0) |
//! | 8 | 8 | layout digest ([`crate::layout::KvLayout::digest`]) |
//! | 16 | 16 | block key (u128) |
//! | 32 | 8 | payload length |
//! | 40 | 8 | xxh3-64 of the payload |
//! | 48 | 8 | sequence number (writer-assigned; newer wins on recovery) |
//! | 56 | 8 | xxh3-64 of bytes 0..56 |

use bytemuck::{Pod, Zeroable};
use xxhash_rust::xxh3::xxh3_64;

use crate::buf::{align_up, AlignedBuf};
use crate::error::{Error, Result};
use crate::key::BlockKey;

/// `KVTB` read as a little-endian u32.
pub const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"KVTB");
/// The current block format version.
pub const BLOCK_FORMAT_VERSION: u16 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 64;
/// The largest payload accepted anywhere (1 GiB): bounds every length read from outside.
pub const MAX_PAYLOAD_LEN: u64 = 1 << 30;

/// The fixed header of a block object, exactly as stored (little-endian fields).
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq)]
#[repr(C)]
pub struct BlockHeader {
    magic: u32,
    version: u16,
    flags: u16,
    layout_digest: u64,
    key_lo: u64,
    key_hi: u64,
    payload_len: u64,
    payload_checksum: u64,
    seq: u64,
    header_checksum: u64,
}

const _: () = assert!(std::mem::size_of::<BlockHeader>() == HEADER_LEN);

/// Why an object failed verification. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum VerifyError {
    /// Not a block header at all (no magic): empty or foreign bytes.
    #[error("not a block object (no magic)")]
    BadMagic,
    /// A format version this build cannot read.
    #[error("a block format version this build cannot read")]
    BadVersion,
    /// The header's own checksum failed: a torn or corrupted header.
    #[error("the header checksum failed (torn or corrupt header)")]
    HeaderChecksum,
    /// The payload is shorter or longer than the header says, or beyond [`MAX_PAYLOAD_LEN`].
    #[error("the payload length disagrees with the header or exceeds the limit")]
    Length,
    /// The payload's checksum failed: corrupt or torn data.
    #[error("the payload checksum failed (corrupt or torn data)")]
    PayloadChecksum,
    /// A valid object, but of another key than the one asked for.
    #[error("a valid object of another key")]
    WrongKey,
    /// A valid object, but written for another layout.
    #[error("a valid object of another layout")]
    WrongLayout,
}

impl VerifyError {
    /// Stable name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyError::BadMagic => "bad_magic",
            VerifyError::BadVersion => "bad_version",
            VerifyError::HeaderChecksum => "header_checksum",
            VerifyError::Length => "length",
            VerifyError::PayloadChecksum => "payload_checksum",
            VerifyError::WrongKey => "wrong_key",
            VerifyError::WrongLayout => "wrong_layout",
        }
    }

    /// All reasons, for metric registration.
    pub const ALL: [VerifyError; 7] = [
        VerifyError::BadMagic,
        VerifyError::BadVersion,
        VerifyError::HeaderChecksum,
        VerifyError::Length,
        VerifyError::PayloadChecksum,
        VerifyError::WrongKey,
        VerifyError::WrongLayout,
    ];
}

impl From<VerifyError> for Error {
    fn from(v: VerifyError) -> Error {
        Error::corrupt("block object failed verification")
            .with_context("reason", v.as_str())
            .with_source(v)
    }
}

impl BlockHeader {
    /// A header for `payload`, with its checksum computed.
    pub fn new(key: BlockKey, layout_digest: u64, payload: &[u8], seq: u64) -> Self {
        Self::with_checksum(
            key,
            layout_digest,
            payload.len() as u64,
            xxh3_64(payload),
            seq,
        )
    }

    /// A header from a precomputed payload checksum.
    pub fn with_checksum(
        key: BlockKey,
        layout_digest: u64,
        payload_len: u64,
        payload_checksum: u64,
        seq: u64,
    ) -> Self {
        let k = key.as_u128();
        let mut h = BlockHeader {
            magic: BLOCK_MAGIC.to_le(),
            version: BLOCK_FORMAT_VERSION.to_le(),
            flags: 0,
            layout_digest: layout_digest.to_le(),
            key_lo: (k as u64).to_le(),
            key_hi: ((k >> 64) as u64).to_le(),
            payload_len: payload_len.to_le(),
            payload_checksum: payload_checksum.to_le(),
            seq: seq.to_le(),
            header_checksum: 0,
        };
        h.header_checksum = h.compute_header_checksum().to_le();
        h
    }

    fn compute_header_checksum(&self) -> u64 {
        xxh3_64(&bytemuck::bytes_of(self)[..HEADER_LEN - 8])
    }

    /// Parses and checks a header (magic, version, header checksum, length bound). Does not
    /// look at the payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, VerifyError> {
        let Some(raw) = bytes.get(..HEADER_LEN) else {
            return Err(VerifyError::Length);
        };
        let h: BlockHeader = bytemuck::pod_read_unaligned(raw);
        if u32::from_le(h.magic) != BLOCK_MAGIC {
            return Err(VerifyError::BadMagic);
        }
        if u64::from_le(h.header_checksum) != h.compute_header_checksum() {
            return Err(VerifyError::HeaderChecksum);
        }
        if u16::from_le(h.version) != BLOCK_FORMAT_VERSION {
            return Err(VerifyError::BadVersion);
        }
        if h.payload_len() > MAX_PAYLOAD_LEN {
            return Err(VerifyError::Length);
        }
        Ok(h)
    }

    /// The 64 bytes as stored.
    pub fn as_bytes(&self) -> &[u8] {
        bytemuck::bytes_of(self)
    }

    /// The block key.
    pub fn key(&self) -> BlockKey {
        BlockKey::from_u128(
            ((u64::from_le(self.key_hi) as u128) << 64) | u64::from_le(self.key_lo) as u128,
        )
    }

    /// The layout digest.
    pub fn layout_digest(&self) -> u64 {
        u64::from_le(self.layout_digest)
    }

    /// Payload length in bytes.
    pub fn payload_len(&self) -> u64 {
        u64::from_le(self.payload_len)
    }

    /// The payload checksum.
    pub fn payload_checksum(&self) -> u64 {
        u64::from_le(self.payload_checksum)
    }

    /// The writer's sequence number.
    pub fn seq(&self) -> u64 {
        u64::from_le(self.seq)
    }

    /// Bytes of the whole record (header + payload, padded to a page).
    pub fn record_len(&self) -> usize {
        record_len(self.payload_len() as usize)
    }

    /// Checks `payload` against the header's length and checksum.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<(), VerifyError> {
        if payload.len() as u64 != self.payload_len() {
            return Err(VerifyError::Length);
        }
        if xxh3_64(payload) != self.payload_checksum() {
            return Err(VerifyError::PayloadChecksum);
        }
        Ok(())
    }
}

impl std::fmt::Debug for BlockHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockHeader")
            .field("key", &self.key())
            .field(
                "layout_digest",
                &format_args!("{:016x}", self.layout_digest()),
            )
            .field("payload_len", &self.payload_len())
            .field("seq", &self.seq())
            .finish()
    }
}

/// Bytes of a record holding a payload of `payload_len`: header plus payload, page-aligned.
pub const fn record_len(payload_len: usize) -> usize {
    align_up(HEADER_LEN + payload_len)
}

/// One block object in a page-aligned buffer laid out as a record, ready for O_DIRECT I/O:
/// `[header][payload][zero padding]`.
///
/// ```
/// use kvtier_core::block::{BlockObject, VerifyError};
/// use kvtier_core::buf::AlignedBuf;
/// use kvtier_core::BlockKey;
///
/// let key = BlockKey::from_u128(7);
/// let obj = BlockObject::from_payload(key, 0xfeed, &[1u8; 1000]).unwrap();
/// assert_eq!(obj.record().len(), 4096);
///
/// // Bytes coming back from disk or the network are verified; one flipped bit is refused.
/// let mut rec = AlignedBuf::zeroed(obj.record().len());
/// rec.copy_from_slice(obj.record());
/// rec[500] ^= 1;
/// assert_eq!(BlockObject::from_record(rec, Some(key), None).unwrap_err(), VerifyError::PayloadChecksum);
/// ```
#[derive(Debug)]
pub struct BlockObject {
    buf: AlignedBuf,
    payload_len: usize,
}

impl BlockObject {
    /// An object with a zeroed payload of `payload_len` bytes and no valid header yet: fill
    /// [`payload_mut`](Self::payload_mut), then [`seal`](Self::seal).
    pub fn new(payload_len: usize) -> Result<Self> {
        if payload_len as u64 > MAX_PAYLOAD_LEN {
            return Err(Error::invalid(format!(
                "block payload of {payload_len} bytes exceeds the {MAX_PAYLOAD_LEN}-byte limit"
            )));
        }
        Ok(BlockObject {
            buf: AlignedBuf::zeroed(record_len(payload_len)),
            payload_len,
        })
    }

    /// An object holding a copy of `payload`, sealed with `key`.
    pub fn from_payload(key: BlockKey, layout_digest: u64, payload: &[u8]) -> Result<Self> {
        let mut o = Self::new(payload.len())?;
        o.payload_mut().copy_from_slice(payload);
        o.seal(key, layout_digest, 0);
        Ok(o)
    }

    /// Wraps a record read from outside (disk, network) after verifying header and payload.
    /// `expect` checks the key and, when given, the layout digest.
    pub fn from_record(
        buf: AlignedBuf,
        expect_key: Option<BlockKey>,
        expect_layout: Option<u64>,
    ) -> Result<Self, VerifyError> {
        let h = verify_record(&buf, expect_key, None)?;
        let payload_len = h.payload_len() as usize;
        if expect_layout.is_some_and(|d| d != h.layout_digest()) {
            return Err(VerifyError::WrongLayout);
        }
        Ok(BlockObject { buf, payload_len })
    }

    /// Writes the header for the current payload (computing its checksum).
    pub fn seal(&mut self, key: BlockKey, layout_digest: u64, seq: u64) {
        let h = BlockHeader::new(key, layout_digest, self.payload(), seq);
        self.buf[..HEADER_LEN].copy_from_slice(h.as_bytes());
    }

    /// Rewrites only the sequence number (the payload checksum is kept).
    pub fn set_seq(&mut self, seq: u64) {
        let h = self.header();
        let h = BlockHeader::with_checksum(
            h.key(),
            h.layout_digest(),
            h.payload_len(),
            h.payload_checksum(),
            seq,
        );
        self.buf[..HEADER_LEN].copy_from_slice(h.as_bytes());
    }

    /// The header as currently stored (unchecked; valid after `seal`).
    pub fn header(&self) -> BlockHeader {
        bytemuck::pod_read_unaligned(&self.buf[..HEADER_LEN])
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buf[HEADER_LEN..HEADER_LEN + self.payload_len]
    }

    /// The payload, writable (reseal afterwards).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[HEADER_LEN..HEADER_LEN + self.payload_len]
    }

    /// The whole record (header, payload, padding): what is written to disk or the wire.
    pub fn record(&self) -> &[u8] {
        &self.buf
    }

    /// Consumes the object, returning its record buffer.
    pub fn into_record(self) -> AlignedBuf {
        self.buf
    }
}

/// Verifies a whole record as read from anywhere (a segment file, a socket, a shared
/// directory's file): its header, the expected `key` (if any), and its payload's checksum.
/// `payload_hash` is the payload's xxh3-64 when the reader computed it while the record
/// arrived; `None` computes it here. Every reader of records runs this one check, and a record
/// that fails it is a miss. Returns the header.
pub fn verify_record(
    record: &[u8],
    key: Option<BlockKey>,
    payload_hash: Option<u64>,
) -> Result<BlockHeader, VerifyError> {
    let h = BlockHeader::decode(record)?;
    if key.is_some_and(|k| k != h.key()) {
        return Err(VerifyError::WrongKey);
    }
    let end = HEADER_LEN + h.payload_len() as usize;
    let payload = record.get(HEADER_LEN..end).ok_or(VerifyError::Length)?;
    match payload_hash {
        Some(x) if x != h.payload_checksum() => return Err(VerifyError::PayloadChecksum),
        Some(_) => {}
        None => h.verify_payload(payload)?,
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_corruption_is_caught() {
        let key = BlockKey::from_u128(42);
        let obj = BlockObject::from_payload(key, 7, &[5u8; 10_000]).unwrap();
        assert_eq!(obj.record().len(), 12288);
        let ok = BlockObject::from_record(clone(&obj), Some(key), Some(7)).unwrap();
        assert_eq!(ok.payload(), &[5u8; 10_000][..]);

        let mut r = clone(&obj);
        r[HEADER_LEN + 9_999] ^= 1;
        assert_eq!(
            BlockObject::from_record(r, None, None).unwrap_err(),
            VerifyError::PayloadChecksum
        );
        let mut r = clone(&obj);
        r[20] ^= 0x80; // inside the key
        assert_eq!(
            BlockObject::from_record(r, None, None).unwrap_err(),
            VerifyError::HeaderChecksum
        );
        let mut r = clone(&obj);
        r[0] = b'X';
        assert_eq!(
            BlockObject::from_record(r, None, None).unwrap_err(),
            VerifyError::BadMagic
        );
        assert_eq!(
            BlockObject::from_record(AlignedBuf::zeroed(4096), None, None).unwrap_err(),
            VerifyError::BadMagic
        );
        assert_eq!(
            BlockObject::from_record(clone(&obj), Some(BlockKey::from_u128(43)), None).unwrap_err(),
            VerifyError::WrongKey
        );
        assert_eq!(
            BlockObject::from_record(clone(&obj), None, Some(8)).unwrap_err(),
            VerifyError::WrongLayout
        );
        let mut short = AlignedBuf::zeroed(4096);
        short.copy_from_slice(&obj.record()[..4096]);
        assert_eq!(
            BlockObject::from_record(short, None, None).unwrap_err(),
            VerifyError::Length
        );
    }

    fn clone(o: &BlockObject) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(o.record().len());
        b.copy_from_slice(o.record());
        b
    }

    proptest! {
        #[test]
        fn header_round_trips(k in any::<u128>(), d in any::<u64>(), len in 0u64..MAX_PAYLOAD_LEN, c in any::<u64>(), s in any::<u64>()) {
            let h = BlockHeader::with_checksum(BlockKey::from_u128(k), d, len, c, s);
            let back = BlockHeader::decode(h.as_bytes()).unwrap();
            prop_assert_eq!(back.key(), BlockKey::from_u128(k));
            prop_assert_eq!(back.layout_digest(), d);
            prop_assert_eq!(back.payload_len(), len);
            prop_assert_eq!(back.payload_checksum(), c);
            prop_assert_eq!(back.seq(), s);
        }

        #[test]
        fn any_single_bit_flip_in_a_header_is_caught(bit in 0usize..HEADER_LEN * 8) {
            let h = BlockHeader::new(BlockKey::from_u128(9), 1, b"payload", 3);
            let mut raw = h.as_bytes().to_vec();
            raw[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(BlockHeader::decode(&raw).is_err());
        }
    }
}
