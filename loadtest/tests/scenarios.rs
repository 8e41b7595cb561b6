//! Every scenario at a small size against a real hub started in-process on port 0, through
//! the library API: zero errors, nothing lost or repeated, and a JSON report with the
//! documented fields. (Figures are not asserted: those come from full runs, BENCHMARKS.md.)

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;
use visithub::app::{self, App, Backends};
use visithub::bus::MemoryBus;
use visithub::clock::SystemClock;
use visithub::config::Config;
use visithub::live::MemoryLive;
use visithub::store::SqliteStore;
use visithub_loadtest::reference::Server;
use visithub_loadtest::scenarios::{
    BaselineArgs, BaselineConnectionsArgs, BaselineFanoutArgs, ChatArgs, ConnectionsArgs, FanoutArgs, Scenario,
    StormArgs, VisitsArgs,
};
use visithub_loadtest::workers::WorkerOpts;
use visithub_loadtest::{Auth, Context, Report};

const SECRET: &[u8] = b"loadtest-signing-secret-32-bytes!!";

struct Hub {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn hub() -> Hub {
    let config = Config { shutdown_grace_secs: 1, ..Config::default() };
    let backends = Backends {
        store: Arc::new(SqliteStore::in_memory().await.unwrap()),
        bus: Arc::new(MemoryBus::new()),
        live: Arc::new(MemoryLive::new()),
        keys: app::token_keys(&config, SECRET).unwrap(),
        clock: Arc::new(SystemClock),
    };
    let app = App::with_backends(config, backends).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app::serve(listener, app, async {
        let _ = stopped.await;
    }));
    Hub { url, _stop: stop }
}

/// Runs `scenario` against a fresh hub (this process's pid stands in for the hub's).
async fn run(scenario: Scenario) -> Report {
    run_on(&hub().await, scenario).await
}

async fn run_on(hub: &Hub, scenario: Scenario) -> Report {
    let auth = Auth::from_secret(SECRET).unwrap();
    let ctx =
        Arc::new(Context::new(std::slice::from_ref(&hub.url), auth, vec![std::process::id()], false).await.unwrap());
    let report = visithub_loadtest::run(&ctx, &scenario).await.unwrap();
    println!("{}", report.table());
    assert_eq!(report.errors, Default::default(), "no refusals or failures");
    assert_eq!(report.lost_events, 0, "nothing lost");
    assert_eq!(report.duplicated_events, 0, "nothing repeated");
    check_json(&report);
    report
}

/// The JSON report carries the fields BENCHMARKS.md documents.
fn check_json(report: &Report) {
    let json: Value = serde_json::from_str(&serde_json::to_string(report).unwrap()).unwrap();
    for field in [
        "scenario",
        "targets",
        "duration_secs",
        "messages_sent",
        "messages_received",
        "messages_per_sec",
        "counts",
        "throughput_per_sec",
        "latency_ms",
        "errors",
        "error_total",
        "lost_events",
        "duplicated_events",
        "hub",
    ] {
        assert!(json.get(field).is_some(), "report has {field}: {json}");
    }
    for (name, p) in json["latency_ms"].as_object().unwrap() {
        for q in ["count", "p50", "p90", "p99", "p99_9", "max"] {
            assert!(p[q].is_number(), "{name} has {q}");
        }
    }
    let hub = &json["hub"];
    for field in ["rss_before_bytes", "rss_after_bytes", "cpu_secs", "cpu_us_per_message"] {
        assert!(hub.get(field).is_some(), "hub has {field}: {hub}");
    }
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!((&back.scenario, &back.counts, &back.errors), (&report.scenario, &report.counts, &report.errors));
}

/// `processes` workers of the built binary, from 127.0.0.2, 127.0.0.3, ...
fn workers(processes: usize, handshakes: usize) -> WorkerOpts {
    WorkerOpts {
        processes,
        source_base: "127.0.0.2".into(),
        handshakes,
        worker_exe: Some(env!("CARGO_BIN_EXE_visithub-loadtest").into()),
    }
}

fn storm(clients: usize, processes: usize, handshakes: usize) -> StormArgs {
    StormArgs {
        clients,
        states: "WA".into(),
        churn_rate: 5.0,
        settle_timeout_secs: 20,
        workers: workers(processes, handshakes),
    }
}

/// A `visits` run: arrivals per second for `duration_secs`, visits held `hold_secs` with
/// `signal_rate` candidates per second each way, two trickled candidates each before.
fn visits(rate: f64, duration_secs: u64, states: &str, hold_secs: f64, signal_rate: f64) -> VisitsArgs {
    VisitsArgs {
        rate,
        duration_secs,
        states: states.into(),
        hold_secs,
        signal_rate,
        signal_burst: 1,
        candidates: 2,
        providers: 0,
        support: 0,
    }
}

fn latency(report: &Report, name: &str) -> u64 {
    report.latency_ms.get(name).map_or(0, |p| p.count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visits_run_end_to_end() {
    let args = visits(8.0, 2, "WA,OR", 0.5, 4.0);
    let r = run(Scenario::Visits(args)).await;
    assert_eq!(r.counts["visits_completed"], 16);
    assert_eq!(latency(&r, "intake"), 16);
    // Offer, 2 candidates and end-of-candidates each way, plus the candidates of the hold.
    assert!(r.counts["relayed"] >= 16 * 8, "{:?}", r.counts);
    assert_eq!(latency(&r, "relay"), r.counts["relayed"]);
    assert_eq!(latency(&r, "chat_delivery"), 32);
    assert!(r.hub.as_ref().unwrap().cpu_us_per_relayed_message.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visits_that_all_hold_at_once_report_the_relays_own_cost() {
    let args = VisitsArgs { candidates: 1, ..visits(6.0, 1, "WA", 4.0, 5.0) };
    let r = run(Scenario::Visits(args)).await;
    assert_eq!(r.counts["visits_completed"], 6);
    let held = r.notes["held_relayed"].as_u64().expect("a steady phase was measured");
    assert!(held > 0 && held < r.counts["relayed"], "{held} of {:?}", r.counts);
    assert!(r.notes["held_secs"].as_f64().unwrap() >= 1.0);
    assert!(r.notes["held_cpu_us_per_relayed_message"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visits_with_signaling_in_bursts_relay_each_whole_burst() {
    let args = VisitsArgs { signal_burst: 4, ..visits(4.0, 1, "WA", 2.0, 8.0) };
    let r = run(Scenario::Visits(args)).await;
    assert_eq!(r.counts["visits_completed"], 4);
    assert_eq!(r.notes["signal_burst"], 4);
    // Offer or answer, 2 candidates and end-of-candidates each way (8 per visit), then the
    // hold's candidates, four at a time: every burst arrives whole.
    let held = r.counts["relayed"] - 4 * 8;
    assert!(held >= 4 * 2 * 4, "at least one burst each way per visit: {:?}", r.counts);
    assert_eq!(held % 4, 0, "{held} candidates relayed from the hold: a burst came apart");
    assert_eq!(latency(&r, "relay"), r.counts["relayed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_waiting_patient() {
    let args = FanoutArgs { patients: 60, states: "WA,OR".into(), changes: 4, change_timeout_secs: 10 };
    let r = run(Scenario::Fanout(args)).await;
    assert_eq!(r.counts["changes"], 4);
    // Each change reaches everyone behind the head of its queue: 29 + 29 + 28 + 28.
    assert_eq!(r.counts["positions"], 114);
    assert_eq!(latency(&r, "fanout"), 114);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_delivers_every_message_both_ways() {
    let args = ChatArgs { support: 2, conversations: 3, messages: 4, rate: 4.0, states: "WA".into(), no_reply: false };
    let r = run(Scenario::Chat(args)).await;
    // 6 patients x 4 messages to support, and as many answers back.
    assert_eq!(r.counts["chat_delivered"], 48);
    assert_eq!(latency(&r, "chat_delivery"), 48);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_resumes_every_session_across_workers() {
    // 3 handshakes in flight per worker: most resumes wait their turn, none may be lost to it.
    let r = run(Scenario::Storm(storm(41, 2, 3))).await;
    assert_eq!(r.notes["processes"], 2);
    assert_eq!(r.notes["clients"], 41);
    assert_eq!(r.counts["resumed"], 41);
    assert_eq!(latency(&r, "resume"), 41);
    assert_eq!(latency(&r, "connect"), 41);
    assert_eq!(r.notes["not_resumed"], 0);
    assert!(r.notes["settled_secs"].as_f64().unwrap() > 0.0);
    // Every client read the churn's positions before and after its resume.
    assert!(r.messages_received > 41 * 2, "{}", r.messages_received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_workers_and_source_addresses() {
    let args = ConnectionsArgs { count: 300, workers: workers(2, 256), hold_secs: 1 };
    let r = run(Scenario::Connections(args)).await;
    assert_eq!(r.counts["connected"], 300);
    assert_eq!(latency(&r, "connect"), 300);
    assert!(r.hub.as_ref().unwrap().rss_per_connection_bytes.is_some());
    assert!(r.notes["accepted_per_sec"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_count_the_patients_earlier_runs_left_waiting() {
    let hub = hub().await;
    let fanout = || FanoutArgs { patients: 20, states: "WA".into(), changes: 2, change_timeout_secs: 10 };
    let first = run_on(&hub, Scenario::Fanout(fanout())).await;
    // The second run's queue starts with the first run's 18 patients still waiting.
    let second = run_on(&hub, Scenario::Fanout(fanout())).await;
    assert_eq!((first.counts["positions"], second.counts["positions"]), (19 + 18, 19 + 18));
    let r = run_on(&hub, Scenario::Storm(storm(20, 1, 256))).await;
    assert_eq!(r.counts["resumed"], 20);
}

/// Runs a baseline scenario against the bare server, in-process.
async fn run_bare(scenario: Scenario) -> Report {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(visithub_loadtest::bare::serve(listener));
    let auth = Auth::from_secret(SECRET).unwrap();
    let ctx = Arc::new(Context::new(&[url], auth, vec![std::process::id()], false).await.unwrap());
    let r = visithub_loadtest::run(&ctx, &scenario).await.unwrap();
    server.abort();
    println!("{}", r.table());
    check_json(&r);
    assert_eq!(r.errors, Default::default());
    assert_eq!((r.lost_events, r.duplicated_events), (0, 0));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_relays_every_frame_through_a_bare_relay() {
    let args = BaselineArgs { pairs: 3, rate: 600.0, burst: 4, duration_secs: 1.0, server: Server::Bare };
    let r = run_bare(Scenario::Baseline(args)).await;
    // 6 sockets, each sending a burst of 4 every 40 ms for a second: about 600 frames.
    let relayed = r.counts["relayed"];
    assert!((400..=800).contains(&relayed), "{relayed} relayed");
    assert_eq!(relayed, r.messages_sent, "every frame sent arrived");
    assert_eq!(latency(&r, "relay"), relayed);
    assert!(r.hub.as_ref().unwrap().cpu_us_per_relayed_message.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_fanout_reaches_every_listener_with_every_announcement() {
    let args = BaselineFanoutArgs { listeners: 50, changes: 3, change_timeout_secs: 10 };
    let r = run_bare(Scenario::BaselineFanout(args)).await;
    assert_eq!(r.counts["changes"], 3);
    assert_eq!(r.counts["positions"], 150);
    assert_eq!(latency(&r, "fanout"), 150);
    assert_eq!(r.messages_received, 150);
    assert!(r.hub.as_ref().unwrap().cpu_us_per_message.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_connections_hold_idle_sockets_on_the_bare_server() {
    let args = BaselineConnectionsArgs { count: 40, hold_secs: 0, server: Server::Bare };
    let r = run_bare(Scenario::BaselineConnections(args)).await;
    assert_eq!(r.counts["connected"], 40);
    assert_eq!(r.notes["connections"], 40);
    assert!(r.notes["accepted_per_sec"].as_f64().unwrap() > 0.0);
    let hub = r.hub.as_ref().unwrap();
    assert!(hub.rss_per_connection_bytes.is_some() && hub.cpu_us_per_connection.is_some());
}
