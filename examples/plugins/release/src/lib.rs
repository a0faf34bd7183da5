//! An example idem plugin that converges against an HTTP API: ensure the release `tag`
//! exists at `api` with these `assets` (files under the root), each with the content of its
//! file. Idempotent by checking first: one GET of the release, then a POST only when the
//! release is missing and a PUT only for an asset whose SHA-256 differs. A second run sends
//! one GET and nothing else.
//!
//! The API (the test server in host/tests/it/http.rs speaks it):
//! `GET /releases/TAG` → 404, or 200 `{"tag": TAG, "assets": {NAME: SHA256}}`;
//! `POST /releases` with `{"tag": TAG}` → 201; `PUT /releases/TAG/assets/NAME` with the bytes.
//!
//! The same code runs under `idem plan`: the host sends the GET and answers the POST and PUTs
//! itself (202 with `idem-dry-run: 1`), recording them as changes. Redirects are followed
//! here, by the plugin (up to 5), and every hop is checked by the host against `hosts:`.

wit_bindgen::generate!({ world: "plugin", path: "../../../wit" });

pub mod http;

use std::collections::BTreeMap;

use exports::idem::plugin::step::Guest;
use idem::plugin::fs;
use idem::plugin::report::{Counter, StepError, StepReport};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The step's `config`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The API's base URL, for example `https://api.example.com`.
    pub api: String,
    pub tag: String,
    /// Asset name → file under the root (the step's `paths` must grant it).
    #[serde(default)]
    pub assets: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct Release {
    #[serde(default)]
    assets: BTreeMap<String, String>,
}

#[cfg_attr(not(target_family = "wasm"), allow(dead_code))]
struct Plugin;

fn fail(message: String) -> StepError {
    StepError {
        message,
        cause: None,
    }
}

impl Guest for Plugin {
    fn run(config: String) -> Result<StepReport, StepError> {
        let config: Config = serde_json::from_str(&config)
            .map_err(|e| fail(format!("config: {e} (it takes api, tag, assets)")))?;
        let base = config.api.trim_end_matches('/');
        let release_url = format!("{base}/releases/{}", config.tag);
        let got = http::send("GET", &release_url, None)?;
        let (mut created, mut uploaded, mut dry) = (0, 0, false);
        let release = match got.status {
            200 => serde_json::from_slice::<Release>(&got.body)
                .map_err(|e| fail(format!("GET {release_url}: not a release: {e}")))?,
            404 => {
                let body = serde_json::json!({ "tag": config.tag }).to_string();
                let r = http::send("POST", &format!("{base}/releases"), Some(body.as_bytes()))?;
                r.expect_success("creating the release")?;
                dry |= r.dry_run;
                created = 1;
                Release::default()
            }
            s => return Err(fail(format!("GET {release_url}: status {s}"))),
        };
        for (name, path) in &config.assets {
            let content = fs::read(path).map_err(|e| fail(format!("reading {path}: {e:?}")))?;
            let sha = format!("{:x}", Sha256::digest(&content));
            if release.assets.get(name) == Some(&sha) {
                continue;
            }
            let r = http::send(
                "PUT",
                &format!("{release_url}/assets/{name}"),
                Some(&content),
            )?;
            r.expect_success(&format!("uploading {name}"))?;
            dry |= r.dry_run;
            uploaded += 1;
        }
        let verb = if dry { "would be " } else { "" };
        let message = match (created, uploaded) {
            (0, 0) => format!("release {} up to date", config.tag),
            (1, n) => format!("release {} {verb}created with {n} assets", config.tag),
            (_, n) => format!("release {}: {n} assets {verb}uploaded", config.tag),
        };
        Ok(StepReport {
            counters: vec![
                Counter {
                    name: "releases created".into(),
                    value: created,
                },
                Counter {
                    name: "assets uploaded".into(),
                    value: uploaded,
                },
            ],
            failures: Vec::new(),
            message: Some(message),
        })
    }
}

#[cfg(target_family = "wasm")]
export!(Plugin);
