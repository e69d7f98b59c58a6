//! The shape of the workspace, checked: no import cycle between the top-level modules of any
//! crate (Cargo already forbids cycles between crates), no source file over 800 lines outside
//! tests, and the core crate free of the async runtime, gRPC and the CLI's dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every crate's `src` folder: the command's at the root, then `crates/*/src` and `ffi/src`.
fn crate_sources() -> Vec<PathBuf> {
    let mut out = vec![root().join("src"), root().join("ffi/src")];
    for e in std::fs::read_dir(root().join("crates")).unwrap() {
        let p = e.unwrap().path().join("src");
        if p.is_dir() {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src` belongs to (`None` for the crate root).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// The first path segments after `crate::` (and, in a top-level module's own file, after
/// `super::`, which is the crate root there), including those inside `crate::{a, b::c}`.
fn references(text: &str, super_is_root: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut prefixes = vec!["crate::"];
    if super_is_root {
        prefixes.push("super::");
    }
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for p in &prefixes {
            let mut rest = code;
            while let Some(i) = rest.find(p) {
                let before = rest[..i].chars().last();
                rest = &rest[i + p.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                if let Some(group) = rest.strip_prefix('{') {
                    let inner = &group[..group.find('}').unwrap_or(group.len())];
                    for item in inner.split(',') {
                        let name: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        out.insert(name);
                    }
                } else {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// A cycle in `graph`, if there is one, as the list of modules around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The module graph of one crate: top-level module -> the top-level modules it names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let tops: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
    for f in &files {
        let Some(m) = top_module(src, f) else {
            continue;
        };
        let rel = f.strip_prefix(src).unwrap();
        let own_file = rel.components().count() == 1
            || rel.file_name().is_some_and(|n| n == "mod.rs") && rel.components().count() == 2;
        let text = std::fs::read_to_string(f).unwrap();
        let deps = graph.entry(m.clone()).or_default();
        for r in references(&text, own_file) {
            if r != m && tops.contains(&r) {
                deps.insert(r);
            }
        }
    }
    graph
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    for src in crate_sources() {
        let graph = module_graph(&src);
        if src.ends_with("crates/core/src") {
            // The scan sees the core's modules and the edges between them.
            assert!(graph.len() >= 8, "{graph:?}");
            assert!(graph["block"].contains("key"), "{graph:?}");
        }
        if let Some(c) = find_cycle(&graph) {
            panic!(
                "{}: modules import in a circle: {}",
                src.display(),
                c.join(" -> ")
            );
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let text_a = "use crate::b::X;\n";
    let text_b = "use crate::{a::Y, c};\n";
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), references(text_a, false));
    g.insert("b".to_string(), references(text_b, false));
    assert_eq!(g["b"], BTreeSet::from(["a".to_string(), "c".to_string()]));
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    g.get_mut("b").unwrap().remove("a");
    assert_eq!(find_cycle(&g), None);
}

#[test]
fn no_source_file_outside_tests_is_over_800_lines() {
    let mut long = Vec::new();
    for src in crate_sources() {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            let rel = f.strip_prefix(&src).unwrap();
            if rel.ends_with("tests.rs") || rel.components().any(|c| c.as_os_str() == "tests") {
                continue;
            }
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            if n > 800 {
                long.push(format!("{} ({n} lines)", f.display()));
            }
        }
    }
    assert!(long.is_empty(), "split these by responsibility: {long:?}");
}

#[test]
fn the_core_crate_has_no_runtime_grpc_or_cli_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "-p",
            "kvtier-core",
            "--all-features",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains("kvtier-core") && names.contains("xxhash-rust"),
        "{tree}"
    );
    for banned in ["tokio", "tonic", "prost", "clap", "anyhow", "hyper"] {
        assert!(
            !names.contains(banned),
            "kvtier-core depends on {banned}:\n{tree}"
        );
    }
}
