//! Worker processes: a scenario's sockets spread over several copies of this binary (re-run as
//! the hidden `worker` command), each binding its own source address (127.0.0.2, 127.0.0.3,
//! ...). That gets past one process's 20,000 open files and one address's ephemeral ports, and
//! spreads the load generator's own work over processes and cores.
//!
//! The line protocol. The parent writes a worker's jobs on its standard input, one a line (a
//! token, ...), then `go`, then the scenario's commands (`drop ...`, `snapshot`, `stop ...`).
//! A worker writes `<kind> <snapshot JSON>` lines on its standard output: `progress` every
//! 250 ms, and one line per step (`ready` once its sockets are open, `snapshot` when asked,
//! `done` at the end, ...). Each carries the worker's cumulative [`Snapshot`]; the parent adds
//! what changed to its own stats, so the live line and the report count every process.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines, Stdin};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::conn::CONNECT_CONCURRENCY;
use crate::stats::{Snapshot, Stats};
use crate::target::Context;

/// Sockets one worker opens at most: under the 20,000 open files one process may hold.
pub const MAX_PER_WORKER: usize = 18_000;
/// How often a worker reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// How a scenario spreads its sockets over worker processes.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOpts {
    /// Worker processes (0: chosen from the count).
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// Source address of the first worker; the next ones count up from it (127.0.0.2,
    /// 127.0.0.3, ...). "none" lets the system choose.
    #[arg(long, default_value = "127.0.0.2")]
    pub source_base: String,
    /// Handshakes in flight at once in each worker process (opening and resuming).
    #[arg(long, default_value_t = CONNECT_CONCURRENCY)]
    pub handshakes: usize,
    /// The program run as a worker (default: this one).
    #[arg(long, hide = true)]
    pub worker_exe: Option<PathBuf>,
}

impl WorkerOpts {
    /// Splits `count` sockets into one range per worker: `--processes`, or one worker per
    /// `per_process` when it is 0.
    pub fn split(&self, count: usize, per_process: usize) -> anyhow::Result<Vec<Range<usize>>> {
        let processes = match self.processes {
            0 => count.div_ceil(per_process).max(1),
            n => n,
        };
        let per_worker = count.div_ceil(processes).max(1);
        anyhow::ensure!(
            per_worker <= MAX_PER_WORKER,
            "{per_worker} sockets per worker is over {MAX_PER_WORKER}: use more --processes"
        );
        Ok((0..processes)
            .map(|w| (w * per_worker).min(count)..((w + 1) * per_worker).min(count))
            .filter(|r| !r.is_empty())
            .collect())
    }
}

/// Which scenario a worker plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerScenario {
    Connections,
    Storm,
}

/// The hidden `worker` command.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Hub URL(s) to connect to.
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    /// Source address to bind.
    #[arg(long)]
    pub source: Option<IpAddr>,
    #[arg(long, value_enum)]
    pub scenario: WorkerScenario,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = CONNECT_CONCURRENCY)]
    pub handshakes: usize,
}

/// A line a worker wrote (other than `progress`, which is only absorbed).
#[derive(Debug)]
enum Event {
    Line {
        worker: usize,
        kind: String,
        snapshot: Snapshot,
    },
    /// Its standard output closed (it exited) or carried something unreadable.
    Ended {
        worker: usize,
        why: String,
    },
}

/// Every worker answered one step.
pub struct Answers {
    /// Each worker's snapshot in its answer, in worker order.
    pub snapshots: Vec<Snapshot>,
    /// When the last answer arrived.
    pub last: Instant,
}

/// The parent's side: the running workers.
pub struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Why each worker's output ended, once it did.
    ended: Vec<Option<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts one worker per list of jobs and hands each its jobs (not yet `go`).
    pub async fn start(
        ctx: &Arc<Context>,
        opts: &WorkerOpts,
        scenario: WorkerScenario,
        jobs: Vec<Vec<String>>,
    ) -> anyhow::Result<Workers> {
        let exe = match &opts.worker_exe {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        let base: Option<Ipv4Addr> = match opts.source_base.as_str() {
            "none" => None,
            s => Some(s.parse().map_err(|_| anyhow::anyhow!("--source-base {s:?} is not an IPv4 address"))?),
        };
        let (tx, events) = mpsc::unbounded_channel();
        let mut workers =
            Workers { children: Vec::new(), stdins: Vec::new(), events, ended: Vec::new(), readers: Vec::new() };
        for (w, jobs) in jobs.into_iter().enumerate() {
            let mut cmd = Command::new(&exe);
            cmd.arg("worker").arg("--scenario").arg(format!("{scenario:?}").to_lowercase());
            cmd.arg("--handshakes").arg(opts.handshakes.to_string());
            for url in ctx.targets.urls() {
                cmd.arg("--target").arg(url);
            }
            if let Some(base) = base {
                cmd.arg("--source").arg(Ipv4Addr::from(u32::from(base) + w as u32).to_string());
            }
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
            let mut child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start worker {}: {e}", exe.display()))?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            let stdout = child.stdout.take().expect("piped stdout");
            workers.readers.push(tokio::spawn(read_lines(w, stdout, ctx.stats.clone(), tx.clone())));
            let mut text = String::with_capacity(jobs.iter().map(|j| j.len() + 1).sum());
            for job in jobs {
                text.push_str(&job);
                text.push('\n');
            }
            stdin.write_all(text.as_bytes()).await?;
            workers.children.push(child);
            workers.stdins.push(stdin);
            workers.ended.push(None);
        }
        Ok(workers)
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Writes one command to every worker, back to back (a pipe write each: all within a
    /// fraction of a millisecond, so workers act together).
    pub async fn send_all(&mut self, command: &str) -> anyhow::Result<()> {
        let line = format!("{command}\n");
        for stdin in &mut self.stdins {
            stdin.write_all(line.as_bytes()).await?;
        }
        Ok(())
    }

    /// Waits until every worker wrote a `kind` line, for at most `within`.
    pub async fn wait_all(&mut self, kind: &str, within: Duration) -> anyhow::Result<Answers> {
        let deadline = tokio::time::Instant::now() + within;
        let mut snapshots: Vec<Option<Snapshot>> = vec![None; self.len()];
        let mut last = Instant::now();
        loop {
            // One that ended (it exits after `done`, or failed) will never answer.
            if let Some((worker, why)) = self.ended.iter().enumerate().find_map(|(w, e)| Some((w, e.as_ref()?))) {
                if snapshots[worker].is_none() {
                    let status = tokio::time::timeout(Duration::from_secs(2), self.children[worker].wait()).await;
                    anyhow::bail!("worker {worker} ended before {kind:?}: {why} ({status:?})");
                }
            }
            if snapshots.iter().all(Option::is_some) {
                break;
            }
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| anyhow::anyhow!("a worker did not answer {kind:?} within {within:?}"))?
                .ok_or_else(|| anyhow::anyhow!("worker lines ended"))?;
            match event {
                Event::Line { worker, kind: k, snapshot } if k == kind => {
                    snapshots[worker] = Some(snapshot);
                    last = Instant::now();
                }
                Event::Line { .. } => {}
                Event::Ended { worker, why } => self.ended[worker] = Some(why),
            }
        }
        Ok(Answers { snapshots: snapshots.into_iter().flatten().collect(), last })
    }

    /// Asks every worker for its figures now and absorbs them (before a reading that must
    /// count every frame so far).
    pub async fn sync(&mut self) -> anyhow::Result<()> {
        self.send_all("snapshot").await?;
        self.wait_all("snapshot", Duration::from_secs(30)).await.map(drop)
    }

    /// Waits for the workers to exit (they do after `done`); one that does not is killed.
    pub async fn finish(mut self) {
        drop(std::mem::take(&mut self.stdins));
        for mut child in std::mem::take(&mut self.children) {
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.await;
        }
    }
}

/// Reads one worker's lines: absorbs each snapshot into `stats`, passes on all but `progress`.
async fn read_lines(
    worker: usize,
    stdout: tokio::process::ChildStdout,
    stats: Arc<Stats>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut lines = BufReader::new(stdout).lines();
    let mut prev = Snapshot::default();
    let why = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break "exited".to_string(),
            Err(e) => break format!("unreadable output: {e}"),
        };
        let Some((kind, json)) = line.split_once(' ') else {
            break format!("a line without a snapshot: {line:?}");
        };
        let snapshot: Snapshot = match serde_json::from_str(json) {
            Ok(s) => s,
            Err(e) => break format!("a {kind} line that is not a snapshot: {e}"),
        };
        if let Err(e) = stats.absorb(&prev, &snapshot) {
            break format!("a {kind} snapshot that does not add up: {e}");
        }
        if kind != "progress" {
            let _ = tx.send(Event::Line { worker, kind: kind.to_string(), snapshot: snapshot.clone() });
        }
        prev = snapshot;
    };
    let _ = tx.send(Event::Ended { worker, why });
}

/// The worker's side: its jobs, the parent's commands, and its reports.
pub struct Link {
    stdin: Lines<BufReader<Stdin>>,
    stats: Arc<Stats>,
    progress: JoinHandle<()>,
}

impl Link {
    /// Reads the jobs up to `go` and starts reporting progress.
    pub async fn start(stats: Arc<Stats>) -> anyhow::Result<(Link, Vec<String>)> {
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        let mut jobs = Vec::new();
        while let Some(line) = stdin.next_line().await? {
            if line == "go" {
                break;
            }
            jobs.push(line);
            anyhow::ensure!(jobs.len() <= MAX_PER_WORKER, "more than {MAX_PER_WORKER} sockets for one worker");
        }
        let progress = {
            let stats = stats.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PROGRESS_EVERY);
                loop {
                    tick.tick().await;
                    if report("progress", &stats).is_err() {
                        break;
                    }
                }
            })
        };
        Ok((Link { stdin, stats, progress }, jobs))
    }

    /// The parent's next command; `None` once its end of the pipe closed.
    pub async fn command(&mut self) -> anyhow::Result<Option<String>> {
        Ok(self.stdin.next_line().await?)
    }

    /// Writes one `kind` line with this worker's figures.
    pub fn report(&self, kind: &str) -> anyhow::Result<()> {
        report(kind, &self.stats)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.progress.abort();
    }
}

/// Writes `<kind> <snapshot>` as one line (whole lines: the standard output lock is held).
pub fn report(kind: &str, stats: &Stats) -> anyhow::Result<()> {
    let line = format!("{kind} {}\n", serde_json::to_string(&stats.snapshot()?)?);
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(processes: usize) -> WorkerOpts {
        WorkerOpts { processes, source_base: "none".into(), handshakes: 1, worker_exe: None }
    }

    #[test]
    fn splits_sockets_over_workers() {
        assert_eq!(opts(0).split(15_000, 7_500).unwrap(), vec![0..7_500, 7_500..15_000]);
        assert_eq!(opts(0).split(40, 7_500).unwrap(), vec![0..40]);
        assert_eq!(opts(3).split(10, 7_500).unwrap(), vec![0..4, 4..8, 8..10]);
        // More workers than sockets: the empty ones are not started.
        assert_eq!(opts(4).split(2, 7_500).unwrap(), vec![0..1, 1..2]);
        assert!(opts(1).split(MAX_PER_WORKER + 1, 7_500).is_err());
    }
}
