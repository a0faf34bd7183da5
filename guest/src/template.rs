//! `{field}` templates for the sub-steps of `each`.
//!
//! A template is checked when the plan loads, so a stray brace is a plan error with a
//! location rather than a failure of every record; rendering only looks fields up.

use std::borrow::Cow;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Text copied as is (with `{{` and `}}` already unescaped).
    Literal(Cow<'a, str>),
    /// A `{field}` placeholder.
    Field(&'a str),
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
            segments.push(Segment::Field(name));
            rest = &tail[end + 1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(Cow::Owned(literal)));
    }
    Ok(segments)
}

/// Render `template`, looking each placeholder up with `field`; an unknown field is an error
/// naming it.
pub fn render(
    template: &str,
    mut field: impl FnMut(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    for segment in parse(template)? {
        match segment {
            Segment::Literal(text) => out.push_str(&text),
            Segment::Field(name) => match field(name) {
                Some(value) => out.push_str(&value),
                None => return Err(format!("the record has no field `{name}`")),
            },
        }
    }
    Ok(out)
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
            render("home/{id}/{name}.txt", lookup).unwrap(),
            "home/42/Ada.txt"
        );
        assert_eq!(render("{ id }", lookup).unwrap(), "42");
        assert_eq!(render("plain", lookup).unwrap(), "plain");
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(
            render("{{id}} is {id}, }}", lookup).unwrap(),
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
            render("{nme}", lookup).unwrap_err(),
            "the record has no field `nme`"
        );
    }
}
