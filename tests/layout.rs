//! The architecture's rules, checked on the source: no module of
//! `src/` imports one that imports it back, directly or through others.
//! (Dependencies point one way: bin → daemon → {decide, aws, kernel,
//! notify} → {config, domain}, and decide imports only those two.) A path
//! `crate::…`, `super::…` or `self::…` outside `#[cfg(test)]` and comments
//! counts as an edge to the deepest module it names.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`daemon::peers`) → its source, without its test module.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("bin") {
                    walk(&p, out);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
            let rel = p.strip_prefix(&src_dir).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            // Comments (doc links among them) are not imports.
            // A bare `use a::b` names `a` in this module's scope: read it as
            // `self::a::b` (a crate's name then resolves to no module).
            let text: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(bare_use_as_self)
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(parts.join("::"), text);
        }
    }
    let mut out = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// `use a::…` (or `pub use`, `pub(crate) use`) → `use self::a::…`; any
/// other line as it is.
fn bare_use_as_self(line: &str) -> String {
    let trimmed = line.trim_start();
    let after_vis = trimmed
        .strip_prefix("pub ")
        .or_else(|| {
            trimmed
                .strip_prefix("pub(")
                .and_then(|r| r.split_once(") ").map(|(_, rest)| rest))
        })
        .unwrap_or(trimmed);
    let Some(path) = after_vis.strip_prefix("use ") else {
        return line.to_owned();
    };
    if ["crate::", "super::", "self::", "::"]
        .iter()
        .any(|p| path.starts_with(p))
    {
        return line.to_owned();
    }
    line.replacen("use ", "use self::", 1)
}

/// The module a path (`crate::a::b::Item`, `super::x`) names, as seen from
/// module `from`: the deepest prefix that is a module.
fn resolve(mods: &BTreeMap<String, String>, from: &str, path: &str) -> Option<String> {
    let mut base: Vec<&str> = from.split("::").filter(|s| !s.is_empty()).collect();
    let mut segs: Vec<&str> = path.split("::").map(str::trim).collect();
    match segs[0] {
        "crate" => base.clear(),
        "self" => {}
        "super" => {
            while segs.get(1) == Some(&"super") {
                base.pop();
                segs.remove(0);
            }
            base.pop();
        }
        _ => return None,
    }
    let segs = &segs[1..];
    (0..=segs.len()).rev().find_map(|i| {
        let m = [&base[..], &segs[..i]].concat().join("::");
        mods.contains_key(&m).then_some(m)
    })
}

/// Every module each module imports.
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let path_char = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeMap::new();
    for (m, text) in mods {
        let mut to = BTreeSet::new();
        for prefix in ["crate::", "super::", "self::"] {
            for (i, _) in text.match_indices(prefix) {
                let before = text[..i].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let rest = &text[i..];
                let end = rest.find(|c| !path_char(c)).unwrap_or(rest.len());
                let path = rest[..end].trim_end_matches(':');
                let mut targets = vec![path.to_owned()];
                // The items of a `…::{a, b::c}` group.
                if let Some(group) = rest[end..].strip_prefix('{') {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    for item in group.split(',') {
                        let item = item.split_whitespace().next().unwrap_or("");
                        if !item.is_empty() && item != "self" {
                            targets.push(format!("{path}::{item}"));
                        }
                    }
                }
                for t in targets {
                    if let Some(t) = resolve(mods, m, &t)
                        && &t != m
                    {
                        to.insert(t);
                    }
                }
            }
        }
        out.insert(m.clone(), to);
    }
    out
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mods = modules();
    assert!(mods.contains_key("daemon::peers"), "{:?}", mods.keys());
    let edges = edges(&mods);
    assert!(
        edges["daemon::peers::dead"].contains("daemon::cover"),
        "the import reader works: {:?}",
        edges["daemon::peers::dead"]
    );
    let mut circles = Vec::new();
    for start in edges.keys() {
        // Depth-first from `start`, looking for a way back to it.
        let mut stack = vec![vec![start.clone()]];
        while let Some(path) = stack.pop() {
            let last = path.last().unwrap();
            for next in &edges[last] {
                if next == start {
                    circles.push(format!("{} -> {start}", path.join(" -> ")));
                } else if !path.contains(next) {
                    stack.push([path.clone(), vec![next.clone()]].concat());
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

/// Every layer imports only the layers below it (`bin`, not read here,
/// is the top): `daemon` → {`decide`, `aws`, `kernel`, `notify`,
/// `status`} → {`config`, `domain`}; `decide` does no I/O; `kernel` and `notify` do not
/// read the config; the crate root (`report`) and `sysexits` import nothing.
/// A module of no known layer fails the test, so a new one gets a rule.
#[test]
fn dependencies_point_one_way() {
    let mods = modules();
    let edges = edges(&mods);
    let layer = |m: &str| m.split("::").next().unwrap_or("").to_owned();
    let mut wrong = Vec::new();
    for (m, to) in &edges {
        let allowed: &[&str] = match layer(m).as_str() {
            "" | "sysexits" => &[],
            "domain" => &[""],
            "config" => &["domain", ""],
            "decide" => &["config", "domain", ""],
            "aws" => &["config", "domain", ""],
            "kernel" | "notify" => &["domain", ""],
            "status" => &["domain", ""],
            "daemon" => &[
                "decide", "aws", "kernel", "notify", "status", "config", "domain", "sysexits", "",
            ],
            other => panic!("module {m}: no rule for the layer `{other}`"),
        };
        for t in to {
            if layer(t) != layer(m) && !allowed.contains(&layer(t).as_str()) {
                wrong.push(format!("{m} -> {t}"));
            }
        }
    }
    assert!(edges["decide::routes"].contains("domain"), "{edges:?}");
    assert!(
        edges[""].is_empty() && edges["kernel::sysctl"].contains("domain"),
        "the root imports nothing, the kernel its types from domain: {edges:?}"
    );
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

/// The reader sees bare `use` lines: `pub use a::B` in the root is an
/// import of `a`.
#[test]
fn bare_use_lines_are_imports() {
    assert_eq!(
        bare_use_as_self("pub use aws::AwsError;"),
        "pub use self::aws::AwsError;"
    );
    assert_eq!(
        bare_use_as_self("    use cover::x;"),
        "    use self::cover::x;"
    );
    assert_eq!(
        bare_use_as_self("pub(crate) use a::b;"),
        "pub(crate) use self::a::b;"
    );
    assert_eq!(bare_use_as_self("use crate::a;"), "use crate::a;");
    assert_eq!(bare_use_as_self("let x = 1;"), "let x = 1;");
}
