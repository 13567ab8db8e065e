//! Envoy: its bootstrap, rendered natively (the `consul connect envoy -bootstrap` output),
//! and the `envoy-bootstrap` command that exposes it.

pub mod access_logs;
pub mod bootstrap;
pub mod command;
mod json;
pub mod proxy_config;
pub mod sidecar;
mod stats;
pub mod version;
