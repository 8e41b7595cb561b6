//! `visithub-loadtest`: see `visithub-loadtest --help` and BENCHMARKS.md.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use visithub_loadtest::scenarios::{Scenario, WorkerArgs, run_worker};
use visithub_loadtest::{Auth, Context};

// The load generator shares the hub's cores: the same allocator as the hub (`src/main.rs`)
// leaves it more of them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "visithub-loadtest",
    version,
    about = "Load generator for visithub: plays patients, support staff and providers"
)]
struct Cli {
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct Options {
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
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Run(Scenario),
    /// Internal: one worker process of `connections` or `storm`.
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// The bare tokio-tungstenite server of the `baseline` and `baseline-fanout` scenarios:
    /// pairs of sockets relaying to each other, and a broadcast. Prints its address, serves
    /// until killed.
    BareServer {
        /// Address to listen on (a port below the ephemeral range, 32768 up, which the load's
        /// own client sockets take).
        #[arg(long, default_value = "127.0.0.1:18090")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // A worker drives its sockets from one thread: with a multi-threaded runtime every
        // arrival woke a worker thread blocked on epoll, which then woke the thread driving the
        // sockets, two context switches where one does.
        Command::Worker(args) => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run_worker(args))
        }
        Command::Run(scenario) => tokio::runtime::Runtime::new()?.block_on(run(cli.options, scenario)),
        Command::BareServer { listen } => tokio::runtime::Runtime::new()?.block_on(async {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!("bare server listening on {} (pid {})", listener.local_addr()?, std::process::id());
            visithub_loadtest::bare::serve(listener).await
        }),
    }
}

async fn run(options: Options, scenario: Scenario) -> anyhow::Result<()> {
    let Options { targets, key_file, hub_pids, json, quiet } = options;
    let auth = match std::env::var("VISITHUB_SIGNING_KEY") {
        Ok(secret) => Auth::from_secret(secret.as_bytes())?,
        Err(_) if scenario.signs_in() => Auth::from_key_file(&key_file)?,
        // Tokens are never sent: any key does.
        Err(_) => Auth::from_secret(&[0; 32])?,
    };
    let ctx = Arc::new(Context::new(&targets, auth, hub_pids, !quiet).await?);
    let report = visithub_loadtest::run(&ctx, &scenario).await?;
    print!("{}", report.table());
    let path = json.unwrap_or_else(|| PathBuf::from(format!("loadtest-{}.json", scenario.name())));
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("JSON report: {}", path.display());
    if report.error_total > 0 || report.lost_events > 0 || report.duplicated_events > 0 {
        // Scripts can tell a clean run from one with refusals or lost events.
        std::process::exit(2);
    }
    Ok(())
}
