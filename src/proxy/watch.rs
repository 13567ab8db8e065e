//! The proxy's watches on the local agent: each a blocking query in a thread of its own,
//! applying what changed to the shared state. A failing watch keeps what it had, backs
//! off, and says once (not on every try) why.

use super::{Proxy, tls, upstream_key};
use crate::consul::client::ConsulError;
use crate::consul::connect;
use log::{info, warn};
use std::sync::Arc;
use std::time::Duration;

/// How long a blocking query waits for a change.
const WAIT: Duration = Duration::from_secs(60);
/// Back-off after a failure: doubled up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Starts the watches that need nothing but the proxy ID; the others start once its
/// registration is known.
pub(super) fn start(proxy: &Arc<Proxy>) {
    let path = format!("/v1/agent/service/{}", proxy.proxy_id);
    spawn(
        proxy,
        "registration",
        path,
        "hash",
        apply_registration,
        always,
    );
    spawn(
        proxy,
        "CA roots",
        "/v1/agent/connect/ca/roots".into(),
        "index",
        apply_roots,
        always,
    );
}

type Apply = fn(&Arc<Proxy>, &str, &str) -> Result<(), String>;

/// A watch thread. `what` names it in logs and is passed to `apply` (upstream watches
/// carry their upstream's key); it runs while `wanted` holds.
fn spawn(
    proxy: &Arc<Proxy>,
    what: &str,
    path: String,
    key: &'static str,
    apply: Apply,
    wanted: fn(&Proxy, &str) -> bool,
) {
    let proxy = proxy.clone();
    let what = what.to_string();
    let started = std::thread::Builder::new()
        .name(format!("watch {what}"))
        .stack_size(256 * 1024)
        .spawn(move || watch(&proxy, &what, &path, key, apply, wanted));
    if let Err(e) = started {
        warn!("cannot start the watch: {e}");
    }
}

fn watch(
    proxy: &Arc<Proxy>,
    what: &str,
    path: &str,
    key: &str,
    apply: Apply,
    wanted: fn(&Proxy, &str) -> bool,
) {
    let mut seen: Option<String> = None;
    // What was last applied: an answer equal to it changes nothing.
    let mut applied = String::new();
    let mut backoff = BACKOFF_MIN;
    let mut last_error = String::new();
    while wanted(proxy, what) {
        match proxy.client.watch(path, key, seen.as_deref(), WAIT) {
            Ok((body, value)) => {
                backoff = BACKOFF_MIN;
                if !last_error.is_empty() {
                    info!("{what}: Consul answers again");
                    last_error.clear();
                }
                proxy.state().unreachable = None;
                if value.is_some() && value == seen {
                    continue;
                }
                if body != applied {
                    match apply(proxy, what, &body) {
                        Ok(()) => applied = body,
                        Err(e) => {
                            warn!("{what}: {e}; keeping what was there");
                            std::thread::sleep(BACKOFF_MAX);
                        }
                    }
                }
                // An answer without an index does not block: do not ask in a loop.
                if value.is_none() {
                    std::thread::sleep(BACKOFF_MAX);
                }
                seen = value;
            }
            Err(e) => {
                let why = e.to_string();
                if why != last_error {
                    warn!("{what}: {why}; retrying, serving with what it has");
                    last_error = why.clone();
                }
                if matches!(e, ConsulError::Unreachable(_) | ConsulError::Server { .. }) {
                    proxy.state().unreachable = Some(why);
                }
                on_refused(proxy, what, &e);
                // The next try does not block, so a Consul that is back is known at once.
                seen = None;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// An intentions watch that is refused (the token may not read them) turns the cache off:
/// every caller is then asked about, as Consul's own proxy does.
fn on_refused(proxy: &Proxy, what: &str, e: &ConsulError) {
    if what == "intentions"
        && matches!(
            e,
            ConsulError::Rejected { .. } | ConsulError::AclNotFound(_)
        )
    {
        let mut s = proxy.state();
        s.cache_usable = false;
        s.allowed.clear();
    }
}

fn apply_registration(proxy: &Arc<Proxy>, _: &str, body: &str) -> Result<(), String> {
    let reg = connect::registration(body)?;
    let first = {
        let mut s = proxy.state();
        if s.registration.as_ref() == Some(&reg) {
            return Ok(());
        }
        let first = s.registration.is_none();
        s.registration = Some(reg.clone());
        first
    };
    info!(
        "sidecar of {}: public listener {}, app at {}, {} upstream(s)",
        reg.service,
        reg.public,
        reg.local,
        reg.upstreams.len()
    );
    super::listen::bind(proxy);
    if first {
        let leaf = format!("/v1/agent/connect/ca/leaf/{}", reg.service);
        spawn(proxy, "leaf", leaf, "index", apply_leaf, always);
        let intentions = format!(
            "/v1/connect/intentions/match?by=destination&name={}",
            reg.service
        );
        spawn(
            proxy,
            "intentions",
            intentions,
            "index",
            apply_intentions,
            always,
        );
    }
    for up in &reg.upstreams {
        let key = upstream_key(up);
        let fresh = {
            let mut s = proxy.state();
            let fresh = !s.instances.contains_key(&key);
            s.instances.entry(key.clone()).or_default();
            fresh
        };
        if fresh {
            let mut path = format!("/v1/health/connect/{}?passing", up.name);
            if !up.datacenter.is_empty() {
                path.push_str(&format!("&dc={}", up.datacenter));
            }
            spawn(proxy, &key, path, "index", apply_instances, upstream_wanted);
        }
    }
    proxy.remake_tls();
    Ok(())
}

/// An upstream's watch runs while the registration still has the upstream.
fn upstream_wanted(proxy: &Proxy, key: &str) -> bool {
    let mut s = proxy.state();
    let wanted = s
        .registration
        .as_ref()
        .is_some_and(|r| r.upstreams.iter().any(|u| upstream_key(u) == key));
    if !wanted {
        s.instances.remove(key);
    }
    wanted
}

fn apply_instances(proxy: &Arc<Proxy>, key: &str, body: &str) -> Result<(), String> {
    let list = connect::instances(body)?;
    let mut s = proxy.state();
    let before = s.instances.get(key).map_or(0, |(l, _)| l.len());
    if before != list.len() {
        info!("upstream {key}: {} healthy instance(s)", list.len());
    }
    s.instances.insert(key.to_string(), (list, 0));
    Ok(())
}

fn apply_leaf(proxy: &Arc<Proxy>, _: &str, body: &str) -> Result<(), String> {
    let (cert, key) = connect::leaf(body)?;
    let leaf = tls::Leaf::from_pem(&cert, &key)?;
    info!(
        "leaf for {} loaded (serial {}); new connections use it",
        leaf.id.service, leaf.serial
    );
    proxy.state().leaf = Some(Arc::new(leaf));
    proxy.remake_tls();
    Ok(())
}

fn apply_roots(proxy: &Arc<Proxy>, _: &str, body: &str) -> Result<(), String> {
    let (trust_domain, pems) = connect::roots(body)?;
    let store = tls::roots(&pems)?;
    info!("CA roots loaded ({} root(s))", pems.len());
    proxy.state().roots = Some((trust_domain, store));
    proxy.remake_tls();
    Ok(())
}

/// Intentions for the service changed (or the watch started): cached answers go.
fn apply_intentions(proxy: &Arc<Proxy>, _: &str, _body: &str) -> Result<(), String> {
    let mut s = proxy.state();
    if !s.allowed.is_empty() {
        info!("intentions changed; callers will be authorized anew");
    }
    s.allowed.clear();
    s.generation += 1;
    s.cache_usable = true;
    Ok(())
}

fn always(_: &Proxy, _: &str) -> bool {
    true
}
