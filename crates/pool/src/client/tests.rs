//! The client's answer reader on record answers: hashed on the way in, bad bytes refused.

use super::*;
use kvtier_core::block::BlockObject;
use tokio::io::AsyncWriteExt;

/// A get answer carrying `record`, written in uneven pieces into a pipe-like stream.
async fn answer_hash(record: &[u8], key: BlockKey) -> (AlignedBuf, Option<u64>) {
    let (mut tx, mut rx) = tokio::io::duplex(64 << 10);
    let f = Frame::response(
        &Frame::request(Op::Get, 7, key, 0),
        Status::Ok,
        record.len() as u32,
    );
    let bytes = [&f.encode()[..], record].concat();
    let writer = tokio::spawn(async move {
        for piece in bytes.chunks(33_333) {
            tx.write_all(piece).await.unwrap();
        }
    });
    let (g, body, hash) = read_answer(&mut rx, 64 << 20, &BufPool::new(0), None)
        .await
        .unwrap();
    writer.await.unwrap();
    assert_eq!((g.id, g.body_len as usize), (7, record.len()));
    (body, hash)
}

#[tokio::test]
async fn record_answers_are_hashed_on_the_way_in_and_bad_bytes_fail() {
    let key = BlockKey::from_u128(42);
    let mut o = BlockObject::new(1_000_000).unwrap();
    o.payload_mut()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 31 / 7) as u8);
    o.seal(key, 0, 0);
    let good = o.into_record();
    let (body, hash) = answer_hash(&good, key).await;
    assert!(body[..] == good[..]);
    assert!(hash.is_some(), "a large record is hashed while it is read");
    assert!(kvtier_core::block::verify_record(&body, Some(key), hash).is_ok());
    // One flipped payload byte: the hash computed on the way in gives it away.
    let mut bad = AlignedBuf::zeroed(good.len());
    bad.copy_from_slice(&good);
    bad[600_000] ^= 0x10;
    let (body, hash) = answer_hash(&bad, key).await;
    assert_eq!(
        kvtier_core::block::verify_record(&body, Some(key), hash).unwrap_err(),
        kvtier_core::block::VerifyError::PayloadChecksum
    );
    // Not a record at all: no hash, and verification says why.
    let junk = vec![9u8; 300_000];
    let (body, hash) = answer_hash(&junk, key).await;
    assert_eq!(hash, None);
    assert!(kvtier_core::block::verify_record(&body, Some(key), hash).is_err());
}
