//! Composing a plan from parts, before its variables and steps are read: `include:` takes in
//! other plan files' `vars`, `groups` and `steps`, and a step `use: GROUP` (with `with:`) is
//! replaced by the group's steps with `${param.NAME}` filled in.
//!
//! Included files are read here, in the guest, through the host's `fs` capability (the
//! `read` the caller passes), not by the host before the load: so an include gets exactly the
//! checks every path a step names gets (no absolute path, nothing out of the root or into
//! idem's state, links followed only inside the root), the host sees it read (a saved plan
//! fingerprints it like any input), and its errors come from the same parser, with line and
//! column in that file. The host would have to parse YAML itself to find the includes.
//!
//! Params use the `${...}` syntax of variables (`${param.NAME}`), which cannot be mistaken for
//! `each`'s `{field}`; inside an `each`'s sub-steps a param's braces are doubled, as a
//! variable's are, so a value never becomes a field.

use crate::plan::{PlanError, closest};
use crate::yaml::{self, Kind, Loc, Node, Scalar};

/// How many groups deep a `use` may go: more is almost surely a mistake, and it bounds the
/// work a plan can ask of the loader.
const MAX_DEPTH: usize = 16;
/// How many files one plan may include in all.
const MAX_FILES: usize = 256;
/// How many steps group expansion may make in all.
const MAX_STEPS: usize = 100_000;

/// What composing gives: one tree of plain steps, and the files it included (under the root).
pub struct Composed {
    pub root: Node,
    pub included: Vec<String>,
}

/// Reads a file under the root by its path, or says why it cannot.
pub type Reader<'a> = &'a mut dyn FnMut(&str) -> Result<String, String>;

/// Resolve `root`'s includes (relative to `plan_path`, the plan file's path under the root)
/// and expand its groups.
pub fn compose(
    root: Node,
    plan_path: Option<&str>,
    read: Reader<'_>,
) -> Result<Composed, PlanError> {
    let mut included = Vec::new();
    let main = plan_path.map(normal_rel);
    // The chain of files from the plan to the one being read, to name a cycle.
    let mut stack: Vec<String> = main.iter().cloned().collect();
    let root = include_all(
        root,
        main.as_deref(),
        plan_path.is_some(),
        &mut stack,
        &mut included,
        read,
    )?;
    let root = expand_groups(root)?;
    Ok(Composed { root, included })
}

fn key_is(k: &Node, name: &str) -> bool {
    matches!(&k.kind, Kind::Scalar { text, .. } if text == name)
}

fn key_text(k: &Node) -> &str {
    match &k.kind {
        Kind::Scalar { text, .. } => text,
        _ => "",
    }
}

/// `path` without `.` and empty components.
fn normal_rel(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Where the file `inc`, named in the file `from` (under the root), is under the root.
fn resolve(from: &str, inc: &str) -> Result<String, String> {
    if inc.starts_with('/') {
        return Err(format!(
            "`{inc}` is an absolute path; an include is relative to the file that names it"
        ));
    }
    let mut parts: Vec<&str> = from.split('/').filter(|c| !c.is_empty()).collect();
    parts.pop();
    for c in inc.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("`{inc}` leads out of the root"));
                }
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(format!("`{inc}` names no file"));
    }
    Ok(parts.join("/"))
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// The include paths a file names, with where each is named.
fn include_list(node: &Node) -> Result<Vec<(String, Loc)>, PlanError> {
    let one = |n: &Node| match &n.kind {
        Kind::Scalar { text, .. } if !text.is_empty() => Ok((text.clone(), n.loc)),
        _ => Err(PlanError::at(
            n.loc,
            format!("an include must be a file's path, found {}", n.describe()),
        )
        .hint("write `include: common.yml` or `include: [a.yml, b.yml]`")),
    };
    match &node.kind {
        Kind::Seq(items) => items.iter().map(one).collect(),
        _ => Ok(vec![one(node)?]),
    }
}

/// Take in `root`'s includes, depth first: each included file's `vars` and `groups` join the
/// including file's, and its `steps` run before the including file's own, in include order.
fn include_all(
    mut root: Node,
    this: Option<&str>,
    under_root: bool,
    stack: &mut Vec<String>,
    included: &mut Vec<String>,
    read: Reader<'_>,
) -> Result<Node, PlanError> {
    let Kind::Map(entries) = &mut root.kind else {
        return Ok(root);
    };
    let Some(at) = entries.iter().position(|(k, _)| key_is(k, "include")) else {
        return Ok(root);
    };
    let (_, list) = entries.remove(at);
    let mut parts: Vec<Node> = Vec::new();
    for (inc, loc) in include_list(&list)? {
        let Some(from) = this.filter(|_| under_root) else {
            return Err(PlanError::at(
                loc,
                format!("cannot include `{inc}`: the plan file is not under the root"),
            )
            .hint("put the plan under the root (-C), so that what it includes is too"));
        };
        let path = resolve(from, &inc).map_err(|m| PlanError::at(loc, m))?;
        if let Some(start) = stack.iter().position(|p| *p == path) {
            let mut shown: Vec<&str> = stack[start..].iter().map(String::as_str).collect();
            shown.push(&path);
            return Err(
                PlanError::at(loc, format!("include cycle: {}", shown.join(" -> ")))
                    .hint("a file may not include itself, directly or through others"),
            );
        }
        if included.len() >= MAX_FILES {
            return Err(PlanError::at(
                loc,
                format!("more than {MAX_FILES} included files"),
            ));
        }
        let text = read(&path).map_err(|m| {
            PlanError::at(loc, format!("cannot read included file `{path}`: {m}"))
                .hint("an include is relative to the file that names it")
        })?;
        let name = leak(&path);
        let in_file = |l: Option<Loc>| {
            l.map(|l| Loc {
                file: Some(name),
                ..l
            })
        };
        let mut sub = yaml::parse(&text)
            .map_err(|e| PlanError {
                message: format!("not valid YAML: {}", e.message),
                loc: in_file(e.loc).or(Some(Loc {
                    line: 1,
                    column: 1,
                    file: Some(name),
                })),
                hint: None,
            })?
            .ok_or_else(|| {
                PlanError::at(
                    Loc {
                        line: 1,
                        column: 1,
                        file: Some(name),
                    },
                    format!("included file `{path}` is empty"),
                )
            })?;
        sub.set_file(name);
        if !matches!(sub.kind, Kind::Map(_)) {
            return Err(
                PlanError::at(sub.loc, "an included file is a mapping, not a list")
                    .hint("put its steps under `steps:`"),
            );
        }
        included.push(path.clone());
        stack.push(path.clone());
        let sub = include_all(sub, Some(&path), true, stack, included, read)?;
        stack.pop();
        parts.push(sub);
    }
    merge(root, parts)
}

/// `root` with the `vars`, `groups` and `steps` of `parts` taken in.
fn merge(mut root: Node, parts: Vec<Node>) -> Result<Node, PlanError> {
    let root_loc = root.loc;
    let Kind::Map(entries) = &mut root.kind else {
        return Ok(root);
    };
    let mut vars: Vec<(Node, Node)> = Vec::new();
    let mut groups: Vec<(Node, Node)> = Vec::new();
    let mut steps: Vec<Node> = Vec::new();
    let add_named = |into: &mut Vec<(Node, Node)>, what: &str, node: Node| {
        let Kind::Map(items) = node.kind else {
            return Err(PlanError::at(
                node.loc,
                format!("`{what}` must be a mapping, found {}", node.describe()),
            ));
        };
        for (k, v) in items {
            if let Some((first, _)) = into.iter().find(|(f, _)| key_text(f) == key_text(&k)) {
                return Err(PlanError::at(
                    k.loc,
                    format!(
                        "{} `{}` is declared twice",
                        &what[..what.len() - 1],
                        key_text(&k)
                    ),
                )
                .hint(format!("the other is at {}", shown_loc(first.loc))));
            }
            into.push((k, v));
        }
        Ok(())
    };
    for part in parts {
        let Kind::Map(items) = part.kind else {
            continue;
        };
        for (k, v) in items {
            match key_text(&k) {
                "vars" => add_named(&mut vars, "vars", v)?,
                "groups" => add_named(&mut groups, "groups", v)?,
                "steps" => match v.kind {
                    Kind::Seq(items) => steps.extend(items),
                    _ if v.scalar() == Some(Scalar::Null) => {}
                    _ => {
                        return Err(PlanError::at(
                            v.loc,
                            format!("`steps` must be a list, found {}", v.describe()),
                        ));
                    }
                },
                "version" => {}
                other => {
                    let known = ["vars", "groups", "steps", "version", "include"];
                    let e = PlanError::at(
                        k.loc,
                        format!("unknown field `{other}` in an included file"),
                    );
                    return Err(match closest(other, &known) {
                        Some(near) => e.hint(format!("did you mean `{near}`?")),
                        None => e.hint("an included file takes: vars, groups, steps, include"),
                    });
                }
            }
        }
    }
    // The including file's own come after what it includes.
    let mut own_steps = None;
    let mut rest = Vec::new();
    for (k, v) in std::mem::take(entries) {
        match key_text(&k) {
            "vars" => add_named(&mut vars, "vars", v)?,
            "groups" => add_named(&mut groups, "groups", v)?,
            "steps" => own_steps = Some((k, v)),
            _ => rest.push((k, v)),
        }
    }
    let key = |name: &str, loc: Loc| Node {
        kind: Kind::Scalar {
            text: name.to_owned(),
            plain: true,
        },
        loc,
    };
    let map = |items: Vec<(Node, Node)>, loc: Loc| Node {
        kind: Kind::Map(items),
        loc,
    };
    if !vars.is_empty() {
        let loc = vars[0].0.loc;
        rest.push((key("vars", loc), map(vars, loc)));
    }
    if !groups.is_empty() {
        let loc = groups[0].0.loc;
        rest.push((key("groups", loc), map(groups, loc)));
    }
    let (steps_key, steps_loc) = match own_steps {
        Some((k, v)) => {
            let loc = v.loc;
            match v.kind {
                Kind::Seq(items) => steps.extend(items),
                _ if v.scalar() == Some(Scalar::Null) => {}
                _ => {
                    return Err(PlanError::at(
                        v.loc,
                        format!("`steps` must be a list, found {}", v.describe()),
                    ));
                }
            }
            (k, loc)
        }
        None => (key("steps", root_loc), root_loc),
    };
    rest.push((
        steps_key,
        Node {
            kind: Kind::Seq(steps),
            loc: steps_loc,
        },
    ));
    *entries = rest;
    Ok(root)
}

/// `file:line:column` of a location, or `line L, column C` in the plan file.
pub fn shown_loc(loc: Loc) -> String {
    match loc.file {
        Some(f) => format!("{f}:{}:{}", loc.line, loc.column),
        None => format!("line {}, column {}", loc.line, loc.column),
    }
}

/// A group: its params (with defaults; `None` when required) and its steps.
struct Group {
    params: Vec<(String, Option<String>)>,
    steps: Vec<Node>,
    loc: Loc,
}

/// A scalar's text, for a param's value or default.
fn scalar_text(node: &Node, what: &str) -> Result<String, PlanError> {
    match &node.kind {
        Kind::Scalar { text, .. } => Ok(text.clone()),
        _ => Err(PlanError::at(
            node.loc,
            format!(
                "{what} must be a string, number or boolean, found {}",
                node.describe()
            ),
        )),
    }
}

fn parse_groups(node: &Node) -> Result<Vec<(String, Group)>, PlanError> {
    let Kind::Map(items) = &node.kind else {
        return Err(PlanError::at(
            node.loc,
            format!(
                "`groups` must be a mapping of names to groups, found {}",
                node.describe()
            ),
        )
        .hint("write `groups: {deploy: {params: {env: ~}, steps: [...]}}`"));
    };
    let mut groups: Vec<(String, Group)> = Vec::new();
    for (k, v) in items {
        let name = key_text(k).to_owned();
        if groups.iter().any(|(n, _)| *n == name) {
            return Err(PlanError::at(
                k.loc,
                format!("group `{name}` is declared twice"),
            ));
        }
        let Kind::Map(fields) = &v.kind else {
            return Err(PlanError::at(
                v.loc,
                format!(
                    "group `{name}` must be a mapping with `steps`, found {}",
                    v.describe()
                ),
            ));
        };
        let mut params = Vec::new();
        let mut steps = None;
        for (fk, fv) in fields {
            match key_text(fk) {
                "params" => match &fv.kind {
                    Kind::Map(ps) => {
                        for (pk, pv) in ps {
                            let default = match pv.scalar() {
                                Some(Scalar::Null) => None,
                                _ => Some(scalar_text(pv, "a param's default")?),
                            };
                            params.push((key_text(pk).to_owned(), default));
                        }
                    }
                    Kind::Seq(ps) => {
                        for p in ps {
                            params.push((scalar_text(p, "a param's name")?, None));
                        }
                    }
                    _ => {
                        return Err(PlanError::at(
                            fv.loc,
                            "`params` must be a mapping of names to defaults (`~` for none) or a list of names",
                        ));
                    }
                },
                "steps" => match &fv.kind {
                    Kind::Seq(items) => steps = Some(items.clone()),
                    _ => {
                        return Err(PlanError::at(
                            fv.loc,
                            format!(
                                "the `steps` of group `{name}` must be a list, found {}",
                                fv.describe()
                            ),
                        ));
                    }
                },
                "description" => {}
                other => {
                    let e =
                        PlanError::at(fk.loc, format!("unknown field `{other}` in group `{name}`"));
                    return Err(match closest(other, &["params", "steps", "description"]) {
                        Some(near) => e.hint(format!("did you mean `{near}`?")),
                        None => e.hint("a group takes: params, steps, description"),
                    });
                }
            }
        }
        let Some(steps) = steps else {
            return Err(PlanError::at(
                v.loc,
                format!("group `{name}` has no `steps`"),
            ));
        };
        groups.push((
            name,
            Group {
                params,
                steps,
                loc: v.loc,
            },
        ));
    }
    Ok(groups)
}

/// Replace every `use` step of the plan's `steps` by its group's steps.
fn expand_groups(mut root: Node) -> Result<Node, PlanError> {
    let Kind::Map(entries) = &mut root.kind else {
        return Ok(root);
    };
    let groups = match entries.iter().position(|(k, _)| key_is(k, "groups")) {
        Some(i) => parse_groups(&entries.remove(i).1)?,
        None => Vec::new(),
    };
    for (k, v) in entries.iter_mut() {
        if key_is(k, "steps")
            && let Kind::Seq(items) = &mut v.kind
        {
            let mut out = Vec::with_capacity(items.len());
            let mut made = 0;
            for item in std::mem::take(items) {
                expand_step(item, &groups, &mut Vec::new(), &mut out, &mut made)?;
            }
            *items = out;
        }
    }
    Ok(root)
}

fn expand_step(
    item: Node,
    groups: &[(String, Group)],
    stack: &mut Vec<String>,
    out: &mut Vec<Node>,
    made: &mut usize,
) -> Result<(), PlanError> {
    let Kind::Map(fields) = &item.kind else {
        out.push(item);
        return Ok(());
    };
    let Some((use_key, use_node)) = fields.iter().find(|(k, _)| key_is(k, "use")) else {
        *made += 1;
        if *made > MAX_STEPS {
            return Err(PlanError::at(
                item.loc,
                format!("groups make more than {MAX_STEPS} steps"),
            ));
        }
        out.push(item);
        return Ok(());
    };
    let name = scalar_text(use_node, "`use`")?;
    if let Some((other, _)) = fields
        .iter()
        .find(|(k, _)| !key_is(k, "use") && !key_is(k, "with"))
    {
        return Err(PlanError::at(
            other.loc,
            format!("`{}` is not a field of a `use` step", key_text(other)),
        )
        .hint("a `use` step takes `use: GROUP` and `with: {PARAM: VALUE}`; put other fields in the group's steps"));
    }
    let Some((_, group)) = groups.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = groups.iter().map(|(n, _)| n.as_str()).collect();
        let e = PlanError::at(use_node.loc, format!("`use: {name}` names no group"));
        return Err(match closest(&name, &names) {
            Some(near) => e.hint(format!("did you mean `{near}`?")),
            None if names.is_empty() => e.hint("declare it under `groups:`"),
            None => e.hint(format!("the groups are: {}", names.join(", "))),
        });
    };
    if stack.contains(&name) || stack.len() >= MAX_DEPTH {
        let mut shown = stack.clone();
        shown.push(name.clone());
        return Err(PlanError::at(
            use_key.loc,
            format!("groups use each other in a cycle: {}", shown.join(" -> ")),
        ));
    }
    let param_names: Vec<&str> = group.params.iter().map(|(n, _)| n.as_str()).collect();
    let mut values: Vec<(String, String)> = Vec::new();
    if let Some((_, with)) = fields.iter().find(|(k, _)| key_is(k, "with")) {
        let Kind::Map(given) = &with.kind else {
            return Err(PlanError::at(
                with.loc,
                format!(
                    "`with` must be a mapping of params to values, found {}",
                    with.describe()
                ),
            ));
        };
        for (pk, pv) in given {
            let p = key_text(pk);
            if !param_names.contains(&p) {
                let e = PlanError::at(pk.loc, format!("group `{name}` has no param `{p}`"));
                return Err(match closest(p, &param_names) {
                    Some(near) => e.hint(format!("did you mean `{near}`?")),
                    None if param_names.is_empty() => {
                        e.hint(format!("group `{name}` takes no params"))
                    }
                    None => e.hint(format!("its params are: {}", param_names.join(", "))),
                });
            }
            values.push((p.to_owned(), scalar_text(pv, "a param's value")?));
        }
    }
    for (p, default) in &group.params {
        if values.iter().any(|(n, _)| n == p) {
            continue;
        }
        match default {
            Some(d) => values.push((p.clone(), d.clone())),
            None => {
                return Err(PlanError::at(
                    use_node.loc,
                    format!("group `{name}` needs param `{p}`"),
                )
                .hint(format!(
                    "add `with: {{{p}: ...}}` (the group is at {})",
                    shown_loc(group.loc)
                )));
            }
        }
    }
    stack.push(name.clone());
    for step in &group.steps {
        let mut step = step.clone();
        substitute(&mut step, &values, &name, false)?;
        expand_step(step, groups, stack, out, made)?;
    }
    stack.pop();
    Ok(())
}

/// Fill in `${param.NAME}` in every scalar value under `node`; `template`: inside an `each`'s
/// sub-steps, where a value's braces are doubled.
fn substitute(
    node: &mut Node,
    values: &[(String, String)],
    group: &str,
    template: bool,
) -> Result<(), PlanError> {
    match &mut node.kind {
        Kind::Scalar { text, plain } => {
            if text.contains("${param.") {
                let out = substitute_text(text, node.loc, values, group, template)?;
                // As for variables: a boolean keeps YAML's typing, quoted or not when the
                // reference is the whole value.
                let t = text.trim();
                let whole =
                    t.starts_with("${param.") && t.ends_with('}') && t.matches("${").count() == 1;
                *plain = (*plain || whole) && matches!(yaml::resolve(&out), Scalar::Bool(_));
                *text = out;
            }
        }
        Kind::Seq(items) => {
            for item in items {
                substitute(item, values, group, template)?;
            }
        }
        Kind::Map(entries) => {
            let is_each = entries.iter().any(|(k, _)| key_is(k, "each"));
            for (k, v) in entries {
                let inner = template || (is_each && key_is(k, "steps"));
                substitute(v, values, group, inner)?;
            }
        }
    }
    Ok(())
}

fn substitute_text(
    text: &str,
    loc: Loc,
    values: &[(String, String)],
    group: &str,
    template: bool,
) -> Result<String, PlanError> {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(found) = text[i..].find('$') {
        let start = i + found;
        out.push_str(&text[i..start]);
        let rest = &text[start..];
        if rest.starts_with("$${") {
            // Left for the variables' pass, which makes it a literal `${`.
            out.push_str("$${");
            i = start + 3;
            continue;
        }
        let Some(body) = rest.strip_prefix("${param.") else {
            out.push('$');
            i = start + 1;
            continue;
        };
        let Some(end) = body.find('}') else {
            out.push_str(rest);
            i = text.len();
            break;
        };
        let name = body[..end].trim();
        let Some((_, value)) = values.iter().find(|(n, _)| n == name) else {
            let names: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
            let e = PlanError::at(
                loc,
                format!("`${{param.{name}}}` names no param of group `{group}`"),
            );
            return Err(match closest(name, &names) {
                Some(near) => e.hint(format!("did you mean `${{param.{near}}}`?")),
                None => e.hint(format!("declare `{name}` under the group's `params:`")),
            });
        };
        if template {
            out.push_str(&value.replace('{', "{{").replace('}', "}}"));
        } else {
            out.push_str(value);
        }
        i = start + "${param.".len() + end + 1;
    }
    out.push_str(&text[i..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn compose_with(files: &[(&str, &str)], main: &str) -> Result<Composed, PlanError> {
        let files: BTreeMap<String, String> = files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        let root = yaml::parse(main).unwrap().unwrap();
        let mut read = |p: &str| files.get(p).cloned().ok_or_else(|| "not found".to_string());
        compose(root, Some("ops/idem.yml"), &mut read)
    }

    fn step_texts(c: &Composed) -> Vec<String> {
        let Kind::Map(entries) = &c.root.kind else {
            panic!()
        };
        let (_, steps) = entries.iter().find(|(k, _)| key_is(k, "steps")).unwrap();
        let Kind::Seq(items) = &steps.kind else {
            panic!()
        };
        items
            .iter()
            .map(|s| match &s.kind {
                Kind::Map(f) => f
                    .iter()
                    .map(|(k, v)| format!("{}={}", key_text(k), key_text(v)))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn includes_are_relative_to_the_including_file_and_their_steps_come_first() {
        let c = compose_with(
            &[
                (
                    "ops/common/base.yml",
                    "include: ../leaf.yml\nsteps: [{dir: base}]\n",
                ),
                ("ops/leaf.yml", "steps: [{dir: leaf}]\n"),
            ],
            "include: common/base.yml\nsteps: [{dir: own}]\n",
        )
        .unwrap();
        assert_eq!(step_texts(&c), ["dir=leaf", "dir=base", "dir=own"]);
        assert_eq!(c.included, ["ops/common/base.yml", "ops/leaf.yml"]);
    }

    #[test]
    fn a_cycle_is_named_and_a_climb_out_of_the_root_refused() {
        let e = compose_with(
            &[
                ("ops/a.yml", "include: b.yml\n"),
                ("ops/b.yml", "include: a.yml\n"),
            ],
            "include: a.yml\nsteps: []\n",
        )
        .err()
        .unwrap();
        assert_eq!(
            e.message,
            "include cycle: ops/a.yml -> ops/b.yml -> ops/a.yml"
        );
        assert_eq!(e.loc.unwrap().file, Some("ops/b.yml"));
        let e = compose_with(&[], "include: ../../x.yml\nsteps: []\n")
            .err()
            .unwrap();
        assert_eq!(e.message, "`../../x.yml` leads out of the root");
        let e = compose_with(&[], "include: /etc/x.yml\nsteps: []\n")
            .err()
            .unwrap();
        assert!(e.message.contains("absolute"), "{}", e.message);
    }

    #[test]
    fn a_group_used_twice_gets_each_its_params_and_its_defaults() {
        let c = compose_with(
            &[],
            "groups:\n  site:\n    params: {name: ~, mode: \"0644\"}\n    steps:\n      - file: \"www/${param.name}/index.html\"\n        content: \"${param.name} $${param.name}\"\n        mode: ${param.mode}\nsteps:\n  - use: site\n    with: {name: a}\n  - use: site\n    with: {name: b, mode: \"0600\"}\n",
        )
        .unwrap();
        assert_eq!(
            step_texts(&c),
            [
                "file=www/a/index.html,content=a $${param.name},mode=0644",
                "file=www/b/index.html,content=b $${param.name},mode=0600"
            ]
        );
    }

    #[test]
    fn group_mistakes_are_named_where_they_are() {
        let g = "groups:\n  site:\n    params: [name]\n    steps: [{dir: \"${param.nmae}\"}]\n";
        let e = compose_with(
            &[],
            &format!("{g}steps: [{{use: site, with: {{name: a}}}}]\n"),
        )
        .err()
        .unwrap();
        assert_eq!(e.message, "`${param.nmae}` names no param of group `site`");
        assert_eq!(e.hint.as_deref(), Some("did you mean `${param.name}`?"));
        assert_eq!(e.loc.unwrap().line, 4);
        let e = compose_with(&[], &format!("{g}steps: [{{use: stie}}]\n"))
            .err()
            .unwrap();
        assert_eq!(e.hint.as_deref(), Some("did you mean `site`?"));
        let e = compose_with(&[], &format!("{g}steps: [{{use: site}}]\n"))
            .err()
            .unwrap();
        assert_eq!(e.message, "group `site` needs param `name`");
        let e = compose_with(
            &[],
            &format!("{g}steps: [{{use: site, with: {{nam: a}}}}]\n"),
        )
        .err()
        .unwrap();
        assert_eq!(e.message, "group `site` has no param `nam`");
        let e = compose_with(
            &[],
            "groups:\n  a: {steps: [{use: b}]}\n  b: {steps: [{use: a}]}\nsteps: [{use: a}]\n",
        )
        .err()
        .unwrap();
        assert_eq!(e.message, "groups use each other in a cycle: a -> b -> a");
    }

    #[test]
    fn an_error_in_an_included_file_points_into_it() {
        let e = compose_with(
            &[("ops/bad.yml", "steps:\n  - dir: a\n   - dir: b\n")],
            "include: bad.yml\nsteps: []\n",
        )
        .err()
        .unwrap();
        assert_eq!(e.loc.unwrap().file, Some("ops/bad.yml"));
        assert_eq!(e.loc.unwrap().line, 3);
    }
}
