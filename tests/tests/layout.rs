//! The crates keep a layering a newcomer can follow: no two top-level modules of a crate
//! use each other, directly or through others. A module that several need (proposing a
//! command, the clock, a shared value type) gets a module of its own that they all use,
//! instead of each reaching into the other.
//!
//! The check reads the sources: a module `m` (the file `src/m.rs` and everything under
//! `src/m/`) uses module `n` when its non-test code names `crate::n`. Comments and
//! `#[cfg(test)]` items are left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates whose top-level modules must form no cycle.
const ACYCLIC: &[&str] = &["scheduler", "node-agent", "cli"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Source without `//` comments and without `#[cfg(test)]` items (an item ending at `;`,
/// or a `{ … }` block, matched by braces).
fn non_test_code(src: &str) -> String {
    let uncommented: String = src
        .lines()
        .map(|l| match l.find("//") {
            // `://` is a URL inside a string, not a comment.
            Some(i) if !l[..i].ends_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = uncommented.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let semi = item.find(';');
        let open = item.find('{');
        let end = match (semi, open) {
            (Some(s), Some(o)) if s < o => s + 1,
            (Some(s), None) => s + 1,
            (_, Some(o)) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (i, c) in item[o..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = o + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Top-level module names `code` reaches through `crate::`: `crate::a::b` gives `a`, and
/// `use crate::{a::X, b}` gives `a` and `b` (only the group's first level).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before_ok = rest[..at].chars().next_back().is_none_or(|c| !is_ident(c));
        rest = &rest[at + "crate::".len()..];
        if !before_ok {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1usize;
            let mut start = true;
            let mut name = String::new();
            for c in group.chars() {
                if depth == 1 && start && is_ident(c) {
                    name.push(c);
                    continue;
                }
                if !name.is_empty() {
                    out.insert(std::mem::take(&mut name));
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 1 => break,
                    '}' => depth -= 1,
                    ',' if depth == 1 => start = true,
                    c if !c.is_whitespace() => start = false,
                    _ => {}
                }
            }
            if !name.is_empty() {
                out.insert(name);
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Which top-level module uses which, from each module's sources.
fn graph(sources: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, BTreeSet<String>> {
    sources
        .iter()
        .map(|(m, files)| {
            let uses = files
                .iter()
                .flat_map(|src| crate_paths(&non_test_code(src)))
                .filter(|n| n != m && sources.contains_key(n))
                .collect();
            (m.clone(), uses)
        })
        .collect()
}

/// One cycle of `g` as the path `a → b → … → a`, if there is any.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(m.to_string(), Mark::OnPath);
        path.push(m.to_string());
        for n in &g[m] {
            match marks[n] {
                Mark::OnPath => {
                    let from = path.iter().position(|p| p == n).expect("on the path");
                    let mut cycle = path[from..].to_vec();
                    cycle.push(n.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(n, g, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(m.to_string(), Mark::Done);
        None
    }
    let mut marks: BTreeMap<String, Mark> = g.keys().map(|k| (k.clone(), Mark::New)).collect();
    for m in g.keys() {
        if marks[m] == Mark::New {
            if let Some(c) = visit(m, g, &mut marks, &mut vec![]) {
                return Some(c);
            }
        }
    }
    None
}

fn rust_files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files_under(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A test-only file: test modules and fixtures kept in files of their own.
fn is_test_file(p: &Path) -> bool {
    let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    name == "tests" || name.ends_with("_tests") || name == "test_fixtures"
}

/// Each top-level module of the crate in `src` with the sources of its non-test files.
fn crate_sources(src: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(src)
        .expect("crate src/ readable")
        .flatten()
    {
        let p = e.path();
        let Some(name) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        if p.extension().is_none_or(|x| x != "rs")
            || name == "lib"
            || name == "main"
            || is_test_file(&p)
        {
            continue;
        }
        let mut files = vec![p.clone()];
        rust_files_under(&src.join(&name), &mut files);
        let texts = files
            .iter()
            .filter(|f| !is_test_file(f))
            .map(|f| std::fs::read_to_string(f).expect("source readable"))
            .collect();
        out.insert(name, texts);
    }
    out
}

#[test]
fn top_level_modules_form_no_cycle() {
    let root = workspace_root();
    let mut failures = vec![];
    for krate in ACYCLIC {
        let sources = crate_sources(&root.join(krate).join("src"));
        assert!(
            sources.len() > 3,
            "{krate}: found {} modules",
            sources.len()
        );
        if let Some(cycle) = find_cycle(&graph(&sources)) {
            failures.push(format!("{krate}: {}", cycle.join(" → ")));
        }
    }
    assert!(
        failures.is_empty(),
        "modules that use each other (move what they share into a module of its own):\n{}",
        failures.join("\n")
    );
}

fn modules(list: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    list.iter()
        .map(|(m, src)| (m.to_string(), vec![src.to_string()]))
        .collect()
}

#[test]
fn a_cycle_through_a_third_module_is_found() {
    let g = graph(&modules(&[
        ("a", "use crate::b::Thing;"),
        ("b", "fn f() { crate::c::g() }"),
        ("c", "use crate::{d, a::{X, Y}};"),
        ("d", ""),
    ]));
    assert_eq!(g["c"], BTreeSet::from(["a".to_string(), "d".to_string()]));
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn comments_test_items_and_lookalikes_are_not_uses() {
    let g = graph(&modules(&[
        (
            "a",
            "//! see [`crate::b`]\nuse x::notcrate::b;\n#[cfg(test)]\nmod tests { use crate::b; }\n\
             #[cfg(test)]\nuse crate::b::Y;",
        ),
        ("b", "use crate::a::Z; // crate::c\n"),
        ("c", ""),
    ]));
    assert_eq!(g["a"], BTreeSet::new(), "{g:?}");
    assert_eq!(g["b"], BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&g), None);
}
