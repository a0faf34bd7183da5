//! The glob matcher of `cleanup`. Invariants: no panic; time linear in pattern x path (run.sh's
//! -timeout catches a return of the exponential search); and the same answer as a naive
//! recursive matcher written from the documented rules (docs/plan.md, "cleanup"), on short
//! inputs where the naive one's backtracking is cheap.
#![no_main]

use idem_guest::glob::Glob;
use libfuzzer_sys::fuzz_target;

/// The `]` closing a class opened at `p[0] == b'['`: a leading `!`/`^` negates, a `]` right
/// after the opening (or the negation) is a member.
fn class_close(p: &[u8]) -> Option<usize> {
    let mut i = 1;
    if matches!(p.get(i), Some(b'!' | b'^')) {
        i += 1;
    }
    if p.get(i) == Some(&b']') {
        i += 1;
    }
    (i..p.len()).find(|&j| p[j] == b']')
}

fn in_class(class: &[u8], c: u8) -> bool {
    let (negated, class) = match class.first() {
        Some(b'!' | b'^') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut found = false;
    let mut i = 0;
    while i < class.len() {
        if i + 2 < class.len() && class[i + 1] == b'-' {
            found |= class[i] <= c && c <= class[i + 2];
            i += 3;
        } else {
            found |= class[i] == c;
            i += 1;
        }
    }
    found != negated
}

/// One component: `*` any run of bytes, `?` one byte, `[...]` one byte of the class; an
/// unclosed `[` cannot occur (Glob::new refuses it).
fn naive_component(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        // A run of stars is one star (else the naive search is exponential in the run).
        Some(b'*') if p.get(1) == Some(&b'*') => naive_component(&p[1..], s),
        Some(b'*') => (0..=s.len()).any(|k| naive_component(&p[1..], &s[k..])),
        Some(b'?') => !s.is_empty() && naive_component(&p[1..], &s[1..]),
        Some(b'[') => {
            let end = class_close(p).expect("checked by Glob::new");
            !s.is_empty() && in_class(&p[1..end], s[0]) && naive_component(&p[end + 1..], &s[1..])
        }
        Some(&c) => s.first() == Some(&c) && naive_component(&p[1..], &s[1..]),
    }
}

/// Whole paths: a `**` part is zero or more components.
fn naive_parts(parts: &[&str], comps: &[&str]) -> bool {
    match parts.split_first() {
        None => comps.is_empty(),
        Some((&"**", rest)) => (0..=comps.len()).any(|k| naive_parts(rest, &comps[k..])),
        Some((p, rest)) => match comps.split_first() {
            Some((c, more)) => {
                naive_component(p.as_bytes(), c.as_bytes()) && naive_parts(rest, more)
            }
            None => false,
        },
    }
}

fn naive(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_start_matches("./");
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
    if !pattern.contains('/') {
        let name = path.rsplit('/').next().unwrap_or(path);
        return parts
            .first()
            .is_some_and(|p| *p == "**" || naive_component(p.as_bytes(), name.as_bytes()));
    }
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    naive_parts(&parts, &comps)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // PATTERN NUL PATH.
    let Some((pattern, path)) = text.split_once('\0') else {
        return;
    };
    let glob = match Glob::new(pattern) {
        Ok(glob) => glob,
        Err(message) => {
            assert!(!message.is_empty());
            return;
        }
    };
    let got = glob.matches(path);
    // The naive matcher backtracks exponentially: compare on short inputs only.
    if pattern.len() <= 24 && path.len() <= 24 {
        assert_eq!(got, naive(pattern, path), "glob `{pattern}` on `{path}`");
    }
});
