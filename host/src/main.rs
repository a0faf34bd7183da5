//! `idem`: make CI, cron and provisioning jobs safe to run again and again.

mod bindings;
mod change;
mod checkpoint;
mod cli;
mod clock;
mod engine;
mod fs;
mod init;
mod lock;
mod log;
mod policy;
mod report;
mod sqlite;
mod state;

fn main() -> std::process::ExitCode {
    cli::main()
}
