//! What the host was like before outpost first changed it (`ip_forward`, IPv6 forwarding,
//! `/run/netns` and its mount, `/run/sysctl.d`), recorded once and given back by teardown, so the host ends
//! as it was found. Kept in /run: the changes themselves do not outlive a reboot either.

use log::{info, warn};
use std::io;
use std::path::Path;

pub const FILE: &str = "/run/outpost-host-before";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const NETNS_DIR: &str = "/run/netns";
const SYSCTL_D: &str = "/run/sysctl.d";

/// Notes the host's state unless already noted (an earlier apply changed it since).
pub fn remember() -> io::Result<()> {
    if Path::new(FILE).exists() {
        return Ok(());
    }
    let forward = std::fs::read_to_string(IP_FORWARD).unwrap_or_default();
    let forward6 = std::fs::read_to_string(IPV6_FORWARDING).unwrap_or_default();
    let text = format!(
        "ip_forward {}\nipv6_forwarding {}\nnetns_dir {}\nnetns_mount {}\nsysctl_d {}\n",
        forward.trim(),
        forward6.trim(),
        Path::new(NETNS_DIR).exists(),
        is_mount_point(NETNS_DIR),
        Path::new(SYSCTL_D).exists(),
    );
    crate::files::write_private(Path::new(FILE), text.as_bytes())
}

/// Sets the sysctl at `path` back to `before` if it is still the 1 outpost set.
fn give_back(path: &str, name: &str, before: &str) {
    let now = std::fs::read_to_string(path).unwrap_or_default();
    if !before.is_empty() && before != "1" && now.trim() == "1" {
        match std::fs::write(path, before) {
            Ok(()) => info!("{name} back to {before}"),
            Err(e) => warn!("cannot set {name} back to {before}: {e}"),
        }
    }
}

fn is_mount_point(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|info| info.lines().any(|l| l.split(' ').nth(4) == Some(path)))
}

/// Gives back what `remember` noted, as far as nothing else uses it now: `ip_forward` only
/// if it is still what outpost set, `/run/netns` only if no namespace is left in it.
pub fn restore() {
    let Ok(text) = std::fs::read_to_string(FILE) else {
        return;
    };
    let noted = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .unwrap_or("")
            .to_string()
    };
    give_back(IP_FORWARD, "net.ipv4.ip_forward", &noted("ip_forward"));
    give_back(
        IPV6_FORWARDING,
        "net.ipv6.conf.all.forwarding",
        &noted("ipv6_forwarding"),
    );
    let netns_empty = std::fs::read_dir(NETNS_DIR).is_ok_and(|mut d| d.next().is_none());
    if netns_empty && noted("netns_mount") == "false" && is_mount_point(NETNS_DIR) {
        let _ = nix::mount::umount2(NETNS_DIR, nix::mount::MntFlags::MNT_DETACH);
    }
    if netns_empty && noted("netns_dir") == "false" {
        let _ = std::fs::remove_dir(NETNS_DIR);
    }
    if noted("sysctl_d") == "false" {
        let _ = std::fs::remove_dir(SYSCTL_D); // only if empty
    }
    let _ = std::fs::remove_file(FILE);
}
