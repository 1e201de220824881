//! Subtest names from a kvm-unit-tests source file: the entries of the
//! `struct svm_test NAME[] = { ... }` table that the file's `main()` passes to
//! `run_svm_tests()`. An entry is either a brace initializer whose first
//! field is the name string, `{ "vmrun intercept check", ... }`, or a macro
//! that stringifies one of its parameters, `TEST(svm_pae_test)` with
//! `#define TEST(name) { #name, .v2 = name }`; `{ NULL, ... }` ends the
//! table. The test matches its command-line words against the name with
//! spaces turned into `_` (`test_wanted()` in x86/svm.c), so the names
//! returned here are in that form.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Punct(char),
    /// Anything else (numbers, multi-character operators): only skipped.
    Other,
}

/// A function-like macro: its parameters and its body's tokens.
#[derive(Debug, Default)]
struct Macro {
    params: Vec<String>,
    body: String,
}

/// The subtest names of `source`, in table order, spaces as `_`.
pub fn subtest_names(source: &str) -> Result<Vec<String>, String> {
    let (code, defines) = split_preprocessor(&strip_comments(source));
    let tokens = tokenize(&code);
    let wanted = table_passed_to_runner(&tokens);
    let mut tables = Vec::new();
    let mut at = 0;
    while let Some((name, start)) = find_table(&tokens, at) {
        let (names, end) = table_entries(&tokens, start, &defines)?;
        at = end;
        tables.push((name, names));
    }
    let chosen = match &wanted {
        Some(wanted) => tables.into_iter().find(|(name, _)| name == wanted),
        None => tables.into_iter().next(),
    };
    match chosen {
        Some((_, names)) if !names.is_empty() => Ok(names),
        Some((name, _)) => Err(format!("the table `{name}` names no subtest")),
        None => Err(match wanted {
            Some(wanted) => format!("no `struct svm_test {wanted}[]` table"),
            None => "no `struct svm_test NAME[]` table".to_string(),
        }),
    }
}

/// Removes `/* */` and `//` comments, keeping string literals intact and
/// newlines in place (so preprocessor lines stay lines).
fn strip_comments(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1)) {
            ('/', Some('*')) => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    if chars[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
                i += 2;
                out.push(' ');
            }
            ('/', Some('/')) => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            (quote @ ('"' | '\''), _) => {
                out.push(quote);
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        out.push(chars[i]);
                        i += 1;
                    }
                    out.push(chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    out.push(quote);
                }
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Splits preprocessor lines (joined across `\` line ends) from the code,
/// returning the code and the function-like macros.
fn split_preprocessor(source: &str) -> (String, HashMap<String, Macro>) {
    let mut code = String::with_capacity(source.len());
    let mut defines = HashMap::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        if !line.trim_start().starts_with('#') {
            code.push_str(line);
            code.push('\n');
            continue;
        }
        let mut directive = line.to_string();
        while directive.ends_with('\\') {
            directive.pop();
            directive.push(' ');
            directive.push_str(lines.next().unwrap_or(""));
        }
        if let Some((name, m)) = parse_define(&directive) {
            defines.insert(name, m);
        }
    }
    (code, defines)
}

/// `#define NAME(a, b, more...) body` (function-like only).
fn parse_define(directive: &str) -> Option<(String, Macro)> {
    let rest = directive.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("define")?.trim_start();
    let name_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    let (name, rest) = rest.split_at(name_end);
    // A space before `(` makes an object-like macro.
    let rest = rest.strip_prefix('(')?;
    let (params, body) = rest.split_once(')')?;
    let params = params
        .split(',')
        .map(|p| p.trim().trim_end_matches("...").trim().to_string())
        .collect();
    Some((
        name.to_string(),
        Macro {
            params,
            body: body.to_string(),
        },
    ))
}

fn tokenize(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == '"' {
            let mut text = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                text.push(chars[i]);
                i += 1;
            }
            i += 1;
            // Adjacent literals are one string, as in C.
            match tokens.last_mut() {
                Some(Token::Str(previous)) => previous.push_str(&text),
                _ => tokens.push(Token::Str(text)),
            }
        } else if c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            tokens.push(Token::Other);
        } else if "{}()[],=;.#".contains(c) {
            tokens.push(Token::Punct(c));
            i += 1;
        } else {
            tokens.push(Token::Other);
            i += 1;
        }
    }
    tokens
}

fn ident(token: Option<&Token>) -> Option<&str> {
    match token {
        Some(Token::Ident(name)) => Some(name),
        _ => None,
    }
}

/// The table named in `run_svm_tests(ac, av, NAME)`, if the file calls it.
fn table_passed_to_runner(tokens: &[Token]) -> Option<String> {
    let call = tokens
        .windows(2)
        .position(|w| ident(Some(&w[0])) == Some("run_svm_tests") && w[1] == Token::Punct('('))?;
    let args = call_arguments(tokens, call + 1)?.0;
    match args.last()?.as_slice() {
        [Token::Ident(name)] => Some(name.clone()),
        _ => None,
    }
}

/// Finds `struct svm_test NAME [ ] = {` from `from`: the table's name and the
/// index just after its `{`.
fn find_table(tokens: &[Token], from: usize) -> Option<(String, usize)> {
    (from..tokens.len()).find_map(|i| {
        let window = tokens.get(i..i + 7)?;
        let is_table = ident(window.first()) == Some("struct")
            && ident(window.get(1)) == Some("svm_test")
            && window[3..]
                == [
                    Token::Punct('['),
                    Token::Punct(']'),
                    Token::Punct('='),
                    Token::Punct('{'),
                ];
        let name = ident(window.get(2)).filter(|_| is_table)?;
        Some((name.to_string(), i + 7))
    })
}

/// The arguments of a call or macro use whose `(` is at `open`, split at
/// top-level commas, and the index after its `)`.
fn call_arguments(tokens: &[Token], open: usize) -> Option<(Vec<Vec<Token>>, usize)> {
    let mut args = vec![Vec::new()];
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::Punct('(' | '{' | '[') => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            Token::Punct(')' | '}' | ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some((args, i + 1));
                }
            }
            Token::Punct(',') if depth == 1 => {
                args.push(Vec::new());
                continue;
            }
            _ => {}
        }
        args.last_mut()?.push(token.clone());
    }
    None
}

/// The names of the table whose entries start at `start`, and the index
/// after the table.
fn table_entries(
    tokens: &[Token],
    start: usize,
    defines: &HashMap<String, Macro>,
) -> Result<(Vec<String>, usize), String> {
    let mut names = Vec::new();
    let mut at = start;
    loop {
        match tokens.get(at) {
            None => return Err("a `struct svm_test` table has no end".to_string()),
            Some(Token::Punct('}')) => return Ok((names, at + 1)),
            Some(Token::Punct(',')) => at += 1,
            Some(Token::Punct('{')) => {
                let (fields, end) =
                    call_arguments(tokens, at).ok_or("an entry of the table has no end")?;
                // `{ NULL, ... }` (or `{ 0 }`) ends the list: no name.
                if let Some([Token::Str(name)]) = fields.first().map(Vec::as_slice) {
                    names.push(clean(name));
                }
                at = end;
            }
            Some(Token::Ident(macro_name)) if tokens.get(at + 1) == Some(&Token::Punct('(')) => {
                let (args, end) = call_arguments(tokens, at + 1)
                    .ok_or_else(|| format!("`{macro_name}(` in the table has no end"))?;
                let index = defines
                    .get(macro_name)
                    .and_then(stringified_param)
                    .unwrap_or(0);
                match args.get(index).map(Vec::as_slice) {
                    Some([Token::Ident(name)]) => names.push(clean(name)),
                    Some([Token::Str(name)]) => names.push(clean(name)),
                    _ => {
                        return Err(format!(
                            "cannot tell the subtest name in `{macro_name}(...)`"
                        ))
                    }
                }
                at = end;
            }
            Some(other) => return Err(format!("unexpected {other:?} in the test table")),
        }
    }
}

/// Which parameter the macro turns into the name (`#name` in its body).
fn stringified_param(m: &Macro) -> Option<usize> {
    let body: Vec<char> = m.body.chars().collect();
    for (i, c) in body.iter().enumerate() {
        // `#name` but not `##` (token pasting).
        if *c != '#' || body.get(i + 1) == Some(&'#') || (i > 0 && body[i - 1] == '#') {
            continue;
        }
        let word: String = body[i + 1..]
            .iter()
            .skip_while(|c| c.is_whitespace())
            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
            .collect();
        if let Some(index) = m.params.iter().position(|p| *p == word) {
            return Some(index);
        }
    }
    None
}

/// The name as the test matches it: spaces become `_`.
fn clean(name: &str) -> String {
    name.replace(' ', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small file in the shape of x86/svm_tests.c: v1 entries (with a
    /// string name and function pointers, some with designated fields),
    /// comments, a macro for v2 entries, a decoy table and the runner call.
    const FIXTURE: &str = r#"
#include "svm.h"
#define TEST(name) { #name, .v2 = name }
#define PAIR(prep, name, more...) \
	{ #name, default_supported, prep, \
	  more }

/* struct svm_test not_a_table[] = { { "commented out" } }; */
static struct svm_test decoy[] = {
	{ "decoy entry", default_supported },
	{ NULL }
};

struct svm_test my_tests[] = {
	{ "null", default_supported, default_prepare,
	  default_prepare_gif_clear, null_test,
	  default_finished, null_check },
	// { "disabled", ... },
	{ "vmrun intercept check", default_supported, prepare_no_vmrun_int,
	  default_prepare_gif_clear, null_test, default_finished,
	  check_no_vmrun_int },
	{ "next_rip" /* why: NRIPS */, next_rip_supported, prepare_next_rip,
	  f(1, 2), { 0 }, .on_vcpu = 2 },
	{ "split " "literal", default_supported },
	TEST(svm_pae_test),
	PAIR(npt_prepare, npt_rw, .supported = npt_supported),
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL }
};

int main(int ac, char **av)
{
	char c = '}';
	return run_svm_tests(ac, av, my_tests);
}
"#;

    #[test]
    fn names_come_from_the_table_main_runs() {
        assert_eq!(
            subtest_names(FIXTURE).unwrap(),
            [
                "null",
                "vmrun_intercept_check",
                "next_rip",
                "split_literal",
                "svm_pae_test",
                "npt_rw",
            ]
        );
    }

    #[test]
    fn without_the_runner_call_the_first_table_counts() {
        let source = FIXTURE.replace("run_svm_tests(ac, av, my_tests)", "0");
        assert_eq!(subtest_names(&source).unwrap(), ["decoy_entry"]);
    }

    #[test]
    fn a_file_without_a_table_is_an_error() {
        let error = subtest_names("int main(void) { return 0; }").unwrap_err();
        assert!(error.contains("no `struct svm_test"), "{error}");
        let error = subtest_names("struct svm_test t[] = { { NULL } };").unwrap_err();
        assert!(error.contains("names no subtest"), "{error}");
        let error = subtest_names("struct svm_test t[] = { { \"a\" }").unwrap_err();
        assert!(error.contains("no end"), "{error}");
    }

    #[test]
    fn macros_name_the_stringified_parameter() {
        let (_, defines) = split_preprocessor(
            "#define A(x) { #x }\n#define B(p, q) { # q, p }\n#define C(p, q) p##q\n",
        );
        assert_eq!(stringified_param(&defines["A"]), Some(0));
        assert_eq!(stringified_param(&defines["B"]), Some(1));
        assert_eq!(stringified_param(&defines["C"]), None);
    }
}
