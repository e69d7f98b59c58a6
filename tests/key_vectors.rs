//! The key-spec test vectors (`docs/key-vectors.json`): the Rust implementation reproduces
//! them, they show the properties the spec promises, and the independent Python
//! implementation (`docs/keyspec_check.py`, written from the spec alone) agrees.

use std::path::{Path, PathBuf};

use kvtier_core::{BlockKey, KvDtype, Namespace, NamespaceParams};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Case {
    name: String,
    ns: Namespace,
    digest: String,
    keys: Vec<String>,
    tokens: Vec<u32>,
    extras: Vec<Vec<Vec<u8>>>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn load() -> Vec<Case> {
    let text = std::fs::read_to_string(root().join("docs/key-vectors.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n = &c["namespace"];
            let s = |k: &str| n[k].as_str().unwrap().to_string();
            let u = |k: &str| n[k].as_u64().unwrap() as u32;
            let params = NamespaceParams {
                model: s("model"),
                revision: s("revision"),
                kv_dtype: KvDtype::parse(&s("kv_dtype")).unwrap(),
                layout_id: s("layout_id"),
                tokens_per_block: u("tokens_per_block"),
                tp_size: u("tp_size"),
                tp_rank: u("tp_rank"),
                pp_size: u("pp_size"),
                pp_rank: u("pp_rank"),
                salt: hex(&s("salt_hex")),
            };
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                ns: Namespace::new(&params).unwrap(),
                digest: c["namespace_digest"].as_str().unwrap().to_string(),
                keys: c["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap().to_string())
                    .collect(),
                tokens: c["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as u32)
                    .collect(),
                extras: c["extras"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| {
                        b.as_array()
                            .unwrap()
                            .iter()
                            .map(|e| hex(e.as_str().unwrap()))
                            .collect()
                    })
                    .collect(),
            }
        })
        .collect()
}

fn keys_of(c: &Case) -> Vec<BlockKey> {
    let items: Vec<Vec<&[u8]>> = c
        .extras
        .iter()
        .map(|b| b.iter().map(|e| e.as_slice()).collect())
        .collect();
    let extras: Vec<&[&[u8]]> = items.iter().map(|b| b.as_slice()).collect();
    c.ns.block_keys_with_extras(&c.tokens, &extras).unwrap()
}

#[test]
fn rust_reproduces_every_vector() {
    let cases = load();
    assert!(cases.len() >= 20, "the spec promises at least 20 vectors");
    for c in &cases {
        assert_eq!(
            c.ns.digest().to_string(),
            c.digest,
            "namespace of `{}`",
            c.name
        );
        let got: Vec<String> = keys_of(c).iter().map(|k| k.to_string()).collect();
        assert_eq!(got, c.keys, "keys of `{}`", c.name);
    }
}

#[test]
fn vectors_show_the_promised_properties() {
    let cases = load();
    let by = |n: &str| {
        cases
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("vector `{n}` missing"))
    };
    let base = by("base");
    assert_eq!(base.keys.len(), base.tokens.len() / 4);
    assert!(by("empty prompt").keys.is_empty());
    assert!(by("partial block only").keys.is_empty());
    assert_eq!(by("two blocks and a partial block").keys, base.keys[..2]);
    // Every namespace field changes every key.
    for n in [
        "model changed",
        "revision changed",
        "kv_dtype changed",
        "layout changed",
        "tp 2 rank 0",
        "tp 2 rank 1",
        "pp 2 rank 1",
        "salt tenant-a",
        "salt tenant-b",
    ] {
        let c = by(n);
        assert_ne!(c.digest, base.digest, "{n}");
        assert_eq!(c.keys.len(), base.keys.len(), "{n}");
        assert!(
            c.keys.iter().zip(&base.keys).all(|(a, b)| a != b),
            "{n} must change every key"
        );
    }
    assert!(by("salt tenant-a")
        .keys
        .iter()
        .zip(&by("salt tenant-b").keys)
        .all(|(a, b)| a != b));
    assert!(by("tp 2 rank 0")
        .keys
        .iter()
        .zip(&by("tp 2 rank 1").keys)
        .all(|(a, b)| a != b));
    assert_ne!(by("tokens_per_block 2").digest, base.digest);
    // Extra keys change only their block and its descendants.
    for (n, first) in [
        ("lora on every block", 0),
        ("image hash on block 2", 2),
        ("empty extra item on block 1", 1),
        ("two extra items on block 1", 1),
        ("last token changed", 4),
    ] {
        let c = by(n);
        assert_eq!(
            c.keys[..first],
            base.keys[..first],
            "{n}: keys before block {first} must not change"
        );
        assert!(
            c.keys[first..]
                .iter()
                .zip(&base.keys[first..])
                .all(|(a, b)| a != b),
            "{n}"
        );
    }
    assert_ne!(
        by("two extra items on block 1").keys[1],
        by("two extra items swapped").keys[1]
    );
    assert_eq!(by("extra on the partial block only").keys, base.keys);
}

#[test]
fn independent_python_implementation_agrees() {
    // The interpreter: $KVTIER_PYTHON, else the venv that `.ci/run` builds, else python3.
    let venv = "/var/cache/kvtier/pytest-venv/bin/python";
    let python = std::env::var("KVTIER_PYTHON").unwrap_or_else(|_| {
        if Path::new(venv).exists() {
            venv.into()
        } else {
            "python3".into()
        }
    });
    let out = std::process::Command::new(&python)
        .arg(root().join("docs/keyspec_check.py"))
        .arg("check")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python}: {e}; set KVTIER_PYTHON (bash .ci/run sets it up)")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'xxhash'"),
        "{python} lacks the xxhash module: `pip install xxhash`, or run `bash .ci/run`, which builds a venv with it"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python implementation disagrees:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
