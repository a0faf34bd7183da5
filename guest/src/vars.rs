//! Variables: the plan's `vars:` declarations, the values the host passes (`--var`,
//! `--var-file`, the environment variables the plan names), and `${...}` interpolation.
//!
//! Interpolation runs over the YAML tree before the steps are validated, so every string
//! field (paths, content, names, globs, a plugin's config) takes `${var.NAME}` and
//! `${env.NAME}`, and what the validation then sees is the value. `$${` is a literal `${`.
//! The `$` keeps the syntax apart from `each`'s `{field}` placeholders: inside the sub-steps
//! of `each`, an interpolated value's braces are doubled, so a value is always text and never
//! a placeholder. A reference to a variable that has no value, or to anything but `var.` and
//! `env.`, is a load-time error at the scalar that holds it.
//!
//! A variable declared `sensitive: true` is a secret: its value is handed back to the host
//! (which keeps it out of every output), and each top-level step whose fields used one is
//! marked, so the host shows its file changes as "changed (sensitive)".

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::plan::{PlanError, closest};
use crate::yaml::{Kind, Loc, Node, Scalar, resolve};

/// A variable: its default value, or a mapping with `default`, `sensitive` and `description`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, untagged)]
pub enum VarDecl {
    /// The default value, written directly: `region: eu-west-1`.
    Value(VarValue),
    /// The full form.
    Full(VarSpec),
}

/// A variable's full declaration.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VarSpec {
    /// The value when none is given with `--var` or `--var-file`; without one, the variable
    /// must be given. May use `${env.NAME}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<VarValue>,
    /// A secret: its value is never shown in diffs, logs, reports, history or errors.
    #[serde(default)]
    pub sensitive: bool,
    /// What the variable is for, for the people who set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A variable's value: text, or a number or boolean, used as its text.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum VarValue {
    Text(String),
    Number(f64),
    Bool(bool),
}

/// What the host hands `load`: values given on the command line, and the environment
/// variables the plan's text names.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `--var-file` then `--var` values, in order (a later one wins).
    pub vars: Vec<(String, String)>,
    /// The environment variables named by `${env.NAME}` that are set.
    pub env: Vec<(String, String)>,
}

/// The resolved variables.
#[derive(Debug, Default)]
pub struct Vars {
    values: BTreeMap<String, (Option<String>, bool, Loc)>,
    env: BTreeMap<String, String>,
}

impl Vars {
    /// The values of sensitive variables (non-empty ones: an empty secret hides nothing).
    pub fn sensitive(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .values
            .values()
            .filter(|(v, s, _)| *s && v.as_deref().is_some_and(|v| !v.is_empty()))
            .filter_map(|(v, ..)| v.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

impl Vars {
    /// `e` with every sensitive value replaced by `(sensitive)`, as the host shows them.
    pub fn redact_error(&self, mut e: PlanError) -> PlanError {
        for secret in self.sensitive() {
            e.message = e.message.replace(&secret, "(sensitive)");
            e.hint = e.hint.map(|h| h.replace(&secret, "(sensitive)"));
        }
        e
    }
}

/// Read the `vars:` mapping (if any) and apply the host's values to it.
pub fn declare(node: Option<&Node>, inputs: &Inputs) -> Result<Vars, PlanError> {
    let mut vars = Vars {
        env: inputs.env.iter().cloned().collect(),
        ..Vars::default()
    };
    let entries: &[(Node, Node)] = match node.map(|n| (&n.kind, n)) {
        None => &[],
        Some((Kind::Map(entries), _)) => entries,
        Some((_, n)) if n.scalar() == Some(Scalar::Null) => &[],
        Some((_, n)) => {
            return Err(PlanError::at(
                n.loc,
                format!("`vars` must be a mapping, found {}", n.describe()),
            )
            .hint("write `vars:` then one `name: default` a line"));
        }
    };
    for (k, v) in entries {
        let Kind::Scalar { text: name, .. } = &k.kind else {
            return Err(PlanError::at(k.loc, "a variable's name must be a string"));
        };
        if !valid_name(name) {
            return Err(
                PlanError::at(k.loc, format!("`{name}` is not a valid variable name"))
                    .hint("use letters, digits, `_` and `-`, starting with a letter or `_`"),
            );
        }
        if vars.values.contains_key(name) {
            return Err(PlanError::at(
                k.loc,
                format!("variable `{name}` is given twice"),
            ));
        }
        let (default, sensitive) = match &v.kind {
            Kind::Map(fields) => {
                let mut default = None;
                let mut sensitive = false;
                for (fk, fv) in fields {
                    let field = match &fk.kind {
                        Kind::Scalar { text, .. } => text.as_str(),
                        _ => "",
                    };
                    match field {
                        "default" => default = Some(value_text(fv, name)?),
                        "sensitive" => match fv.scalar() {
                            Some(Scalar::Bool(b)) => sensitive = b,
                            _ => {
                                return Err(PlanError::at(
                                    fv.loc,
                                    format!("`sensitive` of `{name}` must be true or false"),
                                ));
                            }
                        },
                        "description" => {
                            if !matches!(fv.kind, Kind::Scalar { .. }) {
                                return Err(PlanError::at(
                                    fv.loc,
                                    format!("`description` of `{name}` must be a string"),
                                ));
                            }
                        }
                        other => {
                            let fields = ["default", "sensitive", "description"];
                            let e = PlanError::at(
                                fk.loc,
                                format!("unknown field `{other}` in variable `{name}`"),
                            );
                            return Err(match closest(other, &fields) {
                                Some(near) => e.hint(format!("did you mean `{near}`?")),
                                None => e.hint("a variable takes: default, sensitive, description"),
                            });
                        }
                    }
                }
                (default, sensitive)
            }
            _ => (Some(value_text(v, name)?), false),
        };
        // A default may read the environment (`default: "${env.TOKEN}"`), nothing else.
        let default = match default {
            Some(text) if text.contains("${var.") => {
                return Err(PlanError::at(
                    v.loc,
                    format!("the default of `{name}` uses another variable"),
                )
                .hint("a default may read the environment with ${env.NAME}, not other variables"));
            }
            Some(text) => Some(interpolate_at(&text, &|_| v.loc, &vars, false)?.0),
            None => None,
        };
        vars.values
            .insert(name.clone(), (default, sensitive, k.loc));
    }
    for (name, value) in &inputs.vars {
        let Some(slot) = vars.values.get_mut(name) else {
            let known: Vec<&str> = vars.values.keys().map(String::as_str).collect();
            let e = PlanError {
                message: format!(
                    "variable `{name}` is given a value but the plan does not declare it"
                ),
                loc: None,
                hint: None,
            };
            return Err(match closest(name, &known) {
                Some(near) => e.hint(format!("did you mean `{near}`?")),
                None if known.is_empty() => e.hint("declare it under `vars:` in the plan"),
                None => e.hint(format!("the plan declares: {}", known.join(", "))),
            });
        };
        slot.0 = Some(value.clone());
    }
    if let Some((name, (_, _, loc))) = vars.values.iter().find(|(_, (v, ..))| v.is_none()) {
        return Err(
            PlanError::at(*loc, format!("variable `{name}` has no value")).hint(format!(
                "pass --var {name}=VALUE or --var-file FILE, or give it a `default`"
            )),
        );
    }
    Ok(vars)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn value_text(node: &Node, name: &str) -> Result<String, PlanError> {
    match (&node.kind, node.scalar()) {
        (_, Some(Scalar::Null)) => Err(PlanError::at(
            node.loc,
            format!("variable `{name}` has an empty default"),
        )
        .hint("write \"\" for an empty string, or leave `default` out to require a value")),
        (Kind::Scalar { text, .. }, _) => Ok(text.clone()),
        _ => Err(PlanError::at(
            node.loc,
            format!(
                "the value of variable `{name}` must be a string, number or boolean, found {}",
                node.describe()
            ),
        )),
    }
}

/// Interpolate every scalar value under `node` (keys are left as written). `template` is true
/// inside the sub-steps of `each`, where values' braces are doubled. True when a sensitive
/// variable was used.
pub fn interpolate(node: &mut Node, vars: &Vars, template: bool) -> Result<bool, PlanError> {
    let mut sensitive = false;
    match &mut node.kind {
        Kind::Scalar { text, plain } => {
            if text.contains('$') {
                let (out, s) = interpolate_scalar(text, *plain, node.loc, vars, template)?;
                if out != *text {
                    // A value is text; only a boolean keeps YAML's typing (`recursive:
                    // ${var.r}`), quoted or not when the reference is the whole value, as the
                    // schema (which cannot tell quoted from plain) accepts both.
                    let whole = {
                        let t = text.trim();
                        t.starts_with("${") && t.ends_with('}') && t.matches("${").count() == 1
                    };
                    *plain = (*plain || whole) && matches!(resolve(&out), Scalar::Bool(_));
                    *text = out;
                }
                sensitive |= s;
            }
        }
        Kind::Seq(items) => {
            for item in items {
                sensitive |= interpolate(item, vars, template)?;
            }
        }
        Kind::Map(entries) => {
            let is_each = entries
                .iter()
                .any(|(k, _)| matches!(&k.kind, Kind::Scalar { text, .. } if text == "each"));
            for (k, v) in entries {
                let key = match &k.kind {
                    Kind::Scalar { text, .. } => text.as_str(),
                    _ => "",
                };
                let inner = template || (is_each && key == "steps");
                sensitive |= interpolate(v, vars, inner)?;
            }
        }
    }
    Ok(sensitive)
}

fn interpolate_scalar(
    text: &str,
    plain: bool,
    loc: Loc,
    vars: &Vars,
    template: bool,
) -> Result<(String, bool), PlanError> {
    // In a plain one-line scalar the reference's own column is known.
    let exact = plain && !text.contains('\n');
    let at = |offset: usize| Loc {
        line: loc.line,
        column: if exact {
            loc.column + text[..offset].chars().count() as u32
        } else {
            loc.column
        },
        file: loc.file,
    };
    interpolate_at(text, &at, vars, template)
}

fn interpolate_at(
    text: &str,
    at: &dyn Fn(usize) -> Loc,
    vars: &Vars,
    template: bool,
) -> Result<(String, bool), PlanError> {
    let mut out = String::with_capacity(text.len());
    let mut sensitive = false;
    let mut i = 0;
    while let Some(found) = text[i..].find('$') {
        let start = i + found;
        out.push_str(&text[i..start]);
        let rest = &text[start..];
        if rest.starts_with("$${") {
            out.push_str("${");
            i = start + 3;
            continue;
        }
        if !rest.starts_with("${") {
            out.push('$');
            i = start + 1;
            continue;
        }
        let Some(end) = rest.find('}') else {
            return Err(
                PlanError::at(at(start), format!("unclosed `${{` in `{text}`"))
                    .hint("close it with `}`, or write `$${` for a literal `${`"),
            );
        };
        let reference = rest[2..end].trim();
        let (value, secret) = lookup(reference, vars).map_err(|e| PlanError {
            loc: Some(at(start)),
            ..e
        })?;
        sensitive |= secret;
        if template {
            out.push_str(&value.replace('{', "{{").replace('}', "}}"));
        } else {
            out.push_str(&value);
        }
        i = start + end + 1;
    }
    out.push_str(&text[i..]);
    Ok((out, sensitive))
}

fn lookup(reference: &str, vars: &Vars) -> Result<(String, bool), PlanError> {
    let err = |message: String| PlanError {
        message,
        loc: None,
        hint: None,
    };
    if let Some(name) = reference.strip_prefix("var.") {
        return match vars.values.get(name) {
            Some((Some(v), s, _)) => Ok((v.clone(), *s)),
            Some((None, ..)) => Err(err(format!("variable `{name}` has no value"))
                .hint(format!("pass --var {name}=VALUE"))),
            None => {
                let known: Vec<&str> = vars.values.keys().map(String::as_str).collect();
                let e = err(format!("`${{var.{name}}}` names an undeclared variable"));
                Err(match closest(name, &known) {
                    Some(near) => e.hint(format!("did you mean `${{var.{near}}}`?")),
                    None => e.hint(format!("declare `{name}` under `vars:`")),
                })
            }
        };
    }
    if let Some(name) = reference.strip_prefix("env.") {
        if !valid_name(name) {
            return Err(err(format!(
                "`${{env.{name}}}` is not a valid environment variable name"
            )));
        }
        return match vars.env.get(name) {
            Some(v) => Ok((v.clone(), false)),
            None => Err(
                err(format!("environment variable {name} is not set")).hint(format!(
                    "export {name}, or write $${{env.{name}}} for the literal text"
                )),
            ),
        };
    }
    if let Some(name) = reference.strip_prefix("param.") {
        return Err(err(format!("`${{param.{name}}}` is used outside a group"))
            .hint("a param is known only in the steps of a group (under `groups:`); use `${var.NAME}` elsewhere"));
    }
    Err(err(format!("`${{{reference}}}` is not a reference idem knows"))
        .hint(format!(
            "write `${{var.{reference}}}` for a variable, `${{env.{reference}}}` for the environment, or `$${{` for a literal `${{`"
        )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn vars(src: &str, inputs: &Inputs) -> Result<Vars, PlanError> {
        let root = yaml::parse(src).unwrap().unwrap();
        declare(Some(&root), inputs)
    }

    fn run(text: &str, v: &Vars, template: bool) -> Result<(String, bool), PlanError> {
        interpolate_at(
            text,
            &|_| Loc {
                line: 1,
                column: 1,
                file: None,
            },
            v,
            template,
        )
    }

    #[test]
    fn references_are_replaced_and_escapes_kept() {
        let inputs = Inputs {
            vars: vec![("who".into(), "ops".into())],
            env: vec![("HOME".into(), "/home/x".into())],
        };
        let v = vars(
            "who: nobody\nsecret: {sensitive: true, default: s3cr3t}\n",
            &inputs,
        )
        .unwrap();
        assert_eq!(
            run("hi ${var.who}", &v, false).unwrap(),
            ("hi ops".into(), false)
        );
        assert_eq!(run("${env.HOME}/a", &v, false).unwrap().0, "/home/x/a");
        assert_eq!(run("$${var.who} $5", &v, false).unwrap().0, "${var.who} $5");
        assert_eq!(
            run("k=${var.secret}", &v, false).unwrap(),
            ("k=s3cr3t".into(), true)
        );
        assert_eq!(v.sensitive(), vec!["s3cr3t".to_string()]);
    }

    #[test]
    fn values_are_text_inside_each_templates() {
        let inputs = Inputs {
            vars: vec![("x".into(), "{id}".into())],
            env: vec![],
        };
        let v = vars("x: a\n", &inputs).unwrap();
        assert_eq!(run("${var.x}-{id}", &v, true).unwrap().0, "{{id}}-{id}");
    }

    #[test]
    fn unknown_and_unset_references_are_errors() {
        let v = vars("name: a\n", &Inputs::default()).unwrap();
        let e = run("${var.nmae}", &v, false).unwrap_err();
        assert!(e.message.contains("undeclared"), "{e:?}");
        assert_eq!(e.hint.as_deref(), Some("did you mean `${var.name}`?"));
        assert!(
            run("${env.NOPE_X}", &v, false)
                .unwrap_err()
                .message
                .contains("not set")
        );
        assert!(
            run("${name}", &v, false)
                .unwrap_err()
                .message
                .contains("not a reference")
        );
        assert!(
            run("${var.name", &v, false)
                .unwrap_err()
                .message
                .contains("unclosed")
        );
        let e = vars("token: {sensitive: true}\n", &Inputs::default()).unwrap_err();
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 1,
                column: 1,
                file: None
            })
        );
        assert!(e.message.contains("has no value"));
        let e = vars(
            "a: b\n",
            &Inputs {
                vars: vec![("c".into(), "d".into())],
                env: vec![],
            },
        )
        .unwrap_err();
        assert!(e.message.contains("does not declare"), "{e:?}");
    }

    #[test]
    fn a_plain_scalar_reports_the_reference_column() {
        let v = vars("a: b\n", &Inputs::default()).unwrap();
        let mut node = yaml::parse("k: x ${var.zz}\n").unwrap().unwrap();
        let e = interpolate(&mut node, &v, false).unwrap_err();
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 1,
                column: 6,
                file: None
            })
        );
    }
}
