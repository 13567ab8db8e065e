//! The host's network: facts the plan needs now; namespaces, bridge, veth, addresses and
//! routes over netlink arrive with the network issue.

mod host;

pub use host::host_facts;
