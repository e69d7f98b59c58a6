//! The Kubernetes manifests (integrations/k8s) against the binaries: every one parses; the
//! ConfigMap's TOML passes the real parser and `kvtier config check`; each daemon container's
//! args and environment pass the real CLI (`--dry-run`); probe, container and Service ports
//! match the configuration's addresses; volumes, socket paths, the pool servers' names and the
//! connector's settings line up. No cluster is involved.

use std::path::Path;
use std::process::{Command, Output};

use yaml_rust2::{Yaml, YamlLoader};

fn kvtier() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvtier"));
    // Only what a test sets: no KVTIER_* from the environment running the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("KVTIER_") {
            c.env_remove(k);
        }
    }
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run kvtier")
}

fn s(y: &Yaml) -> &str {
    y.as_str().unwrap_or_else(|| panic!("not a string: {y:?}"))
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], |v| v.as_slice())
}

/// `9Gi`, `200Gi`, `512Mi`, `1G` in bytes.
fn quantity(q: &str) -> u64 {
    let (num, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = num.parse().unwrap();
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        u => panic!("unit {u}"),
    }
}

fn container<'a>(pod: &'a Yaml, name: &str) -> &'a Yaml {
    list(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The volume mounted at `path` in container `c` of `pod`, and the mount.
fn volume_at<'a>(pod: &'a Yaml, c: &'a Yaml, path: &str) -> (&'a Yaml, &'a Yaml) {
    let m = list(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    let v = list(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == m["name"])
        .unwrap_or_else(|| panic!("no volume {:?}", m["name"]));
    (v, m)
}

/// A probe's port as a number (a port name is resolved through the container's ports).
fn probe_port(c: &Yaml, probe: &str, path: &str) -> i64 {
    let get = &c[probe]["httpGet"];
    assert_eq!(get["path"].as_str(), Some(path), "{probe}");
    match &get["port"] {
        Yaml::Integer(p) => *p,
        Yaml::String(name) => list(&c["ports"])
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("{probe}: no port named {name}")),
        other => panic!("{probe}: port {other:?}"),
    }
}

fn port_named(c: &Yaml, name: &str) -> i64 {
    list(&c["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port {name}"))
}

fn parent(p: &str) -> String {
    Path::new(p).parent().unwrap().to_str().unwrap().to_string()
}

/// Runs a daemon container's args (and literal environment) through the real CLI with
/// `--dry-run`, its `--config` pointing at `config`; returns the effective configuration.
fn dry_run(c: &Yaml, config: &Path) -> (String, toml::Table) {
    let mut args: Vec<String> = list(&c["args"]).iter().map(|a| s(a).to_string()).collect();
    let i = args
        .iter()
        .position(|a| a == "--config")
        .expect("--config in args");
    let in_pod = std::mem::replace(&mut args[i + 1], config.to_str().unwrap().to_string());
    let mut cmd = kvtier();
    cmd.args(&args).arg("--dry-run");
    for e in list(&c["env"]) {
        let (name, value) = (s(&e["name"]), s(&e["value"]));
        assert!(
            kvtier_ops::config::KEYS.iter().any(|k| k.env() == name),
            "{name} is not a configuration variable"
        );
        cmd.env(name, value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "kvtier {args:?} --dry-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        in_pod,
        toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap(),
    )
}

#[test]
fn kubernetes_manifests_agree_with_the_binaries() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("integrations/k8s");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut docs: Vec<Yaml> = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        let parsed = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!parsed.is_empty(), "{f}: no document");
        for d in parsed {
            assert!(d["apiVersion"].as_str().is_some(), "{f}: no apiVersion");
            let kind = s(&d["kind"]).to_string();
            if kind != "Kustomization" {
                assert!(d["metadata"]["name"].as_str().is_some(), "{f}: no name");
                if kind != "Namespace" {
                    assert_eq!(d["metadata"]["namespace"].as_str(), Some("kvtier"), "{f}");
                }
            }
            docs.push(d);
        }
    }
    let find = |kind: &str, name: &str| -> &Yaml {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    // The kustomization applies every manifest.
    let kz = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Kustomization"))
        .unwrap();
    let mut resources: Vec<&str> = list(&kz["resources"]).iter().map(s).collect();
    resources.sort();
    let others: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(resources, others);

    // The ConfigMap's file: the real parser, and the real `kvtier config check`.
    let cm = find("ConfigMap", "kvtier-config");
    let text = s(&cm["data"]["kvtier.toml"]);
    let cfg = kvtier_ops::config::Config::parse(text).unwrap();
    cfg.validate(&kvtier_ops::config::SECTIONS).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("kvtier.toml");
    std::fs::write(&file, text).unwrap();
    let out = run(kvtier().args(["config", "check", "--offline"]).arg(&file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut socket_host_dir = String::new();
    let mut agent_gid = 0;
    let mut agent_socket = String::new();
    for (kind, name, section) in [
        ("DaemonSet", "kvtier-agent", "agent"),
        ("StatefulSet", "kvtier-pool", "pool"),
    ] {
        let obj = find(kind, name);
        let pod = &obj["spec"]["template"]["spec"];
        let c = container(pod, "kvtier");
        assert_eq!(
            s(&list(&c["args"])[0]),
            section,
            "{name} runs `kvtier {section}`"
        );
        // Args and environment are accepted by the real CLI, on the ConfigMap's file.
        let (config_in_pod, eff) = dry_run(c, &file);
        let eff = eff[section].as_table().unwrap();
        let (v, m) = volume_at(pod, c, &parent(&config_in_pod));
        assert_eq!(
            v["configMap"]["name"].as_str(),
            Some("kvtier-config"),
            "{name}"
        );
        assert_eq!(m["readOnly"].as_bool(), Some(true));
        assert!(config_in_pod.ends_with("/kvtier.toml"));
        // Probes go to the metrics port of the configuration, which listens on every
        // interface (kubelet probes the pod IP).
        let metrics: std::net::SocketAddr = eff["metrics_addr"].as_str().unwrap().parse().unwrap();
        assert!(
            metrics.ip().is_unspecified(),
            "{name}: metrics on {metrics}"
        );
        let mport = metrics.port() as i64;
        assert_eq!(port_named(c, "metrics"), mport, "{name}");
        assert_eq!(probe_port(c, "livenessProbe", "/healthz"), mport, "{name}");
        assert_eq!(probe_port(c, "readinessProbe", "/readyz"), mport, "{name}");
        let annotations = &obj["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(mport.to_string().as_str())
        );
        let req = &c["resources"]["requests"];
        assert!(
            req["cpu"].as_str().is_some() && req["memory"].as_str().is_some(),
            "{name}"
        );
        let memory = quantity(s(&req["memory"]));
        for m in list(&c["volumeMounts"]) {
            let known = list(&pod["volumes"]).iter().any(|v| v["name"] == m["name"])
                || list(&obj["spec"]["volumeClaimTemplates"])
                    .iter()
                    .any(|v| v["metadata"]["name"] == m["name"]);
            assert!(known, "{name}: mount {:?} has no volume", m["name"]);
        }
        assert_eq!(pod["enableServiceLinks"].as_bool(), Some(false), "{name}");
        let secret_key = if section == "agent" {
            "pool_secret_file"
        } else {
            "secret_file"
        };
        let secret = eff[secret_key].as_str().unwrap();
        let (v, _) = volume_at(pod, c, &parent(secret));
        assert_eq!(
            v["secret"]["secretName"].as_str(),
            Some("kvtier-pool-secret")
        );

        if section == "agent" {
            let arena = cfg.agent.arena_bytes.0;
            assert!(
                memory >= arena,
                "the agent's memory request covers its arena"
            );
            agent_socket = eff["socket"].as_str().unwrap().to_string();
            let (v, _) = volume_at(pod, c, &parent(&agent_socket));
            socket_host_dir = s(&v["hostPath"]["path"]).to_string();
            let (_, _) = volume_at(pod, c, eff["data"].as_str().unwrap());
            agent_gid = pod["securityContext"]["runAsGroup"].as_i64().unwrap();
        } else {
            let listen: std::net::SocketAddr = eff["listen"].as_str().unwrap().parse().unwrap();
            let control: std::net::SocketAddr = eff["control"].as_str().unwrap().parse().unwrap();
            assert_eq!(port_named(c, "data"), listen.port() as i64);
            assert_eq!(port_named(c, "control"), control.port() as i64);
            assert!(
                memory >= cfg.pool.cache_bytes.0,
                "the pool's memory request covers its cache"
            );
            // The data directory is a persistent volume at least as large as the capacity.
            let m = list(&c["volumeMounts"])
                .iter()
                .find(|m| m["mountPath"].as_str() == eff["data"].as_str())
                .expect("the pool's data directory is mounted");
            let pvc = list(&obj["spec"]["volumeClaimTemplates"])
                .iter()
                .find(|v| v["metadata"]["name"] == m["name"])
                .expect("the data directory is a volume claim");
            let storage = quantity(s(&pvc["spec"]["resources"]["requests"]["storage"]));
            assert!(storage >= cfg.pool.capacity.0);
            // A headless Service names each pod; its ports are the container's.
            let svc_name = s(&obj["spec"]["serviceName"]);
            let svc = find("Service", svc_name);
            assert_eq!(svc["spec"]["clusterIP"].as_str(), Some("None"));
            for p in list(&svc["spec"]["ports"]) {
                assert_eq!(
                    port_named(c, s(&p["targetPort"])),
                    p["port"].as_i64().unwrap()
                );
            }
            // Every pool server the agents list is a pod of this StatefulSet, on its port.
            let replicas = obj["spec"]["replicas"].as_i64().unwrap();
            let ns = s(&obj["metadata"]["namespace"]);
            assert!(!cfg.agent.pool_servers.is_empty());
            assert!(cfg.agent.replication as i64 <= replicas);
            for m in &cfg.agent.pool_servers {
                let ok = (0..replicas).any(|i| {
                    *m == format!(
                        "{name}-{i}.{svc_name}.{ns}.svc.cluster.local:{}",
                        listen.port()
                    )
                });
                assert!(ok, "agent.pool_servers: {m} is no pod of {name}");
            }
        }
    }

    // The inference pod: vLLM with the connector, the agent's socket directory mounted from
    // the same host path, in the agent's group.
    let vllm = find("Deployment", "vllm");
    let pod = &vllm["spec"]["template"]["spec"];
    let c = container(pod, "vllm");
    let args: Vec<&str> = list(&c["args"]).iter().map(s).collect();
    let i = args
        .iter()
        .position(|a| *a == "--kv-transfer-config")
        .unwrap();
    let kv: serde_json::Value = serde_json::from_str(args[i + 1]).unwrap();
    assert_eq!(kv["kv_connector"], "KvtierConnector");
    assert_eq!(kv["kv_connector_module_path"], "kvtier_vllm.connector");
    let extra = kv["kv_connector_extra_config"].as_object().unwrap();
    assert_eq!(extra.keys().collect::<Vec<_>>(), ["socket"]);
    assert_eq!(extra["socket"], agent_socket.as_str());
    let (v, _) = volume_at(pod, c, &parent(&agent_socket));
    assert_eq!(s(&v["hostPath"]["path"]), socket_host_dir);
    let groups: Vec<i64> = list(&pod["securityContext"]["supplementalGroups"])
        .iter()
        .filter_map(Yaml::as_i64)
        .collect();
    assert!(
        groups.contains(&agent_gid),
        "the engine joins the agent's group"
    );
    let env = |n: &str| {
        list(&c["env"])
            .iter()
            .find(|e| e["name"].as_str() == Some(n))
            .map(|e| s(&e["value"]).to_string())
            .unwrap_or_else(|| panic!("no {n}"))
    };
    let client_dir = list(&c["volumeMounts"])
        .iter()
        .find(|m| m["name"].as_str() == Some("kvtier-client"))
        .map(|m| s(&m["mountPath"]).to_string())
        .unwrap();
    assert!(env("KVTIER_LIB").starts_with(&client_dir));
    assert!(env("PYTHONPATH").starts_with(&client_dir));
    // The connector it names exists, and takes a `socket` setting.
    let vllm_pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("integrations/vllm/kvtier_vllm");
    let connector = std::fs::read_to_string(vllm_pkg.join("connector.py")).unwrap();
    assert!(connector.contains("class KvtierConnector"));
    let settings = std::fs::read_to_string(vllm_pkg.join("config.py")).unwrap();
    assert!(
        settings.contains("\n    socket: str"),
        "the connector's settings have `socket`"
    );
}
