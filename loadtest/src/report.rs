//! The end of a run: a human table and a JSON file with the same figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::hubproc::HubUsage;
use crate::stats::{Latency, Stats};

/// Latency percentiles of one measurement, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Every field is documented in BENCHMARKS.md ("The JSON report").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub targets: Vec<String>,
    /// RFC 3339 time the run started.
    pub started_at: String,
    /// Wall time of the measured phase.
    pub duration_secs: f64,
    /// Frames the clients sent and received in the whole run.
    pub messages_sent: u64,
    pub messages_received: u64,
    /// (sent + received) / duration.
    pub messages_per_sec: f64,
    /// What the scenario completed: visits, relayed messages, chat messages, ...
    pub counts: BTreeMap<String, u64>,
    /// Each count divided by the duration.
    pub throughput_per_sec: BTreeMap<String, f64>,
    /// intake, relay, chat_delivery, fanout, resume, connect: those the scenario measured.
    pub latency_ms: BTreeMap<String, Percentiles>,
    /// Refusals and failures by documented error code (`close_<name>` for close codes).
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
    /// Events a client should have received and never did (sequence gaps included).
    pub lost_events: u64,
    /// Events a client received more than once.
    pub duplicated_events: u64,
    /// The hub's memory and CPU over the measured phase, when its pids were given.
    pub hub: Option<HubUsage>,
    /// Scenario settings and derived figures (for example the accept rate).
    pub notes: BTreeMap<String, serde_json::Value>,
}

impl Report {
    pub fn build(
        scenario: &str,
        targets: Vec<String>,
        stats: &Stats,
        duration_secs: f64,
        hub: Option<HubUsage>,
    ) -> Report {
        let duration = duration_secs.max(1e-9);
        let counts = stats.counts();
        let throughput_per_sec = counts.iter().map(|(k, v)| (k.clone(), *v as f64 / duration)).collect();
        let latency_ms = Latency::ALL
            .iter()
            .map(|l| (l.name().to_string(), stats.histogram(*l)))
            .filter(|(_, h)| !h.is_empty())
            .map(|(name, h)| (name, Percentiles::of(&h)))
            .collect();
        let sent = stats.sent.load(Ordering::Relaxed);
        let received = stats.received.load(Ordering::Relaxed);
        Report {
            scenario: scenario.to_string(),
            targets,
            started_at: chrono::Utc::now().to_rfc3339(),
            duration_secs,
            messages_sent: sent,
            messages_received: received,
            messages_per_sec: (sent + received) as f64 / duration,
            counts,
            throughput_per_sec,
            latency_ms,
            errors: stats.errors(),
            error_total: stats.error_total(),
            lost_events: stats.lost.load(Ordering::Relaxed),
            duplicated_events: stats.duplicated.load(Ordering::Relaxed),
            hub,
            notes: BTreeMap::new(),
        }
    }

    pub fn note(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.notes.insert(key.to_string(), value.into());
    }

    /// The human table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "scenario {} against {}", self.scenario, self.targets.join(", "));
        let _ = writeln!(
            out,
            "duration {:.1} s, {} frames sent, {} received, {:.0} frames/s",
            self.duration_secs, self.messages_sent, self.messages_received, self.messages_per_sec
        );
        for (name, n) in &self.counts {
            let rate = self.throughput_per_sec.get(name).copied().unwrap_or(0.0);
            let _ = writeln!(out, "  {name:<24} {n:>10}  ({rate:.1}/s)");
        }
        if !self.latency_ms.is_empty() {
            let _ = writeln!(
                out,
                "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
            );
            for (name, p) in &self.latency_ms {
                let _ = writeln!(
                    out,
                    "{name:<16} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    p.count, p.p50, p.p90, p.p99, p.p99_9, p.max
                );
            }
        }
        let _ = writeln!(out, "errors {}", self.error_total);
        for (code, n) in &self.errors {
            let _ = writeln!(out, "  {code:<24} {n:>10}");
        }
        let _ = writeln!(out, "lost events {}, duplicated events {}", self.lost_events, self.duplicated_events);
        if let Some(h) = &self.hub {
            let _ = writeln!(
                out,
                "hub pids {:?}: RSS {:.1} -> {:.1} MiB, CPU {:.3} s",
                h.pids,
                h.rss_before_bytes as f64 / 1048576.0,
                h.rss_after_bytes as f64 / 1048576.0,
                h.cpu_secs
            );
            let line = |label: &str, v: Option<f64>, unit: &str| v.map(|v| format!("  {label:<32} {v:>10.2} {unit}\n"));
            for l in [
                line("RSS per connection", h.rss_per_connection_bytes.map(|b| b / 1024.0), "KiB"),
                line("CPU per message", h.cpu_us_per_message, "µs"),
                line("CPU per relayed message", h.cpu_us_per_relayed_message, "µs"),
                line("CPU per connection", h.cpu_us_per_connection, "µs"),
            ]
            .into_iter()
            .flatten()
            {
                out.push_str(&l);
            }
        }
        for (k, v) in &self.notes {
            let _ = writeln!(out, "  {k}: {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let stats = Stats::default();
        for us in 1..=1000u64 {
            stats.record(Latency::Relay, Duration::from_micros(us));
        }
        stats.count("relayed", 1000);
        let r = Report::build("visits", vec!["http://x".into()], &stats, 2.0, None);
        let p = &r.latency_ms["relay"];
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 0.5).abs() < 0.01, "{p:?}");
        assert!((p.max - 1.0).abs() < 0.01, "{p:?}");
        assert_eq!(r.throughput_per_sec["relayed"], 500.0);
        assert!(!r.latency_ms.contains_key("intake"));
        assert!(r.table().contains("relay"));
    }
}
