//! The built-in proxy as the process it is on a device (`outpost proxy`), without the
//! agent: two of them against the Consul double in a throwaway network namespace, the
//! web's upstream listener through the api's public listener (mTLS, intentions) to an echo
//! app. The binary is this build's, or `$OUTPOST_PROXY_BINARY` run by
//! `$OUTPOST_PROXY_RUNNER`: CI runs this test again with the aarch64 and armv7 release
//! builds under qemu-user, so the proxy process itself runs on both ARM architectures.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use support::consul_double::ConsulDouble;
use support::mesh::{exchange, get_status, retry};

const API_PUBLIC: u16 = 21000;
const WEB_PUBLIC: u16 = 21001;
const UPSTREAM: u16 = 8080;

/// The proxy command: this build's binary, or the one named in the environment, run by
/// its runner (qemu-aarch64-static, qemu-arm-static) when one is named.
fn proxy_command() -> Command {
    let binary = std::env::var("OUTPOST_PROXY_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_outpost").to_string());
    match std::env::var("OUTPOST_PROXY_RUNNER") {
        Ok(runner) if !runner.is_empty() => {
            let mut c = Command::new(runner);
            c.arg(binary);
            c
        }
        _ => Command::new(binary),
    }
}

fn register(double: &ConsulDouble, body: &str) {
    let request = format!(
        "PUT /v1/agent/service/register HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let reply = exchange(double.url().trim_start_matches("http://"), &request).expect("PUT");
    assert!(reply.contains(" 200 "), "{body}: {reply}");
}

/// An app that echoes every connection until its EOF, then closes its side.
fn echo_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// A proxy process for the sidecar `proxy_id`, its log in `log`.
fn start_proxy(double: &ConsulDouble, proxy_id: &str, admin: &str, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    proxy_command()
        .args(["proxy", "--proxy-id", proxy_id, "--admin", admin])
        .env("CONSUL_HTTP_ADDR", double.url())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the proxy")
}

/// One connection through the web's upstream: `data` out, then its echo back to the end.
fn round_trip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(("127.0.0.1", UPSTREAM)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut reader = s.try_clone().map_err(|e| e.to_string())?;
    let back = std::thread::spawn(move || {
        let mut back = Vec::new();
        reader.read_to_end(&mut back).map(|_| back)
    });
    s.write_all(data).map_err(|e| e.to_string())?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let back = back.join().map_err(|_| "the reader panicked")?;
    back.map_err(|e| e.to_string())
}

#[test]
fn two_proxy_processes_carry_an_upstream_connection_to_the_app_over_mtls() {
    if !support::private_network("the proxy processes") {
        return;
    }
    let double = ConsulDouble::start();
    let app = echo_app();
    register(
        &double,
        &format!(
            r#"{{"ID":"api","Name":"api","Address":"127.0.0.1","Port":{app},"Connect":{{"SidecarService":{{"Port":{API_PUBLIC},"Proxy":{{"Config":{{"bind_address":"127.0.0.1","bind_port":{API_PUBLIC}}}}}}}}}}}"#
        ),
    );
    register(
        &double,
        &format!(
            r#"{{"ID":"web","Name":"web","Address":"127.0.0.1","Port":9,"Connect":{{"SidecarService":{{"Port":{WEB_PUBLIC},"Proxy":{{"Config":{{"bind_address":"127.0.0.1","bind_port":{WEB_PUBLIC}}},"Upstreams":[{{"DestinationName":"api","LocalBindPort":{UPSTREAM}}}]}}}}}}}}"#
        ),
    );
    let dir = support::scratch().join(format!("outpost-proxy-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut proxies = [
        start_proxy(
            &double,
            "api-sidecar-proxy",
            "127.0.0.1:19000",
            &dir.join("api.log"),
        ),
        start_proxy(
            &double,
            "web-sidecar-proxy",
            "127.0.0.1:19001",
            &dir.join("web.log"),
        ),
    ];
    let logs = || {
        ["api", "web"]
            .map(|p| std::fs::read_to_string(dir.join(format!("{p}.log"))).unwrap_or_default())
            .join("\n---\n")
    };
    let ready = retry(120, || {
        for admin in ["127.0.0.1:19000", "127.0.0.1:19001"] {
            match get_status(admin, "/ready")? {
                (200, _) => {}
                (code, body) => return Err(format!("{admin}: {code} {body}")),
            }
        }
        Ok(())
    });
    // 1 MB that differs from one record to the next.
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 977) as u8).collect();
    let carried = ready.and_then(|()| retry(30, || round_trip(&data)));
    for p in &mut proxies {
        let _ = p.kill();
        let _ = p.wait();
    }
    let back = carried.unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert!(
        back == data,
        "{} bytes back of {}\n{}",
        back.len(),
        data.len(),
        logs()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
