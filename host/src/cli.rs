//! The command line: arguments become one validated [`RunConfig`], the host runs it, the
//! report is rendered once, and its exit code is returned.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::bindings::plan::PluginCall;
use crate::policy::Mode;
use crate::report::{Report, exit};
use crate::run::{Cache, Host, RunConfig};

/// Make CI, cron and provisioning jobs safe to run again and again.
///
/// idem runs a plan of idempotent steps inside a WebAssembly sandbox. `idem plan` predicts
/// exactly what `idem apply` does; a second apply changes nothing.
#[derive(Parser, Debug)]
#[command(name = "idem", version, about, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 success or converged, 1 error, 2 changes pending (check), \
3 not idempotent (apply --verify), 64 usage error."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: Global,
}

#[derive(Args, Debug)]
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
    /// The state database (runs, journal, checkpoints) [default: ROOT/.idem/state.db].
    #[arg(long, global = true, env = "IDEM_STATE")]
    state: Option<PathBuf>,
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
    #[arg(long, global = true, env = "IDEM_NOW", value_name = "TIME")]
    now: Option<String>,
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
    Json,
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
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make the changes the plan calls for.
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
    },
    /// Dry run for CI: exit 0 when converged, 2 when changes are pending.
    Check {
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
        /// How many runs.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Print the JSON Schema of the plan format.
    Schema,
    /// Write a starter idem.yml and a sample GitHub workflow (never overwrites).
    Init,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
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
    let cli = match Cli::try_parse() {
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
    let json = cli.global.format == Format::Json;
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if json {
                let doc = serde_json::json!({
                    "schema": 1, "ok": false, "exit_code": exit::ERROR,
                    "error": {"message": format!("{e:#}")}, "steps": [],
                });
                println!("{doc}");
            }
            eprintln!("idem: error: {e:#}");
            ExitCode::from(exit::ERROR)
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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

fn use_color(g: &Global) -> bool {
    match g.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
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
    let state_path = match &g.state {
        Some(p) => std::path::absolute(p).with_context(|| format!("state path {}", p.display()))?,
        None => root.join(crate::policy::STATE_DIR).join("state.db"),
    };
    Ok(RunConfig {
        mode,
        root,
        plan_source: String::new(),
        plan_name: String::new(),
        plan_file: None,
        state_path,
        now,
        diff,
        progress: g.format == Format::Text && !g.quiet,
        lock_timeout: Duration::from_secs(g.lock_timeout),
        plugin_timeout: Duration::from_secs(g.plugin_timeout.max(1)),
        plugin_memory: g.plugin_memory.max(1) << 20,
        memory: 2 << 30,
        verify: false,
    })
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

fn print_report(g: &Global, report: &Report, diff: bool) -> Result<u8> {
    // Stdout is line-buffered: a report of 100,000 removals would be 100,000 writes.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if g.format == Format::Json {
        serde_json::to_writer_pretty(&mut out, &report.to_json())?;
        writeln!(out)?;
    } else if !g.quiet || !report.ok() {
        report.render_text(&mut out, use_color(g), g.verbose > 0, diff)?;
    }
    out.flush()?;
    Ok(report.exit_code())
}

fn run(cli: Cli) -> Result<u8> {
    let g = &cli.global;
    match cli.command {
        Command::Apply { args, verify } => run_plan(g, Mode::Apply, args, verify),
        Command::Plan { args } => run_plan(g, Mode::Plan, args, false),
        Command::Check { args } => run_plan(g, Mode::Check, args, false),
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
            let call = PluginCall {
                path: plugin,
                config,
                paths,
                databases,
            };
            let report = host.run_plugin_file(&cfg, call)?;
            print_report(g, &report, diff)
        }
        Command::History { limit } => {
            let cfg = base_config(g, Mode::Plan, false)?;
            let store = crate::state::StateStore::open(&cfg.state_path, true)?;
            let runs = store.history(limit)?;
            let mut out = std::io::stdout().lock();
            if g.format == Format::Json {
                serde_json::to_writer_pretty(&mut out, &runs)?;
                writeln!(out)?;
            } else if runs.is_empty() {
                writeln!(out, "no runs recorded in {}", cfg.state_path.display())?;
            } else {
                for r in &runs {
                    let ci = match (&r.ci_run_id, &r.ci_run_attempt) {
                        (Some(id), Some(a)) => format!(" [CI run {id} attempt {a}]"),
                        _ => String::new(),
                    };
                    writeln!(
                        out,
                        "#{} {} {} {} -> {} ({} changes){ci}",
                        r.id,
                        r.started,
                        r.mode,
                        r.plan,
                        r.outcome.as_deref().unwrap_or("running"),
                        r.changes.unwrap_or(0)
                    )?;
                    for j in &r.journal {
                        let rows = j.rows.map(|n| format!(" ({n} rows)")).unwrap_or_default();
                        writeln!(out, "    step {} {} {}{rows}", j.step, j.kind, j.target)?;
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
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(exit::OK)
        }
    }
}

fn run_plan(g: &Global, mode: Mode, args: PlanArgs, verify: bool) -> Result<u8> {
    let mut cfg = base_config(g, mode, args.diff)?;
    cfg.verify = verify;
    read_plan(&mut cfg, args.plan.as_deref())?;
    let host = Host::new(cache(g, &cfg.root))?;
    let report = host.run_plan(&cfg)?;
    print_report(g, &report, args.diff)
}
