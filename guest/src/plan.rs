//! The plan format: its types (which also generate the JSON Schema, so the schema cannot
//! drift from what is accepted) and the validation that turns a YAML tree into them.
//!
//! Validation is by hand over `yaml::Node` rather than through serde's derive, because every
//! error should carry the line and column of the offending key or value, name the operation,
//! and suggest the field that was probably meant. The test `schema_lists_the_parsed_fields`
//! checks that the fields read here are exactly the fields of the types.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Serialize;

use crate::glob::Glob;
use crate::template::{self, Use};
use crate::vars::{self, Inputs, VarDecl};
use crate::yaml::{self, Kind, Loc, Node, Scalar};

/// A whole plan.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "idem plan",
    description = "Steps that idem applies in order; see docs/plan.md."
)]
pub struct Plan {
    /// The plan format's version; the only one is 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Other plan files to take in, relative to this file: their `vars` and `groups` join
    /// this plan's, and their `steps` run before this plan's own, in the order listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub include: Vec<String>,
    /// Named lists of steps with parameters, run where a step says `use: NAME` (with
    /// `with: {PARAM: VALUE}`); inside them, `${param.NAME}` is the value given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Group>,
    /// Variables, used in any string as `${var.NAME}`: a default value (`region: eu`), or
    /// `{default, sensitive, description}`. A variable without a default must be given with
    /// `--var NAME=VALUE` or `--var-file`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, VarDecl>,
    /// The steps, run in order.
    #[schemars(with = "Vec<StepOrUse>")]
    pub steps: Vec<Step>,
}

/// A reusable list of steps (under `groups:`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// What the group is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its parameters: a mapping of names to default values (`~` for a parameter that
    /// must be given), or a list of names that must all be given.
    #[serde(default)]
    #[schemars(with = "Params")]
    pub params: BTreeMap<String, Option<String>>,
    /// The steps a `use` of the group runs, in order.
    #[schemars(with = "Vec<StepOrUse>")]
    pub steps: Vec<Step>,
}

// The schema's form of a group's parameters.
#[derive(JsonSchema)]
#[schemars(
    description = "A mapping of parameter names to default values (`~` for one that must be given), or a list of names that must all be given."
)]
#[serde(untagged)]
#[allow(dead_code)]
enum Params {
    Defaults(BTreeMap<String, Option<ScalarValue>>),
    Names(Vec<String>),
}

// The schema's form of a param's value.
#[derive(JsonSchema)]
#[schemars(description = "A string, number or boolean.")]
#[serde(untagged)]
#[allow(dead_code)]
enum ScalarValue {
    Text(String),
    Number(f64),
    Bool(bool),
}

// The schema's form of a step: groups are expanded when the plan loads.
#[derive(JsonSchema)]
#[schemars(
    description = "A step, or a `use` of a group, which runs the group's steps in its place."
)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)]
enum StepOrUse {
    Step(Step),
    Use(UseStep),
}

/// Run a group's steps here.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct UseStep {
    /// The group's name, from `groups:`.
    #[serde(rename = "use")]
    group: String,
    /// Values for the group's parameters.
    #[serde(default)]
    with: BTreeMap<String, ScalarValue>,
}

/// One step: a mapping with exactly one operation key.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Step {
    Dir(DirStep),
    File(FileStep),
    Remove(RemoveStep),
    Cleanup(CleanupStep),
    Upsert(UpsertStep),
    Each(EachStep),
    Plugin(PluginStep),
}

/// A sub-step of `each`: the operations that make sense per record.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum SubStep {
    Dir(DirStep),
    File(FileStep),
    Remove(RemoveStep),
    Cleanup(CleanupStep),
    Upsert(UpsertStep),
}

/// Ensure a directory exists, like `mkdir -p`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirStep {
    /// Shown in reports instead of the generated name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels to select the step by with `--only` and `--skip` (top-level steps only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub tags: Vec<String>,
    /// The directory, relative to the root.
    pub dir: String,
    /// Permission bits the directory converges to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

/// Ensure a file's content.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(extend("oneOf" = [{"required": ["content"]}, {"required": ["source"]}]))]
pub struct FileStep {
    /// Shown in reports instead of the generated name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels to select the step by with `--only` and `--skip` (top-level steps only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub tags: Vec<String>,
    /// The file, relative to the root.
    pub file: String,
    /// The exact content (exactly one of `content` and `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A file under the root whose content is copied (exactly one of `content` and `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Permission bits the file converges to; an existing file keeps its own otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Write only when nothing is there; never touch an existing file.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(with = "Flag")]
    pub if_missing: bool,
}

/// Ensure a path is absent.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveStep {
    /// Shown in reports instead of the generated name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels to select the step by with `--only` and `--skip` (top-level steps only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub tags: Vec<String>,
    /// The path, relative to the root.
    pub remove: String,
    /// Remove a non-empty directory with everything in it.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(with = "Flag")]
    pub recursive: bool,
}

/// Delete files older than an age under a directory.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CleanupStep {
    /// Shown in reports instead of the generated name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels to select the step by with `--only` and `--skip` (top-level steps only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub tags: Vec<String>,
    /// The directory to clean, relative to the root.
    pub cleanup: String,
    /// Files modified longer ago than this are deleted.
    pub older_than: Age,
    /// Globs of files to consider, relative to the cleanup directory (default: every file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub include: Vec<String>,
    /// Globs of files never to delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub exclude: Vec<String>,
    /// Remove directories left empty (never the cleanup directory itself).
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(with = "Flag")]
    pub remove_empty_dirs: bool,
}

/// Load records into a SQLite or PostgreSQL table.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(extend("oneOf" = [{"required": ["from"]}, {"required": ["rows"]}]))]
pub struct UpsertStep {
    /// Shown in reports instead of the generated name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels to select the step by with `--only` and `--skip` (top-level steps only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub tags: Vec<String>,
    /// The database: a SQLite file relative to the root (created when missing), or a
    /// PostgreSQL database as a `postgres://` URL or `env:NAME`.
    pub upsert: String,
    /// The table; created when missing.
    pub table: String,
    /// The column(s) identifying a row.
    #[schemars(with = "OneOrMany")]
    pub key: Vec<String>,
    /// The records: CSV with a header row, a JSON array of objects, or NDJSON (or `rows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The records written in the plan instead of `from`: `[{id: "{id}", name: "{name}"}]`,
    /// templated inside `each`. Every row names the same fields; the values are text, typed
    /// as a CSV source's fields are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<InlineRow>>,
    /// The records' format; default from the file's extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// The columns to load; default every field of the first record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<OneOrMany>")]
    pub columns: Option<Vec<String>>,
    /// Column types for a created table or added columns, instead of inferring them
    /// (`{zip: text}`); an existing column must already have the declared type.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, ColumnType>,
    /// Add columns of the source that the existing table lacks (default: a clear error).
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(with = "Flag")]
    pub add_columns: bool,
    /// Delete the rows whose key is no longer in the source (counted as `deleted`).
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(with = "Flag")]
    pub delete_missing: bool,
}

/// One row of an `upsert`'s `rows`: its fields in the order written, each value as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineRow(pub Vec<(String, String)>);

impl Serialize for InlineRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl JsonSchema for InlineRow {
    fn schema_name() -> Cow<'static, str> {
        "InlineRow".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A row: column names to values (strings, templated inside `each`; numbers and booleans are taken as their text).",
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]}
        })
    }
}

impl UpsertStep {
    /// What the records are called in messages: the `from` file, or `rows`.
    pub fn source(&self) -> &str {
        self.from.as_deref().unwrap_or("`rows`")
    }
}

/// A column type that `types` may declare: SQLite's five affinities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Text, kept exactly as read (ZIP codes, phone and account numbers).
    Text,
    /// 64-bit integers.
    Integer,
    /// 64-bit floating point.
    Real,
    /// Integers or reals, whichever the value is.
    Numeric,
    /// Values stored as given, without conversion.
    Blob,
}

impl ColumnType {
    /// The type as written in `CREATE TABLE`.
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Text => "TEXT",
            ColumnType::Integer => "INTEGER",
            ColumnType::Real => "REAL",
            ColumnType::Numeric => "NUMERIC",
            ColumnType::Blob => "BLOB",
        }
    }
}

/// Run sub-steps once per record, remembering done records in a checkpoint.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EachStep {
    /// Shown in reports instead of the generated name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels to select the step by with `--only` and `--skip` (top-level steps only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub tags: Vec<String>,
    /// The records: CSV with a header row, a JSON array of objects, or NDJSON.
    pub each: String,
    /// The field(s) naming a record in the checkpoint.
    #[schemars(with = "OneOrMany")]
    pub key: Vec<String>,
    /// The checkpoint scope; default derived from the step's definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The records' format; default from the file's extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Process each key once, whatever its data: a record done is never looked at again,
    /// even when its values or its outputs change (for an effect that must happen once per
    /// key, such as a welcome mail). By default a record whose values changed, or whose
    /// outputs were edited or removed, is processed again.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(with = "Flag")]
    pub once: bool,
    /// Remove the outputs of records that left the source: the files and (when empty) the
    /// directories their `dir` and `file` sub-steps made, counted as `pruned`.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(with = "Flag")]
    pub prune: bool,
    /// Run for each record, with `{field}` replaced by the record's values.
    pub steps: Vec<SubStep>,
}

/// A step of your own, as a WebAssembly component that idem runs in a sandbox.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginStep {
    /// Shown in reports instead of the generated name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels to select the step by with `--only` and `--skip` (top-level steps only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub tags: Vec<String>,
    /// The component file, relative to the root.
    pub plugin: String,
    /// Handed to the plugin as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// Paths the plugin may touch; default the whole root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub paths: Vec<String>,
    /// Databases the plugin may open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub databases: Vec<String>,
    /// Where the plugin may send HTTP requests: `[scheme://]host[:port]`, `*.example.com`
    /// for subdomains, or a literal IP (the only way to reach a private or loopback address).
    /// None: no network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "OneOrMany")]
    pub hosts: Vec<String>,
    /// Headers idem adds to every request to a listed host; `env:NAME` reads the value
    /// from the environment, so the plan holds no secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Per-step network limits (defaults: 1000 requests, 64 MiB out, 256 MiB in).
    #[serde(
        default,
        rename = "http-limits",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_limits: Option<HttpLimits>,
}

/// A plugin step's network limits.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpLimits {
    /// At most this many requests (denied ones count too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// At most this many bytes of request bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// At most this many bytes of response bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
}

/// A format of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

impl Format {
    /// The format a file name's extension implies.
    pub fn from_path(path: &str) -> Option<Format> {
        let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "ndjson" | "jsonl" => Some(Format::Ndjson),
            _ => None,
        }
    }
}

/// Permission bits, written in the plan as an octal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl JsonSchema for Mode {
    fn schema_name() -> Cow<'static, str> {
        "Mode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Permission bits as an octal string, e.g. \"0755\", or a `${var.NAME}` that gives one.",
            "type": "string",
            "anyOf": [{"pattern": "^(0o)?[0-7]{3,4}$"}, {"pattern": REFERENCE}]
        })
    }
}

/// A duration like `30d` or `1d12h`, kept with the user's text for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Age {
    /// As written in the plan.
    pub text: String,
    /// In seconds.
    pub seconds: u64,
}

impl Serialize for Age {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl JsonSchema for Age {
    fn schema_name() -> Cow<'static, str> {
        "Age".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: numbers with units s, m, h, d, w, e.g. 30d or 1d12h, or a `${var.NAME}` that gives one.",
            "type": "string",
            "anyOf": [{"pattern": "^([0-9]+[smhdw])+$"}, {"pattern": REFERENCE}]
        })
    }
}

/// A `${var.NAME}`, `${env.NAME}` or `${param.NAME}` somewhere in a string (not the literal
/// `$${`): the schema cannot know the value, so it accepts it where the value must have a
/// form (a mode, a duration, a boolean), and the loader checks the value.
const REFERENCE: &str = "(^|[^$])[$][{](var|env|param)[.][^}]+[}]";

/// `true` or `false`, or a reference that gives one (schema only; parsed into `bool`).
struct Flag;

impl JsonSchema for Flag {
    fn schema_name() -> Cow<'static, str> {
        "Flag".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "true or false, or a `${var.NAME}` that gives one.",
            "anyOf": [{"type": "boolean"}, {"type": "string", "pattern": REFERENCE}]
        })
    }
}

// A string or a list of strings: the schema's form of fields parsed into `Vec<String>`.
#[derive(JsonSchema)]
#[schemars(description = "One string, or a list of strings.")]
#[serde(untagged)]
#[allow(dead_code)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a plan cannot be run.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub loc: Option<Loc>,
    /// A likely fix.
    pub hint: Option<String>,
}

impl PlanError {
    pub(crate) fn at(loc: Loc, message: impl Into<String>) -> PlanError {
        PlanError {
            message: message.into(),
            loc: Some(loc),
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> PlanError {
        self.hint = Some(hint.into());
        self
    }
}

/// The operations a step may name, in the order they are documented.
pub const OPS: &[&str] = &[
    "dir", "file", "remove", "cleanup", "upsert", "each", "plugin",
];
const SUB_OPS: &[&str] = &["dir", "file", "remove", "cleanup", "upsert"];

/// Every field of every operation, to tell "belongs elsewhere" from "misspelt".
const ALL_FIELDS: &[&str] = &[
    "name",
    "tags",
    "mode",
    "content",
    "source",
    "if-missing",
    "recursive",
    "older-than",
    "include",
    "exclude",
    "remove-empty-dirs",
    "table",
    "key",
    "from",
    "rows",
    "format",
    "columns",
    "types",
    "add-columns",
    "delete-missing",
    "id",
    "once",
    "prune",
    "steps",
    "config",
    "paths",
    "databases",
    "hosts",
    "headers",
    "http-limits",
];

thread_local! {
    /// The fields of the plan and of each operation, read from the generated schema so that
    /// what is accepted is what the schema says.
    static FIELDS: Vec<(&'static str, Vec<&'static str>)> = fields_from_schema();
}

fn fields_from_schema() -> Vec<(&'static str, Vec<&'static str>)> {
    let schema = schemars::schema_for!(Plan);
    let value = schema.as_value();
    let names = |props: &serde_json::Value| -> Vec<&'static str> {
        let mut out = Vec::new();
        if let Some(props) = props.as_object() {
            for key in props.keys() {
                // Interned: the set of names is small and fixed, and lives for the run.
                let known = ALL_FIELDS
                    .iter()
                    .chain(OPS)
                    .chain(&["version", "vars", "steps"]);
                if let Some(k) = known.into_iter().find(|k| *k == key) {
                    out.push(*k);
                }
            }
        }
        out
    };
    let mut fields = vec![("plan", names(&value["properties"]))];
    for (op, def) in [
        ("dir", "DirStep"),
        ("file", "FileStep"),
        ("remove", "RemoveStep"),
        ("cleanup", "CleanupStep"),
        ("upsert", "UpsertStep"),
        ("each", "EachStep"),
        ("plugin", "PluginStep"),
    ] {
        fields.push((op, names(&value["$defs"][def]["properties"])));
    }
    fields
}

fn with_fields<T>(op: &str, f: impl FnOnce(&[&'static str]) -> T) -> T {
    FIELDS.with(|all| {
        let fields = all
            .iter()
            .find(|(o, _)| *o == op)
            .map_or(&[][..], |(_, f)| f);
        f(fields)
    })
}

/// A validated plan with the location of each step.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The plan.
    pub plan: Plan,
    /// Where each step starts, one per step.
    pub locations: Vec<Loc>,
    /// Per step: the files it reads that must exist when it runs (`source`, `from`, `each`'s
    /// records, a plugin's component), with where each is named; templated ones are left out.
    pub reads: Vec<Vec<Read>>,
    /// Per step: where each of its `hosts:` entries is (a plugin's; empty for the others),
    /// for the host to point at an entry whose form it refuses.
    pub host_locations: Vec<Vec<Loc>>,
    /// Per step: whether a field of it used a sensitive variable.
    pub sensitive_steps: Vec<bool>,
    /// The values of the sensitive variables, for the host to keep out of every output.
    pub sensitive: Vec<String>,
    /// The files the plan included, under the root.
    pub included: Vec<String>,
}

/// A file a step reads, for the host to check before any step runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub path: String,
    pub loc: Loc,
    /// A plugin's component, which must be a WebAssembly component.
    pub component: bool,
}

/// Where the value of `field` of a step mapping is, or the step's own location.
fn field_loc(node: &Node, field: &str) -> Loc {
    match &node.kind {
        Kind::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(&k.kind, Kind::Scalar { text, .. } if text == field))
            .map_or(node.loc, |(_, v)| v.loc),
        _ => node.loc,
    }
}

/// Where each item of a step's list field `field` is: one per item of a sequence, the
/// value's own place for a single value, none when the field is absent.
fn item_locs(node: &Node, field: &str) -> Vec<Loc> {
    let Kind::Map(entries) = &node.kind else {
        return Vec::new();
    };
    match entries
        .iter()
        .find(|(k, _)| matches!(&k.kind, Kind::Scalar { text, .. } if text == field))
    {
        Some((_, v)) => match &v.kind {
            Kind::Seq(items) => items.iter().map(|i| i.loc).collect(),
            _ => vec![v.loc],
        },
        None => Vec::new(),
    }
}

/// Parse and validate a plan's source, without variables given from outside.
pub fn parse(source: &str) -> Result<Loaded, PlanError> {
    parse_with(source, &Inputs::default())
}

/// Parse and validate a plan's source with the host's variable values and environment; it
/// can include no file.
pub fn parse_with(source: &str, inputs: &Inputs) -> Result<Loaded, PlanError> {
    parse_composed(source, inputs, None, &mut |_| {
        Err("no file can be read here".to_string())
    })
}

/// Parse and validate a plan whose file is at `plan_path` under the root, reading the files
/// it includes with `read`.
pub fn parse_composed(
    source: &str,
    inputs: &Inputs,
    plan_path: Option<&str>,
    read: crate::include::Reader<'_>,
) -> Result<Loaded, PlanError> {
    // A node at the very end of the input (an empty document's null) is marked on a line after
    // the last; an error is shown where an editor can put the cursor. (An included file's
    // errors are placed by its own load.)
    load_composed(source, inputs, plan_path, read).map_err(|e| PlanError {
        loc: e.loc.map(|l| {
            if l.file.is_none() {
                yaml::within(source, l)
            } else {
                l
            }
        }),
        ..e
    })
}

fn load_composed(
    source: &str,
    inputs: &Inputs,
    plan_path: Option<&str>,
    read: crate::include::Reader<'_>,
) -> Result<Loaded, PlanError> {
    let root = yaml::parse(source)
        .map_err(|e| PlanError {
            message: if e.limit {
                e.message
            } else {
                format!("not valid YAML: {}", e.message)
            },
            loc: e.loc,
            hint: None,
        })?
        .ok_or_else(|| PlanError {
            message: "the plan is empty".into(),
            loc: None,
            hint: Some("start with `steps:` and a list of steps".into()),
        })?;
    if let Kind::Seq(_) = root.kind {
        return Err(PlanError::at(root.loc, "a plan is a mapping, not a list")
            .hint("put the steps under `steps:`"));
    }
    let composed = crate::include::compose(root, plan_path, read)?;
    let root = composed.root;
    // Variables first, so that what the steps are checked against is their values.
    let vars_node = match &root.kind {
        Kind::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(&k.kind, Kind::Scalar { text, .. } if text == "vars"))
            .map(|(_, v)| v.clone()),
        _ => None,
    };
    let vars = vars::declare(vars_node.as_ref(), inputs)?;
    // From here on an error may quote a value, so none leaves with a secret in it.
    let mut loaded = parse_steps(root, &vars).map_err(|e| vars.redact_error(e))?;
    loaded.included = composed.included;
    Ok(loaded)
}

fn parse_steps(mut root: Node, vars: &vars::Vars) -> Result<Loaded, PlanError> {
    let mut sensitive_steps = Vec::new();
    if let Kind::Map(entries) = &mut root.kind {
        for (k, v) in entries.iter_mut() {
            match &k.kind {
                Kind::Scalar { text, .. } if text == "vars" => {}
                Kind::Scalar { text, .. } if text == "steps" => {
                    if let Kind::Seq(items) = &mut v.kind {
                        for item in items {
                            sensitive_steps.push(vars::interpolate(item, vars, false)?);
                        }
                    }
                }
                _ => {
                    vars::interpolate(v, vars, false)?;
                }
            }
        }
    }
    let mut obj = Obj::new(&root, "plan", false)?;
    obj.take("vars");
    let version = match obj.take("version") {
        None => None,
        Some(node) => match node.scalar() {
            Some(Scalar::Int(1)) => Some(1),
            _ => {
                return Err(PlanError::at(
                    node.loc,
                    format!("unsupported plan version {}", text_of(node)),
                )
                .hint("the only version is 1"));
            }
        },
    };
    let steps_node = obj.take("steps");
    let Some(steps_node) = steps_node else {
        return Err(PlanError::at(root.loc, "the plan has no `steps`")
            .hint("add `steps:` with a list of steps"));
    };
    let items = match &steps_node.kind {
        Kind::Seq(items) => items.as_slice(),
        _ if steps_node.scalar() == Some(Scalar::Null) => &[],
        _ => {
            return Err(PlanError::at(
                steps_node.loc,
                format!("`steps` must be a list, found {}", steps_node.describe()),
            ));
        }
    };
    let mut steps = Vec::with_capacity(items.len());
    let mut locations = Vec::with_capacity(items.len());
    let mut reads = Vec::with_capacity(items.len());
    let mut host_locations = Vec::with_capacity(items.len());
    let mut written: BTreeMap<String, Loc> = BTreeMap::new();
    for item in items {
        let (step, read) = parse_step(item)?;
        if let Step::File(f) = &step {
            let loc = field_loc(item, "file");
            if let Some(first) = written.insert(normal(&f.file), loc) {
                return Err(PlanError::at(
                    loc,
                    format!("`{}` is written by two steps", f.file),
                )
                .hint(format!(
                    "the step at line {} writes it too; keep one of them (the second would undo the first on every run)",
                    first.line
                )));
            }
        }
        host_locations.push(match &step {
            Step::Plugin(_) => item_locs(item, "hosts"),
            _ => Vec::new(),
        });
        steps.push(step);
        locations.push(item.loc);
        reads.push(read);
    }
    sensitive_steps.resize(steps.len(), false);
    Ok(Loaded {
        plan: Plan {
            version,
            include: Vec::new(),
            groups: BTreeMap::new(),
            vars: BTreeMap::new(),
            steps,
        },
        locations,
        reads,
        host_locations,
        sensitive_steps,
        sensitive: vars.sensitive(),
        included: Vec::new(),
    })
}

fn text_of(node: &Node) -> String {
    match &node.kind {
        Kind::Scalar { text, .. } => format!("`{text}`"),
        _ => node.describe().to_string(),
    }
}

/// Find which operation a step names, checking there is exactly one and that it is allowed.
fn step_op(node: &Node, allowed: &[&str]) -> Result<&'static str, PlanError> {
    let Kind::Map(entries) = &node.kind else {
        return Err(PlanError::at(
            node.loc,
            format!("a step must be a mapping, found {}", node.describe()),
        )
        .hint("write a step like `- dir: build/out`"));
    };
    let keys = entries
        .iter()
        .filter_map(|(k, _)| match &k.kind {
            Kind::Scalar { text, .. } => Some((text.as_str(), k.loc)),
            _ => None,
        })
        .collect::<Vec<_>>();
    let ops: Vec<(&'static str, Loc)> = keys
        .iter()
        .filter_map(|(k, loc)| OPS.iter().find(|op| *op == k).map(|op| (*op, *loc)))
        .collect();
    match ops.as_slice() {
        [] => {
            let guess = keys
                .iter()
                .filter(|(k, _)| !ALL_FIELDS.contains(k))
                .find_map(|(k, loc)| closest(k, OPS).map(|op| (*k, op, *loc)));
            Err(match guess {
                Some((key, op, loc)) => PlanError::at(loc, format!("unknown operation `{key}`"))
                    .hint(format!("did you mean `{op}`?")),
                None => PlanError::at(node.loc, "the step names no operation").hint(format!(
                    "start the step with one of: {}",
                    allowed.join(", ")
                )),
            })
        }
        [(op, loc)] if !allowed.contains(op) => Err(PlanError::at(
            *loc,
            format!("`{op}` cannot be a sub-step of `each`"),
        )
        .hint(format!("sub-steps may be {}", allowed.join(", ")))),
        [(op, _)] => Ok(op),
        [(first, _), (second, loc), ..] if first == second => {
            Err(PlanError::at(*loc, format!("`{first}` is given twice")))
        }
        [(first, _), (second, loc), ..] => Err(PlanError::at(
            *loc,
            format!("a step has exactly one operation, this one has `{first}` and `{second}`"),
        )
        .hint("split it into two steps")),
    }
}

fn parse_step(node: &Node) -> Result<(Step, Vec<Read>), PlanError> {
    let step = parse_step_only(node)?;
    let mut reads = Vec::new();
    let mut read = |path: &str, field: &str, component: bool| {
        reads.push(Read {
            path: path.to_owned(),
            loc: field_loc(node, field),
            component,
        })
    };
    match &step {
        Step::File(f) => {
            if let Some(s) = &f.source {
                read(s, "source", false);
            }
        }
        Step::Upsert(u) => {
            if let Some(from) = &u.from {
                read(from, "from", false);
            }
        }
        Step::Each(e) => read(&e.each, "each", false),
        Step::Plugin(p) => read(&p.plugin, "plugin", true),
        _ => {}
    }
    Ok((step, reads))
}

fn parse_step_only(node: &Node) -> Result<Step, PlanError> {
    let op = step_op(node, OPS)?;
    let mut obj = Obj::new(node, op, false)?;
    let step = match op {
        "each" => Step::Each(parse_each(&mut obj)?),
        "plugin" => Step::Plugin(parse_plugin(&mut obj)?),
        _ => match parse_common(&mut obj, op)? {
            SubStep::Dir(s) => Step::Dir(s),
            SubStep::File(s) => Step::File(s),
            SubStep::Remove(s) => Step::Remove(s),
            SubStep::Cleanup(s) => Step::Cleanup(s),
            SubStep::Upsert(s) => Step::Upsert(s),
        },
    };
    Ok(step)
}

fn parse_sub_step(node: &Node) -> Result<SubStep, PlanError> {
    let op = step_op(node, SUB_OPS)?;
    let mut obj = Obj::new(node, op, true)?;
    let step = parse_common(&mut obj, op)?;
    Ok(step)
}

fn parse_common(obj: &mut Obj<'_>, op: &str) -> Result<SubStep, PlanError> {
    let name = obj.string("name")?;
    let tags = obj.tags()?;
    Ok(match op {
        "dir" => SubStep::Dir(DirStep {
            name,
            tags: tags.clone(),
            dir: obj.path("dir")?,
            mode: obj.mode("mode")?,
        }),
        "file" => {
            let step = FileStep {
                name,
                tags: tags.clone(),
                file: obj.path("file")?,
                content: obj.template("content")?,
                source: obj.source()?,
                mode: obj.mode("mode")?,
                if_missing: obj.boolean("if-missing")?.unwrap_or(false),
            };
            if step.content.is_some() == step.source.is_some() {
                let what = if step.content.is_some() {
                    "both `content` and `source`"
                } else {
                    "neither `content` nor `source`"
                };
                return Err(
                    PlanError::at(obj.loc, format!("the `file` step has {what}")).hint(
                        "give exactly one: `content` for inline text, `source` to copy a file",
                    ),
                );
            }
            SubStep::File(step)
        }
        "remove" => SubStep::Remove(RemoveStep {
            name,
            tags: tags.clone(),
            remove: obj.path("remove")?,
            recursive: obj.boolean("recursive")?.unwrap_or(false),
        }),
        "cleanup" => SubStep::Cleanup(CleanupStep {
            name,
            tags: tags.clone(),
            cleanup: obj.path("cleanup")?,
            older_than: obj.age("older-than")?,
            include: obj.globs("include")?,
            exclude: obj.globs("exclude")?,
            remove_empty_dirs: obj.boolean("remove-empty-dirs")?.unwrap_or(false),
        }),
        _ => {
            let step = UpsertStep {
                name,
                tags: tags.clone(),
                upsert: obj.path("upsert")?,
                table: obj.required("table", Obj::template)?,
                key: obj.required("key", Obj::names)?,
                from: match obj.has("from") {
                    true => Some(obj.path("from")?),
                    false => None,
                },
                rows: obj.rows("rows")?,
                format: obj.format("format")?,
                columns: obj.names("columns")?,
                types: obj.types("types")?,
                add_columns: obj.boolean("add-columns")?.unwrap_or(false),
                delete_missing: obj.boolean("delete-missing")?.unwrap_or(false),
            };
            if let Some(columns) = &step.columns
                && let Some(extra) = step.types.keys().find(|t| !columns.contains(t))
            {
                return Err(PlanError::at(
                    obj.loc_of("types"),
                    format!("`types` names `{extra}`, which is not in `columns`"),
                )
                .hint(format!(
                    "add `{extra}` to `columns` or remove it from `types`"
                )));
            }
            if let Some(columns) = &step.columns
                && let Some(missing) = step.key.iter().find(|k| !columns.contains(k))
            {
                let loc = obj.loc_of("columns");
                return Err(PlanError::at(
                    loc,
                    format!("the key column `{missing}` is not in `columns`"),
                )
                .hint(format!("add `{missing}` to `columns`")));
            }
            if !(obj.templates && step.table.contains('{')) {
                check_table_name(&step.table).map_err(|e| PlanError::at(obj.loc_of("table"), e))?;
            }
            match (&step.from, &step.rows) {
                (Some(_), Some(_)) => {
                    return Err(PlanError::at(
                        obj.loc_of("rows"),
                        "the `upsert` step has both `from` and `rows`",
                    )
                    .hint("give exactly one: `from` for a file of records, `rows` for rows written in the plan"));
                }
                (None, None) => {
                    return Err(PlanError::at(
                        obj.loc,
                        "the `upsert` step has neither `from` nor `rows`",
                    )
                    .hint(
                        "add `from:` with a file of records, or `rows:` with the rows themselves",
                    ));
                }
                (Some(from), None) => check_format(obj, step.format, from, "from")?,
                (None, Some(rows)) => {
                    if let Some(k) = step
                        .key
                        .iter()
                        .find(|k| !rows[0].0.iter().any(|(c, _)| c == *k))
                    {
                        return Err(PlanError::at(
                            obj.loc_of("key"),
                            format!(
                                "the key `{k}` is not among the columns of `rows` ({})",
                                rows[0]
                                    .0
                                    .iter()
                                    .map(|(c, _)| c.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                        .hint(format!("add `{k}` to every row")));
                    }
                    if step.format.is_some() {
                        return Err(PlanError::at(
                            obj.loc_of("format"),
                            "`format` is for the file of `from`, and this `upsert` has `rows`",
                        )
                        .hint("remove `format`"));
                    }
                }
            }
            SubStep::Upsert(step)
        }
    })
}

fn parse_each(obj: &mut Obj<'_>) -> Result<EachStep, PlanError> {
    let name = obj.string("name")?;
    let tags = obj.tags()?;
    let each = obj.path("each")?;
    let key = obj.required("key", Obj::names)?;
    let id = obj.string("id")?;
    let format = obj.format("format")?;
    let once = obj.boolean("once")?.unwrap_or(false);
    let prune = obj.boolean("prune")?.unwrap_or(false);
    check_format(obj, format, &each, "each")?;
    let steps_node = obj.take("steps").ok_or_else(|| {
        PlanError::at(obj.loc, "the `each` step has no `steps`")
            .hint("add `steps:` with the sub-steps to run for each record")
    })?;
    let Kind::Seq(items) = &steps_node.kind else {
        return Err(PlanError::at(
            steps_node.loc,
            format!("`steps` must be a list, found {}", steps_node.describe()),
        ));
    };
    let steps = items
        .iter()
        .map(parse_sub_step)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EachStep {
        name,
        tags: tags.clone(),
        each,
        key,
        id,
        format,
        once,
        prune,
        steps,
    })
}

fn check_format(
    obj: &Obj<'_>,
    format: Option<Format>,
    path: &str,
    field: &str,
) -> Result<(), PlanError> {
    // A templated path's extension is only known per record; it is checked when it runs.
    if format.is_none() && !path.contains('{') && Format::from_path(path).is_none() {
        return Err(PlanError::at(
            obj.loc_of(field),
            format!("cannot tell the format of `{path}` from its extension"),
        )
        .hint("add `format: csv`, `format: json` or `format: ndjson`"));
    }
    Ok(())
}

fn parse_plugin(obj: &mut Obj<'_>) -> Result<PluginStep, PlanError> {
    Ok(PluginStep {
        name: obj.string("name")?,
        tags: obj.tags()?,
        plugin: obj.path("plugin")?,
        config: obj.take("config").map(to_json).transpose()?,
        paths: obj.names("paths")?.unwrap_or_default(),
        databases: obj.names("databases")?.unwrap_or_default(),
        hosts: obj.names("hosts")?.unwrap_or_default(),
        headers: obj.string_map("headers")?.unwrap_or_default(),
        http_limits: obj.http_limits("http-limits")?,
    })
}

/// A YAML node as JSON, for a plugin's `config`.
fn to_json(node: &Node) -> Result<serde_json::Value, PlanError> {
    use serde_json::Value;
    Ok(match &node.kind {
        Kind::Seq(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Kind::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let Kind::Scalar { text, .. } = &k.kind else {
                    return Err(PlanError::at(k.loc, "a `config` key must be a string"));
                };
                map.insert(text.clone(), to_json(v)?);
            }
            Value::Object(map)
        }
        Kind::Scalar { .. } => match node.scalar() {
            Some(Scalar::Null) => Value::Null,
            Some(Scalar::Bool(b)) => Value::Bool(b),
            Some(Scalar::Int(i)) => Value::from(i),
            Some(Scalar::Float(f)) => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| PlanError::at(node.loc, "JSON has no infinity or NaN"))?,
            Some(Scalar::Str(s)) => Value::String(s.to_owned()),
            None => Value::Null,
        },
    })
}

/// A path must stay under the root: not absolute, and no `..` that climbs above it (the
/// host refuses it anyway when the step runs, but by then earlier steps have applied).
pub fn check_under_root(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err(format!("`{path}` is an absolute path"));
    }
    let mut depth = 0usize;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if depth == 0 => return Err(format!("`{path}` climbs out of the root")),
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    Ok(())
}

/// The path as a canonical relative form, for comparing two steps' targets.
fn normal(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// A table `upsert` may write: not empty, and not one of idem's (`_idem_...`) or SQLite's
/// (`sqlite_...`) own, which hold checkpoints and the schema.
pub fn check_table_name(name: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if name.trim().is_empty() {
        Err("the table name is empty; name the table to load into".into())
    } else if lower.starts_with("_idem_") || lower.starts_with("sqlite_") {
        Err(format!(
            "table `{name}` is reserved: names starting with `_idem_` are idem's own (checkpoints) \
             and names starting with `sqlite_` are SQLite's; choose another name"
        ))
    } else {
        Ok(())
    }
}

/// Parse `0755`, `755` or `0o755`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if (3..=4).contains(&digits.len()) && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        u32::from_str_radix(digits, 8).map_err(|e| e.to_string())
    } else {
        Err(format!(
            "`{text}` is not an octal mode; write 3 or 4 octal digits like \"0755\""
        ))
    }
}

/// Parse an age like `30d`, `12h` or `1d12h`: numbers each followed by a unit s, m, h, d or w.
pub fn parse_age(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("an age needs a number and a unit, like 30d".into());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => {
                return Err(format!(
                    "unknown unit `{c}` in age `{text}`; use s, m, h, d or w (e.g. 30d, 1d12h)"
                ));
            }
        };
        if number.is_empty() {
            return Err(format!(
                "age `{text}` has a unit `{c}` without a number before it"
            ));
        }
        let n: u64 = number
            .parse()
            .map_err(|_| format!("age `{text}` is too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("age `{text}` is too large"))?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(format!(
            "age `{text}` ends without a unit; add one of s, m, h, d, w (e.g. {number}d)"
        ));
    }
    Ok(total)
}

/// The fields of one mapping, checked against the operation's type and then taken one by one.
struct Obj<'a> {
    op: &'static str,
    loc: Loc,
    entries: Vec<(&'a str, &'a Node, &'a Node)>,
    /// The fields the parser read, to check them against the schema in tests.
    #[cfg(test)]
    asked: Vec<&'static str>,
    /// In a sub-step of `each`: string fields are templates, checked here.
    templates: bool,
}

impl<'a> Obj<'a> {
    fn new(node: &'a Node, op: &'static str, templates: bool) -> Result<Obj<'a>, PlanError> {
        let Kind::Map(map) = &node.kind else {
            return Err(PlanError::at(
                node.loc,
                format!("{op} must be a mapping, found {}", node.describe()),
            ));
        };
        let mut entries: Vec<(&str, &Node, &Node)> = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Kind::Scalar { text, .. } = &k.kind else {
                return Err(PlanError::at(k.loc, "a field name must be a plain string"));
            };
            if entries.iter().any(|(name, ..)| name == text) {
                return Err(PlanError::at(k.loc, format!("`{text}` is given twice")));
            }
            entries.push((text, k, v));
        }
        let obj = Obj {
            op,
            loc: node.loc,
            entries,
            #[cfg(test)]
            asked: Vec::new(),
            templates,
        };
        obj.check_fields()?;
        Ok(obj)
    }

    /// Refuse the first field the operation's type does not have. Done before any value is
    /// looked at, so a misspelt field is reported as such rather than as a missing one.
    fn check_fields(&self) -> Result<(), PlanError> {
        let op = self.op;
        with_fields(op, |fields| {
            let Some((key, key_node, _)) = self.entries.iter().find(|(k, ..)| !fields.contains(k))
            else {
                return Ok(());
            };
            let what = if op == "plan" {
                "the plan".to_string()
            } else if op.starts_with(['a', 'e', 'i', 'o', 'u']) {
                format!("an `{op}` step")
            } else {
                format!("a `{op}` step")
            };
            let known_elsewhere = ALL_FIELDS.contains(key) || OPS.contains(key);
            let err = if known_elsewhere {
                PlanError::at(key_node.loc, format!("`{key}` is not a field of {what}"))
            } else {
                PlanError::at(key_node.loc, format!("unknown field `{key}` in {what}"))
            };
            Err(match closest(key, fields) {
                Some(near) if !known_elsewhere => err.hint(format!("did you mean `{near}`?")),
                _ => err.hint(format!("{what} takes: {}", fields.join(", "))),
            })
        })
    }

    fn take(&mut self, name: &'static str) -> Option<&'a Node> {
        #[cfg(test)]
        self.asked.push(name);
        self.entries
            .iter()
            .find(|(k, ..)| *k == name)
            .map(|(_, _, v)| *v)
    }

    /// Whether the field is given.
    fn has(&self, name: &str) -> bool {
        self.entries.iter().any(|(k, ..)| *k == name)
    }

    /// An `upsert`'s inline rows: a non-empty list of mappings from column names to scalars,
    /// every row naming the same columns; string values are templates inside `each`.
    fn rows(&mut self, name: &'static str) -> Result<Option<Vec<InlineRow>>, PlanError> {
        let Some(node) = self.take(name) else {
            return Ok(None);
        };
        let Kind::Seq(items) = &node.kind else {
            return Err(PlanError::at(
                node.loc,
                format!(
                    "`{name}` must be a list of mappings, found {}",
                    node.describe()
                ),
            )
            .hint("write rows: [{id: \"{id}\", name: \"{name}\"}]"));
        };
        if items.is_empty() {
            return Err(PlanError::at(
                node.loc,
                format!("`{name}` is an empty list"),
            ));
        }
        let mut rows: Vec<InlineRow> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let Kind::Map(entries) = &item.kind else {
                return Err(PlanError::at(
                    item.loc,
                    format!(
                        "row {} of `{name}` must be a mapping of columns to values, found {}",
                        i + 1,
                        item.describe()
                    ),
                ));
            };
            let mut row = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let Kind::Scalar { text: column, .. } = &k.kind else {
                    return Err(PlanError::at(k.loc, "a column name must be a plain string"));
                };
                if column.is_empty() {
                    return Err(PlanError::at(k.loc, "a column name is empty"));
                }
                if row.iter().any(|(c, _): &(String, String)| c == column) {
                    return Err(PlanError::at(
                        k.loc,
                        format!("`{column}` is given twice in this row"),
                    ));
                }
                let value = match (&v.kind, v.scalar()) {
                    (_, Some(Scalar::Null)) => String::new(),
                    (Kind::Scalar { text, .. }, _) => text.clone(),
                    _ => {
                        return Err(PlanError::at(
                            v.loc,
                            format!(
                                "the value of `{column}` must be a string, a number or a boolean, found {}",
                                v.describe()
                            ),
                        ));
                    }
                };
                if self.templates
                    && let Err(e) = template::parse(&value)
                {
                    return Err(PlanError::at(v.loc, format!("`{name}`: `{column}`: {e}")));
                }
                row.push((column.clone(), value));
            }
            if row.is_empty() {
                return Err(PlanError::at(
                    item.loc,
                    format!("row {} of `{name}` has no columns", i + 1),
                ));
            }
            if let Some(first) = rows.first() {
                fn names(r: &InlineRow) -> Vec<&str> {
                    let mut n: Vec<&str> = r.0.iter().map(|(c, _)| c.as_str()).collect();
                    n.sort_unstable();
                    n
                }
                let this = InlineRow(row);
                if names(first) != names(&this) {
                    return Err(PlanError::at(
                        item.loc,
                        format!(
                            "row {} of `{name}` names the columns {}, but row 1 names {}",
                            i + 1,
                            this.0
                                .iter()
                                .map(|(c, _)| c.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            first
                                .0
                                .iter()
                                .map(|(c, _)| c.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                    .hint("every row names the same columns; write \"\" for an empty value"));
                }
                // In row 1's order, so that the rows read as one table.
                let mut ordered = Vec::with_capacity(this.0.len());
                for (c, _) in &first.0 {
                    if let Some((k, v)) = this.0.iter().find(|(k, _)| k == c) {
                        ordered.push((k.clone(), v.clone()));
                    }
                }
                rows.push(InlineRow(ordered));
            } else {
                rows.push(InlineRow(row));
            }
        }
        Ok(Some(rows))
    }

    fn loc_of(&self, name: &str) -> Loc {
        self.entries
            .iter()
            .find(|(k, ..)| *k == name)
            .map_or(self.loc, |(_, _, v)| v.loc)
    }

    /// A required field: missing is an error, unless a misspelling of it is there, which is
    /// the more useful thing to report.
    fn required<T>(
        &mut self,
        name: &'static str,
        get: impl FnOnce(&mut Self, &'static str) -> Result<Option<T>, PlanError>,
    ) -> Result<T, PlanError> {
        if let Some(value) = get(self, name)? {
            return Ok(value);
        }
        Err(PlanError::at(
            self.loc,
            format!("the `{}` step needs `{name}`", self.op),
        ))
    }

    /// A plain string; explicit null is an error rather than "absent".
    fn string(&mut self, name: &'static str) -> Result<Option<String>, PlanError> {
        let Some(node) = self.take(name) else {
            return Ok(None);
        };
        match (&node.kind, node.scalar()) {
            (_, Some(Scalar::Null)) => {
                Err(PlanError::at(node.loc, format!("`{name}` has no value"))
                    .hint(format!("write {name}: \"\" for an empty string")))
            }
            (Kind::Scalar { text, .. }, _) => Ok(Some(text.clone())),
            _ => Err(PlanError::at(
                node.loc,
                format!("`{name}` must be a string, found {}", node.describe()),
            )),
        }
    }

    /// A string that is a template inside `each`.
    fn template(&mut self, name: &'static str) -> Result<Option<String>, PlanError> {
        let value = self.string(name)?;
        if self.templates
            && let Some(text) = &value
            && let Err(e) = template::parse(text)
        {
            return Err(PlanError::at(self.loc_of(name), format!("`{name}`: {e}")));
        }
        Ok(value)
    }

    /// The required path-valued field named like the operation, or another path.
    fn path(&mut self, name: &'static str) -> Result<String, PlanError> {
        let path = self.required(name, Obj::template)?;
        if path.is_empty() {
            return Err(
                PlanError::at(self.loc_of(name), format!("`{name}` is an empty path"))
                    .hint("use `.` for the root"),
            );
        }
        check_under_root(&path).map_err(|e| {
            PlanError::at(self.loc_of(name), format!("`{name}`: {e}")).hint(
                "paths are relative to the root (-C); write it from there, without `..` above it",
            )
        })?;
        Ok(path)
    }

    fn boolean(&mut self, name: &'static str) -> Result<Option<bool>, PlanError> {
        let Some(node) = self.take(name) else {
            return Ok(None);
        };
        match node.scalar() {
            Some(Scalar::Bool(b)) => Ok(Some(b)),
            _ => Err(PlanError::at(
                node.loc,
                format!("`{name}` must be true or false, found {}", text_of(node)),
            )),
        }
    }

    fn mode(&mut self, name: &'static str) -> Result<Option<Mode>, PlanError> {
        let Some(node) = self.take(name) else {
            return Ok(None);
        };
        match node.scalar() {
            Some(Scalar::Str(text)) => parse_mode(text)
                .map(|m| Some(Mode(m)))
                .map_err(|e| PlanError::at(node.loc, format!("`{name}`: {e}"))),
            Some(Scalar::Int(_) | Scalar::Float(_)) => {
                let text = match &node.kind {
                    Kind::Scalar { text, .. } => text.as_str(),
                    _ => "0755",
                };
                Err(PlanError::at(
                    node.loc,
                    format!("`{name}` must be an octal string, found the number {text}"),
                )
                .hint(format!("write it as a string: {name}: \"{text}\"")))
            }
            _ => Err(PlanError::at(
                node.loc,
                format!(
                    "`{name}` must be an octal string, found {}",
                    node.describe()
                ),
            )
            .hint(format!("write it as a string: {name}: \"0755\""))),
        }
    }

    fn age(&mut self, name: &'static str) -> Result<Age, PlanError> {
        let text = self.required(name, Obj::string)?;
        let loc = self.loc_of(name);
        let seconds = parse_age(&text).map_err(|e| PlanError::at(loc, e))?;
        Ok(Age { text, seconds })
    }

    fn format(&mut self, name: &'static str) -> Result<Option<Format>, PlanError> {
        let Some(text) = self.string(name)? else {
            return Ok(None);
        };
        match text.as_str() {
            "csv" => Ok(Some(Format::Csv)),
            "json" => Ok(Some(Format::Json)),
            "ndjson" | "jsonl" => Ok(Some(Format::Ndjson)),
            other => Err(
                PlanError::at(self.loc_of(name), format!("unknown format `{other}`"))
                    .hint("use csv, json or ndjson"),
            ),
        }
    }

    /// A map of strings to strings (`headers:`).
    fn string_map(
        &mut self,
        name: &'static str,
    ) -> Result<Option<BTreeMap<String, String>>, PlanError> {
        let Some(node) = self.take(name) else {
            return Ok(None);
        };
        let Kind::Map(entries) = &node.kind else {
            return Err(PlanError::at(
                node.loc,
                format!(
                    "`{name}` must be a map of names to strings, found {}",
                    node.describe()
                ),
            )
            .hint(format!(
                "for example {name}: {{Authorization: env:API_TOKEN}}"
            )));
        };
        let mut out = BTreeMap::new();
        for (k, v) in entries {
            let (Kind::Scalar { text: key, .. }, Kind::Scalar { text: value, .. }) =
                (&k.kind, &v.kind)
            else {
                return Err(PlanError::at(
                    v.loc,
                    format!("each entry of `{name}` must be a name and a string"),
                ));
            };
            if v.scalar() == Some(Scalar::Null) {
                return Err(PlanError::at(v.loc, format!("`{name}.{key}` has no value")));
            }
            out.insert(key.clone(), value.clone());
        }
        Ok(Some(out))
    }

    /// `http-limits: {requests: N, bytes-out: N, bytes-in: N}`.
    fn http_limits(&mut self, name: &'static str) -> Result<Option<HttpLimits>, PlanError> {
        let Some(node) = self.take(name) else {
            return Ok(None);
        };
        let Kind::Map(entries) = &node.kind else {
            return Err(PlanError::at(
                node.loc,
                format!("`{name}` must be a map, found {}", node.describe()),
            )
            .hint(format!(
                "for example {name}: {{requests: 10, bytes-in: 1048576}}"
            )));
        };
        let mut limits = HttpLimits::default();
        for (k, v) in entries {
            let key = match &k.kind {
                Kind::Scalar { text, .. } => text.as_str(),
                _ => "",
            };
            let slot = match key {
                "requests" => &mut limits.requests,
                "bytes-out" => &mut limits.bytes_out,
                "bytes-in" => &mut limits.bytes_in,
                other => {
                    return Err(PlanError::at(
                        k.loc,
                        format!("unknown field `{other}` in `{name}`"),
                    )
                    .hint("it takes: requests, bytes-out, bytes-in"));
                }
            };
            match v.scalar() {
                Some(Scalar::Int(n)) if n >= 0 => *slot = Some(n as u64),
                _ => {
                    return Err(PlanError::at(
                        v.loc,
                        format!(
                            "`{name}.{key}` must be a whole number, found {}",
                            text_of(v)
                        ),
                    ));
                }
            }
        }
        Ok(Some(limits))
    }

    /// A string or a list of strings.
    fn names(&mut self, name: &'static str) -> Result<Option<Vec<String>>, PlanError> {
        let Some(node) = self.take(name) else {
            return Ok(None);
        };
        let one = |n: &Node| match (&n.kind, n.scalar()) {
            (Kind::Scalar { text, .. }, Some(s)) if s != Scalar::Null && !text.is_empty() => {
                Ok(text.clone())
            }
            _ => Err(PlanError::at(
                n.loc,
                format!(
                    "`{name}` must be a string or a list of strings, found {}",
                    n.describe()
                ),
            )),
        };
        let list = match &node.kind {
            Kind::Seq(items) => items.iter().map(one).collect::<Result<Vec<_>, _>>()?,
            _ => vec![one(node)?],
        };
        if list.is_empty() {
            return Err(PlanError::at(
                node.loc,
                format!("`{name}` is an empty list"),
            ));
        }
        Ok(Some(list))
    }

    /// A mapping of column names to column types.
    fn types(&mut self, name: &'static str) -> Result<BTreeMap<String, ColumnType>, PlanError> {
        let mut out = BTreeMap::new();
        let Some(node) = self.take(name) else {
            return Ok(out);
        };
        let Kind::Map(entries) = &node.kind else {
            return Err(PlanError::at(
                node.loc,
                format!(
                    "`{name}` must be a mapping of columns to types, found {}",
                    node.describe()
                ),
            )
            .hint("write it like `types: {zip: text, amount: real}`"));
        };
        for (k, v) in entries {
            let Kind::Scalar { text: column, .. } = &k.kind else {
                return Err(PlanError::at(
                    k.loc,
                    format!("a `{name}` key must be a column name"),
                ));
            };
            let ty = match &v.kind {
                Kind::Scalar { text, .. } => match text.as_str() {
                    "text" => Some(ColumnType::Text),
                    "integer" => Some(ColumnType::Integer),
                    "real" => Some(ColumnType::Real),
                    "numeric" => Some(ColumnType::Numeric),
                    "blob" => Some(ColumnType::Blob),
                    _ => None,
                },
                _ => None,
            };
            let Some(ty) = ty else {
                return Err(PlanError::at(
                    v.loc,
                    format!("unknown column type {} for `{column}`", text_of(v)),
                )
                .hint("use text, integer, real, numeric or blob"));
            };
            if out.insert(column.clone(), ty).is_some() {
                return Err(PlanError::at(k.loc, format!("`{column}` is given twice")));
            }
        }
        Ok(out)
    }

    /// `source`: a path like the others, but optional.
    fn source(&mut self) -> Result<Option<String>, PlanError> {
        let Some(path) = self.template("source")? else {
            return Ok(None);
        };
        check_under_root(&path).map_err(|e| {
            PlanError::at(self.loc_of("source"), format!("`source`: {e}")).hint(
                "paths are relative to the root (-C); write it from there, without `..` above it",
            )
        })?;
        Ok(Some(path))
    }

    /// `tags`: names to select top-level steps by; a sub-step of `each` is selected with it.
    fn tags(&mut self) -> Result<Vec<String>, PlanError> {
        let tags = self.names("tags")?.unwrap_or_default();
        if self.templates && !tags.is_empty() {
            return Err(PlanError::at(
                self.loc_of("tags"),
                "`tags` selects top-level steps; a sub-step of `each` runs with its `each`",
            )
            .hint("put the tags on the `each` step"));
        }
        Ok(tags)
    }

    fn globs(&mut self, name: &'static str) -> Result<Vec<String>, PlanError> {
        let list = self.names(name)?.unwrap_or_default();
        for pattern in &list {
            if let Err(e) = Glob::new(pattern) {
                return Err(PlanError::at(self.loc_of(name), format!("`{name}`: {e}")));
            }
        }
        Ok(list)
    }
}

/// The candidate nearest to `word` by edit distance, if near enough to be a likely typo.
pub fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .filter(|c| close(word, c))
        .min_by_key(|c| distance(word, c))
        .copied()
}

fn close(word: &str, candidate: &str) -> bool {
    let limit = if candidate.len() >= 5 { 2 } else { 1 };
    distance(&word.to_ascii_lowercase(), candidate) <= limit
}

/// Optimal string alignment distance: Levenshtein plus adjacent transpositions, the
/// commonest typo.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The JSON Schema of the plan format.
pub fn schema() -> String {
    let schema = schemars::schema_for!(Plan);
    serde_json::to_string_pretty(&schema).unwrap_or_else(|_| "{}".into())
}

impl Step {
    /// The operation's name.
    pub fn op(&self) -> &'static str {
        match self {
            Step::Dir(_) => "dir",
            Step::File(_) => "file",
            Step::Remove(_) => "remove",
            Step::Cleanup(_) => "cleanup",
            Step::Upsert(_) => "upsert",
            Step::Each(_) => "each",
            Step::Plugin(_) => "plugin",
        }
    }

    /// The step's `tags`.
    pub fn tags(&self) -> &[String] {
        match self {
            Step::Dir(s) => &s.tags,
            Step::File(s) => &s.tags,
            Step::Remove(s) => &s.tags,
            Step::Cleanup(s) => &s.tags,
            Step::Upsert(s) => &s.tags,
            Step::Each(s) => &s.tags,
            Step::Plugin(s) => &s.tags,
        }
    }

    /// The main path the step is about (a database URL without its password).
    pub fn target(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(match self {
            Step::Dir(s) => &s.dir,
            Step::File(s) => &s.file,
            Step::Remove(s) => &s.remove,
            Step::Cleanup(s) => &s.cleanup,
            Step::Upsert(s) => return crate::pg_upsert::redact(&s.upsert),
            Step::Each(s) => &s.each,
            Step::Plugin(s) => &s.plugin,
        })
    }

    /// The user's `name`, or one built from the operation and its target.
    pub fn display_name(&self) -> String {
        let given = match self {
            Step::Dir(s) => &s.name,
            Step::File(s) => &s.name,
            Step::Remove(s) => &s.name,
            Step::Cleanup(s) => &s.name,
            Step::Upsert(s) => &s.name,
            Step::Each(s) => &s.name,
            Step::Plugin(s) => &s.name,
        };
        match (given, self) {
            (Some(name), _) => name.clone(),
            (None, Step::Upsert(s)) => format!(
                "upsert {} into {}:{}",
                s.source(),
                crate::pg_upsert::redact(&s.upsert),
                s.table
            ),
            (None, _) => format!("{} {}", self.op(), self.target()),
        }
    }
}

impl SubStep {
    /// Apply `f` to every templated string of the sub-step (paths, content, table, globs),
    /// with the field's name and what kind of value it takes.
    pub fn map_templates(
        &mut self,
        f: &mut dyn FnMut(&'static str, Use, &mut String) -> Result<(), String>,
    ) -> Result<(), String> {
        match self {
            SubStep::Dir(s) => f("dir", Use::Path, &mut s.dir),
            SubStep::File(s) => {
                f("file", Use::Path, &mut s.file)?;
                if let Some(c) = &mut s.content {
                    f("content", Use::Text, c)?;
                }
                if let Some(c) = &mut s.source {
                    f("source", Use::Path, c)?;
                }
                Ok(())
            }
            SubStep::Remove(s) => f("remove", Use::Path, &mut s.remove),
            SubStep::Cleanup(s) => {
                f("cleanup", Use::Path, &mut s.cleanup)?;
                s.include
                    .iter_mut()
                    .try_for_each(|g| f("include", Use::Glob, g))?;
                s.exclude
                    .iter_mut()
                    .try_for_each(|g| f("exclude", Use::Glob, g))
            }
            SubStep::Upsert(s) => {
                f("upsert", Use::Path, &mut s.upsert)?;
                f("table", Use::Text, &mut s.table)?;
                check_table_name(&s.table)?;
                if let Some(from) = &mut s.from {
                    f("from", Use::Path, from)?;
                }
                for row in s.rows.iter_mut().flatten() {
                    for (_, value) in &mut row.0 {
                        f("rows", Use::Text, value)?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> PlanError {
        parse(src).expect_err("the plan should be refused")
    }

    fn one(src: &str) -> Step {
        let mut loaded = parse(src).expect("the plan should load");
        assert_eq!(loaded.plan.steps.len(), 1);
        loaded.plan.steps.remove(0)
    }

    #[test]
    fn every_operation_parses() {
        let src = r#"
version: 1
steps:
  - dir: build/out
    mode: "0755"
  - file: etc/app.conf
    content: "port = 8080\n"
    mode: "644"
  - file: public/index.html
    source: templates/index.html
    if-missing: true
  - remove: tmp/cache
    recursive: true
  - cleanup: logs
    older-than: 1d12h
    include: ["*.log", "archive/**/*.gz"]
    exclude: keep/**
    remove-empty-dirs: true
  - upsert: data/app.db
    table: users
    key: [org, login]
    from: data/users.csv
    columns: [org, login, name]
  - each: data/users.ndjson
    key: id
    id: user-homes
    steps:
      - dir: "home/{id}"
      - file: "home/{id}/greeting.txt"
        content: "Hello {name} {{literal}}\n"
  - plugin: plugins/rotate.wasm
    config: { keep: 7, names: [a, b], ratio: 0.5, on: true, none: ~ }
    paths: [logs]
    databases: data/app.db
    name: rotate logs
"#;
        let loaded = parse(src).unwrap();
        let steps = &loaded.plan.steps;
        assert_eq!(steps.len(), 8);
        let ops: Vec<_> = steps.iter().map(Step::op).collect();
        assert_eq!(
            ops,
            [
                "dir", "file", "file", "remove", "cleanup", "upsert", "each", "plugin"
            ]
        );
        let Step::Dir(d) = &steps[0] else { panic!() };
        assert_eq!(d.mode, Some(Mode(0o755)));
        let Step::File(f) = &steps[1] else { panic!() };
        assert_eq!(f.mode, Some(Mode(0o644)));
        let Step::File(f) = &steps[2] else { panic!() };
        assert!(f.if_missing);
        let Step::Cleanup(c) = &steps[4] else {
            panic!()
        };
        assert_eq!(c.older_than.seconds, 86_400 + 12 * 3600);
        assert_eq!(c.exclude, ["keep/**"]);
        let Step::Upsert(u) = &steps[5] else { panic!() };
        assert_eq!(u.key, ["org", "login"]);
        let Step::Each(e) = &steps[6] else { panic!() };
        assert_eq!(e.steps.len(), 2);
        let Step::Plugin(p) = &steps[7] else { panic!() };
        assert_eq!(
            p.config.as_ref().unwrap().to_string(),
            r#"{"keep":7,"names":["a","b"],"ratio":0.5,"on":true,"none":null}"#
        );
        assert_eq!(p.databases, ["data/app.db"]);
        assert_eq!(steps[7].display_name(), "rotate logs");
        assert_eq!(steps[0].display_name(), "dir build/out");
        assert_eq!(
            loaded.locations.iter().map(|l| l.line).collect::<Vec<_>>(),
            [4, 6, 9, 12, 14, 19, 24, 31]
        );
    }

    /// Issue 19 (found by the `plan` fuzz target): the null document of `---` was reported on
    /// line 2 of a one-line text, where no editor and no excerpt can show it.
    #[test]
    fn an_error_at_the_end_of_the_plan_is_on_its_last_line() {
        let e = err("---");
        assert!(e.message.contains("mapping"), "{e:?}");
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 1,
                column: 4,
                file: None
            })
        );
        let e = err("steps:\n  - dir: a\n  -");
        assert_eq!(e.loc.map(|l| l.line), Some(3), "{e:?}");
    }

    #[test]
    fn unknown_field_gets_a_hint() {
        let e = err("steps:\n  - file: a\n    contnet: x\n");
        assert_eq!(e.message, "unknown field `contnet` in a `file` step");
        assert_eq!(e.hint.as_deref(), Some("did you mean `content`?"));
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 3,
                column: 5,
                file: None
            })
        );
    }

    #[test]
    fn misspelt_required_field_is_reported_as_a_typo() {
        let e = err("steps:\n  - upsert: a.db\n    tabel: t\n    key: id\n    from: x.csv\n");
        assert_eq!(e.message, "unknown field `tabel` in an `upsert` step");
        assert_eq!(e.hint.as_deref(), Some("did you mean `table`?"));
        assert_eq!(e.loc.unwrap().line, 3);
    }

    #[test]
    fn field_of_another_operation_is_named() {
        let e = err("steps:\n  - dir: a\n    content: x\n");
        assert_eq!(e.message, "`content` is not a field of a `dir` step");
        assert_eq!(
            e.hint.as_deref(),
            Some("a `dir` step takes: name, tags, dir, mode")
        );
    }

    #[test]
    fn unknown_operation_gets_a_hint() {
        let e = err("steps:\n  - fiel: a\n    content: x\n");
        assert_eq!(e.message, "unknown operation `fiel`");
        assert_eq!(e.hint.as_deref(), Some("did you mean `file`?"));
        let e = err("steps:\n  - copy: a\n");
        assert_eq!(e.message, "the step names no operation");
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 2,
                column: 5,
                file: None
            })
        );
    }

    #[test]
    fn two_operations_in_one_step_are_refused() {
        let e = err("steps:\n  - dir: a\n    file: b\n    content: x\n");
        assert!(e.message.contains("exactly one operation"), "{e:?}");
        assert!(e.message.contains("`dir` and `file`"));
        assert_eq!(e.loc.unwrap().line, 3);
    }

    #[test]
    fn integer_mode_is_refused_with_a_hint() {
        let e = err("steps:\n  - dir: a\n    mode: 0755\n");
        assert_eq!(
            e.hint.as_deref(),
            Some("write it as a string: mode: \"0755\"")
        );
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 3,
                column: 11,
                file: None
            })
        );
        let e = err("steps:\n  - dir: a\n    mode: \"0855\"\n");
        assert!(e.message.contains("not an octal mode"));
        assert!(
            err("{\"steps\": [{\"dir\": \"a\", \"mode\": 755}]}")
                .hint
                .is_some()
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("1777"), Ok(0o1777));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("75").is_err());
        assert!(parse_mode("07555").is_err());
        assert!(parse_mode("rwx").is_err());
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("30d"), Ok(30 * 86_400));
        assert_eq!(parse_age("12h"), Ok(12 * 3600));
        assert_eq!(parse_age("1d12h"), Ok(86_400 + 12 * 3600));
        assert_eq!(parse_age("2w"), Ok(2 * 604_800));
        assert_eq!(parse_age("90s"), Ok(90));
        assert_eq!(parse_age("5m"), Ok(300));
        assert!(parse_age("30").unwrap_err().contains("without a unit"));
        assert!(parse_age("30y").unwrap_err().contains("unknown unit `y`"));
        assert!(parse_age("d").unwrap_err().contains("without a number"));
        assert!(parse_age("").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }

    #[test]
    fn bad_age_is_a_plan_error_at_the_value() {
        let e = err("steps:\n  - cleanup: logs\n    older-than: 3 months\n");
        assert!(e.message.contains("unknown unit"), "{e:?}");
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 3,
                column: 17,
                file: None
            })
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let e = err("steps:\n  - cleanup: logs\n");
        assert_eq!(e.message, "the `cleanup` step needs `older-than`");
        let e = err("steps:\n  - file: a\n");
        assert!(e.message.contains("neither `content` nor `source`"));
        let e = err("steps:\n  - file: a\n    content: x\n    source: y\n");
        assert!(e.message.contains("both"));
        let e = err("steps:\n  - each: a.csv\n    key: id\n");
        assert!(e.message.contains("no `steps`"));
        assert!(err("version: 1\n").message.contains("no `steps`"));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            err("steps:\n  - remove: a\n    recursive: yes\n")
                .message
                .contains("true or false")
        );
        assert!(err("version: 2\nsteps: []\n").message.contains("version"));
        assert!(err("steps:\n  - dir: ''\n").message.contains("empty path"));
        assert!(
            err("steps:\n  - dir: a\n    dir: b\n")
                .message
                .contains("twice")
        );
        assert!(
            err("steps:\n  - dir: a\n    name: ~\n")
                .message
                .contains("no value")
        );
        assert!(
            err("steps:\n  - upsert: a.db\n    table: t\n    key: id\n    from: x.txt\n")
                .message
                .contains("format")
        );
        assert!(
            err("steps:\n  - cleanup: l\n    older-than: 1d\n    include: ['a[']\n")
                .message
                .contains("unclosed")
        );
        let e = err(
            "steps:\n  - upsert: a.db\n    table: t\n    key: id\n    from: x.csv\n    columns: [name]\n",
        );
        assert!(e.message.contains("key column `id`"));
        assert!(err("- dir: a\n").message.contains("not a list"));
        assert!(err("").message.contains("empty"));
        assert!(err("steps:\n  - dir: [a\n").message.contains("YAML"));
    }

    /// Issue 13, section 3: declared types, added columns and deletions parse; a bad type or a
    /// typed column outside `columns` is refused where it is written.
    #[test]
    fn upsert_types_and_options_parse() {
        let Step::Upsert(u) = one(
            "steps:\n  - upsert: a.db\n    table: t\n    key: id\n    from: x.csv\n    types: {zip: text, n: integer}\n    add-columns: true\n    delete-missing: true\n",
        ) else {
            panic!()
        };
        assert_eq!(u.types.get("zip"), Some(&ColumnType::Text));
        assert_eq!(u.types.get("n"), Some(&ColumnType::Integer));
        assert!(u.add_columns && u.delete_missing);
        let e = err(
            "steps:\n  - upsert: a.db\n    table: t\n    key: id\n    from: x.csv\n    types: {zip: string}\n",
        );
        assert_eq!(e.message, "unknown column type `string` for `zip`");
        assert_eq!(e.loc.unwrap().line, 6);
        let e = err(
            "steps:\n  - upsert: a.db\n    table: t\n    key: id\n    from: x.csv\n    columns: [id]\n    types: {zip: text}\n",
        );
        assert!(e.message.contains("not in `columns`"), "{e:?}");
        assert!(err("steps:\n  - upsert: a.db\n    table: t\n    key: id\n    from: x.csv\n    types: [text]\n").message.contains("mapping"));
    }

    /// Issue 13, section 4: idem's and SQLite's own tables are not an upsert's to write.
    #[test]
    fn empty_and_reserved_table_names_are_refused_at_their_location() {
        for table in [
            "\"\"",
            "_idem_checkpoints",
            "_IDEM_x",
            "sqlite_master",
            "sqlite_stat1",
        ] {
            let e = err(&format!(
                "steps:\n  - upsert: a.db\n    table: {table}\n    key: id\n    from: x.csv\n"
            ));
            assert!(
                e.message.contains("empty") || e.message.contains("reserved"),
                "{table}: {e:?}"
            );
            assert_eq!(
                e.loc,
                Some(Loc {
                    line: 3,
                    column: 12,
                    file: None
                }),
                "{table}"
            );
        }
        assert!(
            parse("steps:\n  - upsert: a.db\n    table: idem_ok\n    key: id\n    from: x.csv\n")
                .is_ok()
        );
    }

    #[test]
    fn unknown_top_level_field_gets_a_hint() {
        let e = err("step:\n  - dir: a\n");
        assert_eq!(e.message, "unknown field `step` in the plan");
        assert_eq!(e.hint.as_deref(), Some("did you mean `steps`?"));
    }

    #[test]
    fn each_refuses_each_and_plugin_sub_steps() {
        let e = err("steps:\n  - each: a.csv\n    key: id\n    steps:\n      - plugin: p.wasm\n");
        assert_eq!(e.message, "`plugin` cannot be a sub-step of `each`");
        assert_eq!(e.loc.unwrap().line, 5);
        let e = err(
            "steps:\n  - each: a.csv\n    key: id\n    steps:\n      - each: b.csv\n        key: id\n        steps: []\n",
        );
        assert!(e.message.contains("`each` cannot be a sub-step"));
    }

    #[test]
    fn bad_templates_in_each_are_plan_errors() {
        let e =
            err("steps:\n  - each: a.csv\n    key: id\n    steps:\n      - dir: \"home/{id\"\n");
        assert!(e.message.contains("unclosed"), "{e:?}");
        assert_eq!(e.loc.unwrap().line, 5);
        // Outside `each`, braces are just text.
        assert!(parse("steps:\n  - file: a\n    content: \"{not a template\"\n").is_ok());
    }

    #[test]
    fn json_plans_have_locations() {
        let src = "{\n  \"steps\": [\n    {\"dir\": \"a\"},\n    {\"file\": \"b\", \"content\": \"x\"}\n  ]\n}\n";
        let loaded = parse(src).unwrap();
        assert_eq!(
            loaded.locations[0],
            Loc {
                line: 3,
                column: 5,
                file: None
            }
        );
        assert_eq!(
            loaded.locations[1],
            Loc {
                line: 4,
                column: 5,
                file: None
            }
        );
        let e = err("{\"steps\": [\n {\"dir\": \"a\",\n  \"contnt\": \"x\"}]}");
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 3,
                column: 3,
                file: None
            })
        );
    }

    #[test]
    fn flow_style_plans_have_locations() {
        let src = "steps: [ {dir: a}, {remove: b,\n  recursive: true}, {file: c, content: x} ]\n";
        let loaded = parse(src).unwrap();
        assert_eq!(loaded.plan.steps.len(), 3);
        assert_eq!(
            loaded.locations[0],
            Loc {
                line: 1,
                column: 10,
                file: None
            }
        );
        assert_eq!(loaded.locations[2].line, 2);
        let e = err("steps: [ {dir: a, mode: 700} ]\n");
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 1,
                column: 25,
                file: None
            })
        );
    }

    #[test]
    fn each_scope_input_serialises_stably() {
        let Step::Each(e) = one(
            "steps:\n  - each: a.csv\n    key: id\n    steps:\n      - dir: \"d/{id}\"\n        mode: \"700\"\n",
        ) else {
            panic!()
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"each":"a.csv","key":["id"],"steps":[{"dir":"d/{id}","mode":"0700"}]}"#
        );
    }

    #[test]
    fn sub_step_templates_are_mapped() {
        let Step::Each(mut e) = one(
            "steps:\n  - each: a.csv\n    key: id\n    steps:\n      - file: \"h/{id}\"\n        content: \"hi {id}\"\n",
        ) else {
            panic!()
        };
        e.steps[0]
            .map_templates(&mut |_, usage, s| {
                *s = template::render(s, usage, |_| Some("7".into()))?;
                Ok(())
            })
            .unwrap();
        let SubStep::File(f) = &e.steps[0] else {
            panic!()
        };
        assert_eq!(
            (f.file.as_str(), f.content.as_deref()),
            ("h/7", Some("hi 7"))
        );
    }

    /// Issue 18: paths that leave the root and files written twice are found at load.
    #[test]
    fn paths_out_of_the_root_and_double_writes_are_load_errors() {
        assert!(check_under_root("a/../b").is_ok());
        assert!(check_under_root("a/../../b").is_err());
        assert!(check_under_root("/etc").is_err());
        let e = err("steps:\n  - file: x\n    source: ../y\n");
        assert_eq!(
            e.loc,
            Some(Loc {
                line: 3,
                column: 13,
                file: None
            })
        );
        let e = err("steps:\n  - file: a\n    content: x\n  - file: b/../a\n    content: y\n");
        assert!(e.message.contains("written by two steps"), "{e:?}");
        assert_eq!(e.loc.map(|l| l.line), Some(4));
    }

    /// Issue 18: variables are interpolated in every string field, and a sub-step's value is
    /// text, not a placeholder; steps that used a secret are marked.
    #[test]
    fn variables_reach_every_field_and_mark_sensitive_steps() {
        let inputs = Inputs {
            vars: vec![("t".into(), "{id}".into())],
            env: vec![("IDEM_X".into(), "out".into())],
        };
        let src = "vars:\n  t: {sensitive: true, default: x}\n  r: \"true\"\nsteps:\n  - remove: \"${env.IDEM_X}\"\n    recursive: ${var.r}\n  - each: a.csv\n    key: id\n    steps:\n      - file: \"${env.IDEM_X}/{id}\"\n        content: \"${var.t}\"\n";
        let loaded = parse_with(src, &inputs).unwrap();
        let Step::Remove(r) = &loaded.plan.steps[0] else {
            panic!("not a remove")
        };
        assert_eq!((r.remove.as_str(), r.recursive), ("out", true));
        let Step::Each(e) = &loaded.plan.steps[1] else {
            panic!("not an each")
        };
        let SubStep::File(f) = &e.steps[0] else {
            panic!("not a file")
        };
        assert_eq!(f.content.as_deref(), Some("{{id}}"));
        assert_eq!(loaded.sensitive_steps, vec![false, true]);
        assert_eq!(loaded.sensitive, vec!["{id}".to_string()]);
    }

    /// The fields `parse` reads must be exactly the fields of the types, which generate the
    /// schema; this is the check that the two cannot drift apart.
    #[test]
    fn schema_lists_the_parsed_fields() {
        let schema: serde_json::Value = serde_json::from_str(&schema()).unwrap();
        let defs = schema["$defs"].as_object().unwrap();
        let mut all: Vec<String> = Vec::new();
        for (def, op, minimal) in [
            ("DirStep", "dir", "dir: x"),
            ("FileStep", "file", "file: x\ncontent: y"),
            ("RemoveStep", "remove", "remove: x"),
            ("CleanupStep", "cleanup", "cleanup: x\nolder-than: 1d"),
            (
                "UpsertStep",
                "upsert",
                "upsert: a.db\ntable: t\nkey: id\nfrom: a.csv",
            ),
            ("EachStep", "each", "each: a.csv\nkey: id\nsteps: []"),
            ("PluginStep", "plugin", "plugin: p.wasm"),
        ] {
            let mut props: Vec<String> = defs[def]["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            assert_eq!(defs[def]["additionalProperties"], false, "{def}");
            let node = yaml::parse(minimal).unwrap().unwrap();
            let mut obj = Obj::new(&node, op, false).unwrap();
            match op {
                "each" => parse_each(&mut obj).map(|_| ()),
                "plugin" => parse_plugin(&mut obj).map(|_| ()),
                _ => parse_common(&mut obj, op).map(|_| ()),
            }
            .unwrap();
            let mut asked: Vec<String> = obj.asked.iter().map(|s| s.to_string()).collect();
            props.sort();
            asked.sort();
            asked.dedup();
            assert_eq!(asked, props, "{def}");
            all.extend(props.into_iter().filter(|p| p != op));
        }
        all.sort();
        all.dedup();
        let mut known: Vec<String> = ALL_FIELDS.iter().map(|s| s.to_string()).collect();
        known.sort();
        assert_eq!(all, known);
        // A step may also be a `use` of a group, expanded when the plan loads.
        assert_eq!(
            schema["properties"]["steps"]["items"]["$ref"],
            "#/$defs/StepOrUse"
        );
        let either: Vec<&str> = schema["$defs"]["StepOrUse"]["anyOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["$ref"].as_str().unwrap())
            .collect();
        assert_eq!(either, ["#/$defs/Step", "#/$defs/UseStep"]);
    }
}
