//! `{field}` templates for the sub-steps of `each`.
//!
//! A template is checked when the plan loads, so a stray brace is a plan error with a
//! location rather than a failure of every record; rendering looks fields up and, in a field
//! that names a path or a glob, refuses a value that would move or widen the effect.
//!
//! In a path, a record's value must be one component: not empty, `.` or `..`, and without `/`
//! or NUL, so `home/{id}` always names a direct child of `home`. `{path:field}` opts in to a
//! value holding several components, each still checked the same way, so the rendered path
//! stays under the template's literal prefix (no `..` can climb out of it, no empty component
//! can collapse it). In a glob, a value's `*`, `?` and `[` are refused rather than escaped: the
//! globs have no escape syntax, and a record is data, never a pattern.

use std::borrow::Cow;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Text copied as is (with `{{` and `}}` already unescaped).
    Literal(Cow<'a, str>),
    /// A `{field}` placeholder; `path` for `{path:field}`, whose value may hold `/`.
    Field { name: &'a str, path: bool },
}

/// What a templated field is, which decides the values it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Free text (`content`, `table`): any value.
    Text,
    /// A path: each value one safe component, or safe components under `{path:...}`.
    Path,
    /// A glob pattern: as a path, and no glob metacharacters in values.
    Glob,
}

/// Split a template into literal text and placeholders.
pub fn parse(template: &str) -> Result<Vec<Segment<'_>>, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        literal.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            literal.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            literal.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(format!(
                "unmatched `}}` in `{template}`; write `}}}}` for a literal brace"
            ));
        } else {
            let Some(end) = tail.find('}') else {
                return Err(format!(
                    "unclosed `{{` in `{template}`; write `{{{{` for a literal brace"
                ));
            };
            let name = tail[1..end].trim();
            if name.is_empty() || name.contains('{') {
                return Err(format!(
                    "`{}` in `{template}` names no field; write `{{{{` for a literal brace",
                    &tail[..=end]
                ));
            }
            if !literal.is_empty() {
                segments.push(Segment::Literal(Cow::Owned(std::mem::take(&mut literal))));
            }
            let (name, path) = match name.strip_prefix("path:") {
                Some(rest) => (rest.trim(), true),
                None => (name, false),
            };
            if name.is_empty() {
                return Err(format!(
                    "`{}` in `{template}` names no field; write `{{path:field}}`",
                    &tail[..=end]
                ));
            }
            segments.push(Segment::Field { name, path });
            rest = &tail[end + 1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(Cow::Owned(literal)));
    }
    Ok(segments)
}

/// Render `template`, looking each placeholder up with `field`; an unknown field, or a value
/// that `usage` does not accept, is an error naming the field and the value.
pub fn render(
    template: &str,
    usage: Use,
    mut field: impl FnMut(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    for segment in parse(template)? {
        match segment {
            Segment::Literal(text) => out.push_str(&text),
            Segment::Field { name, path } => match field(name) {
                Some(value) => {
                    check_value(&value, usage, path).map_err(|why| {
                        format!("the value of `{name}` is {}, {why}", shown(&value))
                    })?;
                    out.push_str(&value);
                }
                None => return Err(format!("the record has no field `{name}`")),
            },
        }
    }
    Ok(out)
}

/// A value as shown in a message: quoted and escaped, so NUL and empty are visible.
fn shown(value: &str) -> String {
    format!("\"{}\"", value.escape_debug())
}

/// Whether a record's value may be substituted where `usage` says; the reason when not.
fn check_value(value: &str, usage: Use, multi: bool) -> Result<(), String> {
    if usage == Use::Text {
        return Ok(());
    }
    let what = if usage == Use::Glob {
        "a glob"
    } else {
        "a path"
    };
    if value.contains('\0') {
        return Err(format!("and a NUL cannot be part of {what}"));
    }
    if usage == Use::Glob && value.contains(['*', '?', '[']) {
        return Err(
            "and a record's `*`, `?` or `[` would widen the glob; values are data, never patterns"
                .to_owned(),
        );
    }
    let hint = "a value in a path must be one name: not empty, `.` or `..`, without `/`";
    if !multi {
        return match value {
            "" => Err(format!("which would collapse the path; {hint}")),
            "." | ".." => Err(format!("which would move the path; {hint}")),
            _ if value.contains('/') => Err(format!(
                "which would move the path; {hint} (write `{{path:field}}` to allow a relative path)"
            )),
            _ => Ok(()),
        };
    }
    if value.starts_with('/') {
        return Err("an absolute path; `{path:...}` takes a relative path".to_owned());
    }
    for part in value.split('/') {
        match part {
            "" => return Err("which has an empty component and would collapse the path".to_owned()),
            "." | ".." => {
                return Err(format!(
                    "which has a `{part}` component and could leave the template's directory"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "id" => Some("42".into()),
            "name" => Some("Ada".into()),
            _ => None,
        }
    }

    #[test]
    fn placeholders_are_replaced() {
        assert_eq!(
            render("home/{id}/{name}.txt", Use::Path, lookup).unwrap(),
            "home/42/Ada.txt"
        );
        assert_eq!(render("{ id }", Use::Text, lookup).unwrap(), "42");
        assert_eq!(render("plain", Use::Path, lookup).unwrap(), "plain");
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(
            render("{{id}} is {id}, }}", Use::Text, lookup).unwrap(),
            "{id} is 42, }"
        );
    }

    #[test]
    fn bad_templates_are_errors() {
        assert!(parse("a{id").unwrap_err().contains("unclosed"));
        assert!(parse("a}b").unwrap_err().contains("unmatched"));
        assert!(parse("a{}b").unwrap_err().contains("names no field"));
        assert!(parse("a{{{b}").is_ok());
    }

    #[test]
    fn unknown_fields_are_named() {
        assert_eq!(
            render("{nme}", Use::Text, lookup).unwrap_err(),
            "the record has no field `nme`"
        );
    }

    fn with(value: &'static str) -> impl FnMut(&str) -> Option<String> {
        move |_| Some(value.to_owned())
    }

    /// Issue 13, section 2: a record's value never moves or widens an effect.
    #[test]
    fn path_values_that_would_move_or_collapse_the_path_are_refused() {
        for (value, why) in [
            ("", "collapse"),
            (".", "move"),
            ("..", "move"),
            ("../data", "move"),
            ("a/b", "{path:field}"),
            ("a\0b", "NUL"),
        ] {
            let e = render("tmp/{dir}", Use::Path, with(value)).unwrap_err();
            assert!(e.starts_with("the value of `dir` is \""), "{e}");
            assert!(e.contains(why), "{value:?}: {e}");
        }
        // Text fields take any value.
        assert_eq!(render("{x}", Use::Text, with("../a")).unwrap(), "../a");
    }

    #[test]
    fn path_opt_in_allows_components_but_never_climbs_out() {
        assert_eq!(
            render("out/{path:rel}.txt", Use::Path, with("a/b")).unwrap(),
            "out/a/b.txt"
        );
        for value in ["", "a/../../x", "..", "a//b", "/etc", "a/./b", "a/"] {
            assert!(
                render("out/{path:rel}", Use::Path, with(value)).is_err(),
                "{value:?} accepted"
            );
        }
        assert!(parse("{path:}").unwrap_err().contains("names no field"));
    }

    #[test]
    fn glob_metacharacters_in_values_are_refused() {
        for value in ["*", "a?", "[ab]"] {
            let e = render("{p}.log", Use::Glob, with(value)).unwrap_err();
            assert!(e.contains("widen the glob"), "{e}");
        }
        assert_eq!(
            render("{p}/*.log", Use::Glob, with("app")).unwrap(),
            "app/*.log"
        );
        // The same characters are fine in a path (they are names there, not patterns).
        assert_eq!(render("{p}", Use::Path, with("a*")).unwrap(), "a*");
    }
}
