//! The checked list of mutations (`xtask/mutants.txt`): parsing it and
//! applying one mutation to a source tree. Running them is
//! [`crate::tasks::mutants`].
//!
//! # Format
//!
//! ```text
//! # A comment (outside find/replace text only).
//! mutant <name>
//! about <one line: what the mutation breaks>        (optional)
//! tests <self-test prefixes, comma separated>       (optional: all tests)
//! pending <why>                                     (optional: listed, not run)
//! file <path relative to the workspace root>
//! find
//! <exact text, one or more lines>
//! replace
//! <replacement text, zero or more lines>
//! end
//! ```
//!
//! A mutant has one or more `file`/`find`/`replace`/`end` hunks. The find
//! text must occur exactly once in its file, or the mutation "does not
//! apply" (the code moved: re-anchor it). Lines between `find` and `end` are
//! taken verbatim; a line that is exactly `replace` or `end` cannot be part
//! of them. A `pending` mutation targets code that has not landed yet: it
//! is reported as pending, never as killed.

use std::fmt;

/// One source change of a mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// Path relative to the workspace root.
    pub file: String,
    /// Text that must occur exactly once.
    pub find: String,
    /// What replaces it.
    pub replace: String,
}

/// A mutation: a named set of hunks and the self-tests that must kill it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutant {
    pub name: String,
    pub about: String,
    /// Self-test prefixes (the kernel's `tests=` word); empty: every test.
    pub tests: Vec<String>,
    /// Why it is not run yet (`None`: it runs).
    pub pending: Option<String>,
    pub hunks: Vec<Hunk>,
}

/// A syntax error in the list, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses the list (see the module docs).
pub fn parse(text: &str) -> Result<Vec<Mutant>, ParseError> {
    let err = |line: usize, message: String| ParseError { line, message };
    let mut mutants: Vec<Mutant> = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let mut file: Option<String> = None;
    while let Some((n, line)) = lines.next() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (keyword, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
        let rest = rest.trim();
        if keyword == "mutant" {
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                return Err(err(n, format!("bad mutant name `{rest}`")));
            }
            if mutants.iter().any(|m| m.name == rest) {
                return Err(err(n, format!("mutant `{rest}` listed twice")));
            }
            if let Some(last) = mutants.last() {
                if last.hunks.is_empty() {
                    return Err(err(n, format!("mutant `{}` has no hunk", last.name)));
                }
            }
            mutants.push(Mutant {
                name: rest.to_string(),
                about: String::new(),
                tests: Vec::new(),
                pending: None,
                hunks: Vec::new(),
            });
            file = None;
            continue;
        }
        let Some(mutant) = mutants.last_mut() else {
            return Err(err(n, format!("`{keyword}` before the first `mutant`")));
        };
        match keyword {
            "about" => mutant.about = rest.to_string(),
            "pending" if !rest.is_empty() => mutant.pending = Some(rest.to_string()),
            "tests" => {
                mutant.tests = rest
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect();
            }
            "file" if !rest.is_empty() => file = Some(rest.to_string()),
            "find" if rest.is_empty() => {
                let Some(path) = file.clone() else {
                    return Err(err(n, "`find` without a `file`".into()));
                };
                let find = block(&mut lines, "replace")
                    .ok_or_else(|| err(n, "`find` text not followed by a `replace` line".into()))?;
                let replace = block(&mut lines, "end")
                    .ok_or_else(|| err(n, "`replace` text not followed by an `end` line".into()))?;
                if find.is_empty() {
                    return Err(err(n, "empty `find` text".into()));
                }
                if find == replace {
                    return Err(err(n, "`replace` text equals the `find` text".into()));
                }
                mutant.hunks.push(Hunk {
                    file: path,
                    find,
                    replace,
                });
            }
            _ => return Err(err(n, format!("cannot read `{trimmed}`"))),
        }
    }
    match mutants.last() {
        Some(last) if last.hunks.is_empty() => Err(err(
            text.lines().count(),
            format!("mutant `{}` has no hunk", last.name),
        )),
        _ => Ok(mutants),
    }
}

/// The verbatim lines up to a line that is exactly `terminator`, joined
/// with newlines; `None` if the text ends first.
fn block<'a>(
    lines: &mut impl Iterator<Item = (usize, &'a str)>,
    terminator: &str,
) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for (_, line) in lines {
        if line.trim_end() == terminator {
            return Some(out.join("\n"));
        }
        // A new entry at the margin means the `end` was lost (a bad merge
        // once swallowed the next mutant into a replace text this way).
        if line.starts_with("mutant ") {
            return None;
        }
        out.push(line);
    }
    None
}

/// Why a hunk does not apply to a file's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotApplied {
    /// The find text is not in the file.
    Missing,
    /// The find text occurs this many times.
    Ambiguous(usize),
}

impl fmt::Display for NotApplied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotApplied::Missing => f.write_str("find text not found"),
            NotApplied::Ambiguous(n) => write!(f, "find text occurs {n} times"),
        }
    }
}

/// `text` with the hunk's find text (which must occur exactly once)
/// replaced.
pub fn apply(text: &str, hunk: &Hunk) -> Result<String, NotApplied> {
    match text.matches(hunk.find.as_str()).count() {
        0 => Err(NotApplied::Missing),
        1 => Ok(text.replacen(hunk.find.as_str(), &hunk.replace, 1)),
        n => Err(NotApplied::Ambiguous(n)),
    }
}

/// The mutants called `names` (all when empty); an unknown name is an error.
pub fn select<'m>(mutants: &'m [Mutant], names: &[String]) -> Result<Vec<&'m Mutant>, String> {
    if names.is_empty() {
        return Ok(mutants.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            mutants
                .iter()
                .find(|m| &m.name == name)
                .ok_or_else(|| format!("no mutant named `{name}` (see --list)"))
        })
        .collect()
}

/// The `tests=` filter covering every mutant in `mutants` (`None`: all
/// tests, when one of them names none).
pub fn tests_filter(mutants: &[&Mutant]) -> Option<String> {
    let mut prefixes: Vec<&str> = Vec::new();
    for m in mutants.iter().filter(|m| m.pending.is_none()) {
        if m.tests.is_empty() {
            return None;
        }
        for t in &m.tests {
            if !prefixes.contains(&t.as_str()) {
                prefixes.push(t);
            }
        }
    }
    Some(prefixes.join(","))
}

/// The first failing self-test in a run's console output: the name and
/// the verdict (`FAILED (<reason>)`) of the first `test <name> ... FAILED`
/// line.
pub fn first_failure(serial: &str) -> Option<(&str, &str)> {
    serial.lines().find_map(|line| {
        let rest = line.trim_end().strip_prefix("test ")?;
        let (name, verdict) = rest.split_once(" ... ")?;
        verdict.starts_with("FAILED").then_some((name, verdict))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "\
# comment
mutant drop_o12
about compose drops vmcb12's offset
tests nested::tsc_, nested::msrpm_merge
file svm/src/nested/tsc.rs
find
    l1.wrapping_add(o12)
replace
    l1
end

mutant two_hunks
pending waits for a.rs
file a.rs
find
x
  y
replace
end
file b.rs
find
z
replace
w
end
";

    #[test]
    fn parses_names_tests_and_verbatim_hunks() {
        let m = parse(LIST).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "drop_o12");
        assert_eq!(m[0].about, "compose drops vmcb12's offset");
        assert_eq!(m[0].tests, ["nested::tsc_", "nested::msrpm_merge"]);
        assert_eq!(
            m[0].hunks,
            [Hunk {
                file: "svm/src/nested/tsc.rs".into(),
                find: "    l1.wrapping_add(o12)".into(),
                replace: "    l1".into(),
            }]
        );
        assert_eq!(m[0].pending, None);
        assert_eq!(m[1].pending.as_deref(), Some("waits for a.rs"));
        assert!(m[1].tests.is_empty());
        assert_eq!(m[1].hunks.len(), 2);
        assert_eq!(m[1].hunks[0].find, "x\n  y");
        assert_eq!(m[1].hunks[0].replace, "", "an empty replacement deletes");
        assert_eq!(
            (m[1].hunks[1].file.as_str(), m[1].hunks[1].replace.as_str()),
            ("b.rs", "w")
        );
    }

    #[test]
    fn rejects_malformed_lists() {
        let bad = [
            ("file a.rs\n", "before the first"),
            ("mutant a\nfind\nx\nreplace\ny\nend\n", "without a `file`"),
            ("mutant a\nfile a.rs\nfind\nx\nreplace\ny\n", "`end`"),
            (
                "mutant a\nfile a.rs\nfind\nx\nreplace\ny\nmutant b\nfile a.rs\nfind\nz\nreplace\nw\nend\n",
                "`end`",
            ),
            ("mutant a\nfile a.rs\nfind\nx\n", "`replace`"),
            ("mutant a\nmutant b\n", "no hunk"),
            ("mutant a\n", "no hunk"),
            ("mutant a\nfile a.rs\nfind\nreplace\ny\nend\n", "empty"),
            ("mutant a\nfile a.rs\nfind\nx\nreplace\nx\nend\n", "equals"),
            ("mutant a b\n", "bad mutant name"),
            ("mutant a\nfrobnicate\n", "cannot read"),
        ];
        for (text, why) in bad {
            let e = parse(text).expect_err(text);
            assert!(e.message.contains(why), "{text:?}: {e}");
        }
        let twice = "mutant a\nfile f\nfind\nx\nreplace\ny\nend\nmutant a\n";
        assert_eq!(parse(twice).unwrap_err().line, 8);
    }

    fn hunk(find: &str, replace: &str) -> Hunk {
        Hunk {
            file: "f.rs".into(),
            find: find.into(),
            replace: replace.into(),
        }
    }

    #[test]
    fn applies_only_a_unique_find_text() {
        let text = "let a = x + y;\nlet b = x + z;\n";
        assert_eq!(
            apply(text, &hunk("x + y", "x")).unwrap(),
            "let a = x;\nlet b = x + z;\n"
        );
        assert_eq!(
            apply(text, &hunk("x +", "x")),
            Err(NotApplied::Ambiguous(2))
        );
        assert_eq!(apply(text, &hunk("q", "x")), Err(NotApplied::Missing));
        assert_eq!(
            apply(text, &hunk("a = x + y;\nlet b", "b")).unwrap(),
            "let b = x + z;\n"
        );
    }

    #[test]
    fn selects_by_name_and_merges_test_filters() {
        let m = parse(LIST).unwrap();
        let all = select(&m, &[]).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            tests_filter(&all).as_deref(),
            Some("nested::tsc_,nested::msrpm_merge"),
            "a pending mutant adds no tests"
        );
        let one = select(&m, &["drop_o12".into()]).unwrap();
        assert_eq!(
            tests_filter(&one).as_deref(),
            Some("nested::tsc_,nested::msrpm_merge")
        );
        assert!(select(&m, &["nope".into()]).is_err());
        let mut m = m;
        m[1].pending = None;
        let all = select(&m, &[]).unwrap();
        assert_eq!(tests_filter(&all), None, "two_hunks names no tests");
    }

    #[test]
    fn finds_the_first_failing_test() {
        let serial = "test a ... ok\n[guest b] x ... FAILED\ntest b::c ... FAILED (guest failed: x)\ntest d ... FAILED\n";
        assert_eq!(
            first_failure(serial),
            Some(("b::c", "FAILED (guest failed: x)"))
        );
        assert_eq!(first_failure("test a ... ok\n1 passed, 0 failed\n"), None);
    }

    /// The repository's own list parses, and every hunk applies to the
    /// current tree (the lead re-anchors find texts after merges; this
    /// says which).
    #[test]
    fn the_repository_list_applies() {
        let root = crate::workspace::root();
        let text = std::fs::read_to_string(root.join("xtask/mutants.txt")).unwrap();
        let mutants = parse(&text).unwrap();
        assert!(!mutants.is_empty());
        for m in mutants.iter().filter(|m| m.pending.is_none()) {
            for h in &m.hunks {
                let source = std::fs::read_to_string(root.join(&h.file))
                    .unwrap_or_else(|e| panic!("{}: {}: {e}", m.name, h.file));
                if let Err(e) = apply(&source, h) {
                    panic!("mutant {} does not apply to {}: {e}", m.name, h.file);
                }
            }
        }
    }
}
