//! Real C programs against libkvtier: `ffi/tests/c/abi_test.c` is compiled by this test against
//! the static library and the committed header, then run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;
use common::{lib_dir, Agent};

fn ffi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles the C test program once per test process.
fn program() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        common::build_ffi();
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

#[test]
fn c_engine_saves_and_another_c_process_loads() {
    let agent = Agent::start_in(tempfile::tempdir().unwrap());
    let sock = agent.socket.display().to_string();
    assert_eq!(run(&["save".into(), sock.clone()]).trim(), "saved 256");
    assert_eq!(run(&["load".into(), sock]).trim(), "load ok");
}

#[test]
fn c_client_misuse_gets_status_codes() {
    let agent = Agent::start_in(tempfile::tempdir().unwrap());
    assert_eq!(
        run(&["client-errors".into(), agent.socket.display().to_string()]).trim(),
        "client errors ok"
    );
}

#[test]
fn c_engine_survives_an_agent_kill_and_reconnects() {
    use std::io::{BufRead, BufReader, Write};
    let agent = Agent::start_in(tempfile::tempdir().unwrap());
    let socket = agent.socket.clone();
    let mut engine = Command::new(program())
        .args(["loop".into(), socket.display().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = engine.stdin.take().unwrap();
    let mut lines = BufReader::new(engine.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("the engine exited").unwrap();
    let first = next();
    assert!(first.starts_with("ok 16 "), "{first}");
    // Kill the agent; the engine's next round fails within its deadline (1 s calls) instead of
    // hanging, and the engine process lives on.
    let dir = agent.kill();
    writeln!(stdin).unwrap();
    let failed = next();
    let parts: Vec<&str> = failed.split(' ').collect();
    assert_eq!(parts[0], "err", "{failed}");
    assert!(
        parts[1] == "KVT_ERR_UNAVAILABLE" || parts[1] == "KVT_ERR_TIMEOUT",
        "{failed}"
    );
    let ms: f64 = parts[2].parse().unwrap();
    assert!(ms < 3000.0, "the failed round took {ms} ms");
    // A new agent on the same socket: the engine reconnects by itself.
    let _agent = Agent::start_in(dir);
    let mut rounds = 0;
    loop {
        writeln!(stdin).unwrap();
        let l = next();
        if l.starts_with("ok 16 ") {
            break;
        }
        rounds += 1;
        assert!(rounds < 20, "the engine never reconnected: {l}");
    }
    drop(stdin);
    assert!(engine.wait().unwrap().success());
}
