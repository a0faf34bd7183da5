//! idem's standard operations as a WebAssembly component: it reads a plan and runs its
//! steps through the host's capabilities (world `standard` of `wit/worlds.wit`).
//!
//! The pure logic (plan parsing, templates, globs, record readers) lives in modules that never
//! call the host, so it is tested natively; the operation modules check state through the
//! host and call its mutating functions the same way under apply and dry run.

wit_bindgen::generate!({ world: "standard", path: "../wit" });

pub mod cleanup;
pub mod dir;
pub mod each;
pub mod file;
pub mod glob;
pub mod host;
pub mod include;
pub mod pg_upsert;
pub mod plan;
pub mod records;
pub mod remove;
pub mod template;
pub mod upsert;
pub mod vars;
pub mod yaml;

use std::cell::RefCell;

use exports::idem::plugin::plan::{
    Guest, LoadInput, LoadedPlan, Location, NetworkGrant, PlanError, PluginCall, ReadPath, StepInfo,
};
use idem::plugin::report::{StepError, StepReport};
use plan::Step;

thread_local! {
    /// The plan `load` validated; components are single-threaded, so this is the one copy.
    static PLAN: RefCell<Option<plan::Loaded>> = const { RefCell::new(None) };
}

/// The component: the `plan` export.
#[cfg_attr(not(target_family = "wasm"), allow(dead_code))]
struct Component;

impl Guest for Component {
    fn load(source: String, _file_name: String, input: LoadInput) -> Result<LoadedPlan, PlanError> {
        let inputs = vars::Inputs {
            vars: input.vars,
            env: input.env,
        };
        // Included files are read through the host's `fs`, under the run's policy (see
        // include.rs for why the guest, not the host, resolves them).
        let mut read = |path: &str| match idem::plugin::fs::read(path) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string()),
            Err(e) => Err(host::describe(&e)),
        };
        let loaded = plan::parse_composed(&source, &inputs, input.plan_path.as_deref(), &mut read)
            .map_err(|e| PlanError {
                message: e.message,
                location: e.loc.map(location),
                hint: e.hint,
            })?;
        each::check_headers(&loaded, &source).map_err(|e| PlanError {
            message: e.message,
            location: e.loc.map(location),
            hint: e.hint,
        })?;
        let infos = loaded
            .plan
            .steps
            .iter()
            .zip(&loaded.locations)
            .zip(&loaded.sensitive_steps)
            .zip(&loaded.reads)
            .zip(&loaded.host_locations)
            .map(|((((step, loc), sensitive), reads), hosts)| {
                let mut info = step_info(step, *loc, *sensitive);
                if let Some(call) = &mut info.plugin {
                    call.network.host_locations = hosts.iter().map(|l| location(*l)).collect();
                }
                info.reads = reads
                    .iter()
                    .map(|r| ReadPath {
                        path: r.path.clone(),
                        location: Some(location(r.loc)),
                        component: r.component,
                    })
                    .collect();
                info
            })
            .collect();
        let sensitive = loaded.sensitive.clone();
        let included = loaded.included.clone();
        cleanup::remember_plan(&loaded.plan.steps);
        PLAN.with(|p| *p.borrow_mut() = Some(loaded));
        Ok(LoadedPlan {
            steps: infos,
            sensitive,
            included,
        })
    }

    fn run_step(index: u32) -> Result<StepReport, StepError> {
        // A copy, so that no borrow of the plan is held across host calls.
        let step = PLAN.with(|p| {
            p.borrow()
                .as_ref()
                .map(|l| l.plan.steps.get(index as usize).cloned())
        });
        let step = match step {
            None => return Err(host::error("run-step was called before load")),
            Some(None) => return Err(host::error(format!("the plan has no step {index}"))),
            Some(Some(step)) => step,
        };
        match &step {
            Step::Dir(s) => dir::run(s),
            Step::File(s) => file::run(s),
            Step::Remove(s) => remove::run(s),
            Step::Cleanup(s) => cleanup::run(s),
            Step::Upsert(s) => upsert::run(s),
            Step::Each(s) => each::run(s),
            Step::Plugin(s) => Err(host::error(format!(
                "plugin {} is run by the host, not by the standard guest",
                s.plugin
            ))),
        }
    }

    fn schema() -> String {
        plan::schema()
    }
}

fn location(loc: yaml::Loc) -> Location {
    Location {
        line: loc.line,
        column: loc.column,
        file: loc.file.map(str::to_owned),
    }
}

fn step_info(step: &Step, loc: yaml::Loc, sensitive: bool) -> StepInfo {
    StepInfo {
        tags: step.tags().to_vec(),
        sensitive,
        reads: Vec::new(),
        op: step.op().to_owned(),
        name: step.display_name(),
        target: step.target().into_owned(),
        location: Some(location(loc)),
        plugin: match step {
            Step::Plugin(p) => Some(PluginCall {
                path: p.plugin.clone(),
                config: p
                    .config
                    .as_ref()
                    .map_or_else(|| "null".to_owned(), ToString::to_string),
                paths: p.paths.clone(),
                databases: p.databases.clone(),
                network: NetworkGrant {
                    hosts: p.hosts.clone(),
                    host_locations: Vec::new(),
                    headers: p.headers.clone().into_iter().collect(),
                    max_requests: p.http_limits.as_ref().and_then(|l| l.requests),
                    max_bytes_out: p.http_limits.as_ref().and_then(|l| l.bytes_out),
                    max_bytes_in: p.http_limits.as_ref().and_then(|l| l.bytes_in),
                },
            }),
            _ => None,
        },
    }
}

// Only for the component: the export symbols' names (`idem:plugin/plan@0.1.0#load`) are not
// valid in a native linker's version script, and native builds exist for the unit tests.
#[cfg(target_family = "wasm")]
export!(Component);
