//! idem's standard operations as a WebAssembly component: it reads a plan and runs its
//! steps through the host's capabilities (world `standard` of `wit/worlds.wit`).
//!
//! The pure logic (plan parsing, templates, globs, record readers) lives in modules that never
//! call the host, so it is tested natively; the operation modules check state through the
//! host and call its mutating functions the same way under apply and dry run.

wit_bindgen::generate!({ world: "standard", path: "../wit" });

pub mod glob;
pub mod plan;
pub mod records;
pub mod template;
pub mod yaml;
