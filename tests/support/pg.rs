//! A throwaway PostgreSQL server on 127.0.0.1, in a temp dir, optionally with a streaming
//! replica that replays with a delay; both stop when the value is dropped. The server binaries
//! must be installed (`./scripts/test` installs them): without them the test fails, loudly.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any one command (initdb, start, base backup, stop) may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(90);
/// What `pg_ctl -w` waits for a start or stop, in seconds.
const PG_CTL_WAIT_SECS: &str = "60";
const START_ATTEMPTS: usize = 3;

pub struct PgCluster {
    bin: PathBuf,
    /// Servers started, stopped in reverse order on drop.
    running: Vec<PathBuf>,
    primary_port: u16,
    replica_port: Option<u16>,
    commands: usize,
    // Last, so it is removed after the servers stop.
    dir: tempfile::TempDir,
}

impl PgCluster {
    /// A primary alone.
    pub fn primary() -> PgCluster {
        let mut cluster = PgCluster::new();
        cluster.start_primary();
        cluster
    }

    /// A primary and a streaming replica of it that applies each commit `apply_delay` after
    /// the primary made it (`'0'` for no delay), as PostgreSQL spells it: `"2s"`.
    pub fn with_replica(apply_delay: &str) -> PgCluster {
        let mut cluster = PgCluster::new();
        cluster.start_primary();
        cluster.start_replica(apply_delay);
        cluster
    }

    pub fn primary_url(&self) -> String {
        url(self.primary_port)
    }

    pub fn replica_url(&self) -> String {
        url(self.replica_port.expect("this cluster has no replica"))
    }

    fn new() -> PgCluster {
        let bin = server_binaries();
        let dir = tempfile::Builder::new().prefix("visithub-pg-").tempdir().expect("temp dir");
        if running_as_root() {
            // The server refuses to run as root: the postgres user owns the data.
            let status = Command::new("chown").arg("postgres:postgres").arg(dir.path()).status().expect("chown");
            assert!(
                status.success(),
                "chown postgres {} failed: is there a postgres user? ./scripts/test installs PostgreSQL",
                dir.path().display()
            );
        }
        PgCluster { bin, running: Vec::new(), primary_port: 0, replica_port: None, commands: 0, dir }
    }

    fn start_primary(&mut self) {
        let data = self.dir.path().join("primary");
        self.run("initdb", &["-D", path(&data), "-A", "trust", "-U", "postgres", "--no-sync"]);
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = replica\n\
             max_wal_senders = 5\nmax_replication_slots = 5\nfsync = off\nmax_connections = 100\n",
            path(self.dir.path())
        );
        append(&data.join("postgresql.conf"), &conf);
        self.primary_port = self.start(&data);
    }

    fn start_replica(&mut self, apply_delay: &str) {
        let data = self.dir.path().join("replica");
        let port = self.primary_port.to_string();
        self.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                path(&data),
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                "replica1",
            ],
        );
        append(
            &data.join("postgresql.conf"),
            &format!("hot_standby = on\nrecovery_min_apply_delay = '{apply_delay}'\n"),
        );
        self.replica_port = Some(self.start(&data));
    }

    /// Starts the server in `data` on a free port (another if that one was taken meanwhile)
    /// and waits until it accepts connections.
    fn start(&mut self, data: &Path) -> u16 {
        let log = data.with_extension("log");
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            append(&data.join("postgresql.conf"), &format!("port = {port}\n"));
            let ok =
                self.try_run("pg_ctl", &["-D", path(data), "-l", path(&log), "-w", "-t", PG_CTL_WAIT_SECS, "start"]);
            if ok.is_ok() {
                self.running.push(data.to_path_buf());
                return port;
            }
            if attempt == START_ATTEMPTS {
                let server_log = fs::read_to_string(&log).unwrap_or_default();
                panic!(
                    "PostgreSQL in {} did not start: {}\nserver log:\n{server_log}",
                    data.display(),
                    ok.unwrap_err()
                );
            }
        }
        unreachable!()
    }

    fn run(&mut self, program: &str, args: &[&str]) {
        if let Err(e) = self.try_run(program, args) {
            panic!("{e}");
        }
    }

    /// Runs a server binary as the postgres user, bounded by [`COMMAND_LIMIT`].
    fn try_run(&mut self, program: &str, args: &[&str]) -> Result<(), String> {
        self.commands += 1;
        let out_path = self.dir.path().join(format!("command-{}.out", self.commands));
        let out = File::create(&out_path).expect("command output file");
        let exe = self.bin.join(program);
        let mut command = if running_as_root() {
            let line = std::iter::once(path(&exe)).chain(args.iter().copied()).map(quote).collect::<Vec<_>>().join(" ");
            let mut c = Command::new("su");
            c.args(["-s", "/bin/sh", "postgres", "-c", &line]);
            c
        } else {
            let mut c = Command::new(&exe);
            c.args(args);
            c
        };
        // The server's user may not enter the test's working directory.
        command.current_dir(self.dir.path()).stdin(Stdio::null()).stdout(out.try_clone().expect("dup")).stderr(out);
        let mut child = command.spawn().map_err(|e| format!("{program}: {e}"))?;
        let deadline = Instant::now() + COMMAND_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| format!("{program}: {e}"))? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} {args:?} took more than {COMMAND_LIMIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if status.success() {
            Ok(())
        } else {
            let output = fs::read_to_string(&out_path).unwrap_or_default();
            Err(format!("{program} {args:?} failed ({status}):\n{output}"))
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        while let Some(data) = self.running.pop() {
            let fast = self.try_run("pg_ctl", &["-D", path(&data), "-m", "fast", "-w", "-t", PG_CTL_WAIT_SECS, "stop"]);
            if let Err(e) = fast {
                eprintln!("stopping PostgreSQL in {}: {e}", data.display());
                let _ = self.try_run("pg_ctl", &["-D", path(&data), "-m", "immediate", "stop"]);
            }
        }
    }
}

/// The directory of `initdb`, `pg_ctl` and `pg_basebackup`: `$PG_BIN`, else PostgreSQL 15's
/// Debian location, else the newest other version installed there.
fn server_binaries() -> PathBuf {
    let has_all = |dir: &Path| ["initdb", "pg_ctl", "pg_basebackup"].iter().all(|b| dir.join(b).is_file());
    let mut candidates: Vec<PathBuf> = std::env::var_os("PG_BIN").map(PathBuf::from).into_iter().collect();
    candidates.push(PathBuf::from("/usr/lib/postgresql/15/bin"));
    let mut others: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.filter_map(|d| d.ok()).map(|d| d.path().join("bin")).collect())
        .unwrap_or_default();
    others.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    candidates.extend(others.into_iter().rev());
    match candidates.into_iter().find(|dir| has_all(dir)) {
        Some(dir) => dir,
        None => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) not found in $PG_BIN or \
             /usr/lib/postgresql/*/bin. These tests need a real PostgreSQL: run ./scripts/test, which \
             installs PostgreSQL 15 (apt-get install -y postgresql-15), or install it yourself."
        ),
    }
}

fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Single-quoted for `sh -c`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn append(file: &Path, text: &str) {
    let mut f = OpenOptions::new().append(true).open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    f.write_all(text.as_bytes()).expect("append to postgresql.conf");
}
