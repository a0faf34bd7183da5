//! What a plugin component asks of its host, read from its uncompiled bytes: an import idem
//! does not provide is refused in plain words before Cranelift spends seconds compiling it
//! (wasmtime's linker would say so only after compiling, in its own wording).

/// The interfaces of idem's own contract (wit/), at the one version it provides.
const IDEM: &[&str] = &[
    "types",
    "fs",
    "sqlite",
    "postgres",
    "checkpoint",
    "log",
    "clock",
    "policy",
    "report",
];
const IDEM_VERSION: &str = "0.1.0";

/// WASI 0.2 packages the host links (wasmtime accepts any 0.2.x of them).
const WASI: &[&str] = &[
    "cli",
    "clocks",
    "filesystem",
    "io",
    "random",
    "sockets",
    "http",
];

/// What an import would give a plugin, in words, for the message.
fn described(package: &str) -> &'static str {
    match package {
        "wasi:keyvalue" => "a key-value store",
        "wasi:config" => "runtime configuration",
        "wasi:blobstore" => "a blob store",
        "wasi:messaging" => "a message broker",
        "wasi:nn" => "neural-network inference",
        "wasi:sql" => "an SQL database other than the step's SQLite files",
        p if p.starts_with("wasi:") => "a WASI interface this host does not link",
        _ => "an interface outside idem's contract",
    }
}

/// The first top-level import of `bytes` idem does not provide, as a message; `None` when
/// every import is provided or the bytes do not parse (wasmtime then says why).
pub fn unprovided_import(bytes: &[u8]) -> Option<String> {
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    let name = import.ok()?.name.name;
                    if let Some(why) = refusal(name) {
                        return Some(why);
                    }
                }
            }
            _ => {}
        }
    }
    None
}

fn refusal(name: &str) -> Option<String> {
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    let (package, interface) = path.split_once('/').unwrap_or((path, ""));
    let provided = match package {
        "idem:plugin" => IDEM.contains(&interface) && version == IDEM_VERSION,
        p => p
            .strip_prefix("wasi:")
            .is_some_and(|w| WASI.contains(&w) && version.starts_with("0.2.")),
    };
    if provided {
        return None;
    }
    let hint = if package == "idem:plugin" {
        format!(
            "this idem provides idem:plugin@{IDEM_VERSION}; rebuild the plugin against the wit/ \
             of this release"
        )
    } else if package.starts_with("wasi:") && !version.starts_with("0.2.") {
        "idem provides WASI 0.2 (wasm32-wasip2); build the plugin for it".to_string()
    } else {
        "build the plugin without it: idem gives plugins files, SQLite databases, checkpoints, \
         a log, a clock and, for steps with `hosts:`, outgoing HTTP (wasi:http)"
            .to_string()
    };
    Some(format!(
        "imports `{name}` ({}), which idem does not provide; {hint}",
        described(package)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list above is the `host-api` world's imports plus `report` (which `step` uses):
    /// an interface added to wit/ and not here would refuse every plugin built against it.
    #[test]
    fn idems_interfaces_are_the_host_api_worlds() {
        let worlds = include_str!("../../../wit/worlds.wit");
        let body = worlds
            .split("world host-api {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .expect("wit/worlds.wit has a host-api world");
        let mut imported: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("import "))
            .map(|l| l.trim_end_matches(';'))
            .collect();
        imported.push("report");
        imported.sort();
        let mut ours = IDEM.to_vec();
        ours.sort();
        assert_eq!(ours, imported);
    }

    #[test]
    fn imports_are_checked_by_name_and_version() {
        let table: &[(&str, Option<&str>)] = &[
            ("idem:plugin/fs@0.1.0", None),
            ("wasi:http/outgoing-handler@0.2.0", None),
            ("wasi:io/streams@0.2.12", None),
            ("idem:plugin/fs@0.0.1", Some("rebuild the plugin")),
            ("idem:plugin/network@0.1.0", Some("outside idem's contract")),
            ("wasi:keyvalue/store@0.2.0-draft", Some("a key-value store")),
            ("wasi:http/types@0.3.0", Some("WASI 0.2")),
        ];
        for (name, want) in table {
            match (refusal(name), want) {
                (None, None) => {}
                (Some(got), Some(w)) => assert!(got.contains(w) && got.contains(name), "{got}"),
                (got, want) => panic!("{name}: {got:?}, want {want:?}"),
            }
        }
    }
}
