//! Tests of the configuration: the key table, parsing, validation, layers.

use super::*;

fn err(text: &str, sections: &[&str]) -> String {
    match Config::parse(text).and_then(|c| c.validate(sections).map(|_| c)) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_default_file_is_the_defaults_and_lists_every_key() {
    let text = default_file();
    assert_eq!(Config::parse(&text).unwrap(), Config::default());
    for k in KEYS {
        assert!(text.contains(&format!("{} = ", k.name)), "{}", k.path());
        assert!(text.contains(&k.env()) && text.contains(&k.flag()));
    }
    Config::default().validate(&SECTIONS).unwrap();
    // The examples of keys unset by default are valid values too.
    let mut all = Config::default();
    for k in KEYS.iter().filter(|k| k.default.is_none()) {
        let doc = format!("[{}]\n{} = {}\n", k.section, k.name, k.example);
        let c = Config::parse(&doc).unwrap();
        assert_ne!(c, Config::default(), "{}", k.path());
        let o = Override {
            key: k,
            value: k.example.trim_matches('"').to_string(),
            from: "test".into(),
        };
        all.apply(&o).unwrap();
    }
    // Every field of every section is a key (the serialised form, with every optional
    // key set, has exactly the keys of the table).
    let table: toml::Table = toml::from_str(&all.to_toml()).unwrap();
    for s in SECTIONS {
        let fields: Vec<&str> = table[s]
            .as_table()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut keys: Vec<&str> = keys_of(s).map(|k| k.name).collect();
        let mut fields_sorted = fields.clone();
        fields_sorted.sort();
        keys.sort();
        assert_eq!(fields_sorted, keys, "[{s}]");
    }
    let order = |s: &str| keys_of(s).map(|k| k.name).collect::<Vec<_>>();
    assert_eq!(order("log"), LogSection::FIELDS);
    assert_eq!(order("agent"), AgentSection::FIELDS);
    assert_eq!(order("pool"), PoolSection::FIELDS);
}

#[test]
fn every_key_takes_its_default_as_text() {
    let mut c = Config::default();
    for k in KEYS.iter().filter(|k| k.default.is_some()) {
        let d = k.default.unwrap();
        let text = match d {
            "[]" => String::new(),
            d => d.trim_matches('"').to_string(),
        };
        c.apply(&Override {
            key: k,
            value: text,
            from: "test".into(),
        })
        .unwrap_or_else(|e| panic!("{}: {e}", k.path()));
    }
    assert_eq!(c, Config::default());
}

#[test]
fn unknown_fields_are_named_with_what_is_allowed() {
    let e = err("[agent]\narena_byte = \"1GiB\"\n", &["agent"]);
    assert!(
        e.contains("arena_byte") && e.contains("arena_bytes") && e.contains("line 2"),
        "{e}"
    );
    let e = err("[agnet]\n", &["agent"]);
    assert!(e.contains("agnet") && e.contains("agent"), "{e}");
}

#[test]
fn bad_values_are_named() {
    let cases = [
        ("[pool]\ncapacity = -1\n", "pool.capacity", "negative"),
        (
            "[pool]\ncapacity = \"-5GiB\"\n",
            "pool.capacity",
            "negative",
        ),
        ("[pool]\ncapacity = 0\n", "pool.capacity", "room"),
        (
            "[pool]\ncapacity = \"12 parsecs\"\n",
            "pool.capacity",
            "unit",
        ),
        (
            "[pool]\nsegment_bytes = 100000\n",
            "pool.segment_bytes",
            "4 KiB",
        ),
        ("[pool]\nio = \"aio\"\n", "pool.io", "psync"),
        ("[pool]\nlisten = \"nowhere\"\n", "pool.listen", ""),
        (
            "[pool]\nmetrics_addr = \"9465\"\n",
            "pool.metrics_addr",
            "none",
        ),
        ("[log]\nformat = \"xml\"\n", "log.format", "json"),
        ("[log]\nlevel = \"kvtier=loud\"\n", "log.level", "level"),
        (
            "[agent]\nreplication = 0\n",
            "agent.replication",
            "at least 1",
        ),
        (
            "[agent]\npool_servers = [\"a:1\"]\nreplication = 2\n",
            "agent.replication",
            "at most",
        ),
        (
            "[agent]\npool_servers = [\"a:1\", \"b\"]\n",
            "agent.pool_servers[1]",
            "host:port",
        ),
        (
            "[agent]\ntenants = [\"chat: uid=1\", \"batch: user=2\"]\n",
            "agent.tenants[1]",
            "unknown key `user`",
        ),
        (
            "[agent]\ntenants = [\"chat: uid=1\", \"chat: gid=2\"]\n",
            "agent.tenants",
            "configured twice",
        ),
        (
            "[agent]\nno_pool = true\nshared_dir = \"/x\"\n",
            "agent.shared_dir",
            "conflicts",
        ),
        (
            "[agent]\narena_bytes = \"1MiB\"\n",
            "agent.arena_bytes",
            "holds no",
        ),
        (
            "[agent]\nobject_bytes = \"1GiB\"\n",
            "agent.object_bytes",
            "64MiB",
        ),
        ("[agent]\nwrite_queue = \"many\"\n", "agent.write_queue", ""),
        (
            "[agent]\npool_transport = \"udp\"\n",
            "agent.pool_transport",
            "tcp",
        ),
        ("[agent]\nsocket = \"\"\n", "agent.socket", "empty path"),
        ("[agent]\ndata = \"\"\n", "agent.data", "empty path"),
        (
            "[agent]\npool_secret_file = \"\"\n",
            "agent.pool_secret_file",
            "empty path",
        ),
        (
            "[agent]\nshared_dir = \"\"\n",
            "agent.shared_dir",
            "empty path",
        ),
        ("[pool]\ndata = \"\"\n", "pool.data", "empty path"),
        (
            "[pool]\nstream_chunk = \"32KiB\"\n",
            "pool.stream_chunk",
            "64 KiB",
        ),
        (
            "[pool]\nstream_chunk = \"128MiB\"\n",
            "pool.stream_chunk",
            "64 MiB",
        ),
        (
            "[pool]\nstall_timeout_ms = 0\n",
            "pool.stall_timeout_ms",
            "at least 1",
        ),
        (
            "[pool]\nsecret_file = \"\"\n",
            "pool.secret_file",
            "empty path",
        ),
    ];
    for (text, field, what) in cases {
        let sections = ["log", "agent", "pool"];
        let e = err(text, &sections);
        assert!(e.contains(field) && e.contains(what), "{text}: {e}");
    }
}

#[test]
fn layers_apply_in_order_and_sections_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("k.toml");
    std::fs::write(
        &f,
        "[agent]\narena_bytes = \"2GiB\"\nobject_bytes = \"1MiB\"\n[pool]\ncapacity = \"1TiB\"\n",
    )
    .unwrap();
    let env = vec![
        ("KVTIER_AGENT_ARENA_BYTES".to_string(), "3GiB".to_string()),
        ("KVTIER_AGENT_WRITE_QUEUE".to_string(), "10".to_string()),
        (
            "KVTIER_AGENT_PORT".to_string(),
            "tcp://10.0.0.1:80".to_string(),
        ),
        ("KVTIER_POOL_CAPACITY".to_string(), "-1".to_string()),
        ("KVTIER_LOG".to_string(), "info".to_string()),
        ("HOME".to_string(), "/root".to_string()),
    ];
    let arena = KEYS
        .iter()
        .find(|k| k.path() == "agent.arena_bytes")
        .unwrap();
    let flags = [Override {
        key: arena,
        value: "4GiB".into(),
        from: "flag --arena-bytes".into(),
    }];
    // Pool variables do not touch an agent's configuration.
    let l = Config::load(Some(&f), env.clone(), &flags, &["log", "agent"]).unwrap();
    assert_eq!(
        l.config.agent.arena_bytes,
        ByteSize(4 << 30),
        "flag over env over file"
    );
    assert_eq!(
        l.config.agent.object_bytes,
        ByteSize(1 << 20),
        "file over default"
    );
    assert_eq!(l.config.agent.write_queue, 10, "env over default");
    assert_eq!(l.config.pool.capacity, ByteSize(1 << 40));
    assert_eq!(l.config.log.level, "info");
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("KVTIER_AGENT_PORT"));
    let l = Config::load(Some(&f), env.clone(), &[], &["log", "agent"]).unwrap();
    assert_eq!(
        l.config.agent.arena_bytes,
        ByteSize(3 << 30),
        "env over file"
    );
    let explicit: Vec<&str> = l.explicit.iter().map(String::as_str).collect();
    assert_eq!(
        explicit,
        [
            "agent.arena_bytes",
            "agent.object_bytes",
            "agent.write_queue",
            "log.level",
            "pool.capacity"
        ]
    );
    let e = Config::load(Some(&f), env, &[], &["log", "pool"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pool.capacity") && e.contains("KVTIER_POOL_CAPACITY"),
        "{e}"
    );
    // KVTIER_LOG_LEVEL wins over the older KVTIER_LOG.
    let env = vec![
        ("KVTIER_LOG_LEVEL".to_string(), "debug".to_string()),
        ("KVTIER_LOG".to_string(), "info".to_string()),
    ];
    let l = Config::load(None, env, &[], &["log"]).unwrap();
    assert_eq!(l.config.log.level, "debug");
}

#[test]
fn sizes_print_in_the_unit_they_parse_from() {
    for s in ["1GiB", "64MiB", "4KiB", "4097", "1TiB", "0"] {
        assert_eq!(ByteSize::parse(s).unwrap().to_string(), s);
    }
    assert_eq!(ByteSize::parse("1.5GB").unwrap(), ByteSize(1_500_000_000));
    assert_eq!(
        Config::parse("[pool]\ncapacity = 4096\n")
            .unwrap()
            .pool
            .capacity,
        ByteSize(4096)
    );
}
