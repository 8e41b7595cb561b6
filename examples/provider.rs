//! A provider with a real WebRTC peer (webrtc-rs): watch a state's queue, claim the visit
//! waiting longest, start it, offer a data channel through the hub, greet the patient, wait
//! for the patient's message, then end the visit (`wrap_up`, then `ended`) and exit 0.
//!
//! Try it with the `patient` example, each in its own terminal, from the repository root:
//!
//! ```bash
//! # 1. The hub (development signing key and SQLite in ./visithub-data).
//! cargo build --release --examples && cargo run --release -- serve
//!
//! # 2. Onboard a provider licensed in WA, and mint the provider's token.
//! VH=target/release/visithub
//! ADMIN=$($VH token --role admin --sub admin)
//! curl -s localhost:8080/v1/caregivers -H "Authorization: Bearer $ADMIN" \
//!   -H 'content-type: application/json' \
//!   -d '{"subject":"dr-lee","name":"Dr. Lee","role":"provider","states":["WA"]}'
//! DR_LEE=$($VH token --role provider --sub dr-lee)
//!
//! # 3. The patient asks for a visit and waits in WA's queue.
//! target/release/examples/patient --hub http://127.0.0.1:8080 --state WA --name Ann
//!
//! # 4. The provider claims it, starts it, talks, and ends it; both exit 0.
//! target/release/examples/provider --hub http://127.0.0.1:8080 --token "$DR_LEE" --state WA
//! ```
//!
//! (`cargo run --release --example provider -- ...` works as well.) Without `--state` the
//! provider watches every state it covers. Both peers bind 127.0.0.1 by default, so they meet
//! over loopback; `--bind 0.0.0.0:0` uses every other interface instead.

#[path = "visit_peer/mod.rs"]
mod visit_peer;

use std::time::Duration;

use clap::Parser;
use visit_peer::PeerOptions;
use visithub::model::UsState;

/// A provider who takes the next visit and talks to the patient over a data channel.
#[derive(Parser)]
struct Args {
    /// The hub's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    hub: String,
    /// A provider token (`visithub token --role provider --sub <subject>`).
    #[arg(long)]
    token: String,
    /// States whose queues to watch (default: every state the provider covers).
    #[arg(long, value_parser = |s: &str| UsState::parse(s).map_err(|e| e.message))]
    state: Vec<UsState>,
    /// Local UDP address(es) for WebRTC host candidates.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: Vec<String>,
    /// Longest the call may take once it starts, in seconds.
    #[arg(long, default_value_t = 120)]
    call_timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let opts = PeerOptions { udp_addrs: args.bind, call_timeout: Duration::from_secs(args.call_timeout) };
    let outcome =
        visit_peer::run_provider(&args.hub, &args.token, &args.state, &opts, "hello from the provider").await?;
    println!("[provider] visit {} ended; received {:?}", outcome.visit_id, outcome.received);
    Ok(())
}
