//! Plugins on the network (issue 16): the release example plugin (examples/plugins/release)
//! against a real HTTP server on 127.0.0.1 started by each test, with the `hosts:` allow-list,
//! private-address denial, redirects, dry run at the request, limits, the step's time limit
//! and secret headers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::plugins::{built, component_imports, js_release_plugin};
use crate::support::*;

/// One request as the server received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

#[derive(Clone)]
enum Behaviour {
    /// The release API of examples/plugins/release.
    Api,
    /// Answer every request with a redirect to this URL.
    Redirect(String),
    /// Accept, read the request, never answer.
    Stall,
}

/// A small HTTP/1.1 server on an ephemeral port of 127.0.0.1, one thread per connection,
/// counting what it receives.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    releases: Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>,
}

impl Server {
    fn start(behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let releases: Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>> = Arc::default();
        let (s, r) = (seen.clone(), releases.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (s, r, b) = (s.clone(), r.clone(), behaviour.clone());
                std::thread::spawn(move || serve(conn, &s, &r, &b));
            }
        });
        Server {
            port,
            seen,
            releases,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn methods(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

fn serve(
    conn: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    releases: &Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    behaviour: &Behaviour,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers,
        });
        let (status, extra, out): (u16, String, Vec<u8>) = match behaviour {
            Behaviour::Stall => {
                std::thread::sleep(Duration::from_secs(3600));
                return;
            }
            Behaviour::Redirect(to) => (302, format!("location: {to}\r\n"), Vec::new()),
            Behaviour::Api => api(&method, &path, &body, releases),
        };
        let mut w = &conn;
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{extra}\r\n",
            out.len()
        );
        if w.write_all(head.as_bytes()).is_err() || w.write_all(&out).is_err() {
            return;
        }
    }
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn api(
    method: &str,
    path: &str,
    body: &[u8],
    releases: &Mutex<BTreeMap<String, BTreeMap<String, String>>>,
) -> (u16, String, Vec<u8>) {
    let mut rel = releases.lock().unwrap();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["releases", tag]) => match rel.get(*tag) {
            Some(assets) => {
                let v = serde_json::json!({"tag": tag, "assets": assets});
                (200, String::new(), v.to_string().into_bytes())
            }
            None => (404, String::new(), b"no such release".to_vec()),
        },
        ("POST", ["releases"]) => {
            let v: Value = serde_json::from_slice(body).unwrap();
            rel.entry(v["tag"].as_str().unwrap().to_string())
                .or_default();
            (201, String::new(), Vec::new())
        }
        ("PUT", ["releases", tag, "assets", name]) => match rel.get_mut(*tag) {
            Some(assets) => {
                assets.insert(name.to_string(), sha(body));
                (200, String::new(), Vec::new())
            }
            None => (404, String::new(), Vec::new()),
        },
        _ => (400, String::new(), b"bad request".to_vec()),
    }
}

/// A tree with the release plugin and two assets, and a plan step ensuring release v1 at
/// `api` with `extra` YAML lines added to the step.
fn release_env(api: &str, extra: &str) -> Env {
    release_env_with(&built().release, api, extra)
}

/// [`release_env`] with another build of the release plugin (the JavaScript one).
fn release_env_with(plugin: &[u8], api: &str, extra: &str) -> Env {
    let t = Env::new();
    t.write("plugins/release.wasm", plugin)
        .write("dist/app.txt", "the app\n")
        .write("dist/notes.md", "# notes\n");
    t.write(
        "idem.yml",
        format!(
            "steps:\n  - plugin: plugins/release.wasm\n    name: release\n    paths: [dist]\n{extra}    config:\n      api: \"{api}\"\n      tag: v1\n      assets: {{app.txt: dist/app.txt, notes.md: dist/notes.md}}\n"
        ),
    );
    t
}

fn hosts(list: &[String]) -> String {
    let quoted: Vec<String> = list.iter().map(|h| format!("\"{h}\"")).collect();
    format!("    hosts: [{}]\n", quoted.join(", "))
}

fn http_changes(report: &Value) -> Vec<Value> {
    report["steps"][0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "http-request")
        .cloned()
        .collect()
}

#[test]
fn release_plugin_converges_against_an_http_api() {
    let s = Server::start(Behaviour::Api);
    let t = release_env(&s.url(), &hosts(&[s.url()]));
    let applied = assert_converges(&t, &[]);
    let changes = http_changes(&applied);
    let shown: Vec<(&str, Option<u64>)> = changes
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c["http"]["status"].as_u64()))
        .collect();
    let u = s.url();
    assert_eq!(
        shown,
        [
            (format!("POST {u}/releases").as_str(), Some(201)),
            (
                format!("PUT {u}/releases/v1/assets/app.txt").as_str(),
                Some(200)
            ),
            (
                format!("PUT {u}/releases/v1/assets/notes.md").as_str(),
                Some(200)
            ),
        ]
    );
    // The journal keeps each request sent with its status.
    t.idem(&["history"])
        .code(0)
        .says(&format!("POST {u}/releases -> 201"));
    let rel = s.releases.lock().unwrap()["v1"].clone();
    assert_eq!(rel["app.txt"], sha(b"the app\n"));
    assert_eq!(rel["notes.md"], sha(b"# notes\n"));
    // One changed asset: a GET, then one PUT and nothing else.
    t.write("dist/notes.md", "# notes, revised\n");
    s.clear();
    t.json(&["apply"], 0);
    assert_eq!(
        s.methods(),
        ["GET /releases/v1", "PUT /releases/v1/assets/notes.md"]
    );
    s.clear();
    let again = t.json(&["apply"], 0);
    assert_eq!(again["steps"][0]["outcome"], "unchanged");
    assert_eq!(s.methods(), ["GET /releases/v1"]);
}

#[test]
fn dry_run_sends_get_but_not_post_and_reports_what_would_be_sent() {
    let s = Server::start(Behaviour::Api);
    let t = release_env(&s.url(), &hosts(&[s.url()]));
    let planned = t.json(&["plan"], 0);
    assert_eq!(
        s.methods(),
        ["GET /releases/v1"],
        "only the safe request is sent"
    );
    assert!(s.releases.lock().unwrap().is_empty());
    let changes = http_changes(&planned);
    assert_eq!(changes.len(), 3, "{planned:#}");
    let put = &changes[1]["http"];
    assert_eq!(put["method"], "PUT");
    assert_eq!(put["body_bytes"], 8);
    assert_eq!(put["body_sha256"], sha(b"the app\n"));
    assert!(put.get("status").is_none());
    assert!(
        planned["steps"][0]["message"]
            .as_str()
            .unwrap()
            .contains("would be created"),
        "the plugin tells the host's answer apart: {planned:#}"
    );
    // check agrees, and sends only the GET too.
    s.clear();
    t.idem(&["check"]).code(2);
    assert_eq!(s.methods(), ["GET /releases/v1"]);
    // apply sends all of them.
    s.clear();
    t.json(&["apply"], 0);
    assert_eq!(
        s.methods(),
        [
            "GET /releases/v1",
            "POST /releases",
            "PUT /releases/v1/assets/app.txt",
            "PUT /releases/v1/assets/notes.md"
        ]
    );
}

#[test]
fn request_to_a_host_not_listed_is_denied_before_connecting() {
    let s = Server::start(Behaviour::Api);
    let other = Server::start(Behaviour::Api);
    let t = release_env(&s.url(), &hosts(&[other.url()]));
    t.idem(&["apply"])
        .code(1)
        .says("release")
        .says(&format!("{} is not in the step's `hosts:`", s.url()))
        .says(&other.url());
    assert!(s.methods().is_empty(), "no connection was made");
}

#[test]
fn step_without_hosts_has_no_network() {
    let s = Server::start(Behaviour::Api);
    let t = release_env(&s.url(), "");
    t.idem(&["apply"])
        .code(1)
        .says("HttpRequestDenied")
        .says("the step has no `hosts:`, so no network");
    assert!(s.methods().is_empty());
}

#[test]
fn redirect_to_a_host_not_listed_is_denied() {
    let target = Server::start(Behaviour::Api);
    let s = Server::start(Behaviour::Redirect(format!("{}/releases/v1", target.url())));
    let t = release_env(&s.url(), &hosts(&[s.url()]));
    t.idem(&["apply"])
        .code(1)
        .says(&format!("GET {}/releases/v1", target.url()))
        .says("is not in the step's `hosts:`");
    assert_eq!(s.methods(), ["GET /releases/v1"]);
    assert!(
        target.methods().is_empty(),
        "the redirect's target got nothing"
    );
}

#[test]
fn listed_name_that_resolves_to_loopback_is_denied_unless_the_address_is_listed() {
    let s = Server::start(Behaviour::Api);
    let by_name = format!("http://localhost:{}", s.port);
    let t = release_env(&by_name, &hosts(std::slice::from_ref(&by_name)));
    t.idem(&["apply"])
        .code(1)
        .says("localhost resolves to")
        .says("which is not a public address");
    assert!(s.methods().is_empty(), "no connection was made");
    // The address itself listed: the same name now reaches it.
    let t = release_env(&by_name, &hosts(&[by_name.clone(), "127.0.0.1".into()]));
    let r = t.idem(&["apply"]);
    r.code(0);
    assert_eq!(s.methods().len(), 4, "{}", r.all());
}

#[test]
fn request_limit_stops_the_step() {
    let s = Server::start(Behaviour::Api);
    let t = release_env(
        &s.url(),
        &format!("{}    http-limits: {{requests: 1}}\n", hosts(&[s.url()])),
    );
    t.idem(&["apply"])
        .code(1)
        .says("the step's limit of 1 requests is spent");
    assert_eq!(s.methods(), ["GET /releases/v1"]);
}

#[test]
fn byte_limits_stop_the_step() {
    let s = Server::start(Behaviour::Api);
    let t = release_env(
        &s.url(),
        &format!("{}    http-limits: {{bytes-out: 20}}\n", hosts(&[s.url()])),
    );
    t.idem(&["apply"])
        .code(1)
        .says("the step's limit of 20 bytes sent (bytes-out) is spent");
    // The response to the GET is larger than 10 bytes ("no such release").
    let t = release_env(
        &s.url(),
        &format!("{}    http-limits: {{bytes-in: 10}}\n", hosts(&[s.url()])),
    );
    t.idem(&["apply"])
        .code(1)
        .says("the step's limit of 10 bytes received (bytes-in) is spent");
}

#[test]
fn stalled_server_is_stopped_by_the_time_limit() {
    let s = Server::start(Behaviour::Stall);
    let t = release_env(&s.url(), &hosts(&[s.url()]));
    let started = Instant::now();
    t.idem(&["apply", "--plugin-timeout", "2"])
        .code(1)
        .says("ran longer than its time limit of 2 s")
        .says("waiting on the network");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(s.methods(), ["GET /releases/v1"]);
}

#[test]
fn secret_headers_reach_the_server_but_no_output_report_or_state() {
    const SECRET: &str = "s3cr3t-9f8e7d6c";
    let s = Server::start(Behaviour::Api);
    let t = release_env(
        &s.url(),
        &format!(
            "{}    headers: {{Authorization: env:IDEM_TEST_TOKEN, X-Client: idem-test}}\n",
            hosts(&[s.url()])
        ),
    );
    let mut outputs = String::new();
    for args in [
        &["plan", "-v"][..],
        &["plan", "--format", "json"],
        &["apply", "-v", "--format", "ndjson"],
        &["apply", "--format", "json"],
        &["history", "--format", "json"],
    ] {
        let r = Run::from(
            t.cmd()
                .args(args)
                .env("IDEM_TEST_TOKEN", SECRET)
                .env("RUST_LOG", "trace")
                .output()
                .unwrap(),
        );
        outputs.push_str(&r.all());
    }
    let seen = s.seen.lock().unwrap().clone();
    assert!(seen.len() >= 5, "{seen:?}");
    for req in &seen {
        assert_eq!(req.headers["authorization"], SECRET, "{req:?}");
        assert_eq!(req.headers["x-client"], "idem-test");
    }
    assert!(outputs.contains("http-request"), "{outputs}");
    assert!(
        !outputs.contains(SECRET),
        "the secret was printed:\n{outputs}"
    );
    for (name, bytes) in t.state_files() {
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret is in {name}"
        );
    }
    // Unset, the step names the variable and sends nothing.
    s.clear();
    t.idem(&["apply"])
        .code(1)
        .says("IDEM_TEST_TOKEN, which is not set");
    assert!(s.methods().is_empty());
}

/// Issue 16, item 6: an import idem does not provide is named in plain words, before the
/// component is compiled (a fresh compile cache stays empty).
#[test]
fn component_importing_what_idem_does_not_provide_is_refused_before_compiling() {
    let t = Env::new();
    t.write(
        "kv.wasm",
        crate::plugins::component_importing("wasi:keyvalue/store@0.2.0-draft"),
    );
    let cache = t.path("cache");
    let r = Run::from(
        t.cmd()
            .args(["run", "kv.wasm"])
            .env("IDEM_CACHE_DIR", &cache)
            .output()
            .unwrap(),
    );
    r.code(1)
        .says("plugin kv.wasm imports `wasi:keyvalue/store@0.2.0-draft` (a key-value store), which idem does not provide");
    let compiled = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert_eq!(compiled, 0, "nothing was compiled");
}

/// Issue 16: under apply, each request sent that is not GET, HEAD or OPTIONS is journaled with
/// its status and its body's SHA-256 and size, as a dry run reports them.
#[test]
fn apply_journals_each_request_sent_with_its_status_and_body_digest() {
    let s = Server::start(Behaviour::Api);
    let t = release_env(&s.url(), &hosts(&[s.url()]));
    let applied = t.json(&["apply"], 0);
    let u = s.url();
    let post_body = br#"{"tag":"v1"}"#;
    let put = &http_changes(&applied)[1]["http"];
    assert_eq!(put["status"], 200, "{applied:#}");
    assert_eq!(put["body_bytes"], 8);
    assert_eq!(put["body_sha256"], sha(b"the app\n"));
    let history = t.json(&["history"], 0);
    let journal: Vec<(String, String)> = history[0]["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["target"].as_str().unwrap().to_owned(),
                j["hash_after"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let entry = |what: &str, status: u16, body: &[u8]| {
        let n = body.len();
        (
            format!("{what} -> {status} ({n} bytes, sha256 {})", sha(body)),
            sha(body),
        )
    };
    assert_eq!(
        journal,
        [
            entry(&format!("POST {u}/releases"), 201, post_body),
            entry(
                &format!("PUT {u}/releases/v1/assets/app.txt"),
                200,
                b"the app\n"
            ),
            entry(
                &format!("PUT {u}/releases/v1/assets/notes.md"),
                200,
                b"# notes\n"
            ),
        ]
    );
    t.idem(&["history"]).code(0).says(&format!(
        "PUT {u}/releases/v1/assets/app.txt -> 200 (8 bytes, sha256 {})",
        sha(b"the app\n")
    ));
}

/// Issue 16: a malformed `hosts:` entry is a plan error at the entry (file, line and column,
/// with how to write one), from `validate` and before any step of a run, not the failure of
/// the plugin's step once it runs.
#[test]
fn a_malformed_hosts_entry_is_refused_at_its_line_and_column_before_any_step_runs() {
    let t = Env::new();
    t.write("plugins/release.wasm", &built().release);
    let cases: &[(&str, &str)] = &[
        ("http://", "is not a host with an optional port"),
        ("*.", "has a wildcard that is not `*.` before a domain"),
        (
            "api.example.com:0",
            "has the port `0`, not a number from 1 to 65535",
        ),
        ("api.example.com:65536", "has the port `65536`"),
        (
            "https://api.example.com/v1",
            "is not a host with an optional port",
        ),
        ("ftp://api.example.com", "has the scheme `ftp`"),
    ];
    for (entry, why) in cases {
        // The bad entry is the second of a flow list on line 6, after `"http://127.0.0.1:8080", `.
        t.write(
            "idem.yml",
            format!(
                "steps:\n  - dir: first\n  - plugin: plugins/release.wasm\n    paths: [dist]\n    config: {{api: \"http://127.0.0.1:8080\", tag: v1}}\n    hosts: [\"http://127.0.0.1:8080\", \"{entry}\"]\n"
            ),
        );
        for cmd in ["validate", "apply", "plan"] {
            let r = t.json(&[cmd], 1);
            let e = &r["error"];
            assert_eq!(
                (e["line"].as_u64(), e["column"].as_u64()),
                (Some(6), Some(38)),
                "{entry}: {r}"
            );
            let message = e["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("`{entry}` in `hosts:` {why}")),
                "{entry}: {r}"
            );
            assert!(
                e["hint"]
                    .as_str()
                    .unwrap()
                    .contains("write `[http://|https://]host[:port]`"),
                "{entry}: {r}"
            );
            assert!(!t.exists("first"), "{cmd} ran a step of an invalid plan");
        }
        t.idem(&["validate"])
            .code(1)
            .says(why)
            .says("idem.yml:6:38");
    }
    // A single entry, not a list, is pointed at too.
    t.write(
        "idem.yml",
        "steps:\n  - plugin: plugins/release.wasm\n    hosts: \"http://\"\n",
    );
    t.idem(&["validate"])
        .code(1)
        .says("`http://` in `hosts:` is not a host with an optional port")
        .says("idem.yml:3:12");
}

/// Issue 16: the JavaScript release plugin is built by componentize-js with its default
/// flags, so it imports wasi:http (its `fetch`) and the rest of what StarlingMonkey asks for
/// (clocks, random, stdio), and idem takes it: nothing is refused before compiling.
#[test]
fn the_js_release_plugin_is_built_with_componentize_js_defaults_and_idem_takes_its_imports() {
    let js = js_release_plugin();
    let imports = component_imports(js);
    for want in [
        "wasi:http/outgoing-handler@0.2.",
        "wasi:http/types@0.2.",
        "wasi:clocks/monotonic-clock@0.2.",
        "wasi:random/random@0.2.",
        "wasi:cli/stdout@0.2.",
        "idem:plugin/fs@0.1.0",
    ] {
        assert!(
            imports.iter().any(|i| i.starts_with(want)),
            "no {want}* among the imports (a --disable'd build?): {imports:?}"
        );
    }
    // It runs: with no `hosts:` its GET is denied and the step fails as the plugin says.
    let t = release_env_with(js, "http://127.0.0.1:9", "");
    let r = t.json(&["apply"], 1);
    let step = &r["steps"][0];
    assert_eq!(step["error_kind"], "guest", "{r:#}");
    assert!(
        step["error"]
            .as_str()
            .unwrap()
            .contains("the step has no `hosts:`, so no network"),
        "{r:#}"
    );
}

/// Issue 16: the JavaScript release plugin converges against the API as the Rust one does:
/// plan sends the GET only and reports the POST and PUTs as `http-request` changes (the same
/// ones, with the same body digests, as the Rust plugin's plan); apply creates; a second
/// apply sends one GET and is unchanged; one changed file sends one PUT.
#[test]
fn the_js_release_plugin_converges_like_the_rust_one() {
    let js = js_release_plugin();
    let s = Server::start(Behaviour::Api);
    let t = release_env_with(js, &s.url(), &hosts(&[s.url()]));
    let planned = t.json(&["plan"], 0);
    assert_eq!(
        s.methods(),
        ["GET /releases/v1"],
        "only the safe request is sent"
    );
    assert!(s.releases.lock().unwrap().is_empty());
    let u = s.url();
    let shown = |report: &Value, base: &str| -> Vec<(String, Value, Value)> {
        http_changes(report)
            .iter()
            .map(|c| {
                (
                    c["path"].as_str().unwrap().replace(base, "API"),
                    c["http"]["body_sha256"].clone(),
                    c["http"]["body_bytes"].clone(),
                )
            })
            .collect()
    };
    let js_plan = shown(&planned, &u);
    assert_eq!(js_plan[0].0, "POST API/releases", "{planned:#}");
    assert_eq!(js_plan[0].1, sha(br#"{"tag":"v1"}"#));
    assert!(
        planned["steps"][0]["message"]
            .as_str()
            .unwrap()
            .contains("would be created with 2 assets"),
        "the plugin tells the host's answer apart: {planned:#}"
    );
    // The Rust plugin plans exactly the same requests.
    let rust_server = Server::start(Behaviour::Api);
    let rust = release_env(&rust_server.url(), &hosts(&[rust_server.url()]));
    let rust_plan = rust.json(&["plan"], 0);
    assert_eq!(js_plan, shown(&rust_plan, &rust_server.url()));
    assert_eq!(
        planned["steps"][0]["counters"],
        rust_plan["steps"][0]["counters"]
    );
    // Plan, apply, apply again, check: as the Rust plugin does.
    s.clear();
    let applied = assert_converges(&t, &[]);
    let sent_changes = http_changes(&applied);
    let sent: Vec<(&str, Option<u64>)> = sent_changes
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c["http"]["status"].as_u64()))
        .collect();
    assert_eq!(
        sent,
        [
            (format!("POST {u}/releases").as_str(), Some(201)),
            (
                format!("PUT {u}/releases/v1/assets/app.txt").as_str(),
                Some(200)
            ),
            (
                format!("PUT {u}/releases/v1/assets/notes.md").as_str(),
                Some(200)
            ),
        ]
    );
    assert_eq!(applied["steps"][0]["outcome"], "updated", "{applied:#}");
    let rel = s.releases.lock().unwrap()["v1"].clone();
    assert_eq!(rel["app.txt"], sha(b"the app\n"));
    assert_eq!(rel["notes.md"], sha(b"# notes\n"));
    s.clear();
    let again = t.json(&["apply"], 0);
    assert_eq!(again["steps"][0]["outcome"], "unchanged");
    assert_eq!(again["steps"][0]["message"], "release v1 up to date");
    assert_eq!(s.methods(), ["GET /releases/v1"]);
    t.write("dist/notes.md", "# notes, revised\n");
    s.clear();
    t.json(&["apply"], 0);
    assert_eq!(
        s.methods(),
        ["GET /releases/v1", "PUT /releases/v1/assets/notes.md"]
    );
}

/// Issue 16: the JavaScript plugin fails its step by throwing: an idem error (a missing
/// asset file, `not-found`) and a request the host denies mid-run (past `requests: 1`, a POST
/// with a body) each end the step with the plugin's own message, as a `guest` failure. The
/// denied POST crashed StarlingMonkey's event loop (a `trap`) while the host dropped the
/// denied request's body at once.
#[test]
fn the_js_release_plugin_fails_its_step_by_throwing_with_its_own_message() {
    let js = js_release_plugin();
    let s = Server::start(Behaviour::Api);
    let t = release_env_with(
        js,
        &s.url(),
        &format!("{}    http-limits: {{requests: 1}}\n", hosts(&[s.url()])),
    );
    let r = t.json(&["apply"], 1);
    let step = &r["steps"][0];
    assert_eq!(step["error_kind"], "guest", "{r:#}");
    let error = step["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("POST {}/releases", s.url()))
            && error.contains("the step's limit of 1 requests is spent"),
        "{error}"
    );
    assert_eq!(s.methods(), ["GET /releases/v1"]);
    // A missing asset: the host's `not-found`, in the plugin's words.
    s.releases
        .lock()
        .unwrap()
        .insert("v1".into(), BTreeMap::new());
    t.write(
        "idem.yml",
        format!(
            "steps:\n  - plugin: plugins/release.wasm\n    paths: [dist]\n{}    config: {{api: \"{}\", tag: v1, assets: {{gone.txt: dist/gone.txt}}}}\n",
            hosts(&[s.url()]),
            s.url()
        ),
    );
    let r = t.json(&["apply"], 1);
    let step = &r["steps"][0];
    assert_eq!(step["error_kind"], "guest", "{r:#}");
    assert!(
        step["error"]
            .as_str()
            .unwrap()
            .starts_with("reading dist/gone.txt: not-found: "),
        "{r:#}"
    );
}

/// Issue 16: with the state in PostgreSQL, the journal keeps the same entry for a request
/// sent (status, body size and SHA-256) as with SQLite; it kept the bare request line.
#[test]
fn with_the_state_in_postgres_the_journal_keeps_each_request_s_status_and_digest() {
    let url = crate::pg::server().url_of(&crate::pg::fresh_db("http_journal"));
    let s = Server::start(Behaviour::Api);
    let t = release_env(&s.url(), &hosts(&[s.url()]));
    t.json(&["apply", "--state", &url], 0);
    let history = t.json(&["history", "--state", &url], 0);
    let targets: Vec<&str> = history[0]["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["target"].as_str().unwrap())
        .collect();
    let u = s.url();
    assert_eq!(
        targets[0],
        format!(
            "POST {u}/releases -> 201 (12 bytes, sha256 {})",
            sha(br#"{"tag":"v1"}"#)
        ),
        "{history:#}"
    );
    assert_eq!(
        history[0]["journal"][1]["hash_after"],
        sha(b"the app\n"),
        "{history:#}"
    );
}
