//! The README and `docs/` name only what exists: every relative link resolves, every repository
//! path they name is in the tree, and every subcommand they show is in its binary's `--help`.
//! Documentation drifts as code moves; this is where a move that forgot its pages fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The pages checked: the README, every page of `docs/`, and the folders' READMEs.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![
        root.join("README.md"),
        root.join("configs/README.md"),
        root.join("fuzz/README.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("a docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// Every file and folder of the repository (relative, `/`-separated), `target/` and `.git/`
/// left out.
fn tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable folder") {
            let path = entry.expect("an entry").path();
            let rel = path.strip_prefix(root).expect("below the root");
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel == "target" || rel == ".git" {
                continue;
            }
            if path.is_dir() {
                out.insert(format!("{rel}/"));
                stack.push(path);
            } else {
                out.insert(rel);
            }
        }
    }
    out
}

/// What a page shows as code: its inline code spans and the lines of its fenced blocks, with a
/// shell comment (` # ...`) cut off each fenced line.
fn code_of(text: &str) -> Vec<String> {
    let span = Regex::new(r"`([^`\n]+)`").expect("a valid regex");
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            let code = line.split(" # ").next().unwrap_or(line);
            if !code.trim_start().starts_with('#') {
                out.push(code.to_string());
            }
        } else {
            out.extend(span.captures_iter(line).map(|c| c[1].to_string()));
        }
    }
    out
}

/// A binary's subcommands, from the "Commands:" section of its `--help`.
fn subcommands(bin: &str) -> BTreeSet<String> {
    let out = Command::new(assert_cmd::cargo::cargo_bin(bin))
        .arg("--help")
        .output()
        .unwrap_or_else(|e| {
            panic!("{bin} --help: {e} (run the whole suite: cargo test --workspace)")
        });
    let help = String::from_utf8_lossy(&out.stdout);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Everything wrong with the pages, one line each: `page: what`.
fn problems(root: &Path) -> Vec<String> {
    let tree = tree(root);
    let link = Regex::new(r"\]\(([^)\s]+)\)").expect("a valid regex");
    // A path that starts at one of the repository's top-level folders.
    let tops: Vec<String> = tree
        .iter()
        .filter(|p| p.ends_with('/') && p.matches('/').count() == 1)
        .cloned()
        .collect();
    let token = Regex::new(r"[A-Za-z0-9_.\-/]+").expect("a valid regex");
    let command = Regex::new(r"(?:^|[\s/(])(shard-tool|loader|trainer) ([a-z][a-z0-9-]*)")
        .expect("a valid regex");
    let commands: BTreeMap<&str, BTreeSet<String>> = ["shard-tool", "loader", "trainer"]
        .into_iter()
        .map(|b| (b, subcommands(b)))
        .collect();
    let mut out = Vec::new();
    for page in pages(root) {
        let name = page
            .strip_prefix(root)
            .expect("below the root")
            .display()
            .to_string();
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{name}: {e}"));
        let dir = page.parent().expect("a page is in a folder");
        for c in link.captures_iter(&text) {
            let target = c[1].split('#').next().unwrap_or("");
            let external = target.contains("://") || target.starts_with("mailto:");
            if !target.is_empty() && !external && !dir.join(target).exists() {
                out.push(format!("{name}: link ({}) leads nowhere", &c[1]));
            }
        }
        for code in code_of(&text) {
            for m in token.find_iter(&code) {
                // A pattern (`a{1,2}`, `*.rs`) or a placeholder names no one path.
                if code[m.end()..].starts_with(['{', '*', '<']) {
                    continue;
                }
                let t = m.as_str().trim_end_matches(['.', ',', ':']);
                let rooted = tops.iter().any(|top| t.starts_with(top.as_str()));
                if rooted && !tree.contains(t) && !tree.contains(&format!("{t}/")) {
                    out.push(format!("{name}: `{t}` is not in the repository"));
                } else if !rooted && t.contains('/') && t.ends_with(".rs") {
                    // A path inside a crate (`server/share.rs`): some file must end with it.
                    // (Other files named from inside a folder are mostly other projects':
                    // timm's `timm/data/mixup.py`.)
                    let ends = |p: &String| p.ends_with(&format!("/{t}")) || p == t;
                    if !tree.iter().any(ends) {
                        out.push(format!("{name}: `{t}` is no file's path"));
                    }
                }
            }
            for c in command.captures_iter(&code) {
                let (bin, sub) = (&c[1], &c[2]);
                if !commands[bin].contains(sub) {
                    out.push(format!(
                        "{name}: `{bin} {sub}`: {bin} has no subcommand {sub}"
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn every_link_path_and_subcommand_in_the_docs_exists() {
    let found = problems(&root());
    assert!(
        found.is_empty(),
        "{} problems in README.md and docs/:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn a_broken_path_link_or_subcommand_is_found() {
    // The check itself, on a copy of the tree's pages with one of each kind of breakage.
    let copy = tempfile::tempdir().expect("a temporary folder");
    let root = copy.path();
    for dir in ["docs", "configs", "fuzz", "loader/src", "tests"] {
        std::fs::create_dir_all(root.join(dir)).expect("a folder");
    }
    std::fs::write(root.join("loader/src/lib.rs"), "").expect("a file");
    std::fs::write(root.join("configs/README.md"), "").expect("a file");
    std::fs::write(root.join("fuzz/README.md"), "").expect("a file");
    std::fs::write(
        root.join("README.md"),
        "See [the design](docs/design.md) and [gone](docs/gone.md).\n\
         The loader's root is `loader/src/lib.rs`; `loader/src/gone.rs` is not.\n\
         ```sh\nloader serve --shards x   # the daemon\ntrainer fly --to moon\n```\n",
    )
    .expect("a file");
    std::fs::write(root.join("docs/design.md"), "`server/nowhere.rs`\n").expect("a file");
    let found = problems(root);
    let expected = [
        "README.md: link (docs/gone.md) leads nowhere",
        "README.md: `loader/src/gone.rs` is not in the repository",
        "README.md: `trainer fly`: trainer has no subcommand fly",
        "docs/design.md: `server/nowhere.rs` is no file's path",
    ];
    assert_eq!(found, expected);
}
