//! grafana/ against a live hub: every metric the dashboards chart and the alerts watch is on
//! the `/metrics` page, the values move as a scripted visit goes, promtool accepts the page
//! and the rules, and the dashboards and Prometheus configuration are well-formed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use visithub::model::{Role, VisitStatus};
use visithub::protocol::{
    ChatSend, ClientMessage, Ping, ServerFrame, ServerMessage, SignalSdp, VisitRef, VisitTransition,
};

const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=msid-semantic: WMS\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:Yx3a\r\na=ice-pwd:Wj5pZ0XE0VrUQ1nY7dXh7kFf\r\na=ice-options:trickle\r\na=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CD:A8:1F:4A:0A:5E:AB:CD:3A:9C:B8:2B:4F:6D:1F:0C:E7:44:19:27\r\na=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n";

fn grafana() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The text exposition format, just enough of it: one sample per line, name, labels and value.

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

struct Page {
    text: String,
    samples: Vec<Sample>,
    /// `# TYPE` of each metric family.
    types: BTreeMap<String, String>,
}

impl Page {
    fn parse(text: &str) -> Page {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(decl) = line.strip_prefix("# TYPE ") {
                let mut parts = decl.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            samples.push(parse_sample(line).unwrap_or_else(|| panic!("unparsable sample line: {line}")));
        }
        Page { text: text.to_string(), samples, types }
    }

    /// The sum of the samples of `name` whose labels include `labels`; None when none match.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    fn has_sample(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    fn is_histogram(&self, name: &str) -> bool {
        self.types.get(name).is_some_and(|t| t == "histogram")
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = line[name_end..].chars().peekable();
    if rest.next_if_eq(&'{').is_some() {
        // `key="value"` pairs separated by commas, up to `}`.
        loop {
            while rest.next_if(|c| *c == ',' || *c == ' ').is_some() {}
            if rest.next_if_eq(&'}').is_some() {
                break;
            }
            let key: String = rest.by_ref().take_while(|c| *c != '=').collect();
            if rest.next()? != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match rest.next()? {
                    '\\' => match rest.next()? {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
    }
    let tail: String = rest.collect();
    let value = parse_value(tail.split_whitespace().next()?)?;
    Some(Sample { name, labels, value })
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

// ---------------------------------------------------------------------------------------------
// The scripted visit.

fn say(visit_id: &str, client_id: &str, body: &str) -> ClientMessage {
    ClientMessage::ChatSend(ChatSend { visit_id: visit_id.into(), client_id: client_id.into(), body: body.into() })
}

fn to(visit_id: &str, status: VisitStatus) -> ClientMessage {
    ClientMessage::VisitTransition(VisitTransition { visit_id: visit_id.into(), to: status })
}

fn from_role(role: Role) -> impl Fn(&ServerFrame) -> bool {
    move |f| matches!(&f.msg, ServerMessage::ChatMessage(m) if m.from.role == role)
}

/// Polls `/metrics` until the sum of `name{labels}` is `want` (up to 5 s); returns the last page.
async fn settled(hub: &TestHub, name: &str, labels: &[(&str, &str)], want: f64) -> Page {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let page = Page::parse(&hub.metrics().await);
        if page.sum(name, labels) == Some(want) || tokio::time::Instant::now() >= deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `/metrics` page at each step of one visit in WA: the intake, the patient connecting,
/// support and the patient chatting, the provider claiming, the visit running to its end
/// (with one relayed offer), and the patient leaving.
async fn scripted_visit(hub: &TestHub) -> BTreeMap<&'static str, Page> {
    let mut pages = BTreeMap::new();
    assert!(hub.onboard("dr-wa", "provider", &["WA"]).await.status.is_success());
    assert!(hub.onboard("sup-wa", "support", &["WA"]).await.status.is_success());

    let intake = hub.intake("Ann", "WA", None).await;
    assert!(intake.status.is_success(), "{}", intake.body);
    let visit_id = intake.str("visit_id");
    pages.insert("intake", settled(hub, "visithub_queue_depth", &[("state", "WA")], 1.0).await);

    let mut patient = hub.ws(&intake.str("patient_token")).await;
    patient.next_of("queue.position").await;
    pages.insert("patient connected", settled(hub, "visithub_ws_connections_open", &[("role", "patient")], 1.0).await);

    let mut support = hub.ws(&hub.token(Role::Support, "sup-wa", &[], 3600)).await;
    support.next_of("welcome").await;
    let join = support.request(&ClientMessage::ChatJoin(VisitRef { visit_id: visit_id.clone() })).await;
    assert!(is_ack(&join), "{join:?}");
    assert!(is_ack(&support.request(&say(&visit_id, "s1", "Hello, I am with support.")).await));
    patient.next_of_filtered("chat.message", from_role(Role::Support)).await;
    assert!(is_ack(&patient.request(&say(&visit_id, "p1", "Hi, thanks.")).await));
    support.next_of_filtered("chat.message", from_role(Role::Patient)).await;
    // Each message goes to every socket in the conversation, the sender's own included.
    pages.insert("chatted", settled(hub, "visithub_chat_messages_delivered_total", &[], 4.0).await);

    let mut dr = hub.ws(&hub.token(Role::Provider, "dr-wa", &[], 3600)).await;
    dr.next_of("welcome").await;
    let claim = dr.request(&ClientMessage::VisitClaim(VisitRef { visit_id: visit_id.clone() })).await;
    assert!(is_ack(&claim), "{claim:?}");
    pages.insert("claimed", settled(hub, "visithub_queue_depth", &[("state", "WA")], 0.0).await);

    assert!(is_ack(&dr.request(&to(&visit_id, VisitStatus::InVisit)).await));
    patient.next_of("visit.started").await;
    let offer = ClientMessage::SignalOffer(SignalSdp {
        visit_id: visit_id.clone(),
        sdp: OFFER.into(),
        ice_restart: false,
        from: None,
    });
    assert!(is_ack(&dr.request(&offer).await));
    patient.next_of("signal.offer").await;
    assert!(is_ack(&dr.request(&to(&visit_id, VisitStatus::WrapUp)).await));
    assert!(is_ack(&dr.request(&to(&visit_id, VisitStatus::Ended)).await));
    let ended = |f: &ServerFrame| matches!(&f.msg, ServerMessage::VisitUpdated(u) if u.status == VisitStatus::Ended);
    patient.next_of_filtered("visit.updated", ended).await;
    let finished = [("state", "WA"), ("status", "ended")];
    pages.insert("ended", settled(hub, "visithub_visits_finished_total", &finished, 1.0).await);

    patient.stream.close(None).await.unwrap();
    pages.insert("patient gone", settled(hub, "visithub_ws_connections_open", &[("role", "patient")], 0.0).await);
    pages
}

/// A hub on which `rarer_paths` can happen quickly.
async fn hub_for_rarer_paths() -> TestHub {
    TestHub::start_with(
        |c| {
            c.rate_admin = 2;
            c.max_invalid_per_minute = 5;
        },
        None,
    )
    .await
}

/// What a plain visit does not exercise but the dashboards chart: a refused handshake, a
/// refused intake, rate-limited messages and a socket the hub closes (a patient who merely
/// leaves may still resume, so their session is not over yet).
async fn rarer_paths(hub: &TestHub) {
    assert!(hub.try_ws("not-a-token", None).await.is_err());
    assert!(!hub.intake("", "WA", None).await.status.is_success());

    let mut admin = hub.ws(&hub.admin()).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(admin.send(&ClientMessage::Ping(Ping {})).await);
    }
    let mut limited = 0;
    for id in ids {
        limited += usize::from(error_code(&admin.reply_to(&id).await) == "rate_limited");
    }
    assert!(limited > 0, "no ping was rate limited");

    let mut abuser = hub.ws(&hub.token(Role::Provider, "dr-wa", &[], 3600)).await;
    abuser.next_of("welcome").await;
    for _ in 0..6 {
        abuser.send_text("nonsense").await;
    }
    assert!(matches!(abuser.ended(Duration::from_secs(5)).await, Ended::Closed(_)));
    settled(hub, "visithub_ws_disconnects_total", &[], 1.0).await;
}

// ---------------------------------------------------------------------------------------------
// Metric names in PromQL and in grafana/.

/// Metric names in a PromQL expression: identifiers starting with `visithub_`, and `up`.
/// String literals (label values), `$variables`, numbers and durations are skipped; functions,
/// keywords and label names are identifiers of other shapes and are left out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' && c != '`' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '$' || c.is_ascii_digit() {
            // A dashboard variable ($node, $__rate_interval) or a number or duration (5m, 1e3).
            i += 1;
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.starts_with("visithub_") || word == "up" {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = grafana().join("dashboards");
    let mut boards: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let board = serde_json::from_str(&read(&p)).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, board)
        })
        .collect();
    boards.sort_by(|a, b| a.0.cmp(&b.0));
    boards
}

/// Every target of a dashboard, at any depth (panels inside rows included).
fn targets(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(ts)) = map.get("targets") {
                out.extend(ts.iter().cloned());
            }
            map.iter().filter(|(k, _)| *k != "targets").for_each(|(_, v)| targets(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| targets(v, out)),
        _ => {}
    }
}

/// The PromQL of a dashboard: its targets' `expr` and its query variables.
fn dashboard_exprs(board: &Value) -> Vec<String> {
    let mut ts = Vec::new();
    targets(board, &mut ts);
    let mut exprs: Vec<String> = ts.iter().filter_map(|t| t["expr"].as_str()).map(str::to_string).collect();
    for var in board["templating"]["list"].as_array().into_iter().flatten() {
        match &var["query"] {
            Value::String(q) => exprs.push(q.clone()),
            Value::Object(q) => exprs.extend(q.get("query").and_then(Value::as_str).map(str::to_string)),
            _ => {}
        }
    }
    exprs
}

/// The `expr:` values of a YAML rule file: plain or quoted on the line, or a `|`/`>` block.
fn yaml_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let Some(value) = trimmed.strip_prefix("expr:") else { continue };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect();
            exprs.push(block.join("\n").trim().to_string());
        } else {
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            exprs.push(unquoted.to_string());
        }
    }
    exprs
}

/// The metric family a name in PromQL stands for, and the sample that proves it is served.
fn served_as(page: &Page, name: &str) -> String {
    if page.is_histogram(name) {
        return format!("{name}_bucket");
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && page.is_histogram(base)
        {
            return format!("{base}_bucket");
        }
    }
    name.to_string()
}

#[test]
fn metric_names_are_told_from_functions_labels_values_and_variables() {
    let expr = r#"histogram_quantile(0.99, sum by (le, node) (rate(visithub_a_seconds_bucket{node=~"$node",reason="visithub_not_a_metric"}[$__rate_interval]))) > 0.05
        and on (node) visithub_b_total offset 5m or absent(up{job="visithub"}) * 1e3"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["up", "visithub_a_seconds_bucket", "visithub_b_total"]);

    let page = Page::parse(
        "# TYPE visithub_a_seconds histogram\nvisithub_a_seconds_bucket{le=\"+Inf\",node=\"n\"} 3\n\
         visithub_a_seconds_sum{node=\"n\"} 0.5\nvisithub_a_seconds_count{node=\"n\"} 3\n\
         # TYPE visithub_c gauge\nvisithub_c{text=\"a \\\"quoted\\\", value\",node=\"n\"} 7 1700000000000\n",
    );
    for name in ["visithub_a_seconds", "visithub_a_seconds_bucket", "visithub_a_seconds_count"] {
        assert_eq!(served_as(&page, name), "visithub_a_seconds_bucket");
    }
    assert_eq!(served_as(&page, "visithub_c"), "visithub_c");
    assert_eq!(page.sum("visithub_c", &[("text", "a \"quoted\", value")]), Some(7.0));
    assert_eq!(page.sum("visithub_a_seconds_bucket", &[("le", "+Inf")]), Some(3.0));
    assert_eq!(page.sum("visithub_c", &[("node", "other")]), None);
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_metric_in_the_dashboards_and_alerts_is_served() {
    let hub = hub_for_rarer_paths().await;
    scripted_visit(&hub).await;
    rarer_paths(&hub).await;
    let page = Page::parse(&hub.metrics().await);

    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, board) in dashboards() {
        for expr in dashboard_exprs(&board) {
            for name in metric_names(&expr) {
                uses.entry(name).or_default().insert(file.clone());
            }
        }
    }
    let rules = yaml_exprs(&read(&grafana().join("alerts.yml")));
    assert!(rules.len() >= 10, "only {} alert expressions found: {rules:?}", rules.len());
    for expr in &rules {
        for name in metric_names(expr) {
            uses.entry(name).or_default().insert("alerts.yml".into());
        }
    }
    assert!(uses.len() >= 20, "too few metric names found: {:?}", uses.keys());

    let missing: Vec<String> = uses
        .iter()
        .filter(|(name, _)| name.as_str() != "up")
        .filter(|(name, _)| !page.has_sample(&served_as(&page, name)))
        .map(|(name, files)| format!("{name} (used in {})", files.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(missing.is_empty(), "not on /metrics:\n  {}\n\n{}", missing.join("\n  "), page.text);
}

#[tokio::test]
async fn metric_values_follow_a_scripted_visit() {
    let hub = TestHub::start().await;
    let pages = scripted_visit(&hub).await;
    let at = |step: &str| &pages[step];
    let node = ("node", "local");

    let intake = at("intake");
    assert_eq!(intake.sum("visithub_queue_depth", &[node, ("state", "WA")]), Some(1.0), "{}", intake.text);
    assert_eq!(intake.sum("visithub_intake_accepted_total", &[node, ("state", "WA")]), Some(1.0));

    let connected = at("patient connected");
    assert_eq!(connected.sum("visithub_ws_connections_open", &[node, ("role", "patient")]), Some(1.0));
    assert_eq!(connected.sum("visithub_ws_connections_accepted_total", &[("role", "patient")]), Some(1.0));

    let chatted = at("chatted");
    let stored = "visithub_chat_messages_stored_total";
    assert_eq!(chatted.sum(stored, &[]), Some(2.0), "{}", chatted.text);
    assert_eq!(chatted.sum(stored, &[node, ("role", "patient")]), Some(1.0));
    assert_eq!(chatted.sum(stored, &[node, ("role", "support")]), Some(1.0));
    // Both messages reached both sockets in the conversation: the other side's and, for the
    // sender's other tabs, the sender's own.
    let delivered = "visithub_chat_messages_delivered_total";
    assert_eq!(chatted.sum(delivered, &[node, ("role", "patient")]), Some(2.0), "{}", chatted.text);
    assert_eq!(chatted.sum(delivered, &[node, ("role", "support")]), Some(2.0), "{}", chatted.text);
    assert_eq!(chatted.sum(delivered, &[("role", "provider")]), None, "the provider is not in it yet");
    // Chatting moves no visit out of the queue.
    assert_eq!(chatted.sum("visithub_queue_depth", &[("state", "WA")]), Some(1.0));

    let claimed = at("claimed");
    assert_eq!(claimed.sum("visithub_queue_depth", &[node, ("state", "WA")]), Some(0.0), "{}", claimed.text);
    let waits = "visithub_visit_time_to_provider_seconds_count";
    assert_eq!(claimed.sum(waits, &[("state", "WA")]), Some(1.0));
    assert_eq!(claimed.sum("visithub_visits_finished_total", &[]), None, "nothing finished yet");

    let ended = at("ended");
    let finished = [node, ("status", "ended"), ("state", "WA")];
    assert_eq!(ended.sum("visithub_visits_finished_total", &finished), Some(1.0), "{}", ended.text);
    assert_eq!(ended.sum("visithub_visits_finished_total", &[]), Some(1.0));
    assert_eq!(ended.sum("visithub_ws_connections_open", &[("role", "patient")]), Some(1.0));
    assert_eq!(ended.sum("visithub_ws_relay_latency_seconds_count", &[]), Some(1.0), "one offer relayed");
    assert_eq!(ended.sum("visithub_intake_accepted_total", &[("state", "WA")]), Some(1.0));

    let gone = at("patient gone");
    assert_eq!(gone.sum("visithub_ws_connections_open", &[node, ("role", "patient")]), Some(0.0), "{}", gone.text);
    assert_eq!(gone.sum("visithub_ws_connections_open", &[("role", "support")]), Some(1.0));
    assert_eq!(gone.sum("visithub_ws_connections_open", &[("role", "provider")]), Some(1.0));
    assert_eq!(gone.sum("visithub_build_info", &[node]), Some(1.0));
    // Nothing was refused on the way.
    assert_eq!(gone.sum("visithub_intake_refusals_total", &[]), None);
    assert_eq!(gone.sum("visithub_ws_handshake_refusals_total", &[]), None);
}

/// Runs promtool; fails, not skips, when it is missing.
fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): ./scripts/test installs it (Debian package `prometheus`)")
        });
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn assert_success(what: &str, out: &Output) {
    eprintln!("{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn promtool_accepts_the_metrics_page_the_rules_and_the_config() {
    let hub = hub_for_rarer_paths().await;
    scripted_visit(&hub).await;
    rarer_paths(&hub).await;
    let page = hub.metrics().await;
    assert_success("promtool check metrics", &promtool(&["check", "metrics"], Some(&page)));

    let alerts = grafana().join("alerts.yml");
    assert_success("promtool check rules", &promtool(&["check", "rules", alerts.to_str().unwrap()], None));
    let config = grafana().join("prometheus.yml");
    assert_success("promtool check config", &promtool(&["check", "config", config.to_str().unwrap()], None));

    // The dashboards' PromQL parses: each target as a recording rule, with Grafana's
    // variables given values.
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (file, board) in dashboards() {
        let mut ts = Vec::new();
        targets(&board, &mut ts);
        for (i, expr) in ts.iter().filter_map(|t| t["expr"].as_str()).enumerate() {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
                .replace("$node", ".*")
                .replace("$state", ".*");
            let record = format!("dashboard:{}:{i}", file.trim_end_matches(".json").replace('-', "_"));
            // A JSON string is a valid YAML double-quoted scalar.
            rules.push_str(&format!("      - record: {record}\n        expr: {}\n", Value::from(expr)));
        }
    }
    let file = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    std::fs::write(file.path(), &rules).unwrap();
    let checked = promtool(&["check", "rules", file.path().to_str().unwrap()], None);
    assert_success(&format!("promtool check rules (dashboard expressions)\n{rules}"), &checked);
}

/// The alerts' unit tests: synthetic series fire the alerts they should, with their labels and
/// text, at the time they should, and not for the series beside them.
#[test]
fn the_alerts_fire_on_the_series_their_tests_give() {
    let tests = grafana().join("alerts_test.yml");
    assert_success("promtool test rules", &promtool(&["test", "rules", tests.to_str().unwrap()], None));
    // Every alert has a test that makes it fire (a test expecting none alone proves nothing).
    let named = |text: &str, key: &str| -> BTreeSet<String> {
        text.lines().filter_map(|l| l.trim().strip_prefix(key)).map(|n| n.trim().to_string()).collect()
    };
    let alerts = named(&read(&grafana().join("alerts.yml")), "- alert:");
    let text = read(&tests);
    let firing: BTreeSet<String> = text
        .split("alertname:")
        .skip(1)
        .filter(|case| case.split("eval_time:").next().is_some_and(|c| c.contains("exp_labels:")))
        .filter_map(|case| case.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(alerts.len() >= 14, "alerts.yml names {} alerts: {alerts:?}", alerts.len());
    assert_eq!(firing, alerts, "alerts without a test that fires them, or tests of no alert");
}

#[test]
fn dashboards_and_prometheus_configuration_are_well_formed() {
    let boards = dashboards();
    assert!(boards.len() >= 5, "expected five dashboards, found {:?}", boards.iter().map(|b| &b.0).collect::<Vec<_>>());
    let mut uids = BTreeSet::new();
    for (file, board) in &boards {
        let title = board["title"].as_str().unwrap_or("");
        let uid = board["uid"].as_str().unwrap_or("");
        assert!(!title.is_empty(), "{file}: no title");
        assert!(!uid.is_empty(), "{file}: no uid");
        assert!(uids.insert(uid.to_string()), "{file}: uid {uid} used twice");
        assert!(board["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{file}: schemaVersion");
        let mut ts = Vec::new();
        targets(&board["panels"], &mut ts);
        assert!(ts.iter().any(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())), "{file}: no target");
        for t in &ts {
            let ds = &t["datasource"];
            assert!(ds.is_null() || ds["uid"] == "prometheus", "{file}: target on datasource {ds}");
        }
    }

    let prometheus = read(&grafana().join("prometheus.yml"));
    let config: Vec<&str> = prometheus.lines().map(|l| l.split('#').next().unwrap_or("")).collect();
    let hubs: BTreeSet<&str> = config
        .iter()
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '\'' | '"')))
        .filter(|w| w.starts_with("hub-") && w.ends_with(":9100"))
        .collect();
    assert_eq!(hubs.len(), 3, "three hub targets expected, found {hubs:?}");
    assert!(config.iter().any(|l| l.trim() == "- job_name: visithub"), "no visithub job");
    assert!(config.iter().any(|l| l.trim() == "- alerts.yml"), "the rule file is not loaded");

    let datasource = read(&grafana().join("provisioning/datasources/prometheus.yml"));
    assert!(datasource.contains("uid: prometheus") && datasource.contains("url: http://prometheus:9090"));
    assert!(read(&grafana().join("provisioning/dashboards/visithub.yml")).contains("type: file"));

    // Every alert has a `for:`, a severity and both annotations.
    let alerts = read(&grafana().join("alerts.yml"));
    let rules: Vec<&str> = alerts.split("- alert: ").skip(1).collect();
    assert!(rules.len() >= 10, "only {} alerts", rules.len());
    for rule in rules {
        let name = rule.lines().next().unwrap_or("");
        for key in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(rule.contains(key), "alert {name} has no {key}");
        }
    }
}
