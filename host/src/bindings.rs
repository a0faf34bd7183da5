//! The one place where the WIT contract becomes Rust: `bindgen!` for the standard guest's
//! world, and the plugin world reusing the very same import traits, so one implementation of
//! each capability serves both. Resources map to the host types of `cap::resources`.

/// Bindings of world `standard` (the standard operations guest). Its imports are the whole
/// host API; the capability modules implement their `Host` traits.
pub mod standard {
    wasmtime::component::bindgen!({
        world: "standard",
        path: "../wit",
        imports: { default: trappable },
        additional_derives: [PartialEq],
        with: {
            "idem:plugin/fs.reader": crate::cap::resources::Reader,
            "idem:plugin/sqlite.database": crate::cap::resources::DbHandle,
            "idem:plugin/sqlite.statement": crate::cap::resources::StmtHandle,
            "idem:plugin/postgres.connection": crate::cap::resources::PgHandle,
        },
    });
}

/// Bindings of world `plugin`: the same imports (mapped onto the standard world's traits),
/// exporting one `step`.
pub mod plugin {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "idem:plugin/types": super::standard::idem::plugin::types,
            "idem:plugin/fs": super::standard::idem::plugin::fs,
            "idem:plugin/sqlite": super::standard::idem::plugin::sqlite,
            "idem:plugin/postgres": super::standard::idem::plugin::postgres,
            "idem:plugin/checkpoint": super::standard::idem::plugin::checkpoint,
            "idem:plugin/log": super::standard::idem::plugin::log,
            "idem:plugin/clock": super::standard::idem::plugin::clock,
            "idem:plugin/policy": super::standard::idem::plugin::policy,
            "idem:plugin/report": super::standard::idem::plugin::report,
        },
    });
}

pub use standard::exports::idem::plugin::plan;
pub use standard::idem::plugin::{
    checkpoint, clock, fs, log, policy, postgres, report, sqlite, types,
};
