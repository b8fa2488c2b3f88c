//! The files of each crate form layers: no file imports one that imports it back, directly or
//! through others (issue 11's rule, checked here so that CI enforces it). An import is any
//! `crate::name` or `super::name` path, or a name inside `use crate::{...}`, outside comments,
//! where `name` is another file of the same crate's `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module of `src` (a crate's source directory, flat files only) and the modules it names.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let module = name.strip_suffix(".rs")?;
            (module != "lib").then(|| module.to_string())
        })
        .collect();
    modules
        .iter()
        .map(|module| {
            let text = std::fs::read_to_string(src.join(format!("{module}.rs"))).unwrap();
            let code: String = text
                .lines()
                .map(|line| line.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            let mut named = BTreeSet::new();
            for prefix in ["crate::", "super::"] {
                for (at, _) in code.match_indices(prefix) {
                    let rest = &code[at + prefix.len()..];
                    let names: Vec<&str> = match rest.strip_prefix('{') {
                        Some(group) => group
                            .split('}')
                            .next()
                            .unwrap_or("")
                            .split(',')
                            .map(|part| part.trim().split("::").next().unwrap_or("").trim())
                            .collect(),
                        None => vec![
                            rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                                .next()
                                .unwrap_or(""),
                        ],
                    };
                    for name in names {
                        if name != module && modules.contains(name) {
                            named.insert(name.to_string());
                        }
                    }
                }
            }
            (module.clone(), named)
        })
        .collect()
}

/// The groups of modules that reach one another (Tarjan's strongly connected components), of
/// two or more.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in &self.graph[v] {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    group.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_crate_has_an_import_cycle_between_its_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for krate in ["alloc", "stack", "sched", "gc", "derive"] {
        let graph = imports(&root.join("crates").join(krate).join("src"));
        assert!(graph.len() > 1, "crates/{krate}/src was read");
        let found = cycles(&graph);
        assert!(
            found.is_empty(),
            "import cycles in crates/{krate}: {found:?}"
        );
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", &["b"][..]),
        ("b", &["c"]),
        ("c", &["a"]),
        ("d", &["a"]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_string(), to.iter().map(|t| t.to_string()).collect()))
    .collect();
    assert_eq!(
        cycles(&graph),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
}

#[test]
fn no_source_file_is_over_1500_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    dirs.extend(
        ["alloc", "stack", "sched", "gc", "derive"]
            .map(|c| root.join("crates").join(c).join("src")),
    );
    let mut checked = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                assert!(lines <= 1500, "{} has {lines} lines", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} files found");
}
