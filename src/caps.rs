//! Linux capabilities a task keeps, by Nomad's exec-driver rules: a root task keeps
//! `ROOT_DEFAULT` (Nomad's exec default: Docker's set without `net_raw`), any other user
//! none; `cap_add` and `cap_drop` (names as Nomad writes them, `all` allowed) adjust that.
//! The result is a bit mask the forked child applies (`supervise`) before it execs.

/// Capability names by number (linux/capability.h), lower case without `CAP_`.
const NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// What a root task keeps unless the config says otherwise (Nomad's exec driver default).
pub const ROOT_DEFAULT: [&str; 13] = [
    "audit_write",
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "mknod",
    "net_bind_service",
    "setfcap",
    "setgid",
    "setpcap",
    "setuid",
    "sys_chroot",
];

/// A set of capabilities, bit `n` for capability number `n`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    const ALL: CapSet = CapSet((1 << NAMES.len()) - 1);

    /// The names in the set, in the kernel's order.
    pub fn names(self) -> Vec<&'static str> {
        NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, name)| *name)
            .collect()
    }
}

/// The number of a capability written as Nomad accepts it: `net_admin`, `NET_ADMIN` or
/// `CAP_NET_ADMIN`.
fn number(name: &str) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    NAMES.iter().position(|n| *n == bare)
}

/// Whether `name` is a capability name or `all`.
pub fn is_known(name: &str) -> bool {
    name.eq_ignore_ascii_case("all") || number(name).is_some()
}

/// The set of `names` (unknown names are left out: `validate` refused them).
pub fn set_of(names: &[String]) -> CapSet {
    CapSet(names.iter().fold(0, |mask, name| {
        if name.eq_ignore_ascii_case("all") {
            CapSet::ALL.0
        } else {
            number(name).map_or(mask, |n| mask | 1 << n)
        }
    }))
}

/// The capabilities a task keeps: the default of its user, plus `add`, minus `drop`.
pub fn for_task(root: bool, add: &[String], drop: &[String]) -> CapSet {
    let base = if root {
        set_of(&ROOT_DEFAULT.map(String::from))
    } else {
        CapSet::default()
    };
    CapSet((base.0 | set_of(add).0) & !set_of(drop).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_keeps_nomads_default_and_others_nothing() {
        let root = for_task(true, &[], &[]);
        assert_eq!(root.names().len(), ROOT_DEFAULT.len());
        assert!(!root.names().contains(&"net_raw"));
        assert_eq!(for_task(false, &[], &[]), CapSet(0));
        let added = for_task(false, &["CAP_NET_ADMIN".into(), "net_raw".into()], &[]);
        assert_eq!(added.names(), ["net_admin", "net_raw"]);
        assert_eq!(for_task(true, &[], &["all".into()]), CapSet(0));
        assert_eq!(
            for_task(true, &["sys_admin".into()], &["chown".into()]).0 & 1,
            0
        );
        assert!(is_known("SYS_ADMIN") && is_known("all") && !is_known("sys_everything"));
    }
}
