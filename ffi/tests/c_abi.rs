//! Real C programs against libkvtier: `ffi/tests/c/abi_test.c` is compiled by this test against
//! the static library and the committed header, then run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn ffi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>, where cargo put libkvtier.a (this test runs from target/<profile>/deps).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Compiles the C test program once per test process.
fn program() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // `cargo test` builds only what tests link (no staticlib): build the library as
        // engines get it, into the same target directory.
        let target = lib_dir().parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "kvtier-ffi", "--lib", "--target-dir"])
            .arg(&target)
            .current_dir(ffi_dir())
            .status()
            .unwrap();
        assert!(status.success(), "building libkvtier failed");
        let lib = lib_dir().join("libkvtier.a");
        assert!(lib.exists(), "{} missing after the build", lib.display());
        let out = std::env::temp_dir().join(format!("kvtier-abi-test-{}", std::process::id()));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
            .arg(ffi_dir().join("include"))
            .arg(ffi_dir().join("tests/c/abi_test.c"))
            .arg(&lib)
            .args(["-lpthread", "-ldl", "-lm", "-o"])
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
        assert!(status.success(), "compiling abi_test.c failed");
        out
    })
}

fn run(args: &[String]) -> String {
    let out = Command::new(program()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "abi_test {:?} failed:\n{}{}",
        args.first(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn c_reproduces_the_key_vectors() {
    let text = std::fs::read_to_string(ffi_dir().join("../docs/key-vectors.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for c in cases.as_array().unwrap() {
        if !c["extras"].as_array().unwrap().is_empty() {
            continue; // extras are covered by the Python binding's test
        }
        let n = &c["namespace"];
        let s = |k: &str| n[k].as_str().unwrap().to_string();
        let u = |k: &str| n[k].as_u64().unwrap().to_string();
        let salt = s("salt_hex");
        let mut args = vec![
            "keys".into(),
            s("model"),
            s("revision"),
            s("kv_dtype"),
            s("layout_id"),
            u("tokens_per_block"),
            u("tp_size"),
            u("tp_rank"),
            u("pp_size"),
            u("pp_rank"),
            if salt.is_empty() { "-".into() } else { salt },
        ];
        args.extend(
            c["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.to_string()),
        );
        let out = run(&args);
        let mut lines = out.lines();
        assert_eq!(
            lines.next().unwrap(),
            format!("ns {}", c["namespace_digest"].as_str().unwrap()),
            "{}",
            c["name"]
        );
        let keys: Vec<&str> = lines.map(|l| l.strip_prefix("key ").unwrap()).collect();
        let want: Vec<&str> = c["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(keys, want, "{}", c["name"]);
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} vectors checked from C");
}

#[test]
fn c_gets_status_codes_and_messages_for_bad_input() {
    assert_eq!(run(&["errors".into()]).trim(), "errors ok");
}

#[test]
fn c_gathers_and_scatters_blocks() {
    assert_eq!(run(&["copy".into()]).trim(), "copy ok");
}
