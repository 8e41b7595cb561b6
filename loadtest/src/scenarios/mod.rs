//! The scenarios. Each is bounded in count and time, stops by itself, and returns a report.

mod baseline;
mod baseline_connections;
mod baseline_fanout;
mod chat;
mod connections;
mod fanout;
pub mod payloads;
mod population;
mod storm;
mod visits;

use std::sync::Arc;
use std::time::Instant;

pub use baseline::BaselineArgs;
pub use baseline_connections::BaselineConnectionsArgs;
pub use baseline_fanout::BaselineFanoutArgs;
pub use chat::ChatArgs;
pub use connections::ConnectionsArgs;
pub use fanout::FanoutArgs;
pub use storm::StormArgs;
pub use visits::VisitsArgs;

use crate::report::Report;
use crate::target::Context;
pub use crate::workers::WorkerArgs;
use crate::workers::WorkerScenario;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Scenario {
    /// Patients arrive at a rate: intake, queue, chat with support, a provider claims, WebRTC
    /// signaling through the hub, the visit is held, then ended.
    Visits(VisitsArgs),
    /// Many idle patients in a few queues; queue changes; time until every one has its new
    /// position.
    Fanout(FanoutArgs),
    /// Many idle authenticated connections across worker processes and source addresses;
    /// accept rate and hub memory per connection.
    Connections(ConnectionsArgs),
    /// Support staff each holding many conversations with patients who send messages.
    Chat(ChatArgs),
    /// Every client drops its socket at once and resumes its session.
    Storm(StormArgs),
    /// The relay's floor on this machine: frames like `visits`' signaling through the bare
    /// tokio-tungstenite server (`bare-server`) given as the target, or through matchbox_server
    /// or the PeerJS server (`--server`).
    Baseline(BaselineArgs),
    /// `connections` for the bare server, matchbox_server or the PeerJS server (`--server`):
    /// idle sockets, the accept rate and the server's memory per connection.
    BaselineConnections(BaselineConnectionsArgs),
    /// The fan-out's floor on this machine: one frame from the bare server (`bare-server`,
    /// the target) to many idle sockets.
    BaselineFanout(BaselineFanoutArgs),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Visits(_) => "visits",
            Scenario::Fanout(_) => "fanout",
            Scenario::Connections(_) => "connections",
            Scenario::Chat(_) => "chat",
            Scenario::Storm(_) => "storm",
            Scenario::Baseline(_) => "baseline",
            Scenario::BaselineConnections(_) => "baseline-connections",
            Scenario::BaselineFanout(_) => "baseline-fanout",
        }
    }

    /// Whether the scenario signs in to a hub (the servers of the baselines take no token).
    pub fn signs_in(&self) -> bool {
        !matches!(self, Scenario::Baseline(_) | Scenario::BaselineConnections(_) | Scenario::BaselineFanout(_))
    }
}

/// Runs one scenario to its end and reports.
pub async fn run(ctx: &Arc<Context>, scenario: &Scenario) -> anyhow::Result<Report> {
    match scenario {
        Scenario::Visits(a) => visits::run(ctx, a).await,
        Scenario::Fanout(a) => fanout::run(ctx, a).await,
        Scenario::Connections(a) => connections::run(ctx, a).await,
        Scenario::Chat(a) => chat::run(ctx, a).await,
        Scenario::Storm(a) => storm::run(ctx, a).await,
        Scenario::Baseline(a) => baseline::run(ctx, a).await,
        Scenario::BaselineConnections(a) => baseline_connections::run(ctx, a).await,
        Scenario::BaselineFanout(a) => baseline_fanout::run(ctx, a).await,
    }
}

/// The hidden `worker` command: one worker process of `connections` or `storm`.
pub async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    match args.scenario {
        WorkerScenario::Connections => connections::worker(&args).await,
        WorkerScenario::Storm => storm::worker(&args).await,
    }
}

/// The measured phase: hub readings and wall time from its start.
pub(crate) struct Phase {
    started: Instant,
    before: Option<crate::hubproc::Sample>,
    sent: u64,
    received: u64,
}

impl Phase {
    pub fn start(ctx: &Context) -> Phase {
        use std::sync::atomic::Ordering::Relaxed;
        Phase {
            started: Instant::now(),
            before: ctx.hub.sample(),
            sent: ctx.stats.sent.load(Relaxed),
            received: ctx.stats.received.load(Relaxed),
        }
    }

    /// Ends the phase; `connections` opened and messages `relayed` in it size the per-unit figures.
    pub fn finish(self, ctx: &Context, name: &str, connections: u64, relayed: u64) -> Report {
        use std::sync::atomic::Ordering::Relaxed;
        let duration = self.started.elapsed().as_secs_f64();
        let messages = ctx.stats.sent.load(Relaxed) - self.sent + ctx.stats.received.load(Relaxed) - self.received;
        let hub = match (self.before, ctx.hub.sample()) {
            (Some(before), Some(after)) => {
                Some(crate::hubproc::HubUsage::between(&ctx.hub, before, after, connections, messages, relayed))
            }
            _ => None,
        };
        let mut report = Report::build(name, ctx.targets.urls(), &ctx.stats, duration, hub);
        report.note("phase_messages", messages);
        report
    }
}
