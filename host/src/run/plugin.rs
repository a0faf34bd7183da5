//! A plugin step: its component loaded (from the compiled cache when it can be), confined by
//! its own policy, and run in a store of its own that holds the run's state only for the
//! step. Its instances, memory, resource table, stderr and database connections end with it.

use super::failure::{describe_trap, is_trap, not_a_component, time_limit};
use super::store::{RunState, new_store};
use super::{Host, RunConfig, StepEnd};
use crate::bindings::plan::PluginCall;
use crate::bindings::plugin;
use crate::netpolicy::NetPolicy;
use crate::policy::{Limits, Policy};
use crate::report::{FailureKind, StepFailure, error_text};

impl Host {
    /// Run the plugin step `call` with the run's state, which comes back with the result.
    pub(super) fn run_plugin(
        &self,
        mut run: RunState,
        call: &PluginCall,
        cfg: &RunConfig,
    ) -> (RunState, StepEnd) {
        let what = format!("plugin {}", call.path);
        let load = |m: String| StepFailure::new(FailureKind::Load, m);
        let limits = Limits {
            time: Some(cfg.plugin_timeout),
            memory: cfg.plugin_memory,
        };
        let mut policy =
            match Policy::for_plugin(cfg.mode, &call.path, &call.paths, &call.databases, limits) {
                Ok(p) => p,
                Err(e) => return (run, Err(load(format!("{what}: {e}")))),
            };
        let net = &call.network;
        match NetPolicy::build(
            &net.hosts,
            &net.headers,
            [net.max_requests, net.max_bytes_out, net.max_bytes_in],
            |var| std::env::var(var).ok(),
        ) {
            Ok(n) => policy = policy.with_network(n),
            Err(e) => return (run, Err(load(format!("{what}: {e}")))),
        }
        if let Some(plan) = cfg.plan_in_root() {
            policy = policy.reserve(plan);
        }
        // The component is read as the standard operations would read it: through the run's
        // view of the tree, so a plugin written by an earlier step of a dry run is found.
        let bytes = match Policy::new(cfg.mode)
            .resolve(&call.path)
            .map_err(|e| format!("denied: {e}"))
            .and_then(|rel| run.fs.read(&rel).map_err(|e| error_text(&e)))
        {
            Ok(b) => b,
            Err(e) => return (run, Err(load(format!("{what}: {e}")))),
        };
        if let Some(problem) = not_a_component(&bytes) {
            return (run, Err(load(format!("{what} {problem}"))));
        }
        if let Some(problem) = super::imports::unprovided_import(&bytes) {
            return (run, Err(load(format!("{what} {problem}"))));
        }
        let component = match self.load_component(&call.path, &bytes, &crate::cap::fs::hash(&bytes))
        {
            Ok(c) => c,
            Err(e) => {
                return (
                    run,
                    Err(load(format!(
                        "{what} is not a WebAssembly component idem can load: {e:#}"
                    ))),
                );
            }
        };
        let deadline = Some(std::time::Instant::now() + cfg.plugin_timeout);
        let step_dbs = match run.dbs.lend(policy.databases(), deadline) {
            Ok(d) => d,
            Err(e) => {
                let m = format!("{what}: preparing its databases: {}", error_text(&e));
                return (run, Err(StepFailure::new(FailureKind::Host, m)));
            }
        };
        let run_dbs = std::mem::replace(&mut run.dbs, step_dbs);
        let mut store = new_store(&self.engine, run, policy);
        let result = match plugin::Plugin::instantiate(&mut store, &component, &self.linker) {
            Ok(instance) => match instance
                .idem_plugin_step()
                .call_run(&mut store, &call.config)
            {
                Ok(Ok(report)) => Ok(report),
                Ok(Err(e)) => Err(StepFailure::guest(e)),
                Err(e) => Err(describe_trap(&e, store.data(), &what, true)),
            },
            // A trap while starting up is the plugin's failure like any other.
            Err(e) if is_trap(&e, store.data()) => {
                Err(describe_trap(&e, store.data(), &what, true))
            }
            // Anything else is a mismatch of imports or exports, which wasmtime names.
            Err(e) => Err(load(format!(
                "{what} does not fit idem's contract (idem:plugin@0.1.0, world `plugin`): {e:#}"
            ))),
        };
        // A wait cut short at the deadline means the guest's time ran out, whatever it did
        // after it woke (it believes it waited as long as it asked).
        let (net_changes, denials, net_timed_out) = {
            let mut r = store.data().net.record();
            (
                r.take_changes(),
                std::mem::take(&mut r.denials),
                r.timed_out,
            )
        };
        let cut_short = store
            .data()
            .cut_short
            .or(net_timed_out.then_some("waiting on the network (wasi:http)"));
        // The guest sees a denial as `HTTP-request-denied` only: the step's error says why.
        let result = match result {
            Err(mut f) if !denials.is_empty() => {
                f.message = format!("{}; the host denied: {}", f.message, denials.join("; "));
                Err(f)
            }
            r => r,
        };
        let result = match (result, cut_short) {
            // A wait on the network that ran into the deadline is where the time went, even
            // when the guest then ran on until epoch interruption stopped it.
            (Err(f), _) if f.kind == FailureKind::Limit && !net_timed_out => Err(f),
            (_, Some(blocked)) => Err(time_limit(
                &what,
                Some(cfg.plugin_timeout),
                Some(blocked),
                " (raise it with --plugin-timeout)",
            )),
            (r, None) => r,
        };
        let mut run = store.into_data().into_run();
        run.http_changes.extend(net_changes);
        let step_dbs = std::mem::replace(&mut run.dbs, run_dbs);
        // A statement interrupted at the deadline comes back to the guest as an error it may
        // report as its own: the step ran out of time all the same.
        let result = match result {
            Err(_) if step_dbs.interrupted() => Err(time_limit(
                &what,
                Some(cfg.plugin_timeout),
                Some("an SQL statement"),
                " (raise it with --plugin-timeout)",
            )),
            r => r,
        };
        let adopted = run.dbs.adopt(step_dbs, &mut run.fs);
        let result = match (result, adopted) {
            (Ok(_), Err(e)) => Err(StepFailure::new(
                FailureKind::Host,
                format!("{what}: taking back its databases: {}", error_text(&e)),
            )),
            (r, _) => r,
        };
        (run, result)
    }
}
