//! Prometheus metrics, one registry per hub (tests run several hubs in one process). Names are
//! `visithub_<area>_<name>`; labels are node, role, state, message type, reason or operation,
//! never a patient, visit, session or caregiver id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::protocol::{ClientMessage, ServerMessage};

/// Buckets for latencies from 50 µs to 10 s.
const LATENCY: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];
/// Buckets for waits from 10 s to 4 h.
const WAITS: &[f64] = &[10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0];

/// A counter per message type (`type` label), looked up once: `with_label_values` hashes the
/// label on each call, and these count every frame in and out.
pub struct PerType(Vec<IntCounter>);

impl PerType {
    fn new(vec: IntCounterVec, types: &[&str]) -> PerType {
        PerType(types.iter().map(|t| vec.with_label_values(&[*t])).collect())
    }

    /// Counts one message of the type at `index` of the `TYPES` the counters were made for.
    pub fn inc(&self, index: usize) {
        if let Some(counter) = self.0.get(index) {
            counter.inc();
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub connections_open: IntGaugeVec,
    pub sessions_detached: IntGaugeVec,
    pub connections_accepted: IntCounterVec,
    pub handshake_refusals: IntCounterVec,
    pub disconnects: IntCounterVec,
    pub messages_in: PerType,
    pub messages_out: PerType,
    pub relay_latency: Histogram,
    pub outbound_queue: Histogram,
    pub rate_limited: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub queue_oldest_wait: IntGaugeVec,
    pub queue_estimated_wait: IntGaugeVec,
    pub estimator_error: HistogramVec,
    pub time_to_provider: HistogramVec,
    pub intakes: IntCounterVec,
    pub intake_refusals: IntCounterVec,
    pub visits_finished: IntCounterVec,
    pub chat_stored: IntCounterVec,
    pub chat_delivered: IntCounterVec,
    pub store_seconds: HistogramVec,
    pub store_pool_in_use: IntGauge,
    pub store_replica_reads: IntCounterVec,
    pub audit_records: IntCounterVec,
    pub redis_seconds: HistogramVec,
    pub redis_errors: IntCounterVec,
    pub bus_lag: Histogram,
    pub bus_disconnects: IntCounter,
    pub cluster_nodes: IntGauge,
}

/// Redis operations, listed so their series exist (at zero) before the first use.
const REDIS_OPS: &[&str] = &[
    "publish",
    "subscribe",
    "unsubscribe",
    "lock",
    "queue_push",
    "queue_remove",
    "queue_bump",
    "queue_len",
    "queue_load",
    "intake_reserve",
    "intake_withdraw",
    "address_take",
    "seeded",
    "heartbeat",
    "registry",
    "orphans",
    "journal",
];

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels).expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        let registry =
            Registry::new_custom(None, Some([("node".to_string(), node.to_string())].into())).expect("valid registry");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "visithub",
            )))
            .expect("process collector registers once");
        let build = gauge(&registry, "visithub_build_info", "Build of the running hub (always 1).", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let r = &registry;
        Metrics {
            connections_open: gauge(r, "visithub_ws_connections_open", "Open WebSockets.", &["role"]),
            sessions_detached: gauge(
                r,
                "visithub_ws_sessions_detached",
                "Sessions whose socket is gone, held (with what they were sent) for their client to resume.",
                &["role"],
            ),
            connections_accepted: counter(
                r,
                "visithub_ws_connections_accepted_total",
                "WebSockets accepted.",
                &["role"],
            ),
            handshake_refusals: counter(
                r,
                "visithub_ws_handshake_refusals_total",
                "Refused handshakes by error code.",
                &["reason"],
            ),
            disconnects: counter(r, "visithub_ws_disconnects_total", "Closed WebSockets by close reason.", &["reason"]),
            messages_in: PerType::new(
                counter(r, "visithub_ws_messages_in_total", "Client messages by type.", &["type"]),
                ClientMessage::TYPES,
            ),
            messages_out: PerType::new(
                counter(r, "visithub_ws_messages_out_total", "Hub messages by type.", &["type"]),
                ServerMessage::TYPES,
            ),
            relay_latency: histogram(
                r,
                "visithub_ws_relay_latency_seconds",
                "Signaling relay: receipt to hand-off to the recipient's socket.",
                &[],
                LATENCY,
            )
            .with_label_values(&[] as &[&str]),
            outbound_queue: histogram(
                r,
                "visithub_ws_outbound_queue_frames",
                "Frames queued for a socket, sampled when a frame is queued.",
                &[],
                &[0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            )
            .with_label_values(&[] as &[&str]),
            rate_limited: counter(
                r,
                "visithub_ws_rate_limited_total",
                "Messages refused by the rate limit, by role.",
                &["role"],
            ),
            queue_depth: gauge(r, "visithub_queue_depth", "Visits waiting, per state.", &["state"]),
            queue_oldest_wait: gauge(
                r,
                "visithub_queue_oldest_wait_seconds",
                "Wait of the oldest waiting visit, per state.",
                &["state"],
            ),
            queue_estimated_wait: gauge(
                r,
                "visithub_queue_estimated_wait_seconds",
                "Estimated wait for a new intake, per state.",
                &["state"],
            ),
            estimator_error: histogram(
                r,
                "visithub_estimator_error_seconds",
                "Absolute difference between the wait estimated at intake and the real wait.",
                &["state"],
                WAITS,
            ),
            time_to_provider: histogram(
                r,
                "visithub_visit_time_to_provider_seconds",
                "Real wait until a provider claimed.",
                &["state"],
                WAITS,
            ),
            intakes: counter(r, "visithub_intake_accepted_total", "Intakes accepted, per state.", &["state"]),
            intake_refusals: counter(
                r,
                "visithub_intake_refusals_total",
                "Intakes refused, per state and reason.",
                &["state", "reason"],
            ),
            visits_finished: counter(
                r,
                "visithub_visits_finished_total",
                "Visits by final status.",
                &["state", "status"],
            ),
            chat_stored: counter(
                r,
                "visithub_chat_messages_stored_total",
                "Chat messages stored, by sender role.",
                &["role"],
            ),
            chat_delivered: counter(
                r,
                "visithub_chat_messages_delivered_total",
                "Chat messages handed to sockets, by recipient role.",
                &["role"],
            ),
            store_seconds: histogram(
                r,
                "visithub_store_operation_seconds",
                "Store operation latency.",
                &["op"],
                LATENCY,
            ),
            store_pool_in_use: {
                let g = IntGauge::new("visithub_store_pool_connections_in_use", "Store connections in use.")
                    .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            store_replica_reads: counter(
                r,
                "visithub_store_replica_reads_total",
                "Reads that could use the replica, by who served them (primary: the replica had not replayed this node's writes in time).",
                &["served_by"],
            ),
            audit_records: counter(
                r,
                "visithub_audit_records_total",
                "Audit records written, by outcome.",
                &["outcome"],
            ),
            redis_seconds: {
                let h = histogram(
                    r,
                    "visithub_redis_command_seconds",
                    "Redis command latency, by operation.",
                    &["op"],
                    LATENCY,
                );
                for op in REDIS_OPS {
                    h.with_label_values(&[op]);
                }
                h
            },
            redis_errors: {
                let c = counter(r, "visithub_redis_errors_total", "Redis commands that failed, by operation.", &["op"]);
                for op in REDIS_OPS {
                    c.with_label_values(&[op]);
                }
                c
            },
            bus_lag: histogram(
                r,
                "visithub_bus_fanout_lag_seconds",
                "Pub/sub lag: publish on one node to receipt on another.",
                &[],
                LATENCY,
            )
            .with_label_values(&[] as &[&str]),
            bus_disconnects: {
                let c = IntCounter::new("visithub_bus_disconnects_total", "Times the bus lost its Redis connection.")
                    .expect("valid metric");
                registry.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            cluster_nodes: {
                let g = IntGauge::new("visithub_cluster_nodes", "Nodes alive in the registry, as this node sees it.")
                    .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_named_metrics_with_the_node_label() {
        let m = Metrics::new("node-a");
        m.intakes.with_label_values(&["WA"]).inc();
        let text = m.render();
        let line =
            text.lines().find(|l| l.starts_with("visithub_intake_accepted_total{")).expect("the counter is there");
        assert!(line.contains(r#"node="node-a""#) && line.contains(r#"state="WA""#) && line.ends_with(" 1"), "{line}");
        assert!(text.contains("visithub_build_info"));
    }
}
