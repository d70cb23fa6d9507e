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

/// The functions of `text` (a source file without its test module): each
/// one's name, the line it starts on (1-based) and its length in lines,
/// from `fn` to its closing brace. Strings, characters and comments are
/// skipped, so braces inside them do not count.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let line_of = |i: usize| chars[..i].iter().filter(|c| **c == '\n').count() + 1;
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let at_word = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if at_word && chars[i..].starts_with(&['f', 'n', ' ']) {
            let name: String = chars[i + 3..]
                .iter()
                .take_while(|c| c.is_alphanumeric() || **c == '_')
                .collect();
            if let Some(end) = body_end(&chars, i) {
                out.push((name, line_of(i), line_of(end) - line_of(i) + 1));
            }
        }
        i = skip_literal(&chars, i);
    }
    out
}

/// Where the body of the function whose `fn` is at `start` closes; `None`
/// for a declaration without a body.
fn body_end(chars: &[char], start: usize) -> Option<usize> {
    let (mut i, mut depth) = (start, 0usize);
    while i < chars.len() {
        match chars[i] {
            ';' if depth == 0 => return None,
            '{' => depth += 1,
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i = skip_literal(chars, i);
    }
    None
}

/// The index after the character at `i`, or after the whole string,
/// character literal or comment that starts there.
fn skip_literal(chars: &[char], i: usize) -> usize {
    let rest = &chars[i..];
    let find = |from: usize, end: &[char]| {
        (from..chars.len())
            .find(|j| chars[*j..].starts_with(end))
            .map_or(chars.len(), |j| j + end.len())
    };
    match rest {
        ['/', '/', ..] => find(i, &['\n']),
        ['/', '*', ..] => find(i + 2, &['*', '/']),
        ['r', '#', '"', ..] => find(i + 3, &['"', '#']),
        ['r', '"', ..] if i == 0 || !chars[i - 1].is_alphanumeric() => find(i + 2, &['"']),
        ['"', ..] => {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        }
        ['\'', '\\', ..] => find(i + 2, &['\'']),
        ['\'', _, '\'', ..] => i + 3,
        _ => i + 1,
    }
}

/// No function in `src/` is longer than 80 lines: a longer one does more
/// than one thing and is split (bin included, tests excluded).
#[test]
fn no_function_is_longer_than_80_lines() {
    const MAX: usize = 80;
    let mut long = Vec::new();
    let mut all = Vec::new();
    let mut files = vec![];
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text,
        };
        // A module that is all tests (`#[cfg(test)] mod tests;` elsewhere).
        if f.ends_with("daemon/tests.rs") {
            continue;
        }
        for (name, line, len) in functions(text) {
            if len > MAX {
                long.push(format!("{}:{line} {name}: {len} lines", f.display()));
            }
            all.push((name, len));
        }
    }
    // The reader works: it finds functions, and their lengths.
    let render = all.iter().find(|(n, _)| n == "render");
    assert!(
        all.len() > 300 && render.is_some_and(|(_, l)| *l > 10 && *l < MAX),
        "{} functions read, render: {render:?}",
        all.len()
    );
    assert!(
        long.is_empty(),
        "functions over {MAX} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_function_reader_skips_strings_and_comments() {
    let text = "fn a() {\n    let s = \"}{\";\n    // }\n    let c = '}';\n}\nfn b<'x>(v: &'x str) -> &'x str {\n    v\n}\nfn decl();\n";
    assert_eq!(
        functions(text),
        [("a".to_owned(), 1, 5), ("b".to_owned(), 6, 3)]
    );
}
