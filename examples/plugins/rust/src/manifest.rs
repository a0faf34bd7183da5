//! The manifest's pure logic: the config, and the text written for a list of files. Nothing
//! here calls the host, so it is tested natively.

use serde::Deserialize;

/// The step's `config`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The directory to describe, relative to the root.
    pub dir: String,
    /// The manifest file, relative to the root [default: `DIR/MANIFEST`].
    #[serde(default)]
    pub output: Option<String>,
    /// Describe files in subdirectories too [default: true].
    #[serde(default = "yes")]
    pub recursive: bool,
}

fn yes() -> bool {
    true
}

impl Config {
    /// Parse the JSON the host hands to `run`; `null` (no config in the plan) is an error that
    /// shows what to write.
    pub fn parse(json: &str) -> Result<Config, String> {
        if json.trim() == "null" {
            return Err(r#"this plugin needs a config, e.g. {"dir": "dist"}"#.into());
        }
        serde_json::from_str(json).map_err(|e| format!("config: {e}"))
    }

    /// Where the manifest goes.
    pub fn output(&self) -> String {
        self.output
            .clone()
            .unwrap_or_else(|| join(&self.dir, "MANIFEST"))
    }
}

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Relative to the described directory, `/`-separated.
    pub path: String,
    pub size: u64,
}

/// `a/b`, where an empty side (or `.`) stands for "here".
pub fn join(a: &str, b: &str) -> String {
    let a = a.trim_end_matches('/');
    match (a, b) {
        ("" | ".", b) => b.to_string(),
        (a, "") => a.to_string(),
        (a, b) => format!("{a}/{b}"),
    }
}

/// The manifest's text: a header with the totals, then `SIZE<TAB>PATH` per file, sorted by
/// path so the same files always give the same bytes.
pub fn render(dir: &str, items: &mut [Item]) -> String {
    items.sort_by(|a, b| a.path.cmp(&b.path));
    let bytes: u64 = items.iter().map(|i| i.size).sum();
    let mut out = format!(
        "# manifest of {dir}: {} files, {bytes} bytes\n",
        items.len()
    );
    for i in items.iter() {
        out.push_str(&format!("{}\t{}\n", i.size, i.path));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_is_sorted_and_totalled() {
        let mut items = vec![
            Item {
                path: "b/c.txt".into(),
                size: 3,
            },
            Item {
                path: "a.txt".into(),
                size: 10,
            },
        ];
        assert_eq!(
            render("dist", &mut items),
            "# manifest of dist: 2 files, 13 bytes\n10\ta.txt\n3\tb/c.txt\n"
        );
    }

    #[test]
    fn config_defaults_to_a_recursive_manifest_inside_the_directory() {
        let c = Config::parse(r#"{"dir": "dist"}"#).unwrap();
        assert!(c.recursive);
        assert_eq!(c.output(), "dist/MANIFEST");
    }

    #[test]
    fn config_refuses_unknown_fields_and_null() {
        assert!(
            Config::parse(r#"{"dir": "d", "ouput": "x"}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            Config::parse("null")
                .unwrap_err()
                .contains("needs a config")
        );
    }

    #[test]
    fn join_treats_empty_and_dot_as_here() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join(".", "a"), "a");
        assert_eq!(join("d/", "a"), "d/a");
        assert_eq!(join("d", ""), "d");
    }
}
