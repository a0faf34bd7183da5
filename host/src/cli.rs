//! The command line: arguments become one validated [`RunConfig`], the host runs it, the
//! report is rendered once, and its exit code is returned.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use tracing_subscriber::field::MakeExt;

use crate::bindings::plan::PluginCall;
use crate::cap::log::Progress;
use crate::live::{Live, Output, Settings};
use crate::policy::Mode;
use crate::report::{Report, TextStyle, exit};
use crate::run::{Cache, Host, RunConfig};
use crate::state::{HistoryFilter, Location, Sharing};
use crate::term::{ColorChoice, escape};

/// Make CI, cron and provisioning jobs safe to run again and again.
///
/// idem runs a plan of idempotent steps inside a WebAssembly sandbox. `idem plan` predicts
/// exactly what `idem apply` does; a second apply changes nothing.
#[derive(Parser, Debug)]
#[command(name = "idem", version, about, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 success or converged, 1 error, 2 changes pending (check), \
3 not idempotent (apply --verify), 64 usage error, 130/143 stopped by SIGINT/SIGTERM."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: Global,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Global options")]
struct Global {
    /// Root of everything the plan may touch.
    #[arg(
        short = 'C',
        long,
        global = true,
        env = "IDEM_ROOT",
        default_value = "."
    )]
    root: PathBuf,
    /// The state store (runs, journal, checkpoints, lock): a SQLite file, a PostgreSQL URL
    /// (postgres://…), or env:NAME to read either from a variable [default:
    /// ROOT/.idem/state.db].
    #[arg(
        long,
        global = true,
        env = "IDEM_STATE",
        value_name = "FILE|URL|env:NAME"
    )]
    state: Option<String>,
    /// The job's name within a PostgreSQL state store, so many jobs share one database
    /// [default: the root directory's name, `/`, the plan's path under the root].
    #[arg(long, global = true, env = "IDEM_STATE_KEY", value_name = "KEY")]
    state_key: Option<String>,
    /// Share every `each` step's records with the other runners of the same state and state
    /// key that run with --cooperate: each record is claimed by one of them (needs the state
    /// in PostgreSQL).
    #[arg(long, global = true, env = "IDEM_COOPERATE", conflicts_with = "shard")]
    cooperate: bool,
    /// Take only shard I of N (from 1) of every `each` step's records, by a hash of the
    /// record's key: a deterministic split across a matrix of runners.
    #[arg(long, global = true, env = "IDEM_SHARD", value_name = "I/N", value_parser = valid_shard)]
    shard: Option<String>,
    /// Output format.
    #[arg(long, global = true, env = "IDEM_FORMAT", value_enum, default_value_t = Format::Text)]
    format: Format,
    /// When to use colour.
    #[arg(long, global = true, env = "IDEM_COLOR", value_enum, default_value_t = Color::Auto)]
    color: Color,
    /// Wait this many seconds for another run on the same root to finish.
    #[arg(
        long,
        global = true,
        env = "IDEM_LOCK_TIMEOUT",
        default_value_t = 60,
        value_name = "SECS"
    )]
    lock_timeout: u64,
    /// Pin the run's clock: Unix seconds or a UTC time like 2026-01-31T12:00:00Z.
    #[arg(long, global = true, env = "IDEM_NOW", value_name = "TIME", value_parser = valid_now)]
    now: Option<String>,
    /// Seconds between two progress lines of a running step when stderr is not a terminal (CI
    /// logs); 0 for none.
    #[arg(
        long,
        global = true,
        env = "IDEM_PROGRESS_INTERVAL",
        default_value_t = 30,
        value_name = "SECS"
    )]
    progress_interval: u64,
    /// Where compiled components are cached [default: $XDG_CACHE_HOME/idem or ~/.cache/idem].
    #[arg(long, global = true, env = "IDEM_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not cache compiled components.
    #[arg(long, global = true, env = "IDEM_NO_CACHE")]
    no_cache: bool,
    /// Time limit of each plugin step, in seconds.
    #[arg(
        long,
        global = true,
        env = "IDEM_PLUGIN_TIMEOUT",
        default_value_t = 300,
        value_name = "SECS"
    )]
    plugin_timeout: u64,
    /// Memory limit of each plugin step, in MiB.
    #[arg(
        long,
        global = true,
        env = "IDEM_PLUGIN_MEMORY",
        default_value_t = 256,
        value_name = "MIB"
    )]
    plugin_memory: usize,
    /// More logging (-v: info, -vv: debug, -vvv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    /// One JSON report at the end.
    Json,
    /// JSON events, one a line, as the run goes; the last holds the report.
    Ndjson,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Args, Debug)]
struct PlanArgs {
    /// The plan file [default: ROOT/idem.yml].
    plan: Option<PathBuf>,
    /// Show a unified diff of every file that changes.
    #[arg(long, env = "IDEM_DIFF")]
    diff: bool,
    /// Set a plan variable (repeat); wins over --var-file and the plan's default.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = valid_var)]
    vars: Vec<(String, String)>,
    /// Read plan variables from a YAML or JSON file of `name: value` (repeat; a later file
    /// wins).
    #[arg(long = "var-file", value_name = "FILE")]
    var_files: Vec<PathBuf>,
    /// Run only the steps with this name or tag (repeat, or separate with commas).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    only: Vec<String>,
    /// Leave out the steps with this name or tag (repeat, or separate with commas).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    skip: Vec<String>,
}

/// `--var NAME=VALUE`.
fn valid_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!(
            "--var {text:?}: expected NAME=VALUE, like --var region=eu-west-1"
        )),
    }
}

/// The values of a `--var-file`: a mapping of names to strings, numbers or booleans.
fn read_var_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --var-file {}", path.display()))?;
    // YAML 1.2 reads JSON too.
    let value: serde_json::Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("--var-file {} is not valid YAML or JSON", path.display()))?;
    let serde_json::Value::Object(map) = value else {
        bail!(
            "--var-file {} must be a mapping of variable names to values, like `region: eu-west-1`",
            path.display()
        );
    };
    map.into_iter()
        .map(|(name, v)| match v {
            serde_json::Value::String(s) => Ok((name, s)),
            serde_json::Value::Number(n) => Ok((name, n.to_string())),
            serde_json::Value::Bool(b) => Ok((name, b.to_string())),
            other => bail!(
                "--var-file {}: the value of `{name}` must be a string, number or boolean, not {}",
                path.display(),
                match other {
                    serde_json::Value::Null => "null",
                    serde_json::Value::Array(_) => "a list",
                    _ => "a mapping",
                }
            ),
        })
        .collect()
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make the changes the plan calls for; given a saved plan (`idem plan --out`), make
    /// exactly its changes, or refuse, before any step, if the world changed since.
    Apply {
        #[command(flatten)]
        args: PlanArgs,
        /// Then prove it: a dry run against the result must change nothing (exit 3 if not).
        #[arg(long, env = "IDEM_VERIFY")]
        verify: bool,
    },
    /// Dry run: report what apply would do; change nothing.
    Plan {
        #[command(flatten)]
        args: PlanArgs,
        /// Also save the plan: its change list and fingerprints of everything it read, for
        /// `idem apply FILE` to apply exactly that plan (never holds a secret).
        #[arg(long, value_name = "FILE", env = "IDEM_PLAN_OUT")]
        out: Option<PathBuf>,
    },
    /// Dry run for CI: exit 0 when converged, 2 when changes are pending.
    Check {
        #[command(flatten)]
        args: PlanArgs,
    },
    /// Check the plan without running any step: variables, references, paths, the files
    /// steps read, plugin components, `--only`/`--skip` names (the same checks every run
    /// makes before its first step).
    Validate {
        #[command(flatten)]
        args: PlanArgs,
    },
    /// Run one plugin component as a step.
    Run {
        /// The plugin component (.wasm), relative to the root.
        plugin: String,
        /// The plugin's config, from a JSON or YAML file.
        #[arg(long, conflicts_with = "config_json")]
        config: Option<PathBuf>,
        /// The plugin's config, as JSON text.
        #[arg(long)]
        config_json: Option<String>,
        /// Paths the plugin may touch (repeat); none by default, `.` for the whole root.
        #[arg(long = "path")]
        paths: Vec<String>,
        /// Databases the plugin may open (repeat).
        #[arg(long = "database")]
        databases: Vec<String>,
        /// Dry run: report what the plugin would change.
        #[arg(long, conflicts_with = "check")]
        dry_run: bool,
        /// Dry run with drift exit code 2.
        #[arg(long)]
        check: bool,
        /// Show diffs of changed files.
        #[arg(long)]
        diff: bool,
    },
    /// Recent runs and their changes, from the state store.
    History {
        /// How many runs, newest first; 0 for all.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Only runs that did not succeed (failed, plan error, interrupted).
        #[arg(long)]
        failed: bool,
        /// Only runs started since then: a time (Unix seconds or 2026-01-31T12:00:00Z) or an
        /// age (90m, 24h, 7d).
        #[arg(long, value_name = "WHEN", value_parser = valid_since)]
        since: Option<String>,
    },
    /// Print the JSON Schema of the plan format.
    Schema,
    /// Write a starter idem.yml and a sample GitHub workflow (never overwrites).
    Init,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff); with --dir, write one page per command there.
    Man {
        /// Write idem.1 and idem-COMMAND.1 into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The command line as parsed and shown: the global options are listed once, in `idem
/// --help`, and each subcommand's help points there instead of repeating them. They still
/// parse after the subcommand (`idem apply -C dir`): each subcommand carries a hidden copy,
/// still global, which clap fills and hands up to the top level as it does for any global
/// option (it propagates a global option only where a subcommand has none of that name).
/// Completions use [`Cli::command`], which offers them everywhere.
fn command() -> clap::Command {
    let mut cmd = Cli::command();
    let globals: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, |mut sub| {
            for a in &globals {
                sub = sub.arg(a.clone().hide(true));
            }
            sub.after_help(
                "Global options (the root, the state store, output format and colour, limits, \
                 logging) go before or after the command: see `idem --help`.",
            )
        });
    }
    cmd
}

/// `--now` must be a time now, so a bad one is a usage error (exit 64) naming the input.
fn valid_now(text: &str) -> Result<String, String> {
    crate::cap::clock::parse_now(text).map(|_| text.to_string())
}

/// `--since`: an age before now (`90m`, `24h`, `7d`) or a time, as an RFC 3339 UTC time.
fn valid_since(text: &str) -> Result<String, String> {
    let t = text.trim();
    let unit = |u: char| match u {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        _ => None,
    };
    if let Some(u) = t.chars().last().and_then(unit)
        && let Ok(n) = t[..t.len() - 1].parse::<i64>()
    {
        let now = crate::cap::clock::system_now().seconds;
        return Ok(crate::state::format_time(now - n * u, 0));
    }
    match crate::cap::clock::parse_now(t) {
        Ok(d) => Ok(crate::state::format_time(d.seconds, 0)),
        Err(_) => Err(format!(
            "--since {text:?}: expected an age like 90m, 24h or 7d, Unix seconds, or a UTC time like 2026-01-31T12:00:00Z"
        )),
    }
}

impl Command {
    /// The mode and plan a run command runs, for a report of a run that could not start.
    fn run_of(&self) -> Option<(Mode, String)> {
        let plan = |a: &PlanArgs| {
            a.plan
                .as_ref()
                .map_or("idem.yml".to_string(), |p| p.display().to_string())
        };
        match self {
            Command::Apply { args, .. } => Some((Mode::Apply, plan(args))),
            Command::Plan { args, .. } => Some((Mode::Plan, plan(args))),
            Command::Check { args } => Some((Mode::Check, plan(args))),
            Command::Validate { args } => Some((Mode::Plan, plan(args))),
            Command::Run {
                plugin,
                dry_run,
                check,
                ..
            } => Some((
                if *check {
                    Mode::Check
                } else if *dry_run {
                    Mode::Plan
                } else {
                    Mode::Apply
                },
                plugin.clone(),
            )),
            _ => None,
        }
    }
}

/// Parse the command line, run, print, and map the result to an exit code.
pub fn main() -> ExitCode {
    // Like other Unix filters: `idem plan | head` ends quietly when the reader goes away.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // A write past RLIMIT_FSIZE (`ulimit -f`) must fail with EFBIG and be reported, not
        // kill the run silently.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = match command()
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    init_tracing(&cli.global);
    let format = cli.global.format;
    let started = cli.command.run_of();
    if started.is_some() {
        crate::signal::install();
    }
    let root = cli.global.root.clone();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let message = crate::redact::text(&format!("{e:#}")).into_owned();
            // A run that could not start still gets the report's whole shape.
            let doc = match &started {
                Some((mode, plan)) => {
                    Report::not_started(*mode, plan, &root, message.clone()).to_json()
                }
                None => serde_json::json!({
                    "schema": 1, "ok": false, "exit_code": exit::ERROR,
                    "error": {"message": &message}, "steps": [],
                }),
            };
            match format {
                Format::Json => println!("{doc}"),
                Format::Ndjson => {
                    println!(
                        "{}",
                        serde_json::json!({"event": "run-finished", "report": doc})
                    )
                }
                Format::Text => {}
            }
            let code = match crate::signal::requested() {
                Some(sig) if started.is_some() => crate::signal::exit_code(sig),
                _ => exit::ERROR,
            };
            eprintln!("idem: error: {}", crate::term::escape_text(&message));
            ExitCode::from(code)
        }
    }
}

fn init_tracing(g: &Global) {
    let level = if g.quiet {
        "error"
    } else {
        match g.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("idem={level},idem::guest={level}"))
    });
    // Log fields carry guest-controlled text (paths built from records, a guest's messages):
    // every value is escaped as the text report escapes it, so no log line drives the
    // terminal. Escaping the whole stream instead would also escape the logger's own colours.
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = crate::redact::text(&text);
        if field.name() == "message" {
            write!(w, "{}", crate::term::escape_text(&text))
        } else {
            write!(w, "{field}={}", escape(&text))
        }
    })
    .delimited(" ");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(fields)
        .with_ansi(crate::term::color(color_choice(g), true))
        .with_writer(crate::live::LogWriter)
        .with_target(false)
        .without_time()
        .try_init();
}

/// The compile cache, for a run whose steps may write under `root` (canonical): `None` with
/// `--no-cache`, or when the directory cannot be used safely (said on stderr by
/// [`Cache::open`]).
fn cache(g: &Global, root: &Path) -> Option<Cache> {
    Cache::open(&cache_dir(g)?, root)
}

fn cache_dir(g: &Global) -> Option<PathBuf> {
    if g.no_cache {
        return None;
    }
    if let Some(d) = &g.cache_dir {
        return Some(d.clone());
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("idem"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("idem"))
}

fn color_choice(g: &Global) -> ColorChoice {
    match g.color {
        Color::Always => ColorChoice::Always,
        Color::Never => ColorChoice::Never,
        Color::Auto => ColorChoice::Auto,
    }
}

fn canonical_root(root: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(root)
        .with_context(|| format!("root {} does not exist or cannot be read", root.display()))?;
    if !meta.is_dir() {
        bail!("root {} is not a directory", root.display());
    }
    root.canonicalize()
        .with_context(|| format!("resolving the root {}", root.display()))
}

fn base_config(g: &Global, mode: Mode, diff: bool) -> Result<RunConfig> {
    let root = canonical_root(&g.root)?;
    let now = match &g.now {
        Some(t) => crate::cap::clock::parse_now(t).map_err(anyhow::Error::msg)?,
        None => crate::cap::clock::system_now(),
    };
    let state = match &g.state {
        Some(text) => {
            match crate::dbname::resolve(text).map_err(|e| anyhow::anyhow!("--state: {e}"))? {
                crate::dbname::DbName::File(p) => Location::File(
                    std::path::absolute(&p).with_context(|| format!("state path {p}"))?,
                ),
                crate::dbname::DbName::Postgres(target) => Location::Postgres {
                    target,
                    key: match &g.state_key {
                        Some(k) => k.clone(),
                        None => default_state_key(&root, None),
                    },
                },
            }
        }
        None => Location::File(root.join(crate::policy::STATE_DIR).join("state.db")),
    };
    if g.state_key.as_ref().is_some_and(|k| k.is_empty()) {
        bail!("--state-key is empty: give the job's name, for example --state-key deploy/db");
    }
    let sharing = match (&g.shard, g.cooperate) {
        (Some(s), _) => {
            let (index, count) = parse_shard(s).map_err(anyhow::Error::msg)?;
            Sharing::Shard { index, count }
        }
        (None, true) => {
            if !matches!(state, Location::Postgres { .. }) {
                bail!(
                    "--cooperate needs the state in PostgreSQL, which every runner reaches: \
                     pass --state postgres://… (or env:NAME); {} is this runner's own file",
                    state.shown()
                );
            }
            Sharing::Cooperate
        }
        (None, false) => Sharing::Alone,
    };
    Ok(RunConfig {
        mode,
        root,
        plan_source: String::new(),
        plan_name: String::new(),
        vars: Vec::new(),
        only: Vec::new(),
        skip: Vec::new(),
        validate_only: false,
        plan_file: None,
        state,
        sharing,
        now,
        diff,
        progress: Progress::default(),
        lock_timeout: Duration::from_secs(g.lock_timeout),
        plugin_timeout: Duration::from_secs(g.plugin_timeout.max(1)),
        plugin_memory: g.plugin_memory.max(1) << 20,
        memory: 2 << 30,
        verify: false,
    })
}

/// The state key of a plan when --state-key is not given: the root directory's name and the
/// plan's path under the root (`app/idem.yml`), the same on every runner that checks out the
/// same repository, whatever the directory it checks out into.
fn default_state_key(root: &Path, plan: Option<&Path>) -> String {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    let plan = match plan {
        Some(p) => match p.strip_prefix(root) {
            Ok(rel) => rel.to_string_lossy().replace('\\', "/"),
            Err(_) => p.to_string_lossy().into_owned(),
        },
        None => "idem.yml".into(),
    };
    format!("{name}/{plan}")
}

/// `I/N` with 1 ≤ I ≤ N.
fn parse_shard(text: &str) -> Result<(u32, u32), String> {
    let bad = || {
        format!(
            "--shard {text:?}: give this runner's shard and the number of shards as I/N, 1 ≤ I ≤ N, for example 2/4"
        )
    };
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let (i, n): (u32, u32) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if i == 0 || n == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

fn valid_shard(text: &str) -> Result<String, String> {
    parse_shard(text).map(|_| text.to_string())
}

fn read_plan(cfg: &mut RunConfig, plan: Option<&Path>) -> Result<()> {
    let (path, name) = match plan {
        Some(p) => (p.to_path_buf(), p.display().to_string()),
        None => (cfg.root.join("idem.yml"), "idem.yml".to_string()),
    };
    let bytes = std::fs::read(&path).with_context(|| match plan {
        Some(_) => format!("reading plan {}", path.display()),
        None => format!(
            "no plan given and no idem.yml in the root {}; pass the plan's path, or write a starter with `idem init`",
            cfg.root.display()
        ),
    })?;
    cfg.plan_source = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("plan {} is not UTF-8 text", path.display()))?;
    cfg.plan_name = name;
    cfg.plan_file = path.canonicalize().ok();
    Ok(())
}

/// The live output of a run, as the global options ask for it.
fn live(g: &Global, cfg: &RunConfig) -> Live {
    let output = match g.format {
        Format::Text => Output::Text { quiet: g.quiet },
        Format::Json => Output::Json,
        Format::Ndjson => Output::Ndjson,
    };
    let settings = Settings {
        output,
        style: TextStyle {
            color: crate::term::color(color_choice(g), false),
            verbose: g.verbose > 0,
            diff: cfg.diff,
        },
        stderr_color: crate::term::color(color_choice(g), true),
        heartbeat: Duration::from_secs(g.progress_interval),
    };
    Live::start(settings, cfg.progress.clone())
}

/// The report at the end, after what was shown live, and its exit code.
fn finish(live: Live, report: &Report) -> Result<u8> {
    live.finish(report)?;
    Ok(report.exit_code())
}

fn run(cli: Cli) -> Result<u8> {
    let g = &cli.global;
    match cli.command {
        Command::Apply { args, verify } => run_plan(g, Mode::Apply, args, verify),
        Command::Plan { args, out: None } => run_plan(g, Mode::Plan, args, false),
        Command::Plan {
            args,
            out: Some(out),
        } => save_plan(g, args, &out),
        Command::Check { args } => run_plan(g, Mode::Check, args, false),
        Command::Validate { args } => validate(g, args),
        Command::Run {
            plugin,
            config,
            config_json,
            paths,
            databases,
            dry_run,
            check,
            diff,
        } => {
            let mode = if check {
                Mode::Check
            } else if dry_run {
                Mode::Plan
            } else {
                Mode::Apply
            };
            let mut cfg = base_config(g, mode, diff)?;
            let config = match (config, config_json) {
                (Some(f), _) => {
                    let text = std::fs::read_to_string(&f)
                        .with_context(|| format!("reading plugin config {}", f.display()))?;
                    let v: serde_json::Value = if f.extension().is_some_and(|e| e == "json") {
                        serde_json::from_str(&text).with_context(|| {
                            format!("plugin config {} is not valid JSON", f.display())
                        })?
                    } else {
                        serde_yaml_ng::from_str(&text).with_context(|| {
                            format!("plugin config {} is not valid YAML", f.display())
                        })?
                    };
                    v.to_string()
                }
                (None, Some(j)) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&j).context("--config-json is not valid JSON")?;
                    v.to_string()
                }
                (None, None) => "null".to_string(),
            };
            cfg.plan_name = plugin.clone();
            cfg.plan_source = format!("{plugin}\n{config}");
            let host = Host::new(cache(g, &cfg.root))?;
            cfg.progress = host.progress();
            let call = PluginCall {
                path: plugin,
                config,
                paths,
                databases,
                network: crate::bindings::plan::NetworkGrant {
                    hosts: Vec::new(),
                    host_locations: Vec::new(),
                    headers: Vec::new(),
                    max_requests: None,
                    max_bytes_out: None,
                    max_bytes_in: None,
                },
            };
            let mut live = live(g, &cfg);
            let report = host.run_plugin_file(&cfg, call, &mut live)?;
            finish(live, &report)
        }
        Command::History {
            limit,
            failed,
            since,
        } => {
            let cfg = base_config(g, Mode::Plan, false)?;
            let store = crate::state::StateStore::open_at(&cfg.state, true, Sharing::Alone)?;
            let filter = HistoryFilter {
                limit,
                failed,
                since,
            };
            let runs = store.history(&filter)?;
            let mut out = std::io::stdout().lock();
            if g.format != Format::Text {
                serde_json::to_writer_pretty(&mut out, &runs)?;
                writeln!(out)?;
            } else if runs.is_empty() {
                let which = if failed || filter.since.is_some() {
                    "no runs match"
                } else {
                    "no runs recorded"
                };
                writeln!(out, "{which} in {}", cfg.state.shown())?;
            } else {
                for r in &runs {
                    let ci = match (&r.ci_run_id, &r.ci_run_attempt) {
                        (Some(id), Some(a)) => format!(" [CI run {id} attempt {a}]"),
                        _ => String::new(),
                    };
                    writeln!(
                        out,
                        "#{} {} {} {} -> {} ({}){ci}",
                        r.id,
                        r.started,
                        r.mode,
                        escape(&r.plan),
                        r.outcome.as_deref().unwrap_or("running"),
                        crate::report::count(r.changes.unwrap_or(0) as u64, "change", "changes")
                    )?;
                    if let Some(f) = &r.failure {
                        let at = match (f.step, &f.step_name) {
                            (Some(i), Some(n)) => format!("step {i} ({}): ", escape(n)),
                            _ => String::new(),
                        };
                        writeln!(out, "    {at}{}", escape(&f.error))?;
                    }
                    for j in &r.journal {
                        let rows = j
                            .rows
                            .map(|n| {
                                format!(" ({})", crate::report::count(n as u64, "row", "rows"))
                            })
                            .unwrap_or_default();
                        writeln!(
                            out,
                            "    step {} {} {}{rows}",
                            j.step,
                            j.kind,
                            escape(&j.target)
                        )?;
                    }
                }
            }
            Ok(exit::OK)
        }
        Command::Schema => {
            let cfg = base_config(g, Mode::Plan, false)?;
            let host = Host::new(cache(g, &cfg.root))?;
            println!("{}", host.schema(&cfg)?);
            Ok(exit::OK)
        }
        Command::Init => {
            let cfg = base_config(g, Mode::Plan, false)?;
            let schema = Host::new(cache(g, &cfg.root))?.schema(&cfg)?;
            crate::init::init(&cfg.root, &format!("{schema}\n"))
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "idem", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man { dir: None } => {
            clap_mangen::Man::new(command()).render(&mut std::io::stdout())?;
            Ok(exit::OK)
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the man page directory {}", dir.display()))?;
            let mut cmd = command();
            cmd.build();
            write_man_pages(&cmd, &dir)?;
            Ok(exit::OK)
        }
    }
}

/// `idem validate`: the report of a run that stops before its first step, printed as a
/// plan error (text) or the JSON report, exit 0 or 1.
fn validate(g: &Global, args: PlanArgs) -> Result<u8> {
    let mut cfg = plan_config(g, Mode::Plan, args)?;
    cfg.validate_only = true;
    let host = Host::new(cache(g, &cfg.root))?;
    let report = host.validate(&cfg)?;
    if g.format != Format::Text {
        println!("{}", report.to_json());
    } else if report.error.is_some() {
        let style = TextStyle {
            color: crate::term::color(color_choice(g), true),
            verbose: false,
            diff: false,
        };
        report.render_text(&mut std::io::stderr().lock(), &style)?;
    } else if !g.quiet {
        println!(
            "{}: valid, {}",
            escape(&cfg.plan_name),
            crate::report::count(report.steps.len() as u64, "step", "steps")
        );
    }
    Ok(report.exit_code())
}

/// `idem.1` and one `idem-COMMAND.1` per subcommand (what the top page's SEE ALSO names).
fn write_man_pages(cmd: &clap::Command, dir: &Path) -> Result<()> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub = sub
            .clone()
            .display_name(format!("{name}-{}", sub.get_name()))
            .bin_name(format!("{name} {}", sub.get_name()));
        write_man_pages(&sub, dir)?;
    }
    Ok(())
}

fn plan_config(g: &Global, mode: Mode, args: PlanArgs) -> Result<RunConfig> {
    let mut cfg = base_config(g, mode, args.diff)?;
    read_plan(&mut cfg, args.plan.as_deref())?;
    if g.state_key.is_none()
        && let Location::Postgres { key, .. } = &mut cfg.state
    {
        *key = default_state_key(&cfg.root, cfg.plan_file.as_deref());
    }
    for f in &args.var_files {
        cfg.vars.extend(read_var_file(f)?);
    }
    cfg.vars.extend(args.vars);
    cfg.only = args.only;
    cfg.skip = args.skip;
    Ok(cfg)
}

fn run_plan(g: &Global, mode: Mode, args: PlanArgs, verify: bool) -> Result<u8> {
    if mode == Mode::Apply
        && let Some(file) = &args.plan
        && let Some(saved) = crate::saved::read(file)?
    {
        return apply_saved(g, args, saved, verify);
    }
    let mut cfg = plan_config(g, mode, args)?;
    cfg.verify = verify;
    let host = Host::new(cache(g, &cfg.root))?;
    cfg.progress = host.progress();
    let mut live = live(g, &cfg);
    let report = host.run_plan(&cfg, &mut live)?;
    finish(live, &report)
}

/// `idem plan --out FILE`: the dry run, then (when it succeeded) the saved plan.
fn save_plan(g: &Global, args: PlanArgs, out: &Path) -> Result<u8> {
    let mut cfg = plan_config(g, Mode::Plan, args)?;
    let host = Host::new(cache(g, &cfg.root))?;
    cfg.progress = host.progress();
    let mut live = live(g, &cfg);
    let (report, observed) = host.plan_observed(&cfg, &mut live)?;
    let code = finish(live, &report)?;
    if !report.ok() {
        bail!(
            "the plan did not succeed, so no saved plan was written to {}",
            out.display()
        );
    }
    let saved = crate::saved::make(&cfg, &report, &observed, out)?;
    crate::saved::write(&saved, out)?;
    if !g.quiet && g.format == Format::Text {
        eprintln!(
            "saved the plan ({}) to {}: apply it with `idem apply {}`",
            crate::report::count(saved.changes.len() as u64, "change", "changes"),
            out.display(),
            out.display()
        );
    }
    Ok(code)
}

/// `idem apply FILE` of a saved plan: the plan and `--only`/`--skip` it was made with, the
/// variables given now (sensitive ones must be given again), checked and applied under one
/// lock.
fn apply_saved(
    g: &Global,
    args: PlanArgs,
    saved: crate::saved::SavedPlan,
    verify: bool,
) -> Result<u8> {
    let file = args.plan.clone().unwrap_or_default();
    if !args.only.is_empty() || !args.skip.is_empty() {
        bail!(
            "{} is a saved plan: it applies the steps it was made with (--only/--skip are part of it); make the plan again to change them",
            file.display()
        );
    }
    let mut cfg = base_config(g, Mode::Apply, args.diff)?;
    for f in &args.var_files {
        cfg.vars.extend(read_var_file(f)?);
    }
    cfg.vars.extend(args.vars);
    crate::saved::prepare(&saved, &mut cfg)?;
    if g.state_key.is_none()
        && let Location::Postgres { key, .. } = &mut cfg.state
    {
        *key = default_state_key(&cfg.root, cfg.plan_file.as_deref());
    }
    cfg.verify = verify;
    let host = Host::new(cache(g, &cfg.root))?;
    cfg.progress = host.progress();
    let checker = crate::saved::Checker::new(&saved, &cfg, &file)?;
    let mut live = live(g, &cfg);
    let report = host.apply_saved(&cfg, &checker, &mut live)?;
    finish(live, &report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_one_of_n_from_one() {
        assert_eq!(parse_shard("2/4"), Ok((2, 4)));
        assert_eq!(parse_shard("1/1"), Ok((1, 1)));
        for bad in ["0/4", "5/4", "4", "a/b", "1/0", "/", ""] {
            let e = parse_shard(bad).unwrap_err();
            assert!(e.contains("1 ≤ I ≤ N") && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn the_default_state_key_is_the_root_name_and_the_plan_under_it() {
        let root = Path::new("/home/runner/work/shop/shop");
        assert_eq!(default_state_key(root, None), "shop/idem.yml");
        assert_eq!(
            default_state_key(root, Some(&root.join("deploy/db.yml"))),
            "shop/deploy/db.yml"
        );
        // Another checkout of the same repository under another parent: the same key.
        let fresh = Path::new("/tmp/xyz/shop");
        assert_eq!(
            default_state_key(fresh, Some(&fresh.join("deploy/db.yml"))),
            "shop/deploy/db.yml"
        );
        assert_eq!(
            default_state_key(root, Some(Path::new("/etc/plan.yml"))),
            "shop//etc/plan.yml"
        );
    }
}
