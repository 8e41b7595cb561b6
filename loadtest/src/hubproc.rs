//! The hub's own resource use, read from `/proc`: resident memory from `/proc/<pid>/status`
//! and CPU time (user + system) from `/proc/<pid>/stat`. CPU time stays meaningful while the
//! load generator and other builds share the machine, unlike wall-clock throughput.

use serde::{Deserialize, Serialize};

/// One reading of every hub process given.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss_bytes: u64,
    pub cpu_secs: f64,
}

/// The hub processes to watch (one per node); empty when none were given.
#[derive(Debug, Clone, Default)]
pub struct HubProcs {
    pub pids: Vec<u32>,
}

impl HubProcs {
    pub fn new(pids: Vec<u32>) -> HubProcs {
        HubProcs { pids }
    }

    /// Sums over all pids; `None` when no pid was given or one cannot be read.
    pub fn sample(&self) -> Option<Sample> {
        if self.pids.is_empty() {
            return None;
        }
        let mut total = Sample::default();
        for pid in &self.pids {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            total.rss_bytes += rss_bytes(&status)?;
            total.cpu_secs += cpu_ticks(&stat)? as f64 / clock_ticks_per_sec();
        }
        Some(total)
    }
}

/// `VmRSS:   123456 kB` of `/proc/<pid>/status`.
fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The hub's use over a measured phase, as reported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HubUsage {
    pub pids: Vec<u32>,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    /// (after - before) / connections opened in the phase, when the phase opened any.
    pub rss_per_connection_bytes: Option<f64>,
    /// Hub CPU time (user + system) spent in the phase.
    pub cpu_secs: f64,
    /// Hub CPU per frame the clients sent or received in the phase.
    pub cpu_us_per_message: Option<f64>,
    /// Hub CPU per relayed signaling message (everything the hub did in the phase, divided
    /// by the relayed messages: an upper bound).
    pub cpu_us_per_relayed_message: Option<f64>,
    /// Hub CPU per connection accepted in the phase.
    pub cpu_us_per_connection: Option<f64>,
}

impl HubUsage {
    pub fn between(
        procs: &HubProcs,
        before: Sample,
        after: Sample,
        connections: u64,
        messages: u64,
        relayed: u64,
    ) -> HubUsage {
        let cpu = (after.cpu_secs - before.cpu_secs).max(0.0);
        let per = |n: u64| (n > 0).then(|| cpu * 1e6 / n as f64);
        HubUsage {
            pids: procs.pids.clone(),
            rss_before_bytes: before.rss_bytes,
            rss_after_bytes: after.rss_bytes,
            rss_per_connection_bytes: (connections > 0)
                .then(|| (after.rss_bytes as f64 - before.rss_bytes as f64) / connections as f64),
            cpu_secs: cpu,
            cpu_us_per_message: per(messages),
            cpu_us_per_relayed_message: per(relayed),
            cpu_us_per_connection: per(connections),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(rss_bytes("Name:\tvisithub\nVmRSS:\t  2048 kB\nVmSwap: 0 kB\n"), Some(2048 * 1024));
        let stat = "42 (visit hub) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 1000 10";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn reads_this_process() {
        let procs = HubProcs::new(vec![std::process::id()]);
        let s = procs.sample().expect("own /proc entry");
        assert!(s.rss_bytes > 0);
        assert!(HubProcs::default().sample().is_none());
    }

    #[test]
    fn usage_divides_by_what_the_phase_did() {
        let procs = HubProcs::new(vec![7]);
        let before = Sample { rss_bytes: 1000, cpu_secs: 1.0 };
        let after = Sample { rss_bytes: 5000, cpu_secs: 1.5 };
        let u = HubUsage::between(&procs, before, after, 2, 1000, 0);
        assert_eq!(u.rss_per_connection_bytes, Some(2000.0));
        assert_eq!(u.cpu_us_per_message, Some(500.0));
        assert_eq!(u.cpu_us_per_relayed_message, None);
    }
}
