//! The documentation stays navigable: every relative link in README.md and docs/*.md
//! points at a file that exists (and, with `#anchor`, at a heading of that file), README
//! stays a front page (at most 300 lines), and no user-facing page names the project's
//! internal issue numbers. Links are checked the way GitHub renders them: paths relative
//! to the page, anchors as GitHub's heading slugs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// README's size limit: beyond it, reference material belongs in docs/.
const README_LINES_MAX: usize = 300;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The pages checked: README.md and every `.md` file under docs/ (recursively).
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Text outside fenced code blocks and inline code spans, line by line (1-based numbers).
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut kept = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                kept.push(c);
            }
        }
        out.push((i + 1, kept));
    }
    out
}

/// Link targets `[text](target)` in one line of prose.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].trim().to_string());
        rest = &after[end..];
    }
    out
}

/// GitHub's heading anchor: lowercase, punctuation dropped except `-` and `_`, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors a page offers: one per heading (duplicates get `-1`, `-2`… as on GitHub).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').replace('`', "");
        let base = slug(&heading);
        let mut name = base.clone();
        let mut n = 0;
        while seen.contains(&name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        seen.insert(name);
    }
    seen
}

/// `page` as a path relative to the workspace root, for messages.
fn shown(root: &Path, page: &Path) -> String {
    page.strip_prefix(root)
        .unwrap_or(page)
        .display()
        .to_string()
}

/// Every broken link of `page`, as `page:line: target (why)`.
fn broken_links(root: &Path, page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).expect("read page");
    let mut out = Vec::new();
    let shown = shown(root, page);
    for (n, line) in prose_lines(&text) {
        for target in link_targets(&line) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.to_path_buf()
            } else {
                page.parent().expect("page has a directory").join(path)
            };
            if !file.exists() {
                out.push(format!("{shown}:{n}: {target} (no such file)"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            let is_md = file.extension().is_some_and(|x| x == "md");
            let offered = if is_md {
                anchors(&std::fs::read_to_string(&file).unwrap_or_default())
            } else {
                BTreeSet::new()
            };
            if !offered.contains(anchor) {
                out.push(format!(
                    "{shown}:{n}: {target} (no heading with that anchor)"
                ));
            }
        }
    }
    out
}

/// Lines of prose naming an internal issue number ("issue 6", "Issue 9").
fn issue_mentions(root: &Path, page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).expect("read page");
    let shown = shown(root, page);
    prose_lines(&text)
        .into_iter()
        .filter(|(_, line)| {
            let lower = line.to_lowercase();
            lower.match_indices("issue ").any(|(at, m)| {
                lower[at + m.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
            })
        })
        .map(|(n, line)| format!("{shown}:{n}: {}", line.trim()))
        .collect()
}

#[test]
fn every_link_in_readme_and_docs_resolves() {
    let root = workspace_root();
    let broken: Vec<String> = pages(&root)
        .iter()
        .flat_map(|p| broken_links(&root, p))
        .collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn readme_stays_a_front_page() {
    let root = workspace_root();
    let lines = std::fs::read_to_string(root.join("README.md"))
        .expect("README.md")
        .lines()
        .count();
    assert!(
        lines <= README_LINES_MAX,
        "README.md has {lines} lines, over {README_LINES_MAX}: move reference material to docs/"
    );
}

#[test]
fn user_facing_pages_name_no_internal_issue_numbers() {
    let root = workspace_root();
    let found: Vec<String> = pages(&root)
        .iter()
        .flat_map(|p| issue_mentions(&root, p))
        .collect();
    assert!(
        found.is_empty(),
        "internal issue numbers:\n{}",
        found.join("\n")
    );
}

/// The checker itself finds what it must: a missing file, a missing anchor, an issue
/// number; and passes good links, code spans and fenced blocks.
#[test]
fn the_checker_catches_broken_links_and_issue_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir(root.join("docs")).expect("docs dir");
    std::fs::write(
        root.join("docs/a.md"),
        "# Page A\n\n## Packing per partition (`berth`)\n\ntext\n",
    )
    .expect("write a.md");
    let readme = "# Front\n\
        [ok](docs/a.md) [ok anchor](docs/a.md#packing-per-partition-berth) [self](#front)\n\
        [gone](docs/missing.md) [bad anchor](docs/a.md#nope) [web](https://example.com/x)\n\
        as issue 6 said\n\
        `[in code](nowhere.md)` and issue #12 is fine\n\
        ```\n[fenced](nowhere.md) issue 7\n```\n";
    std::fs::write(root.join("README.md"), readme).expect("write README");
    let page = root.join("README.md");
    let broken = broken_links(root, &page);
    assert_eq!(
        broken,
        vec![
            "README.md:3: docs/missing.md (no such file)".to_string(),
            "README.md:3: docs/a.md#nope (no heading with that anchor)".to_string(),
        ],
        "want exactly the two broken links"
    );
    let mentions = issue_mentions(root, &page);
    assert_eq!(mentions, vec!["README.md:4: as issue 6 said".to_string()]);
    assert_eq!(pages(root).len(), 2);
}
