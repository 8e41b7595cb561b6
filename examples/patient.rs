//! A patient with a real WebRTC peer (webrtc-rs): intake over REST, wait in line, answer the
//! provider's offer through the hub, greet over the data channel, exit 0 when the visit ends.
//!
//! Try it with the `provider` example, each in its own terminal, from the repository root:
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
//! (`cargo run --release --example patient -- ...` works as well.) Both peers bind
//! 127.0.0.1 by default, so they meet over loopback; `--bind 0.0.0.0:0` uses every other
//! interface instead, for peers on different machines (with the hub's TURN servers, if set).

#[path = "visit_peer/mod.rs"]
mod visit_peer;

use std::time::Duration;

use clap::Parser;
use visit_peer::PeerOptions;

/// A patient who asks for a video visit and talks to the provider over a data channel.
#[derive(Parser)]
struct Args {
    /// The hub's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    hub: String,
    /// The state the patient is in now (two letters).
    #[arg(long)]
    state: String,
    /// The name the provider sees.
    #[arg(long)]
    name: String,
    /// Why the patient asks for a visit.
    #[arg(long, default_value = "video visit")]
    reason: String,
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
    let visit = visit_peer::intake(&args.hub, &args.name, &args.state, &args.reason).await?;
    println!(
        "[patient] visit {} in {}: position {:?}, about {:?} s",
        visit.visit_id, args.state, visit.position, visit.estimated_wait_secs
    );
    let opts = PeerOptions { udp_addrs: args.bind, call_timeout: Duration::from_secs(args.call_timeout) };
    let outcome =
        visit_peer::run_patient(&args.hub, &visit.patient_token, &opts, "hello from the patient", &mut |_| {}).await?;
    println!("[patient] the visit ended; received {:?}", outcome.received);
    Ok(())
}
