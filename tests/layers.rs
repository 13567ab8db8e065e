//! The layers point one way (docs/architecture.md: config -> plan -> the adapters -> the agent): read
//! from the source, every `crate::<module>` a top-level module names is an edge, and the
//! graph has no cycle. `config`, `net`, `consul` and `state` in particular never name `plan`:
//! the planner produces their inputs, not the other way round.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules: `src/<name>.rs` and `src/<name>/`, without the crate roots.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let files = if path.is_dir() {
            rust_files(&path)
        } else {
            vec![path.clone()]
        };
        modules.entry(name).or_insert_with(Vec::new).extend(files);
    }
    modules
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The modules `text` names as `crate::a` or `crate::{a, b::c}`.
fn named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                names.insert(ident(item.trim()));
            }
        } else {
            names.insert(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

/// The identifier `text` starts with.
fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    modules
        .iter()
        .map(|(name, files)| {
            let mut deps = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(file).unwrap();
                deps.extend(named(&text));
            }
            deps.retain(|d| d != name && modules.contains_key(d));
            (name.clone(), deps)
        })
        .collect()
}

/// A cycle through `node`, if any, as the path that closes it.
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut cycle = path[at..].to_vec();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    path.push(node.to_string());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(cycle) = cycle_from(graph, next, path) {
            return Some(cycle);
        }
    }
    path.pop();
    None
}

#[test]
fn top_level_modules_form_no_cycle_and_adapters_never_name_the_planner() {
    let graph = graph();
    let text: Vec<String> = graph
        .iter()
        .map(|(m, deps)| {
            format!(
                "{m} -> {}",
                deps.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        })
        .collect();
    eprintln!("{}", text.join("\n"));
    for module in ["config", "net", "consul", "state"] {
        assert!(
            !graph[module].contains("plan"),
            "{module} names plan:\n{}",
            text.join("\n")
        );
    }
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module, &mut Vec::new()) {
            panic!("a cycle: {}\n{}", cycle.join(" -> "), text.join("\n"));
        }
    }
}

#[test]
fn the_reader_sees_grouped_imports() {
    assert_eq!(
        named("use crate::{net, state};\nuse crate::plan::X;\nuse crate::{self as c, files::Dir};"),
        ["files", "net", "plan", "state"].map(String::from).into()
    );
}
