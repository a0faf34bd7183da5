//! Integration tests: the real `idem` binary, real components, real files and databases in
//! temporary directories. One test binary, a module per subject.

mod support;

mod cache;
mod core;
mod crash;
mod data;
mod dbfiles;
mod durability;
mod fidelity;
mod generated;
mod http;
mod live;
mod pg;
mod pgonce;
mod pgplugins;
mod pgstate;
mod planlang;
mod plugins;
mod postgres;
mod rows;
mod sandbox;
mod state;
