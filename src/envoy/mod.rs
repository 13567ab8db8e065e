//! Envoy: its bootstrap, rendered natively (the `consul connect envoy -bootstrap` output).

pub mod bootstrap;
mod json;
