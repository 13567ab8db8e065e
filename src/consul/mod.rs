//! The local Consul agent: what outpost registers there. The HTTP client, ACL tokens,
//! preflight checks and the anti-entropy sync build on the registration bodies here.

pub mod acl;
pub mod agent;
pub mod anti_entropy;
pub mod client;
pub mod connect;
pub mod gateway;
pub mod lookup;
pub mod preflight;
pub mod registration;
pub mod sync;
