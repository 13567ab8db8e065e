//! Task environments as Nomad builds them (reference/nomad-connect.md §8): the NOMAD_*
//! variables, Nomad's name cleaner, and `${…}` interpolation.

use std::collections::BTreeMap;

pub type EnvMap = BTreeMap<String, String>;

/// Prefixes whose variable names Nomad cleans after assembly (§8.2).
const CLEANED_PREFIXES: &[&str] = &[
    "NOMAD_ADDR_",
    "NOMAD_IP_",
    "NOMAD_PORT_",
    "NOMAD_HOST_PORT_",
    "NOMAD_META_",
];

/// Nomad's `CleanEnvVar`: keeps `_`, `.`, ASCII letters and (not first) digits; every other
/// byte becomes `_`, so a multi-byte character becomes several.
pub fn clean(name: &str) -> String {
    name.bytes()
        .enumerate()
        .map(|(i, b)| match b {
            b'_' | b'.' | b'a'..=b'z' | b'A'..=b'Z' => b as char,
            b'0'..=b'9' if i > 0 => b as char,
            _ => '_',
        })
        .collect()
}

/// Renames the keys Nomad cleans. A cleaned name that collides with an existing one
/// replaces it, as in Nomad's map assembly.
pub fn clean_prefixed_keys(env: EnvMap) -> EnvMap {
    env.into_iter()
        .map(
            |(key, value)| match CLEANED_PREFIXES.iter().find(|p| key.starts_with(*p)) {
                Some(prefix) => (format!("{prefix}{}", clean(&key[prefix.len()..])), value),
                None => (key, value),
            },
        )
        .collect()
}

/// The per-port variables of §8.2 for one port. `alloc` is the group's namespace address
/// (bridge mode only).
pub struct PortVars<'a> {
    pub label: &'a str,
    pub host_ip: &'a str,
    pub host_port: u16,
    pub netns_port: u16,
    pub alloc_ip: Option<&'a str>,
}

pub fn add_port(env: &mut EnvMap, p: &PortVars) {
    let label = p.label;
    let host_addr = format!("{}:{}", p.host_ip, p.host_port);
    let port = p.netns_port.to_string();
    env.insert(format!("NOMAD_IP_{label}"), p.host_ip.to_string());
    env.insert(format!("NOMAD_HOST_IP_{label}"), p.host_ip.to_string());
    env.insert(format!("NOMAD_IPv4_{label}"), p.host_ip.to_string());
    env.insert(format!("NOMAD_HOST_PORT_{label}"), p.host_port.to_string());
    env.insert(format!("NOMAD_ADDR_{label}"), host_addr.clone());
    env.insert(format!("NOMAD_HOST_ADDR_{label}"), host_addr);
    env.insert(format!("NOMAD_PORT_{label}"), port.clone());
    env.insert(format!("NOMAD_ALLOC_PORT_{label}"), port.clone());
    if let Some(ip) = p.alloc_ip {
        env.insert(format!("NOMAD_ALLOC_INTERFACE_{label}"), "eth0".into());
        env.insert(format!("NOMAD_ALLOC_IP_{label}"), ip.to_string());
        env.insert(format!("NOMAD_ALLOC_ADDR_{label}"), format!("{ip}:{port}"));
    }
}

/// `NOMAD_UPSTREAM_{IP,PORT,ADDR}_<dest>`, raw and cleaned (§8.3). The IP is always
/// 127.0.0.1, as in Nomad, whatever `local_bind_address` says.
pub fn add_upstream(env: &mut EnvMap, destination: &str, port: u16) {
    let cleaned = clean(destination);
    for name in [destination, cleaned.as_str()] {
        env.insert(format!("NOMAD_UPSTREAM_IP_{name}"), "127.0.0.1".into());
        env.insert(format!("NOMAD_UPSTREAM_PORT_{name}"), port.to_string());
        env.insert(
            format!("NOMAD_UPSTREAM_ADDR_{name}"),
            format!("127.0.0.1:{port}"),
        );
    }
}

/// Replaces `${name}` with values from `vars`. `$${` is a literal `${`. A reference to an
/// unknown name is left as written (Nomad's behaviour) and reported in `unresolved`.
pub fn interpolate(text: &str, vars: &EnvMap, unresolved: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${")
            && let Some(end) = body.find('}')
        {
            let name = &body[..end];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    unresolved.push(name.to_string());
                    out.push_str(&after[..end + 3]);
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaner_matches_nomad() {
        assert_eq!(clean("foo-bar"), "foo_bar");
        assert_eq!(clean("a.b"), "a.b");
        assert_eq!(clean("9lives"), "_lives");
        assert_eq!(clean("x9"), "x9");
        assert_eq!(clean("é"), "__");
    }

    #[test]
    fn upstreams_raw_and_cleaned() {
        let mut env = EnvMap::new();
        add_upstream(&mut env, "foo-bar", 1234);
        assert_eq!(env["NOMAD_UPSTREAM_ADDR_foo_bar"], "127.0.0.1:1234");
        assert_eq!(env["NOMAD_UPSTREAM_ADDR_foo-bar"], "127.0.0.1:1234");
        let mut missing = vec![];
        assert_eq!(
            interpolate("${NOMAD_UPSTREAM_PORT_foo-bar}", &env, &mut missing),
            "1234"
        );
        assert!(missing.is_empty());
    }

    #[test]
    fn interpolation_escapes_and_reports_unknown_names() {
        let mut vars = EnvMap::new();
        vars.insert("A".into(), "1".into());
        let mut missing = vec![];
        assert_eq!(
            interpolate("x${A}y$${A}z${B}$5${", &vars, &mut missing),
            "x1y${A}z${B}$5${"
        );
        assert_eq!(missing, vec!["B".to_string()]);
    }

    #[test]
    fn prefixed_port_keys_are_cleaned_others_are_not() {
        let mut env = EnvMap::new();
        add_port(
            &mut env,
            &PortVars {
                label: "connect-proxy-api",
                host_ip: "10.0.0.5",
                host_port: 25000,
                netns_port: 25000,
                alloc_ip: Some("172.26.64.2"),
            },
        );
        let env = clean_prefixed_keys(env);
        assert_eq!(env["NOMAD_PORT_connect_proxy_api"], "25000");
        assert_eq!(env["NOMAD_ADDR_connect_proxy_api"], "10.0.0.5:25000");
        assert_eq!(
            env["NOMAD_ALLOC_ADDR_connect-proxy-api"],
            "172.26.64.2:25000"
        );
    }
}
