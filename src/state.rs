//! The node state file (`data_dir/state.json`): what must survive a restart so the plan stays
//! stable — each group's IP lease and dynamic host ports. Secrets are never stored here.

use crate::error::Error;
use miniserde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "state.json";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub version: u32,
    pub groups: BTreeMap<String, GroupState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The group's leased address on the bridge, without prefix length.
    pub address: Option<String>,
    /// The group's IPv6 lease on a dual-stack bridge (`network.subnet_ipv6`).
    pub address_ipv6: Option<String>,
    /// Dynamic host ports by port label.
    pub ports: BTreeMap<String, u16>,
}

pub fn path_in(data_dir: &str) -> PathBuf {
    Path::new(data_dir).join(FILE_NAME)
}

/// Reads the state file. A missing file is a first run (empty state); an unreadable or
/// corrupt file is an error, because silently starting empty would move every group to a
/// new address and new ports.
pub fn load(path: &Path) -> Result<NodeState, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(NodeState {
                version: VERSION,
                ..<NodeState as Default>::default()
            });
        }
        Err(e) => {
            return Err(Error::permanent(format!(
                "cannot read state file {}: {e}",
                path.display()
            )));
        }
    };
    let state: NodeState = miniserde::json::from_str(&text).map_err(|_| {
        format!(
            "state file {} is not valid outpost state JSON; move it away to start from empty state",
            path.display()
        )
    })?;
    if state.version != VERSION {
        return Err(Error::permanent(format!(
            "state file {} has version {}, this outpost reads version {VERSION}",
            path.display(),
            state.version
        )));
    }
    Ok(state)
}

/// Writes the state atomically and privately (see `files::write_private`), so a power cut
/// leaves either the old or the new file.
pub fn save(path: &Path, state: &NodeState) -> std::io::Result<()> {
    let text = miniserde::json::to_string(state) + "\n";
    crate::files::write_private(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty_state_and_corrupt_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("outpost-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(FILE_NAME);
        let _ = std::fs::remove_file(&file);
        assert_eq!(load(&file).unwrap().groups.len(), 0);

        std::fs::write(&file, "{\"version\": 1, \"groups\": ").unwrap();
        assert!(load(&file).unwrap_err().message().contains("not valid"));

        std::fs::write(
            &file,
            r#"{"version":1,"groups":{"api":{"address":"172.26.64.9","ports":{"connect-proxy-api":20007}}}}"#,
        )
        .unwrap();
        let state = load(&file).unwrap();
        assert_eq!(state.groups["api"].address.as_deref(), Some("172.26.64.9"));
        assert_eq!(state.groups["api"].ports["connect-proxy-api"], 20007);

        save(&file, &state).unwrap();
        assert_eq!(load(&file).unwrap(), state);
        assert!(!dir.join(format!(".{FILE_NAME}.tmp")).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
