//! The hub's TURN credentials against a real coturn (`turnserver`, Debian package `coturn`,
//! which `./scripts/test` installs): a fresh credential signed with the current secret or with
//! the rotation secret allocates a relay and carries data; an expired one and a wrong password
//! are refused. The TURN client is coturn's own `turnutils_uclient`.
//!
//! Everything binds 127.0.0.1, and every wait is bounded.

use std::fs;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use visithub::auth::Secret;
use visithub::hub::TurnOptions;
use visithub::hub::turn::turn_credential;
use visithub::protocol::IceServer;

const S1: &str = "turn-secret-current-0123456789abcdef";
const S2: &str = "turn-secret-rotation-fedcba9876543210";
const STARTUP: Duration = Duration::from_secs(10);
/// One `turnutils_uclient` run takes about 5 s when it succeeds (it sends for a few seconds).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
const INSTALL_HINT: &str = "install coturn: ./scripts/test installs it \
                            (or: apt-get install -y coturn)";

/// A `turnserver` on 127.0.0.1, killed when dropped, so a failing assert still stops it.
struct Coturn {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coturn {
    /// Starts coturn with REST API credentials and both secrets (coturn accepts either, as
    /// during a rotation), and waits until it answers a STUN binding request.
    fn start(secrets: &[&str]) -> Coturn {
        require_binary("turnserver", "--version");
        require_binary("turnutils_uclient", "-h");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let mut conf = format!(
            "listening-ip=127.0.0.1\n\
             relay-ip=127.0.0.1\n\
             listening-port={port}\n\
             use-auth-secret\n\
             realm=visithub.test\n\
             allow-loopback-peers\n\
             no-tls\n\
             no-dtls\n\
             no-cli\n\
             no-stdout-log\n\
             simple-log\n\
             log-file={d}/turn.log\n\
             pidfile={d}/turn.pid\n\
             userdb={d}/turndb\n"
        );
        for s in secrets {
            conf.push_str(&format!("static-auth-secret={s}\n"));
        }
        let conf_path = dir.path().join("turnserver.conf");
        fs::write(&conf_path, conf).expect("write turnserver.conf");
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start turnserver ({e}); {INSTALL_HINT}"));
        let mut server = Coturn { child, port, dir };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP;
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind probe socket");
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let server: SocketAddr = ([127, 0, 0, 1], self.port).into();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("turnserver exited at start ({status}):\n{}", self.log());
            }
            if stun_binding_answers(&socket, server) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("turnserver did not answer on 127.0.0.1:{} within {STARTUP:?}:\n{}", self.port, self.log());
    }

    fn log(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("turn.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn turn_url(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=udp", self.port)
    }

    /// Allocates with `turnutils_uclient` and classifies what happened.
    fn allocate(&self, case: &str, username: &str, password: &str) -> Outcome {
        let out_path = self.dir.path().join(format!("uclient-{case}.txt"));
        run_uclient(self.port, username, password, &out_path)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Allocated and relayed `recv` messages back (client-to-client through two relays).
    Relayed { recv: u64 },
    /// The server refused the allocation ("Cannot complete Allocation").
    Refused,
    /// Anything else (a timeout, a crash, a network error): never what a case expects.
    Other(String),
}

/// `turnutils_uclient -y -c -n 1 -e 127.0.0.1 -p PORT -u USER -w PASS 127.0.0.1`:
/// - `-y`: two clients each allocate a relay and send to each other through them, so no
///   separate peer (`turnutils_peer`) is needed and success proves data crossed the relays;
/// - `-c`: no RTCP allocations (fewer, faster); `-n 1`: one message per client;
/// - UDP (the default) to 127.0.0.1 on the server's port; `-e` names the loopback peer.
///
/// Success is exit status 0, no error line, and a positive received-message count; refusal is
/// a non-zero exit *and* "Cannot complete Allocation" (the client's message after the server's
/// 401s). Anything else is reported as `Other` with the client's output, so a refusal test
/// cannot pass on an unrelated failure.
fn run_uclient(port: u16, username: &str, password: &str, out_path: &Path) -> Outcome {
    let out = fs::File::create(out_path).expect("create uclient output file");
    let mut child = Command::new("turnutils_uclient")
        .args(["-y", "-c", "-n", "1", "-e", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", username, "-w", password, "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone file"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start turnutils_uclient ({e}); {INSTALL_HINT}"));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for turnutils_uclient") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(50)),
        }
    };
    let output = fs::read_to_string(out_path).unwrap_or_default();
    let Some(status) = status else {
        return Outcome::Other(format!("timed out after {CLIENT_TIMEOUT:?}:\n{output}"));
    };
    let refused = output.contains("Cannot complete Allocation");
    if refused && !status.success() {
        return Outcome::Refused;
    }
    let recv = max_received(&output);
    if status.success() && !refused && !output.contains("ERROR") && recv > 0 {
        return Outcome::Relayed { recv };
    }
    Outcome::Other(format!("{status}, received {recv}:\n{output}"))
}

/// The largest `tot_recv_msgs=N` the client printed (0 when none).
fn max_received(output: &str) -> u64 {
    output
        .split("tot_recv_msgs=")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// Sends a STUN Binding Request (RFC 5389) and reports whether a Binding Success answered.
fn stun_binding_answers(socket: &UdpSocket, server: SocketAddr) -> bool {
    let mut request = [0u8; 20];
    request[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    request[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    request[8..20].copy_from_slice(b"visithub-rdy");
    if socket.send_to(&request, server).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    match socket.recv_from(&mut buf) {
        Ok((n, _)) => n >= 20 && buf[0..2] == [0x01, 0x01] && buf[8..20] == request[8..20],
        Err(_) => false,
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP (coturn listens on both).
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 for both UDP and TCP");
}

fn require_binary(name: &str, arg: &str) {
    let found = Command::new(name).arg(arg).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if let Err(e) = found {
        if e.kind() == ErrorKind::NotFound {
            panic!("`{name}` not found on PATH: {INSTALL_HINT}");
        }
        panic!("cannot run `{name}`: {e}; {INSTALL_HINT}");
    }
}

fn turn_entry(servers: &[IceServer]) -> (String, String) {
    let turn = servers.iter().find(|s| s.urls.iter().any(|u| u.starts_with("turn:"))).expect("a TURN entry");
    (turn.username.clone().expect("username"), turn.credential.clone().expect("credential"))
}

fn options(server: &Coturn, secrets: &[&str]) -> TurnOptions {
    TurnOptions {
        stun_urls: vec![],
        turn_urls: vec![server.turn_url()],
        secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
        ttl_secs: 600,
    }
}

#[test]
fn coturn_accepts_fresh_and_rotated_credentials_and_refuses_expired_and_wrong_ones() {
    let server = Coturn::start(&[S1, S2]);
    let now = Utc::now();

    // Fresh, signed with the current secret (first in the list).
    let (servers, expires_at) = options(&server, &[S1, S2]).ice_servers(now);
    assert_eq!(expires_at, now.timestamp() + 600);
    let current = turn_entry(&servers);
    assert_eq!(servers.len(), 1, "no STUN configured: only the TURN entry");
    assert_eq!(servers[0].urls, vec![server.turn_url()]);

    // Fresh, signed with the rotation secret (as a hub configured with S2 first would).
    let rotated = turn_entry(&options(&server, &[S2, S1]).ice_servers(now).0);

    // Signed with S1 but issued an hour ago with a 10-minute TTL: expired 50 minutes ago.
    let expired = turn_entry(&options(&server, &[S1]).ice_servers(now - chrono::Duration::hours(1)).0);
    assert!(expired.0.split(':').next().unwrap().parse::<i64>().unwrap() < now.timestamp());

    // The current username with a password signed by a secret coturn does not know.
    let (_, wrong_password) =
        turn_credential(b"not-a-configured-secret", expires_at, current.0.split_once(':').unwrap().1);
    let wrong = (current.0.clone(), wrong_password);
    assert_ne!(wrong.1, current.1);

    let cases = [("current", &current), ("rotated", &rotated), ("expired", &expired), ("wrong", &wrong)];
    // The four clients run at once: each takes about 5 s when it succeeds.
    let outcomes: Vec<(&str, Outcome)> = thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(case, (user, pass))| {
                let server = &server;
                scope.spawn(move || (*case, server.allocate(case, user, pass)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });

    let log = server.log();
    for (case, outcome) in &outcomes {
        let expect_relay = matches!(*case, "current" | "rotated");
        match outcome {
            Outcome::Relayed { .. } if expect_relay => {}
            Outcome::Refused if !expect_relay => {}
            other => panic!(
                "case {case}: expected {}, got {other:?}\n--- turnserver log ---\n{log}",
                if expect_relay { "a relayed allocation" } else { "a refusal" }
            ),
        }
    }
}

#[test]
fn missing_turnserver_message_names_the_install_script() {
    // The hint a missing binary fails with (rather than skipping) points at ./scripts/test.
    assert!(INSTALL_HINT.contains("./scripts/test"));
    let err = std::panic::catch_unwind(|| require_binary("visithub-no-such-turnserver", "-h"))
        .expect_err("a missing binary fails the test");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("not found") && msg.contains("./scripts/test"), "{msg}");
}
