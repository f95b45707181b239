//! The module graph has no circles: a test over every `crate::` path in
//! `src/` (doc comments, comments and `#[cfg(test)]` modules left out),
//! run with the library's unit tests. Each top-level module (a file or a
//! directory under `src/`) is a node; a path from one to another is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every top-level module and the modules its non-test code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("a component");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if matches!(module.as_str(), "lib" | "main" | "module_graph_tests") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .lines()
                .map(|l| l.split("//").next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            let targets = edges.entry(module.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    // `use crate::{a::X, b, c::{..}}`: the first segment of each item.
                    let mut depth = 0;
                    let mut item_start = true;
                    let mut word = String::new();
                    for c in group.chars() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            ',' if depth == 0 => item_start = true,
                            c if (c.is_alphanumeric() || c == '_') && item_start => word.push(c),
                            _ if !word.is_empty() => {
                                targets.insert(std::mem::take(&mut word));
                                item_start = false;
                            }
                            _ => {}
                        }
                    }
                } else {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    targets.insert(name);
                }
            }
            targets.remove(&module);
        }
    }
    // Items re-exported at the root (`crate::Settings`) are not modules.
    let modules: BTreeSet<String> = edges.keys().cloned().collect();
    for targets in edges.values_mut() {
        targets.retain(|t| modules.contains(t));
    }
    edges
}

/// The circles of the graph: its strongly connected components of more
/// than one module (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().expect("v is on the stack");
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn no_module_imports_another_that_imports_it_back_however_indirectly() {
    let edges = graph();
    for (from, to) in &edges {
        println!(
            "{from} -> {}",
            to.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    assert!(
        edges.contains_key("ledger") && edges.contains_key("lifecycle"),
        "the graph was read"
    );
    assert_eq!(circles(&edges), Vec::<Vec<String>>::new());
}

#[test]
fn the_ledger_and_the_config_import_nothing_above_them() {
    let edges = graph();
    assert_eq!(
        edges["ledger"],
        BTreeSet::new(),
        "the ledger imports nothing of fanfare's"
    );
    for above in ["ledger", "lifecycle", "notify", "runs", "dispatch", "http"] {
        assert!(!edges["config"].contains(above), "config imports {above}");
    }
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    edges.insert(
        "c".to_string(),
        BTreeSet::from(["a".to_string(), "d".to_string()]),
    );
    assert_eq!(circles(&edges), vec![vec!["a", "b", "c"]]);
}
