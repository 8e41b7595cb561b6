//! Throwaway `redis-server`s on 127.0.0.1: one server, or a three-master Redis Cluster made
//! with `redis-cli --cluster create`. No persistence, so a restart loses everything, as the
//! outage tests want. `./scripts/test` installs the binaries; without them a test fails.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    cluster_enabled: bool,
}

/// A port free now, whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < 55000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair found");
}

fn binary(name: &str) -> String {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().expect("sh runs");
    assert!(
        found.status.success(),
        "{name} is not installed: run ./scripts/test, which installs Debian's redis-server and redis-tools"
    );
    String::from_utf8(found.stdout).unwrap().trim().to_string()
}

impl RedisServer {
    pub fn start(dir: &Path) -> RedisServer {
        RedisServer::start_on(dir, free_port(), false)
    }

    fn start_on(dir: &Path, port: u16, cluster_enabled: bool) -> RedisServer {
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer { port, dir, child: None, cluster_enabled };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary("redis-server"));
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.to_str().unwrap(), "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster_enabled {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
            cmd.args(["--cluster-node-timeout", "2000"]);
        }
        self.child = Some(cmd.spawn().expect("redis-server starts"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.cli(&["ping"]).as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server on {} did not answer", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Runs `redis-cli` against this server; its trimmed output when it succeeded.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(binary("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops the server, losing everything it held.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self.cli(&["shutdown", "nosave"]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart_empty(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three masters, every slot covered.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(dir: &Path) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_on(dir, free_port(), true)).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new(binary("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            while !node.cli(&["cluster", "info"]).is_some_and(|i| i.contains("cluster_state:ok")) {
                assert!(Instant::now() < deadline, "the Redis Cluster did not become ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes }
    }

    /// The seed URLs, comma-separated, as `VISITHUB_REDIS_URL` takes them.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }
}
