//! Workload tokens (`consul.acl.mode`): `agent-token` uses the configured token for
//! everything; `login` exchanges a JWT for one token per service (`POST /v1/acl/login`,
//! logged out on stop); `service-identity` creates a local token with the service's
//! identity (`PUT /v1/acl/token`, deleted on stop). A workload token lives in a 0600 file
//! in a 0700 directory under run_dir (tmpfs) and never in a log line or an error.

use super::client::{Client, ConsulError};
use crate::config::{Acl, AclMode};
use miniserde::json::{self, Object, Value};
use std::fmt;
use std::path::Path;

/// A token minted for one service.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadToken {
    pub accessor: String,
    pub secret: String,
}

impl fmt::Debug for WorkloadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkloadToken({})", self.accessor)
    }
}

fn string_of(obj: &Object, key: &str) -> Option<String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn parse_token(text: &str) -> Result<WorkloadToken, ConsulError> {
    let invalid = || ConsulError::Rejected {
        status: 200,
        body: "Consul's token answer has no AccessorID/SecretID".into(),
    };
    match json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Ok(WorkloadToken {
            accessor: string_of(&o, "AccessorID").ok_or_else(invalid)?,
            secret: string_of(&o, "SecretID").ok_or_else(invalid)?,
        }),
        _ => Err(invalid()),
    }
}

/// The token for `service`'s registration and its Envoy, or `None` in `agent-token` mode
/// (the client's own token is used).
pub fn obtain(
    client: &Client,
    acl: &Acl,
    service: &str,
    node: &str,
) -> Result<Option<WorkloadToken>, String> {
    let answer = match acl.mode {
        AclMode::Login => {
            let jwt_file = acl.jwt_file.as_deref().unwrap_or_default();
            let jwt = std::fs::read_to_string(jwt_file)
                .map_err(|e| format!("cannot read consul.acl.jwt_file {jwt_file}: {e}"))?;
            let mut meta = Object::new();
            meta.insert(
                "requested_by".into(),
                Value::String(format!("outpost_service_{service}")),
            );
            meta.insert("node_id".into(), Value::String(node.into()));
            let mut body = Object::new();
            body.insert("AuthMethod".into(), Value::String(acl.auth_method.clone()));
            body.insert("BearerToken".into(), Value::String(jwt.trim().to_string()));
            body.insert("Meta".into(), Value::Object(meta));
            client
                .post("/v1/acl/login", &json::to_string(&Value::Object(body)))
                .map_err(|e| {
                    format!(
                        "ACL login with auth method {} for service {service}: {e}",
                        acl.auth_method
                    )
                })?
        }
        AclMode::ServiceIdentity => {
            let mut identity = Object::new();
            identity.insert("ServiceName".into(), Value::String(service.into()));
            let mut body = Object::new();
            body.insert(
                "Description".into(),
                Value::String(format!("outpost: service {service} on node {node}")),
            );
            body.insert(
                "ServiceIdentities".into(),
                Value::Array(vec![Value::Object(identity)].into_iter().collect()),
            );
            body.insert("Local".into(), Value::Bool(true));
            client
                .put("/v1/acl/token", &json::to_string(&Value::Object(body)))
                .map_err(|e| {
                    format!("creating a service-identity token for service {service}: {e}")
                })?
        }
        AclMode::AgentToken => return Ok(None),
    };
    parse_token(&answer).map(Some).map_err(|e| e.to_string())
}

/// Gives the token back: logout for login tokens, delete for service-identity tokens.
/// Already gone is fine.
pub fn release(client: &Client, acl: &Acl, token: &WorkloadToken) -> Result<(), ConsulError> {
    let result = match acl.mode {
        AclMode::Login => client.with_token(&token.secret).post("/v1/acl/logout", ""),
        AclMode::ServiceIdentity => client.delete(&format!("/v1/acl/token/{}", token.accessor)),
        AclMode::AgentToken => return Ok(()),
    };
    match result {
        Ok(_)
        | Err(ConsulError::Rejected { status: 404, .. })
        | Err(ConsulError::AclNotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes a secret to `path`: its directory 0700, the file 0600, replaced whole.
pub fn store_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    crate::files::write_private(path, secret.as_bytes())
}
