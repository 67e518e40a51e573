//! The house rules of `src/`: arrows between top-level modules only point down.
//!
//! Reads every `crate::…` path in `src/` (in `use` lines, in code and in comments: a doc
//! link is an arrow too, rustdoc resolves it; grouped imports included), maps each file to its top-level module (`src/source/client/mod.rs` →
//! `source`), and fails on
//! - any import cycle between top-level modules (printed with the files that make each
//!   arrow), and
//! - a module importing from a layer above its own (see [`LAYERS`]; README "Layout").
//!
//! Pure text: no build of the crate is needed, so it runs in milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may import from its own layer and the layers below;
/// within a layer only the cycle check applies.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "vocabulary",
        &[
            "event", "lsn", "names", "secret", "conninfo", "retry", "shutdown", "tls",
        ],
    ),
    ("telemetry and flow control", &["telemetry", "flow"]),
    ("store", &["store"]),
    ("source", &["source"]),
    ("sinks", &["sink"]),
    ("status writer", &["status"]),
    ("dispatch", &["dispatch"]),
    ("sweeper", &["sweeper"]),
    ("configuration", &["config"]),
    ("operator tools", &["ops"]),
    ("admin server", &["admin"]),
    ("wiring", &["relay"]),
    ("commands", &["cli"]),
];

/// `from → to → files` for every arrow between two different top-level modules.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → `a`; `src/a.rs` → `a`; `lib.rs` and `main.rs` → `None` (the roots).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        name => Some(name.trim_end_matches(".rs").to_owned()),
    }
}

/// The top-level modules a source text names through `crate::`, in code and comments.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                // `crate::{a, b::c}`: the names up to the closing brace (one line).
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != "self" {
                        found.insert(name);
                    }
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
            rest = after;
        }
    }
    found
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let Some(from) = top_module(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source file");
        let shown = file
            .strip_prefix(&src)
            .unwrap_or(&file)
            .display()
            .to_string();
        let arrows = graph.entry(from.clone()).or_default();
        for to in imports(&text) {
            if to != from {
                arrows.entry(to).or_default().insert(shown.clone());
            }
        }
    }
    graph
}

/// One cycle through the graph, as the list of modules on it, if there is any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|arrows| arrows.keys()) {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let graph = graph();
    if let Some(cycle) = find_cycle(&graph) {
        let arrows: Vec<String> = cycle
            .windows(2)
            .map(|pair| {
                let files = &graph[&pair[0]][&pair[1]];
                format!("  {} → {} ({})", pair[0], pair[1], join(files))
            })
            .collect();
        panic!("import cycle:\n{}", arrows.join("\n"));
    }
}

#[test]
fn every_arrow_points_down_the_layers() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (from, arrows) in &graph {
        let Some(from_layer) = layer_of(from) else {
            wrong.push(format!("  {from}: a top-level module missing from LAYERS"));
            continue;
        };
        for (to, files) in arrows {
            match layer_of(to) {
                Some(to_layer) if to_layer <= from_layer => {}
                Some(to_layer) => wrong.push(format!(
                    "  {from} ({}) imports {to} ({}), a layer above it: {}",
                    LAYERS[from_layer].0,
                    LAYERS[to_layer].0,
                    join(files)
                )),
                None => wrong.push(format!("  {to}: imported by {from} but not in LAYERS")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that point up:\n{}",
        wrong.join("\n")
    );
}

/// The check itself: it must see plain, grouped, in-code and doc-link paths, and
/// find a cycle when there is one.
#[test]
fn the_check_finds_what_it_must() {
    let text =
        "use crate::a::B;\nuse crate::{c, d::E};\nlet x = crate::f::g();\n/// [`crate::h`]\n";
    let found: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(found, ["a", "c", "d", "f", "h"]);

    let mut graph = Graph::new();
    let arrow = |graph: &mut Graph, from: &str, to: &str| {
        graph
            .entry(from.into())
            .or_default()
            .entry(to.into())
            .or_default()
            .insert("x.rs".into());
    };
    arrow(&mut graph, "a", "b");
    arrow(&mut graph, "b", "c");
    assert_eq!(find_cycle(&graph), None);
    arrow(&mut graph, "c", "a");
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

fn join(files: &BTreeSet<String>) -> String {
    files.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// Prints the arrows between top-level modules, by layer (for the README and reviews):
/// `cargo test --test module_graph -- --ignored --nocapture`.
#[test]
#[ignore = "prints the graph; asserts nothing"]
fn print_the_graph() {
    let graph = graph();
    for (name, modules) in LAYERS.iter().rev() {
        println!("{name}:");
        for module in modules.iter() {
            let arrows: Vec<&str> = graph
                .get(*module)
                .into_iter()
                .flat_map(|arrows| arrows.keys().map(String::as_str))
                .collect();
            println!("  {module} → {}", arrows.join(", "));
        }
    }
}
