//! Glob patterns for `cleanup`: `*` and `?` stay within one path component, `**` crosses
//! them, `[abc]`, `[a-z]` and `[!a]` match one character; a pattern without `/` matches the
//! file name at any depth. Small enough to own rather than pull in a crate.

/// A checked pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// Path components of the pattern; `**` stands alone.
    parts: Vec<String>,
    /// No `/` in the pattern: match the last component only.
    name_only: bool,
}

impl Glob {
    /// Check a pattern: character classes must be closed, and the pattern not empty.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let trimmed = pattern.trim_start_matches("./");
        if trimmed.is_empty() {
            return Err("an empty glob pattern matches nothing".into());
        }
        let parts: Vec<String> = trimmed
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        for part in &parts {
            check_classes(part).map_err(|e| format!("glob `{pattern}`: {e}"))?;
        }
        Ok(Glob {
            name_only: !trimmed.contains('/'),
            parts,
        })
    }

    /// Whether `path` (relative, `/`-separated) matches.
    pub fn matches(&self, path: &str) -> bool {
        if self.name_only {
            let name = path.rsplit('/').next().unwrap_or(path);
            return self
                .parts
                .first()
                .is_some_and(|p| p == "**" || component(p.as_bytes(), name.as_bytes()));
        }
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        parts_match(&self.parts, &components)
    }
}

/// Whether the components match the parts, in time linear in their product.
///
/// The pattern is read as an automaton whose states are "the first `i` parts are matched"
/// (`0..=parts.len()`), and the path is run through it once, keeping the set of live states
/// rather than trying each way a `**` could split the path: a `**` state stays live on any
/// component and also lets the next state through without one. Each component is compared
/// with each part at most once, so 14 `**` over a 30-deep path costs 15 x 30 steps, where
/// the old backtracking search tried every way of splitting 30 components 14 ways (the
/// binomial 44 choose 14, about 10^11, which is why it ran for minutes).
fn parts_match(parts: &[String], components: &[&str]) -> bool {
    let n = parts.len();
    let double = |i: usize| parts[i] == "**";
    // Live states, closed over `**` matching no component.
    let close = |live: &mut Vec<bool>| {
        for i in 0..n {
            if live[i] && double(i) {
                live[i + 1] = true;
            }
        }
    };
    let mut live = vec![false; n + 1];
    live[0] = true;
    close(&mut live);
    let mut next = vec![false; n + 1];
    for c in components {
        next.iter_mut().for_each(|s| *s = false);
        let mut any = false;
        for i in 0..n {
            if !live[i] {
                continue;
            }
            if double(i) {
                next[i] = true;
                any = true;
            } else if component(parts[i].as_bytes(), c.as_bytes()) {
                next[i + 1] = true;
                any = true;
            }
        }
        if !any {
            return false;
        }
        close(&mut next);
        std::mem::swap(&mut live, &mut next);
    }
    live[n]
}

fn check_classes(part: &str) -> Result<(), String> {
    let bytes = part.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'[' {
            match class_end(bytes, i) {
                Some(end) => i = end,
                None => return Err("unclosed `[`".into()),
            }
        }
        i += 1;
    }
    Ok(())
}

/// Index of the `]` closing the class that starts at `start`.
fn class_end(p: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if matches!(p.get(i), Some(b'!' | b'^')) {
        i += 1;
    }
    // A `]` right after the opening is a member, not the end.
    if p.get(i) == Some(&b']') {
        i += 1;
    }
    p[i.min(p.len())..]
        .iter()
        .position(|&b| b == b']')
        .map(|off| i + off)
}

/// Match one component. Bytes, so `?` matches one byte; names are compared as the host
/// gave them.
fn component(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard matching with one backtrack point for the last `*`.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    while pi < p.len() && p[pi] == b'*' {
                        pi += 1;
                    }
                    star = Some((pi, si));
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some(end) = class_end(p, pi)
                        && class_matches(&p[pi + 1..end], s[si])
                    {
                        pi = end + 1;
                        si += 1;
                        continue;
                    }
                }
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

fn class_matches(class: &[u8], c: u8) -> bool {
    let (negated, class) = match class.split_first() {
        Some((b'!' | b'^', rest)) => (true, rest),
        _ => (false, class),
    };
    let mut i = 0;
    let mut found = false;
    while i < class.len() {
        if i + 2 < class.len() && class[i + 1] == b'-' {
            found |= (class[i]..=class[i + 2]).contains(&c);
            i += 3;
        } else {
            found |= class[i] == c;
            i += 1;
        }
    }
    found != negated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        Glob::new(pattern).unwrap().matches(path)
    }

    #[test]
    fn names_match_at_any_depth() {
        assert!(m("*.log", "a.log"));
        assert!(m("*.log", "x/y/a.log"));
        assert!(!m("*.log", "a.log.gz"));
        assert!(m("a?.txt", "dir/ab.txt"));
    }

    #[test]
    fn star_stays_within_a_component() {
        assert!(m("archive/*.gz", "archive/a.gz"));
        assert!(!m("archive/*.gz", "archive/2024/a.gz"));
        assert!(!m("archive/*.gz", "other/archive/a.gz"));
    }

    #[test]
    fn double_star_crosses_components() {
        assert!(m("archive/**/*.gz", "archive/a.gz"));
        assert!(m("archive/**/*.gz", "archive/2024/01/a.gz"));
        assert!(m("keep/**", "keep/a"));
        assert!(m("keep/**", "keep/x/y"));
        assert!(!m("keep/**", "keeper/a"));
        assert!(m("**/tmp/*", "a/b/tmp/c"));
        assert!(m("**", "anything/at/all"));
    }

    #[test]
    fn classes_match_one_character() {
        assert!(m("[ab].txt", "a.txt"));
        assert!(!m("[ab].txt", "c.txt"));
        assert!(m("[!ab].txt", "c.txt"));
        assert!(m("log[0-9]", "log7"));
        assert!(m("[]]", "]"));
        assert!(Glob::new("a[b").is_err());
        assert!(Glob::new("").is_err());
    }

    /// Issue 13, section 4: many `**` segments used to be exponential (14 of them over a
    /// 30-deep path ran for minutes); the automaton takes microseconds.
    #[test]
    fn many_double_stars_over_a_deep_path_match_in_linear_time() {
        let pattern = format!("{}/never", vec!["**/a"; 14].join("/"));
        let deep = vec!["a"; 30].join("/");
        let glob = Glob::new(&pattern).unwrap();
        let started = std::time::Instant::now();
        assert!(!glob.matches(&deep));
        assert!(glob.matches(&format!("{deep}/never")));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(m("**/**/**/x", "x"));
        assert!(m("a/**/**/b", "a/b"));
        assert!(!m("a/**/b/**/c", "a/c/b"));
        assert!(m("a/**/b/**/c", "a/x/b/y/z/c"));
    }

    #[test]
    fn stars_backtrack() {
        assert!(m("*a*b*c", "xxaxxbxxbxc"));
        assert!(!m("*a*b*c", "xxaxxbxxbx"));
        assert!(m("***", ""));
    }
}
