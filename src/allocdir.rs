//! A group's directory in Nomad's layout, with owners that keep tasks out of everything
//! the agent writes (docs/trust-model.md):
//!
//! ```text
//! run_dir/                      +0011      (tasks pass through; owner and mode the admin's)
//!   alloc/                      root 0711
//!     <group>/                  root 0711
//!       secrets/                root 0700  the group's Consul tokens
//!       xds/                    root:<Envoy's group> 0750  the xDS relay's socket
//!       alloc/                  root 0755
//!         data/ tmp/            1777       shared by the group's tasks (sticky, as /tmp)
//!         logs/                 root 0755  written by the agent only
//!       <task>/                 root 0755
//!         root/                 root 0755  where an exec task's view is mounted (`view`)
//!         local/ tmp/           the task's user 0755
//!         secrets/              root:<the task's group> 0750  Envoy's bootstrap (0640)
//! ```
//!
//! The only directories a task can write are its own `local/` and `tmp/` and the group's
//! `alloc/data` and `alloc/tmp`; the agent opens nothing inside them. Each start sets these
//! owners again through descriptors (`files::Dir`), so a directory a task owned under an
//! older layout, or a link planted in one, is taken back rather than followed.

use crate::files::Dir;
use std::io;
use std::path::Path;

const ROOT: u32 = 0;

/// The group's directory (`run_dir/alloc/<group>`), its ancestors set to root 0711.
pub fn group(alloc_dir: &Path) -> io::Result<Dir> {
    let invalid = || io::Error::other(format!("{} is not a group directory", alloc_dir.display()));
    let name = alloc_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(invalid)?;
    let run_dir = alloc_dir
        .parent()
        .and_then(Path::parent)
        .ok_or_else(invalid)?;
    let run = Dir::trusted(run_dir)?;
    run.let_others_through()?;
    let allocs = run.sub("alloc", 0o711)?;
    allocs.set_owner_mode(ROOT, ROOT, 0o711)?;
    let group = allocs.sub(name, 0o711)?;
    group.set_owner_mode(ROOT, ROOT, 0o711)?;
    Ok(group)
}

/// The group's shared `alloc/` (data, tmp and logs); returns `alloc/logs`.
pub fn shared(group: &Dir) -> io::Result<Dir> {
    let alloc = group.sub("alloc", 0o755)?;
    alloc.set_owner_mode(ROOT, ROOT, 0o755)?;
    for name in ["data", "tmp"] {
        alloc
            .sub(name, 0o1777)?
            .set_owner_mode(ROOT, ROOT, 0o1777)?;
    }
    // The relay's socket to Consul's HTTP API for Connect native tasks: in a directory
    // only root writes (not `tmp/`, where Nomad puts it), so no task can swap it.
    alloc
        .sub("consul", 0o755)?
        .set_owner_mode(ROOT, ROOT, 0o755)?;
    let logs = alloc.sub("logs", 0o755)?;
    logs.set_owner_mode(ROOT, ROOT, 0o755)?;
    Ok(logs)
}

/// A group's socket to Consul's HTTP API (Connect native), under its directory.
pub const CONSUL_HTTP_SOCKET: &str = "alloc/consul/consul_http.sock";
/// In a native task's `secrets/`: its workload token (empty without one), and copies of
/// the agent's TLS files, as Nomad's connect native hook writes them.
pub const NATIVE_TOKEN: &str = "consul_token";
pub const NATIVE_TLS_FILES: [(&str, &str); 3] = [
    ("CONSUL_CACERT", "consul_ca_file.pem"),
    ("CONSUL_CLIENT_CERT", "consul_cert_file.pem"),
    ("CONSUL_CLIENT_KEY", "consul_key_file.pem"),
];

/// The group's token directory.
pub fn tokens(group: &Dir) -> io::Result<Dir> {
    let secrets = group.sub("secrets", 0o700)?;
    secrets.set_owner_mode(ROOT, ROOT, 0o700)?;
    Ok(secrets)
}

/// The directory of the group's xDS socket, open to Envoy's group `gid` only, and the
/// socket's group if the relay bound it already (it takes the directory's group when it
/// binds, whichever comes first).
pub fn xds(group: &Dir, gid: u32) -> io::Result<Dir> {
    let xds = group.sub("xds", 0o750)?;
    xds.set_owner_mode(ROOT, gid, 0o750)?;
    xds.set_group_of(XDS_SOCKET_NAME, gid)?;
    Ok(xds)
}

/// The socket's name in `xds/`.
pub const XDS_SOCKET_NAME: &str = "consul_grpc.sock";

/// A task's directories for a task running as `uid:gid`; returns its `secrets/`.
pub fn task(group: &Dir, name: &str, uid: u32, gid: u32) -> io::Result<Dir> {
    let task = group.sub(name, 0o755)?;
    task.set_owner_mode(ROOT, ROOT, 0o755)?;
    task.sub("root", 0o755)?.set_owner_mode(ROOT, ROOT, 0o755)?;
    for own in ["local", "tmp"] {
        task.sub(own, 0o755)?.set_owner_mode(uid, gid, 0o755)?;
    }
    let secrets = task.sub("secrets", 0o750)?;
    secrets.set_owner_mode(ROOT, gid, 0o750)?;
    Ok(secrets)
}

/// The group's resolv.conf (root's, 0644), which its tasks see at /etc/resolv.conf.
pub const RESOLV_CONF: &str = "resolv.conf";

pub fn resolv_conf(group: &Dir, text: &str) -> io::Result<()> {
    group.write_readable(RESOLV_CONF, text.as_bytes())
}

/// Everything of a group for one task: the shared directories and the task's own.
pub fn prepare(alloc_dir: &Path, task_name: &str, uid: u32, gid: u32) -> io::Result<Dir> {
    let group = group(alloc_dir)?;
    shared(&group)?;
    task(&group, task_name, uid, gid)
}
