//! `idem`: make CI, cron and provisioning jobs safe to run again and again.
//!
//! The modules form one direction of use: `bindings` (the WIT contract as Rust) and the
//! leaves `policy` and `change`; `cap` (one module per capability, each on its own view of
//! the store); `state` (runs, journal, checkpoints, the run lock); `report`; `run` (engine,
//! stores, the plan loop, plugins); `cli` and `init` at the top. None reaches back up.

mod bindings;
mod cap;
mod change;
mod cli;
mod dbname;
mod init;
mod live;
mod netpolicy;
mod pgtls;
mod policy;
mod redact;
mod report;
mod run;
mod saved;
mod signal;
mod state;
mod term;

fn main() -> std::process::ExitCode {
    cli::main()
}
