//! The soak in every test run, for two minutes: the shared conversation trace at four times its
//! rate through a real agent and two pool servers with replication 2, while the fault injector
//! kills and restarts a pool server and the agent and flips bytes in segment files. No block
//! may come back wrong and no engine call may end past its deadline.

use std::process::Command;

#[test]
fn two_minutes_of_faults_give_no_wrong_byte_and_no_late_call() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvtier"))
        .args([
            "bench",
            "soak",
            "--seconds",
            "120",
            "--speed",
            "4",
            "--fault-every",
            "10",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["wrong_blocks"], 0, "{r}");
    assert_eq!(r["past_deadline"], 0, "{r}");
    assert!(r["requests"].as_u64().unwrap() > 200, "{r}");
    assert!(r["hits"].as_u64().unwrap() > 0, "{r}");
    for f in r["faults"].as_array().unwrap() {
        assert!(
            f[1].as_u64().unwrap() >= 3,
            "each fault at least three times: {r}"
        );
    }
    for p in r["processes"].as_array().unwrap() {
        let (start, end) = (p["fds"][0].as_u64().unwrap(), p["fds"][1].as_u64().unwrap());
        assert!(end <= start + 64, "descriptors grew: {p}");
    }
}
