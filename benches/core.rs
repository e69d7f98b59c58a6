//! Criterion benches of the core: key hashing, header verification, arena put/get and
//! segment-store put/get. Run with `cargo bench --bench core`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvtier_core::block::{BlockHeader, BlockObject, HEADER_LEN};
use kvtier_core::buf::AlignedBuf;
use kvtier_core::tier::host::{put_copy, HostArena, HostArenaConfig};
use kvtier_core::tier::segment::{SegmentStore, SegmentStoreConfig};
use kvtier_core::{BlockKey, KvDtype, Namespace, NamespaceParams};

fn namespace(b: u32) -> Namespace {
    Namespace::new(&NamespaceParams::new(
        "bench/model",
        KvDtype::Bf16,
        "vllm-flash",
        b,
    ))
    .unwrap()
}

fn key_hashing(c: &mut Criterion) {
    let tokens: Vec<u32> = (0..32_768u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 128_256)
        .collect();
    let mut g = c.benchmark_group("block_keys");
    g.throughput(Throughput::Bytes(tokens.len() as u64 * 4));
    for b in [16u32, 128, 512] {
        let ns = namespace(b);
        g.bench_with_input(
            BenchmarkId::new("tokens_per_block", b),
            &tokens,
            |bench, t| bench.iter(|| ns.block_keys(t)),
        );
    }
    g.finish();
}

fn header_verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("header");
    for size in [256usize << 10, 2 << 20] {
        let obj = BlockObject::from_payload(BlockKey::from_u128(1), 2, &vec![7u8; size]).unwrap();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("decode_and_verify_payload", size), |b| {
            b.iter(|| {
                let h = BlockHeader::decode(obj.record()).unwrap();
                h.verify_payload(&obj.record()[HEADER_LEN..HEADER_LEN + size])
                    .unwrap();
            })
        });
    }
    g.bench_function("decode_header_only", |b| {
        let obj = BlockObject::from_payload(BlockKey::from_u128(1), 2, &[1u8; 64]).unwrap();
        b.iter(|| BlockHeader::decode(obj.record()).unwrap())
    });
    g.finish();
}

fn arena(c: &mut Criterion) {
    let payload = 2 << 20;
    let a = HostArena::new(&HostArenaConfig {
        capacity_bytes: 64 * (payload as u64 + 4096),
        payload_len: payload,
        ..Default::default()
    })
    .unwrap();
    let data = vec![3u8; payload];
    let mut g = c.benchmark_group("host_arena");
    g.throughput(Throughput::Bytes(payload as u64));
    let mut i = 0u128;
    g.bench_function("put_2MiB", |b| {
        b.iter(|| {
            i += 1;
            put_copy(&a, BlockKey::from_u128(i), 0, &data).unwrap()
        })
    });
    let k = BlockKey::from_u128(i);
    let mut out = vec![0u8; payload];
    g.bench_function("get_2MiB_copy_out", |b| {
        b.iter(|| {
            let r = a.get(k).unwrap();
            out.copy_from_slice(r.payload());
        })
    });
    g.finish();
}

fn segment_store(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let mut cfg = SegmentStoreConfig::new(dir.path());
    cfg.capacity_bytes = 2 << 30;
    cfg.segment_bytes = 64 << 20;
    let store = SegmentStore::open(cfg).unwrap();
    let payload = 2 << 20;
    let mut obj =
        BlockObject::from_payload(BlockKey::from_u128(0), 0, &vec![9u8; payload]).unwrap();
    let mut g = c.benchmark_group("segment_store");
    g.throughput(Throughput::Bytes(payload as u64));
    g.sample_size(20);
    let mut i = 0u128;
    g.bench_function("put_2MiB", |b| {
        b.iter(|| {
            i += 1;
            obj.seal(BlockKey::from_u128(i), 0, 0);
            store.put(&obj).unwrap()
        })
    });
    // Reads cycle over 64 resident objects (256 MiB: beyond most caches; O_DIRECT anyway).
    let base = 1u128 << 64;
    for k in 0..64 {
        obj.seal(BlockKey::from_u128(base + k), 0, 0);
        store.put(&obj).unwrap();
    }
    let mut buf = AlignedBuf::zeroed(0);
    let mut j = 0u128;
    g.bench_function("get_2MiB_verified", |b| {
        b.iter(|| {
            j = (j + 1) % 64;
            assert!(store
                .get_into(BlockKey::from_u128(base + j), &mut buf)
                .unwrap()
                .is_some());
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    targets = key_hashing, header_verify, arena, segment_store
}
criterion_main!(benches);
