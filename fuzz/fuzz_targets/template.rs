//! The `{field}` template engine of `each`. Invariants: no panic; a text with its braces
//! doubled renders back to itself; and a rendered path or glob is no less contained than
//! its template: record values never add a `..`, `.` or empty component, never make it
//! absolute, never add a NUL, and in a glob never add `*`, `?` or `[`. (Compared with the
//! template rendered with every value `x`, a value that cannot move anything.)
#![no_main]

use idem_guest::template::{self, Use};
use libfuzzer_sys::fuzz_target;

fn components(path: &str) -> (usize, usize, bool) {
    let dots = path.split('/').filter(|c| *c == ".." || *c == ".").count();
    let empty = path.split('/').skip(1).filter(|c| c.is_empty()).count();
    (dots, empty, path.starts_with('/'))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // USE TEMPLATE (NUL VALUE)*: field names are looked up as value 0, 1, ... in order of
    // first use, so fuzzed names need not match anything.
    let mut pieces = text.split('\0');
    let Some(head) = pieces.next() else { return };
    let mut chars = head.chars();
    let usage = match chars.next() {
        Some('t') => Use::Text,
        Some('g') => Use::Glob,
        Some(_) => Use::Path,
        None => return,
    };
    let tmpl = chars.as_str();
    let values: Vec<&str> = pieces.collect();

    let escaped = tmpl.replace('{', "{{").replace('}', "}}");
    assert_eq!(
        template::render(&escaped, Use::Text, |_| None).as_deref(),
        Ok(tmpl),
        "doubled braces do not render back to the text"
    );

    let mut names: Vec<String> = Vec::new();
    let rendered = template::render(tmpl, usage, |name| {
        let i = names.iter().position(|n| n == name).unwrap_or_else(|| {
            names.push(name.to_owned());
            names.len() - 1
        });
        values.get(i).map(|v| (*v).to_owned())
    });
    let Ok(rendered) = rendered else { return };
    if usage == Use::Text {
        return;
    }
    let plain = template::render(tmpl, usage, |_| Some("x".to_owned()))
        .expect("a template that renders with some values renders with `x`");
    let (d1, e1, abs1) = components(&rendered);
    let (d0, e0, abs0) = components(&plain);
    // Trailing components of a value may end the path: count empties only where they collapse.
    assert!(
        d1 <= d0,
        "values added a `.` or `..` component: `{tmpl}` -> `{rendered}`"
    );
    assert!(
        e1 <= e0,
        "values added an empty component: `{tmpl}` -> `{rendered}`"
    );
    assert_eq!(abs1, abs0, "values made `{tmpl}` absolute: `{rendered}`");
    assert_eq!(
        rendered.contains('\0'),
        plain.contains('\0'),
        "values added a NUL"
    );
    if usage == Use::Glob {
        let meta = |s: &str| s.matches(['*', '?', '[']).count();
        assert!(
            meta(&rendered) <= meta(&plain),
            "values widened the glob `{tmpl}`: `{rendered}`"
        );
    }
});
