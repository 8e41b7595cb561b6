//! `baseline` and `baseline-connections` against the real matchbox_server and PeerJS server,
//! each started here on a free loopback port: every frame relayed once to the right peer,
//! every idle socket accepted, and the server's CPU and memory read from its pid. Both servers
//! are installed by `./scripts/test` under `loadtest/reference/` (see its README); a missing
//! one fails the test with how to get it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use visithub_loadtest::reference::Server;
use visithub_loadtest::scenarios::{BaselineArgs, BaselineConnectionsArgs, Scenario};
use visithub_loadtest::{Auth, Context, Report};

/// A reference server process, killed when dropped.
struct Running {
    child: Child,
    url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reference")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `server` and waits until it accepts TCP connections. The free port is only free
/// when asked: a server that exits (another socket took the port before it bound) is started
/// again on another.
async fn start(server: Server) -> Running {
    for _ in 0..5 {
        if let Some(running) = start_on(server, free_port()).await {
            return running;
        }
    }
    panic!("{server:?} exited on start five times");
}

/// `server` listening on `port`, or `None` when it exited instead.
async fn start_on(server: Server, port: u16) -> Option<Running> {
    let mut command = match server {
        Server::Matchbox => {
            let bin = reference_dir().join("bin/matchbox_server");
            assert!(bin.exists(), "{} is missing: ./scripts/test installs it", bin.display());
            let mut c = Command::new(bin);
            c.arg(format!("127.0.0.1:{port}")).env("RUST_LOG", "warn");
            c
        }
        Server::Peerjs => {
            let script = reference_dir().join("node_modules/peer/dist/bin/peerjs.js");
            assert!(script.exists(), "{} is missing: ./scripts/test installs it (npm ci)", script.display());
            let mut c = Command::new("node");
            c.arg(script).args(["--host", "127.0.0.1", "--port", &port.to_string()]);
            c
        }
        Server::Bare => unreachable!("the bare server runs in-process (tests/scenarios.rs)"),
    };
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start the reference server");
    let mut running = Running { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if running.child.try_wait().expect("the reference server's status").is_some() {
            return None;
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            // Whoever answered, it is ours only if ours is still running.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return running.child.try_wait().expect("the reference server's status").is_none().then_some(running);
        }
        assert!(Instant::now() < deadline, "{server:?} did not listen on port {port} within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(server: &Running, scenario: Scenario) -> Report {
    let auth = Auth::from_secret(&[0; 32]).unwrap();
    let ctx =
        Arc::new(Context::new(std::slice::from_ref(&server.url), auth, vec![server.child.id()], false).await.unwrap());
    let r = visithub_loadtest::run(&ctx, &scenario).await.unwrap();
    println!("{}", r.table());
    assert_eq!(r.errors, Default::default(), "no refusals or failures");
    assert_eq!((r.lost_events, r.duplicated_events), (0, 0), "nothing lost or repeated");
    r
}

/// 3 pairs at 600 frames/s in all, bursts of 2, for a second: each relayed frame reached the
/// other socket of its pair (a frame from the wrong side would be `misrouted`), and the
/// server's CPU and memory were read from its pid.
async fn relays_every_frame(server: Server) {
    let running = start(server).await;
    let args = BaselineArgs { pairs: 3, rate: 600.0, burst: 2, duration_secs: 1.0, server };
    let r = run(&running, Scenario::Baseline(args)).await;
    let relayed = r.counts["relayed"];
    assert!((400..=800).contains(&relayed), "{relayed} relayed");
    assert_eq!(relayed, r.messages_sent, "every frame sent arrived");
    assert_eq!(r.notes["server"], server.name());
    // The server's own readings (its CPU may round to 0 in a run this short: /proc counts
    // in 10 ms ticks).
    let hub = r.hub.as_ref().unwrap();
    assert_eq!(hub.pids, [running.child.id()]);
    assert!(hub.rss_after_bytes > 0);
    assert!(hub.cpu_us_per_relayed_message.is_some());
}

/// 60 idle sockets, each accepted as its own client; the server's memory grew with them.
async fn holds_idle_clients(server: Server) {
    let running = start(server).await;
    let args = BaselineConnectionsArgs { count: 60, hold_secs: 0, server };
    let r = run(&running, Scenario::BaselineConnections(args)).await;
    assert_eq!(r.notes["connections"], 60);
    let hub = r.hub.as_ref().unwrap();
    assert!(hub.rss_per_connection_bytes.is_some() && hub.cpu_us_per_connection.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matchbox_relays_every_frame_to_the_peer_it_names() {
    relays_every_frame(Server::Matchbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peerjs_relays_every_frame_to_the_peer_it_names() {
    relays_every_frame(Server::Peerjs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matchbox_accepts_every_idle_client() {
    holds_idle_clients(Server::Matchbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peerjs_accepts_every_idle_client() {
    holds_idle_clients(Server::Peerjs).await;
}
