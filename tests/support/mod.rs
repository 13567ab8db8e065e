//! Stand-ins for the systems outpost talks to (see each module).
pub mod consul_double;
