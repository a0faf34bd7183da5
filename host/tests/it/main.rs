//! Integration tests: the real `idem` binary, real components, real files and databases in
//! temporary directories. One test binary, a module per subject.

mod support;

mod core;
mod crash;
mod fidelity;
mod generated;
mod plugins;
mod state;
