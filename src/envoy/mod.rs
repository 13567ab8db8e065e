//! Envoy: its admin's readiness answer, its bootstrap, rendered natively (the `consul connect envoy -bootstrap` output),
//! and the `envoy-bootstrap` command that exposes it.

pub mod access_logs;
pub mod admin;
pub mod bootstrap;
pub mod command;
mod json;
pub mod proxy_config;
pub mod sidecar;
mod stats;
pub mod version;
