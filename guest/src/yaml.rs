//! A YAML document as a small tree whose nodes remember where they start in the source.
//!
//! serde's derive loses positions, and a plan error without a line is a poor one, so the plan
//! is read with `saphyr-parser`'s event stream (which carries markers for block style, flow
//! style and JSON alike) into this tree, and `plan.rs` validates the tree by hand.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A position in the source; lines and columns count from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
    /// The included file it is in (its path under the root); `None` for the plan file itself.
    /// A `&'static str` keeps `Loc` `Copy`: the few included names are leaked once per load.
    pub file: Option<&'static str>,
}

/// One node of the document.
#[derive(Debug, Clone)]
pub struct Node {
    /// What the node holds.
    pub kind: Kind,
    /// Where it starts.
    pub loc: Loc,
}

/// The three shapes of YAML data.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A scalar's text; `plain` when unquoted and untagged, so that YAML's typing applies.
    Scalar { text: String, plain: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// Mark every node of this tree as being in the included file `file`.
    pub fn set_file(&mut self, file: &'static str) {
        self.loc.file = Some(file);
        match &mut self.kind {
            Kind::Scalar { .. } => {}
            Kind::Seq(items) => items.iter_mut().for_each(|n| n.set_file(file)),
            Kind::Map(entries) => {
                for (k, v) in entries {
                    k.set_file(file);
                    v.set_file(file);
                }
            }
        }
    }
}

/// A scalar resolved with YAML 1.2's core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    /// `~`, `null` or nothing at all.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// Anything else, or any quoted scalar.
    Str(&'a str),
}

/// A document that is not well-formed YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    /// The parser's words.
    pub message: String,
    /// Where it stopped.
    pub loc: Option<Loc>,
    /// Well-formed YAML that the loader refuses (nesting or aliases too large, a bare
    /// carriage return), rather than a syntax error.
    pub limit: bool,
}

/// Aliases are expanded by copying; these bound what the copies add (nodes, and bytes of
/// scalar text) so that a "billion laughs" document, or one that copies a 1 MiB scalar a
/// thousand times, is an error rather than gigabytes of memory. Nodes written out in the
/// source are not counted: a large plan without aliases costs what its text costs.
const MAX_ALIAS_NODES: usize = 1_000_000;
const MAX_ALIAS_BYTES: usize = 16 << 20;

/// How deep sequences and mappings may nest. Plans need a handful of levels; the tree is
/// walked and dropped recursively, and a 10,000-deep document would overflow the
/// component's stack, so it is refused with its line instead.
pub const MAX_DEPTH: usize = 256;

impl Node {
    /// The scalar's resolved value, or `None` for sequences and mappings.
    pub fn scalar(&self) -> Option<Scalar<'_>> {
        match &self.kind {
            Kind::Scalar { text, plain: true } => Some(resolve(text)),
            Kind::Scalar { text, plain: false } => Some(Scalar::Str(text)),
            _ => None,
        }
    }

    /// What the node is, for messages: "a string", "an integer", "a list", ...
    pub fn describe(&self) -> &'static str {
        match (&self.kind, self.scalar()) {
            (Kind::Seq(_), _) => "a list",
            (Kind::Map(_), _) => "a mapping",
            (_, Some(Scalar::Null)) => "nothing (null)",
            (_, Some(Scalar::Bool(_))) => "a boolean",
            (_, Some(Scalar::Int(_))) => "an integer",
            (_, Some(Scalar::Float(_))) => "a number",
            _ => "a string",
        }
    }

    /// Nodes and scalar bytes in this subtree: what a copy of it costs.
    fn size(&self) -> (usize, usize) {
        let add = |(n, b): (usize, usize), (m, c): (usize, usize)| (n + m, b + c);
        match &self.kind {
            Kind::Scalar { text, .. } => (1, text.len()),
            Kind::Seq(items) => items.iter().map(Node::size).fold((1, 0), add),
            Kind::Map(entries) => entries
                .iter()
                .map(|(k, v)| add(k.size(), v.size()))
                .fold((1, 0), add),
        }
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
pub fn resolve(text: &str) -> Scalar<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if let Some(oct) = text.strip_prefix("0o")
        && digits(oct, 8)
    {
        return i64::from_str_radix(oct, 8).map_or(Scalar::Str(text), Scalar::Int);
    }
    if let Some(hex) = text.strip_prefix("0x")
        && digits(hex, 16)
    {
        return i64::from_str_radix(hex, 16).map_or(Scalar::Str(text), Scalar::Int);
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits(unsigned, 10) {
        // Too large for 64 bits: still a number to YAML, so a float.
        return text
            .parse::<i64>()
            .map(Scalar::Int)
            .unwrap_or_else(|_| text.parse().map_or(Scalar::Str(text), Scalar::Float));
    }
    if is_float(unsigned) {
        return text.parse().map_or(Scalar::Str(text), Scalar::Float);
    }
    Scalar::Str(text)
}

/// `( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = all_digits(int)
        && frac.is_none_or(all_digits)
        && (!int.is_empty() || frac.is_some_and(|f| !f.is_empty()));
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exponent_ok
}

fn loc_of(span: &Span) -> Loc {
    marker_loc(span.start.line(), span.start.col())
}

fn marker_loc(line: usize, col: usize) -> Loc {
    Loc {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(col.saturating_add(1)).unwrap_or(u32::MAX),
        file: None,
    }
}

enum Frame {
    Seq(Vec<Node>, Loc, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Loc, usize),
}

/// The first carriage return that is not followed by a line feed, as a location counted in
/// line feeds.
///
/// YAML counts a bare CR (classic Mac OS line ends) as a line break, and so would the parser's
/// markers; editors do not agree (VS Code breaks the line, vim and Emacs show `^M` inside it),
/// and idem's excerpts, like `grep -n`, count line feeds. A bare CR is therefore refused where
/// it is, so that every line and column idem reports is the one an editor shows: a plan has
/// LF or CRLF line ends (a CRLF is one line end), and a literal CR in a value is written
/// `"\r"`.
fn bare_cr(source: &str) -> Option<Loc> {
    let bytes = source.as_bytes();
    let at = bytes
        .iter()
        .enumerate()
        .position(|(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))?;
    let before = &source[..at];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Some(Loc {
        line: u32::try_from(before.bytes().filter(|&b| b == b'\n').count() + 1).unwrap_or(u32::MAX),
        column: u32::try_from(before[line_start..].chars().count() + 1).unwrap_or(u32::MAX),
        file: None,
    })
}

/// `loc` moved into the text where it lies past it: the parser marks the end of the input as
/// the start of a line after the last (`{{` fails at 2:1), where an editor has no such line;
/// the error is then at the end of the last line.
pub fn within(source: &str, loc: Loc) -> Loc {
    let lines: Vec<&str> = source.split('\n').collect();
    let line = (loc.line.max(1) as usize).min(lines.len());
    let text = lines[line - 1];
    let width = text.strip_suffix('\r').unwrap_or(text).chars().count();
    let column = if line < loc.line as usize {
        width + 1
    } else {
        (loc.column as usize).min(width + 1)
    };
    Loc {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(column.max(1)).unwrap_or(u32::MAX),
        file: loc.file,
    }
}

/// Parse one YAML document into a tree; `None` when the source holds no document.
pub fn parse(source: &str) -> Result<Option<Node>, YamlError> {
    if let Some(loc) = bare_cr(source) {
        return Err(YamlError {
            limit: true,
            message: "a carriage return that does not end a line (a bare CR); idem counts \
                      lines by line feeds, so save the plan with LF or CRLF line ends, and \
                      write a CR inside a value as \"\\r\""
                .into(),
            loc: Some(loc),
        });
    }
    let mut stack: Vec<Frame> = Vec::new();
    // Each anchored node with its size, computed once.
    let mut anchors: HashMap<usize, (Node, (usize, usize))> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    let (mut alias_nodes, mut alias_bytes) = (0usize, 0usize);
    let too_deep = |stack: &[Frame], span: &Span| {
        (stack.len() >= MAX_DEPTH).then(|| YamlError {
            limit: true,
            message: format!(
                "the document nests deeper than {MAX_DEPTH} levels of lists and mappings"
            ),
            loc: Some(loc_of(span)),
        })
    };

    for event in Parser::new_from_str(source) {
        let (event, span) = event.map_err(|e| YamlError {
            limit: false,
            message: e.info().to_string(),
            loc: Some(within(
                source,
                marker_loc(e.marker().line(), e.marker().col()),
            )),
        })?;
        let (node, anchor) = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        limit: false,
                        message: "a plan is one YAML document, this file has several".into(),
                        loc: Some(loc_of(&span)),
                    });
                }
                continue;
            }
            Event::Scalar(text, style, anchor, tag) => {
                // An explicit `!!str` makes `"0755"`-like scalars strings even unquoted.
                let tagged_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let node = Node {
                    kind: Kind::Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain && !tagged_str,
                    },
                    loc: loc_of(&span),
                };
                (node, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                if let Some(e) = too_deep(&stack, &span) {
                    return Err(e);
                }
                stack.push(Frame::Seq(Vec::new(), loc_of(&span), anchor));
                continue;
            }
            Event::MappingStart(anchor, _) => {
                if let Some(e) = too_deep(&stack, &span) {
                    return Err(e);
                }
                stack.push(Frame::Map(Vec::new(), None, loc_of(&span), anchor));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(items, loc, anchor)) => (
                    Node {
                        kind: Kind::Seq(items),
                        loc,
                    },
                    anchor,
                ),
                Some(Frame::Map(entries, _, loc, anchor)) => (
                    Node {
                        kind: Kind::Map(entries),
                        loc,
                    },
                    anchor,
                ),
                None => continue,
            },
            Event::Alias(id) => {
                let Some((node, (n, b))) = anchors.get(&id) else {
                    return Err(YamlError {
                        limit: false,
                        message: "alias to an unknown anchor".into(),
                        loc: Some(loc_of(&span)),
                    });
                };
                // Counted before copying, so the copy that would pass the bound is never made.
                alias_nodes = alias_nodes.saturating_add(*n);
                alias_bytes = alias_bytes.saturating_add(*b);
                if alias_nodes > MAX_ALIAS_NODES || alias_bytes > MAX_ALIAS_BYTES {
                    return Err(YamlError {
                        limit: true,
                        message: format!(
                            "aliases expand the document by more than {MAX_ALIAS_NODES} nodes or {} MiB",
                            MAX_ALIAS_BYTES >> 20
                        ),
                        loc: Some(loc_of(&span)),
                    });
                }
                let mut node = node.clone();
                node.loc = loc_of(&span);
                (node, 0)
            }
            _ => continue,
        };
        if anchor != 0 {
            let size = node.size();
            anchors.insert(anchor, (node.clone(), size));
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(items, ..)) => items.push(node),
            Some(Frame::Map(entries, pending, ..)) => match pending.take() {
                Some(key) => entries.push((key, node)),
                None => *pending = Some(node),
            },
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_resolve_as_yaml_1_2_core() {
        assert_eq!(resolve("0755"), Scalar::Int(755));
        assert_eq!(resolve("0o755"), Scalar::Int(0o755));
        assert_eq!(resolve("-12"), Scalar::Int(-12));
        assert_eq!(resolve("1.5e3"), Scalar::Float(1500.0));
        assert_eq!(resolve(".5"), Scalar::Float(0.5));
        assert_eq!(resolve("~"), Scalar::Null);
        assert_eq!(resolve("yes"), Scalar::Str("yes"));
        assert_eq!(resolve("1d12h"), Scalar::Str("1d12h"));
        assert_eq!(resolve("e5"), Scalar::Str("e5"));
        assert_eq!(resolve("."), Scalar::Str("."));
    }

    #[test]
    fn block_nodes_know_their_lines() {
        let root = parse("steps:\n  - dir: a\n  - file: b\n").unwrap().unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        let Kind::Seq(steps) = &entries[0].1.kind else {
            panic!("not a seq")
        };
        assert_eq!(
            steps[0].loc,
            Loc {
                line: 2,
                column: 5,
                file: None
            }
        );
        assert_eq!(
            steps[1].loc,
            Loc {
                line: 3,
                column: 5,
                file: None
            }
        );
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let root = parse("a: \"0755\"\n").unwrap().unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert_eq!(entries[0].1.scalar(), Some(Scalar::Str("0755")));
    }

    #[test]
    fn aliases_are_expanded_and_bounded() {
        let root = parse("a: &x [1, 2]\nb: *x\n").unwrap().unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert!(matches!(&entries[1].1.kind, Kind::Seq(items) if items.len() == 2));

        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(&bomb).unwrap_err().message.contains("aliases expand"));
    }

    /// Issue 13, section 4: copies of a 1 MiB scalar are bounded by bytes, not only nodes.
    #[test]
    fn aliases_of_a_large_scalar_are_bounded_by_bytes() {
        let mut doc = format!("a: &big \"{}\"\nb: [", "x".repeat(1 << 20));
        doc.push_str(&vec!["*big"; 1000].join(", "));
        doc.push_str("]\n");
        let e = parse(&doc).unwrap_err();
        assert!(e.message.contains("16 MiB"), "{e:?}");
    }

    /// Issue 13, section 4: a large plan without aliases is not refused for its size.
    #[test]
    fn a_large_document_without_aliases_loads() {
        let mut doc = String::from("steps:\n");
        for i in 0..200_000 {
            doc.push_str(&format!("  - file: out/{i}.txt\n    content: \"{i}\\n\"\n"));
        }
        let root = parse(&doc).unwrap().unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        assert!(matches!(&entries[0].1.kind, Kind::Seq(s) if s.len() == 200_000));
    }

    /// Issue 13, section 4: a 10,000-deep document is a plan error with its line, not a
    /// stack overflow.
    #[test]
    fn deep_nesting_is_refused_at_its_line() {
        let mut block = String::new();
        for i in 0..10_000 {
            block.push_str(&" ".repeat(i));
            block.push_str("- \n");
        }
        let e = parse(&block).unwrap_err();
        assert!(e.message.contains("deeper than 256"), "{e:?}");
        assert_eq!(e.loc.map(|l| l.line), Some(257));
        let flow = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse(&flow).unwrap_err();
        assert_eq!(e.loc.map(|l| l.line), Some(1));
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&fine).is_ok(), "{:?}", parse(&fine));
    }

    /// Issue 19 (fuzz finding `plan-error-location-outside-text`): bare CRs counted as line
    /// breaks put an error on line 112 of a text of four lines. A bare CR is refused at the
    /// line and column an editor counting line feeds shows; CRLF line ends still read.
    #[test]
    fn a_bare_cr_is_refused_at_the_line_an_editor_shows() {
        let finding = include_str!("../../fuzz/findings/plan-error-location-outside-text");
        let e = parse(finding).unwrap_err();
        assert!(e.message.contains("bare CR"), "{e:?}");
        let first = finding.find('\r').unwrap();
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 1,
                column: first as u32 + 1,
                file: None
            })
        );
        let e = parse("steps:\n  - dir: a\n  # note\r  - dir: b\n").unwrap_err();
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 3,
                column: 9,
                file: None
            })
        );
        assert_eq!(
            parse("a: 1\r").unwrap_err().loc,
            Some(Loc {
                line: 1,
                column: 5,
                file: None
            })
        );
        let root = parse("steps:\r\n  - dir: a\r\n  - dir: é\r\n  - [x\r\n")
            .unwrap_err()
            .loc
            .unwrap();
        assert_eq!(root.line, 5, "CRLF is one line end");
        let root = parse("steps:\r\n  - dir: a\r\n  - dir: b\r\n")
            .unwrap()
            .unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        let Kind::Seq(steps) = &entries[0].1.kind else {
            panic!("not a seq")
        };
        assert_eq!(
            steps[1].loc,
            Loc {
                line: 3,
                column: 5,
                file: None
            }
        );
    }

    /// Issue 19 (found by the `plan` fuzz target): an error at the end of the input was put
    /// on a line after the last one (`{{` at 2:1), which no editor shows and no excerpt can
    /// quote. It is at the end of the last line.
    #[test]
    fn an_error_at_the_end_of_the_input_is_on_its_last_line() {
        assert_eq!(
            parse("{{").unwrap_err().loc,
            Some(Loc {
                line: 1,
                column: 3,
                file: None
            })
        );
        assert_eq!(
            parse("steps:\r\n  - [a").unwrap_err().loc,
            Some(Loc {
                line: 2,
                column: 7,
                file: None
            })
        );
        // After a final line feed the empty last line is there, in an editor too.
        let e = parse("steps:\n  - [a\n").unwrap_err().loc.unwrap();
        assert!(e.line <= 3, "{e:?}");
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let err = parse("steps:\n  - dir: [a\n").unwrap_err();
        assert!(err.loc.is_some());
    }

    #[test]
    fn several_documents_are_refused() {
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
        assert!(parse("").unwrap().is_none());
    }
}
