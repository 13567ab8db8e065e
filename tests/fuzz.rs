//! Property tests over what comes from outside, with a bounded number of cases each:
//! - the example configs, mutated (lines deleted, duplicated, swapped; values replaced by
//!   hostile ones; stray bytes; truncation): `config::parse` never panics, every error names
//!   `file:line:col` inside the file, and a config that passes is planned and rendered
//!   without panicking;
//! - as root, a sample of those broken configs given to `outpost apply` in a throwaway
//!   network and mount namespace: exit 78, and nothing on the host changed;
//! - Consul's answers (taken from the Consul double, so they have the real shapes), mutated
//!   node by node or byte by byte and served with assorted status codes: the bootstrap
//!   command, registration sync, ACL login and token create, the token preflight, config
//!   entries and the presence check return a value or an error, never panic, and no error
//!   text carries the token or the JWT.
//!
//! A failure prints the shrunk input; `PROPTEST_CASES` overrides the case counts.

mod support;

use miniserde::json::{self, Number, Object, Value};
use outpost::config::{Acl, AclMode, Consul, Dur, Preflight};
use outpost::consul::client::Client;
use outpost::consul::{acl, anti_entropy, gateway, preflight, sync};
use outpost::plan::{self, HostFacts};

/// Plans are rendered as for a host that enforces every limit.
const ENFORCED: plan::render::Enforced = plan::render::Enforced {
    memory: true,
    cpu: true,
};
use outpost::state::NodeState;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const EXAMPLES: [(&str, &str); 5] = [
    ("quickstart", include_str!("../examples/quickstart.toml")),
    ("countdash", include_str!("../examples/countdash.toml")),
    ("gateways", include_str!("../examples/gateways.toml")),
    ("tproxy", include_str!("../examples/tproxy.toml")),
    (
        "builtin-proxy",
        include_str!("../examples/builtin-proxy.toml"),
    ),
];

/// Values a hostile or careless file may hold where any value stands.
const VALUES: [&str; 24] = [
    "\"../../etc\"",
    "\"a-very-long-name-that-is-certainly-longer-than-an-interface-name-may-be-xxxxxxxx\"",
    "-1",
    "0",
    "65536",
    "99999999999999999999",
    "1.5",
    "true",
    "[]",
    "{}",
    "[\"a\", 1]",
    "\"\"",
    "\"5x\"",
    "\"-5s\"",
    "\"9999999999h\"",
    "\"${NOMAD_PORT_nope}\"",
    "\"/\"",
    "\"unix:///\"",
    "\"x\\u0000y\"",
    "\"é\"",
    "1979-05-27T07:32:00Z",
    "\"0.0.0.0/0\"",
    "\"300.1.1.1\"",
    "{ a = { b = [] } }",
];

/// Fragments inserted anywhere.
const FRAGMENTS: [&str; 14] = [
    "\"",
    "[",
    "]]",
    "=",
    "\n[[group]]\n",
    "\n[group.network]\nmode = \"host\"\n",
    "{",
    "#",
    "\\u",
    "\n",
    ".",
    "\"\"\"",
    "'",
    "\n[[group.task]]\nname = \"t\"\n",
];

/// One edit of a config text; the numbers pick lines and positions modulo the text.
#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    ReplaceValue(usize, usize),
    Insert(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => any::<usize>().prop_map(Edit::DeleteLine),
        1 => any::<usize>().prop_map(Edit::DuplicateLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        // Replacing values is what reaches validation: weigh it up.
        3 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::ReplaceValue(a, b)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Insert(a, b)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply_edit(text: &str, edit: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return text.to_string();
    }
    let n = lines.len();
    match *edit {
        Edit::DeleteLine(i) => {
            lines.remove(i % n);
        }
        Edit::DuplicateLine(i) => {
            let line = lines[i % n].clone();
            lines.insert(i % n, line);
        }
        Edit::SwapLines(a, b) => lines.swap(a % n, b % n),
        Edit::ReplaceValue(i, v) => {
            // The i-th `key = value` line (counting only those), its value replaced.
            let assignments: Vec<usize> = (0..n).filter(|&l| lines[l].contains(" = ")).collect();
            if let Some(&l) = assignments.get(i % assignments.len().max(1)) {
                let key = lines[l].split(" = ").next().unwrap_or_default().to_string();
                lines[l] = format!("{key} = {}", VALUES[v % VALUES.len()]);
            }
        }
        Edit::Insert(at, f) => {
            let mut t = lines.join("\n");
            let mut at = at % (t.len() + 1);
            while !t.is_char_boundary(at) {
                at -= 1;
            }
            t.insert_str(at, FRAGMENTS[f % FRAGMENTS.len()]);
            return t;
        }
        Edit::Truncate(at) => {
            let t = lines.join("\n");
            let mut at = at % (t.len() + 1);
            while !t.is_char_boundary(at) {
                at -= 1;
            }
            return t[..at].to_string();
        }
    }
    lines.join("\n") + "\n"
}

fn mutated_config() -> impl Strategy<Value = (usize, Vec<Edit>)> {
    (0..EXAMPLES.len(), proptest::collection::vec(edit(), 1..4))
}

fn config_text(example: usize, edits: &[Edit]) -> String {
    edits
        .iter()
        .fold(EXAMPLES[example].1.to_string(), |t, e| apply_edit(&t, e))
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default)
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        ..Config::default()
    })
}

/// The property of one config text: located errors, or a plan that renders.
fn check_config(text: &str) -> Result<(), TestCaseError> {
    match outpost::parse_config(text, "fuzz.toml") {
        Err(diagnostics) => {
            prop_assert!(!diagnostics.is_empty(), "rejected without a reason");
            let lines = text.lines().count().max(1);
            for d in &diagnostics {
                let Some((line, col)) = d.position else {
                    return Err(TestCaseError::fail(format!("no location: {d}")));
                };
                prop_assert!(
                    (1..=lines + 1).contains(&line) && col >= 1,
                    "{d} is outside the file ({lines} lines)"
                );
                let prefix = format!("fuzz.toml:{line}:{col}: ");
                prop_assert!(d.to_string().starts_with(&prefix), "{}", d);
                prop_assert!(!d.message.trim().is_empty(), "{d}: empty message");
            }
        }
        Ok(valid) => {
            if let Ok(plan) = plan::build(&valid, &NodeState::default(), &HostFacts::placeholder())
            {
                prop_assert!(!plan::render::json(&plan).is_empty());
                prop_assert!(!plan::render::text(&plan, ENFORCED).is_empty());
            }
        }
    }
    Ok(())
}

#[test]
fn the_examples_themselves_are_valid() {
    for (name, text) in EXAMPLES {
        assert!(
            outpost::parse_config(text, name).is_ok(),
            "{name} must validate, or the mutations start from a broken file"
        );
    }
}

#[test]
fn mutated_configs_are_rejected_with_a_location_or_planned_never_a_panic() {
    let (rejected, accepted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    runner(768)
        .run(&mutated_config(), |(example, edits)| {
            let text = config_text(example, &edits);
            match outpost::parse_config(&text, "fuzz.toml") {
                Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                Err(_) => rejected.fetch_add(1, Ordering::Relaxed),
            };
            check_config(&text)
        })
        .unwrap();
    let (rejected, accepted) = (rejected.into_inner(), accepted.into_inner());
    eprintln!("mutated configs: {rejected} rejected, {accepted} accepted");
    // The mutations must exercise both sides, or the property says little.
    assert!(rejected > 0 && accepted > 0);
}

/// Lines of `ip -o link`, `ip netns`, `nft list tables` and the state file's presence.
fn host_view(run: &support::PrivateRun, data_dir: &std::path::Path) -> String {
    let out = |cmd: &mut std::process::Command| {
        let o = cmd.output().expect("run a host tool");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let links: Vec<String> = out(std::process::Command::new("ip").args(["-o", "link"]))
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_string())
        .collect();
    format!(
        "links={links:?} netns={:?} nft={:?} state={} ids",
        out(run.command("ls").arg("-A").arg("/run")),
        out(std::process::Command::new("nft").args(["list", "tables"])),
        data_dir.exists(),
    )
}

#[test]
fn an_invalid_config_applies_nothing() {
    if !support::private_network("an invalid config applies nothing") {
        return;
    }
    let double = support::consul_double::ConsulDouble::start();
    let dir = support::scratch().join(format!("outpost-fuzz-apply-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data_dir = dir.join("data");
    let run = support::PrivateRun::new();
    let before = host_view(&run, &data_dir);
    let file = dir.join("outpost.toml");
    let log = dir.join("apply.log");
    let tried = AtomicUsize::new(0);
    runner(24)
        .run(&mutated_config(), |(example, edits)| {
            let text = config_text(example, &edits)
                .replace("/var/lib/outpost", &data_dir.display().to_string())
                .replace("http://127.0.0.1:8500", &double.url());
            if outpost::parse_config(&text, "fuzz.toml").is_ok() {
                return Ok(()); // only broken files here
            }
            tried.fetch_add(1, Ordering::Relaxed);
            std::fs::write(&file, &text).unwrap();
            let out = run.outpost(&["apply"], &file, &log).output().unwrap();
            prop_assert_eq!(out.status.code(), Some(78), "{}", text);
            prop_assert_eq!(host_view(&run, &data_dir), before.clone(), "{}", text);
            prop_assert!(double.service_ids().is_empty());
            prop_assert!(double.log().iter().all(|l| l.method == "GET"), "{}", text);
            Ok(())
        })
        .unwrap();
    let tried = tried.into_inner();
    eprintln!("invalid configs applied: {tried}, each exited 78 and changed nothing");
    assert!(tried > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- Consul's answers ----

const SECRET: &str = "6e1c2d4b-0f7a-4c55-9d0e-8a3b1f2c9e77";
const JWT: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJmdXp6In0.c2lnbmF0dXJl";

/// What one canned answer is: status and body, by path (without the query).
type Answers = BTreeMap<String, (u16, String)>;

/// A server that answers each path with its canned answer; what outpost's client meets
/// when Consul (or something in front of it) answers nonsense.
struct AnswerServer {
    answers: Arc<Mutex<Answers>>,
    url: String,
}

impl AnswerServer {
    fn start() -> AnswerServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answers = Arc::new(Mutex::new(Answers::new()));
        let served = answers.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let answers = served.clone();
                std::thread::spawn(move || answer(stream, &answers));
            }
        });
        AnswerServer { answers, url }
    }
}

fn answer(stream: std::net::TcpStream, answers: &Mutex<Answers>) {
    let mut reader = BufReader::new(&stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("/");
        let path = target.split('?').next().unwrap_or(target);
        let (status, body) = answers
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_else(|| {
                if std::env::var_os("FUZZ_DEBUG").is_some() {
                    eprintln!("no answer for {target}");
                }
                (404, "Not found".into())
            });
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if (&stream).write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// The plan of one of the examples (which are valid: see the_examples_themselves_are_valid).
fn example_plan(example: usize) -> plan::Plan {
    let (name, text) = EXAMPLES[example];
    let valid = outpost::parse_config(text, name).expect("the example validates");
    plan::build(&valid, &NodeState::default(), &HostFacts::placeholder()).expect("its plan")
}

/// The gateway config entries a plan writes.
fn config_entries(plan: &plan::Plan) -> Vec<&Value> {
    plan.groups
        .iter()
        .flat_map(|g| &g.services)
        .map(|s| &s.config_entry)
        .filter(|e| !matches!(e, Value::Null))
        .collect()
}

/// The real shapes, read from the Consul double after registering countdash and a gateway
/// and logging in: the seeds the mutations start from.
fn seed_answers() -> Answers {
    use support::consul_double::ConsulDouble;
    let double = ConsulDouble::start();
    let client = Client::new(&Consul {
        address: double.url(),
        ..Consul::default()
    })
    .unwrap();
    let plan = example_plan(1);
    for s in plan.groups.iter().flat_map(|g| &g.services) {
        let wanted = [sync::Wanted {
            id: &s.id,
            body: &s.registration,
        }];
        sync::sync(&client, &wanted, false).unwrap();
    }
    let gplan = example_plan(2);
    let entries = config_entries(&gplan);
    gateway::sync_entries(&client, &entries, &gplan.node_name).unwrap();
    let mut defaults = Object::new();
    defaults.insert("Kind".into(), Value::String("proxy-defaults".into()));
    defaults.insert("Name".into(), Value::String("global".into()));
    let mut config = Object::new();
    config.insert("protocol".into(), Value::String("http".into()));
    defaults.insert("Config".into(), Value::Object(config));
    double.set_proxy_defaults(defaults);

    let mut answers = Answers::new();
    let mut keep = |path: &str, text: Result<String, outpost::consul::client::ConsulError>| {
        answers.insert(path.to_string(), (200, text.expect(path)));
    };
    let sidecar = "_outpost-api-count-api-9001-sidecar-proxy";
    keep("/v1/agent/self", client.get("/v1/agent/self"));
    keep("/v1/agent/services", client.get("/v1/agent/services"));
    let service = format!("/v1/agent/service/{sidecar}");
    keep(&service, client.get(&service));
    for path in [
        "/v1/config/proxy-defaults/global",
        "/v1/config/ingress-gateway",
        "/v1/config/ingress-gateway/my-ingress",
        "/v1/config/terminating-gateway",
        "/v1/config/terminating-gateway/my-terminating",
    ] {
        keep(path, client.get(path));
    }
    double.enable_acls();
    double.add_token(SECRET, std::time::Duration::ZERO);
    double.add_auth_method("nomad-workloads", JWT);
    let admin = client.with_token(SECRET);
    keep("/v1/acl/token/self", admin.get("/v1/acl/token/self"));
    keep(
        "/v1/acl/login",
        client.post(
            "/v1/acl/login",
            &format!(r#"{{"AuthMethod":"nomad-workloads","BearerToken":"{JWT}"}}"#),
        ),
    );
    keep(
        "/v1/acl/token",
        admin.put(
            "/v1/acl/token",
            r#"{"ServiceIdentities":[{"ServiceName":"count-api"}],"Local":true}"#,
        ),
    );
    for path in [
        "/v1/agent/service/register",
        "/v1/config",
        "/v1/acl/logout",
        "/v1/acl/token/00000000-0000-4000-8000-000000000002",
    ] {
        answers.insert(path.to_string(), (200, "true".into()));
    }
    answers
}

/// What a mutated answer can become at one node of its JSON tree.
fn replacement(which: usize) -> Option<Value> {
    Some(match which % 12 {
        0 => Value::Null,
        1 => Value::Bool(true),
        2 => Value::Number(Number::I64(-1)),
        3 => Value::Number(Number::U64(u64::MAX)),
        4 => Value::Number(Number::F64(1.5)),
        5 => Value::String(String::new()),
        6 => Value::String("x".repeat(4096)),
        7 => Value::String("../../etc/passwd".into()),
        8 => Value::Array(Default::default()),
        9 => Value::Object(Object::new()),
        10 => Value::String(SECRET.into()),
        _ => return None, // delete the key (or, in an array, the element)
    })
}

/// Counts down `target` over the tree in pre-order; at zero, replaces that node's child.
fn mutate_node(v: &mut Value, target: &mut usize, which: usize) -> bool {
    match v {
        Value::Object(o) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                if *target == 0 {
                    match replacement(which) {
                        Some(r) => o.insert(k, r),
                        None => o.remove(&k),
                    };
                    return true;
                }
                *target -= 1;
                if let Some(child) = o.get_mut(&k)
                    && mutate_node(child, target, which)
                {
                    return true;
                }
            }
            false
        }
        Value::Array(a) => {
            for i in 0..a.len() {
                if *target == 0 {
                    match replacement(which) {
                        Some(r) => a[i] = r,
                        None => {
                            a.remove(i);
                        }
                    }
                    return true;
                }
                *target -= 1;
                if mutate_node(&mut a[i], target, which) {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

/// One change to one canned answer.
#[derive(Debug, Clone)]
struct AnswerEdit {
    path: usize,
    status: usize,
    kind: usize,
    at: usize,
    which: usize,
}

fn answer_edit() -> impl Strategy<Value = AnswerEdit> {
    (
        any::<usize>(),
        any::<usize>(),
        any::<usize>(),
        any::<usize>(),
        any::<usize>(),
    )
        .prop_map(|(path, status, kind, at, which)| AnswerEdit {
            path,
            status,
            kind,
            at,
            which,
        })
}

const STATUSES: [(u16, &str); 10] = [
    (200, ""),
    (200, ""),
    (200, ""),
    (200, ""),
    (200, ""),
    (404, "Not found"),
    (403, "ACL not found"),
    (
        403,
        "Permission denied: token with AccessorID '…' lacks permission",
    ),
    (500, "rpc error making call: No cluster leader"),
    (429, "rate limit exceeded"),
];

fn mutate_answers(seeds: &Answers, edits: &[AnswerEdit]) -> Answers {
    let mut answers = seeds.clone();
    let paths: Vec<String> = answers.keys().cloned().collect();
    for e in edits {
        let path = &paths[e.path % paths.len()];
        let Some((status, body)) = answers.get_mut(path) else {
            continue;
        };
        let (s, text) = STATUSES[e.status % STATUSES.len()];
        if s != 200 {
            *status = s;
            *body = text.to_string();
            continue;
        }
        match e.kind % 3 {
            // A node of the tree replaced or deleted.
            0 | 1 => {
                if let Ok(mut v) = json::from_str::<Value>(body) {
                    let mut target = e.at % 64;
                    if mutate_node(&mut v, &mut target, e.which) {
                        *body = json::to_string(&v);
                    }
                }
            }
            // The text cut short.
            _ => {
                let mut at = e.at % (body.len() + 1);
                while !body.is_char_boundary(at) {
                    at -= 1;
                }
                body.truncate(at);
            }
        }
    }
    answers
}

/// Every way outpost reads Consul's answers, against the server; errors must not carry
/// secrets.
fn exercise_consul(url: &str, state_dir: &std::path::Path) -> Result<Vec<String>, TestCaseError> {
    let mut errors: Vec<String> = Vec::new();
    let consul = Consul {
        address: url.to_string(),
        token: Some(SECRET.into()),
        ..Consul::default()
    };
    let client = Client::new(&consul).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let cmd = outpost::envoy::command::EnvoyBootstrap {
        proxy_id: Some("_outpost-api-count-api-9001-sidecar-proxy".into()),
        http_addr: Some(url.to_string()),
        token: Some(SECRET.into()),
        admin_bind: Some("127.0.0.2:19000".into()),
        ..Default::default()
    };
    match outpost::envoy::command::run(&cmd, &|_| None) {
        Ok(out) => errors.extend(out.warnings),
        Err(e) => errors.push(e.to_string()),
    }
    let by_service = outpost::envoy::command::EnvoyBootstrap {
        sidecar_for: Some("_outpost-api-count-api-9001".into()),
        http_addr: Some(url.to_string()),
        token: Some(SECRET.into()),
        ..Default::default()
    };
    if let Err(e) = outpost::envoy::command::run(&by_service, &|_| None) {
        errors.push(e.to_string());
    }
    let plan = example_plan(1);
    let wanted: Vec<sync::Wanted> = plan
        .groups
        .iter()
        .flat_map(|g| &g.services)
        .map(|s| sync::Wanted {
            id: &s.id,
            body: &s.registration,
        })
        .collect();
    if let Err(e) = sync::sync(&client, &wanted, true) {
        errors.push(e.to_string());
    }
    let ids: Vec<String> = wanted.iter().map(|w| w.id.to_string()).collect();
    if let Err(e) = anti_entropy::missing(&client, &ids) {
        errors.push(e.to_string());
    }
    let jwt_file = state_dir.join("jwt");
    std::fs::write(&jwt_file, JWT).unwrap();
    for mode in [AclMode::Login, AclMode::ServiceIdentity] {
        let acl = Acl {
            mode,
            jwt_file: Some(jwt_file.display().to_string()),
            ..Acl::default()
        };
        match acl::obtain(&client, &acl, "count-api", "edge-01") {
            Ok(Some(token)) => {
                if let Err(e) = acl::release(&client, &acl, &token) {
                    errors.push(e.to_string());
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    let quick = Preflight {
        token_timeout: Dur::millis(1),
        token_base: Dur::millis(1),
        service_timeout: Dur::millis(1),
        service_base: Dur::millis(1),
    };
    if let Err(e) = preflight::token(&client, &quick, "service count-api") {
        errors.push(e.to_string());
    }
    let gplan = example_plan(2);
    let entries = config_entries(&gplan);
    if let Err(e) = gateway::sync_entries(&client, &entries, "edge-01") {
        errors.push(e.to_string());
    }
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{errors:#?}");
    }
    for e in &errors {
        prop_assert!(!e.contains(SECRET), "the token leaked into: {e}");
        prop_assert!(!e.contains(JWT), "the JWT leaked into: {e}");
    }
    Ok(errors)
}

#[test]
fn mutated_consul_answers_give_errors_not_panics_and_never_leak_secrets() {
    let seeds = seed_answers();
    let server = AnswerServer::start();
    let dir = support::scratch().join(format!("outpost-fuzz-consul-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The unmutated answers work: the property is about the mutations.
    *server.answers.lock().unwrap() = seeds.clone();
    let errors = exercise_consul(&server.url, &dir).unwrap();
    assert!(errors.is_empty(), "the seeds fail: {errors:?}");
    let failed = AtomicUsize::new(0);
    runner(160)
        .run(&proptest::collection::vec(answer_edit(), 1..5), |edits| {
            *server.answers.lock().unwrap() = mutate_answers(&seeds, &edits);
            let errors = exercise_consul(&server.url, &dir)?;
            if !errors.is_empty() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    let failed = failed.into_inner();
    eprintln!("mutated Consul answers: {failed} of the cases ended in an error");
    assert!(failed > 0, "the mutations never made a difference");
    let _ = std::fs::remove_dir_all(&dir);
}
