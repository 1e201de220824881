//! The small regular-expression language of `kut --only`: enough to pick
//! subtests by name without a new dependency. Unanchored search (like
//! `grep`); `.`, `[...]` and `[^...]` with ranges, `*`, `+`, `?` (greedy),
//! `^`, `$`, `|`, `( )` and `\` before any character to take it literally.
//! Matching backtracks; names are short, so that is cheap.

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regex {
    root: Alt,
}

/// Alternatives: `a|b|c`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alt(Vec<Vec<Piece>>);

/// A node with its repetition bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    node: Node,
    min: usize,
    max: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Char(char),
    Any,
    /// Inclusive ranges; `negated` for `[^...]`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Start,
    End,
    Group(Alt),
}

impl Regex {
    /// Compiles `pattern`, or says what is wrong with it.
    pub fn new(pattern: &str) -> Result<Regex, String> {
        let mut parser = Parser {
            chars: pattern.chars().collect(),
            at: 0,
        };
        let root = parser.alt()?;
        if parser.at < parser.chars.len() {
            // alt() stops only at `)` when not inside a group.
            return Err(format!("unmatched `)` at offset {}", parser.at));
        }
        Ok(Regex { root })
    }

    /// True when the pattern matches somewhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        (0..=text.len()).any(|start| match_alt(&self.root, &text, start, &|_| true))
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.at += usize::from(c.is_some());
        c
    }

    fn alt(&mut self) -> Result<Alt, String> {
        let mut branches = vec![self.seq()?];
        while self.peek() == Some('|') {
            self.at += 1;
            branches.push(self.seq()?);
        }
        Ok(Alt(branches))
    }

    fn seq(&mut self) -> Result<Vec<Piece>, String> {
        let mut pieces = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let node = self.atom()?;
            let (min, max) = match self.peek() {
                Some('*') => (0, None),
                Some('+') => (1, None),
                Some('?') => (0, Some(1)),
                _ => (1, Some(1)),
            };
            if (min, max) != (1, Some(1)) {
                self.at += 1;
            }
            pieces.push(Piece { node, min, max });
        }
        Ok(pieces)
    }

    fn atom(&mut self) -> Result<Node, String> {
        let at = self.at;
        Ok(
            match self.next().expect("seq checked there is a character") {
                '.' => Node::Any,
                '^' => Node::Start,
                '$' => Node::End,
                '\\' => Node::Char(self.escaped()?),
                '[' => self.class()?,
                '(' => {
                    let inner = self.alt()?;
                    if self.next() != Some(')') {
                        return Err(format!("unclosed `(` at offset {at}"));
                    }
                    Node::Group(inner)
                }
                c @ ('*' | '+' | '?') => {
                    return Err(format!("`{c}` at offset {at} repeats nothing"))
                }
                c => Node::Char(c),
            },
        )
    }

    fn escaped(&mut self) -> Result<char, String> {
        self.next()
            .ok_or_else(|| "a trailing `\\` escapes nothing".to_string())
    }

    fn class(&mut self) -> Result<Node, String> {
        let start = self.at - 1;
        let negated = self.peek() == Some('^');
        self.at += usize::from(negated);
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let c = match self.next() {
                None => return Err(format!("unclosed `[` at offset {start}")),
                // `]` first in the class is a literal, as in POSIX.
                Some(']') if !first => break,
                Some('\\') => self.escaped()?,
                Some(c) => c,
            };
            first = false;
            let is_range = self.peek() == Some('-') && self.chars.get(self.at + 1) != Some(&']');
            if is_range && self.chars.get(self.at + 1).is_some() {
                self.at += 1;
                let end = match self.next() {
                    Some('\\') => self.escaped()?,
                    Some(end) => end,
                    None => unreachable!("checked above"),
                };
                if end < c {
                    return Err(format!("range `{c}-{end}` is backwards"));
                }
                ranges.push((c, end));
            } else {
                ranges.push((c, c));
            }
        }
        Ok(Node::Class { negated, ranges })
    }
}

/// Each matcher calls `then` with every position where its match could end,
/// until `then` accepts one.
type Then<'a> = &'a dyn Fn(usize) -> bool;

fn match_alt(alt: &Alt, text: &[char], at: usize, then: Then) -> bool {
    alt.0.iter().any(|seq| match_seq(seq, text, at, then))
}

fn match_seq(seq: &[Piece], text: &[char], at: usize, then: Then) -> bool {
    match seq.split_first() {
        None => then(at),
        Some((piece, rest)) => match_piece(piece, 0, text, at, &|next| {
            match_seq(rest, text, next, then)
        }),
    }
}

/// Greedy: one more repetition first, then stopping here.
fn match_piece(piece: &Piece, count: usize, text: &[char], at: usize, then: Then) -> bool {
    let more = piece.max.is_none_or(|max| count < max)
        && match_node(&piece.node, text, at, &|next| {
            // An empty repetition beyond the minimum would loop forever.
            (next != at || count < piece.min) && match_piece(piece, count + 1, text, next, then)
        });
    more || (count >= piece.min && then(at))
}

fn match_node(node: &Node, text: &[char], at: usize, then: Then) -> bool {
    let here = text.get(at).copied();
    match node {
        Node::Char(c) => here == Some(*c) && then(at + 1),
        Node::Any => here.is_some() && then(at + 1),
        Node::Class { negated, ranges } => here.is_some_and(|h| {
            ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&h)) != *negated && then(at + 1)
        }),
        Node::Start => at == 0 && then(at),
        Node::End => at == text.len() && then(at),
        Node::Group(alt) => match_alt(alt, text, at, then),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, text: &str) -> bool {
        Regex::new(pattern).unwrap().is_match(text)
    }

    #[test]
    fn searches_unanchored_and_anchors_on_request() {
        assert!(matches("vmrun", "vmrun_intercept_check"));
        assert!(matches("intercept", "vmrun_intercept_check"));
        assert!(!matches("^intercept", "vmrun_intercept_check"));
        assert!(matches("^vmrun$", "vmrun"));
        assert!(!matches("^vmrun$", "vmrun_intercept_check"));
        assert!(matches(".", "x"));
        assert!(!matches(".", ""));
        assert!(matches("", "anything"));
    }

    #[test]
    fn repetition_and_alternation() {
        assert!(matches("^npt_(nx|us)$", "npt_nx"));
        assert!(matches("^npt_(nx|us)$", "npt_us"));
        assert!(!matches("^npt_(nx|us)$", "npt_rw"));
        assert!(matches("^svm_lbrv_test[0-3]$", "svm_lbrv_test2"));
        assert!(!matches("^svm_lbrv_test[0-3]$", "svm_lbrv_test4"));
        assert!(matches("^latency_.*clean$", "latency_run_exit_clean"));
        assert!(matches("^a+b?c*$", "aaac"));
        assert!(!matches("^a+b?c*$", "bc"));
        assert!(matches("^(ab)+$", "ababab"));
        assert!(!matches("^(ab)+$", "ababa"));
        assert!(matches("^(a*)*b$", "aaab"));
        assert!(matches("^()+$", ""));
        assert!(matches("nmi|vnmi", "vnmi"));
    }

    #[test]
    fn classes_and_escapes() {
        assert!(matches("^[^_]+$", "asid0"));
        assert!(!matches("^[^_]+$", "asid_zero"));
        assert!(matches(r"^a\.b$", "a.b"));
        assert!(!matches(r"^a\.b$", "axb"));
        assert!(matches("^[]x]$", "]"));
        assert!(matches("^[a-]$", "-"));
        assert!(matches(r"^[\]]$", "]"));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (pattern, why) in [
            ("(ab", "unclosed `(`"),
            ("ab)", "unmatched `)`"),
            ("*a", "repeats nothing"),
            ("a|+", "repeats nothing"),
            ("[ab", "unclosed `[`"),
            ("[z-a]", "backwards"),
            ("a\\", "escapes nothing"),
        ] {
            let error = Regex::new(pattern).expect_err(pattern);
            assert!(error.contains(why), "{pattern}: {error}");
        }
    }
}
