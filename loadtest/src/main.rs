//! `visithub-loadtest`: see `visithub-loadtest --help` and BENCHMARKS.md.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use visithub_loadtest::scenarios::{Scenario, WorkerArgs, run_worker};
use visithub_loadtest::{Auth, Context};

#[derive(Parser, Debug)]
#[command(
    name = "visithub-loadtest",
    version,
    about = "Load generator for visithub: plays patients, support staff and providers"
)]
struct Cli {
    /// Hub URL; repeat for each node of a cluster (clients spread over them).
    #[arg(long = "target", global = true, default_value = "http://127.0.0.1:8080")]
    targets: Vec<String>,
    /// The hub's development signing key file (VISITHUB_SIGNING_KEY, when set, is used instead).
    #[arg(long, global = true, default_value = "visithub-data/dev-signing-key")]
    key_file: PathBuf,
    /// Pid of a hub process (repeat for each node): memory and CPU are read from /proc.
    #[arg(long = "hub-pid", global = true)]
    hub_pids: Vec<u32>,
    /// Where the JSON report goes (default: loadtest-<scenario>.json).
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// No live progress line.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Run(Scenario),
    /// Internal: one worker process of `connections` or `storm`.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scenario = match cli.command {
        Command::Worker(args) => return run_worker(args).await,
        Command::Run(s) => s,
    };
    let auth = match std::env::var("VISITHUB_SIGNING_KEY") {
        Ok(secret) => Auth::from_secret(secret.as_bytes())?,
        Err(_) => Auth::from_key_file(&cli.key_file)?,
    };
    let ctx = Arc::new(Context::new(&cli.targets, auth, cli.hub_pids, !cli.quiet).await?);
    let report = visithub_loadtest::run(&ctx, &scenario).await?;
    print!("{}", report.table());
    let path = cli.json.unwrap_or_else(|| PathBuf::from(format!("loadtest-{}.json", scenario.name())));
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("JSON report: {}", path.display());
    if report.error_total > 0 || report.lost_events > 0 || report.duplicated_events > 0 {
        // Scripts can tell a clean run from one with refusals or lost events.
        std::process::exit(2);
    }
    Ok(())
}
