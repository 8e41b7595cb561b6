//! Hub processes of one cluster: the real `visithub serve` binary, configured through its
//! environment as an operator would, on free 127.0.0.1 ports. `kill` is `kill -9`.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Endpoint, SECRET};

pub struct HubProcess {
    pub name: String,
    pub endpoint: Endpoint,
    pub metrics_addr: SocketAddr,
    child: Option<Child>,
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Where the cluster's nodes find PostgreSQL and Redis.
pub struct Backing {
    pub database_url: String,
    pub redis_url: String,
    pub redis_cluster: bool,
}

impl HubProcess {
    pub async fn start(name: &str, dir: &Path, backing: &Backing, extra: &[(&str, &str)]) -> HubProcess {
        let (addr, metrics_addr) = (free_addr(), free_addr());
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_visithub"));
        cmd.arg("serve")
            .env("VISITHUB_LISTEN", addr.to_string())
            .env("VISITHUB_METRICS_LISTEN", metrics_addr.to_string())
            .env("VISITHUB_NODE_ID", name)
            .env("VISITHUB_DATA_DIR", &data)
            .env("VISITHUB_SIGNING_KEY", std::str::from_utf8(SECRET).unwrap())
            .env("VISITHUB_DATABASE_URL", &backing.database_url)
            .env("VISITHUB_REDIS_URL", &backing.redis_url)
            .env("VISITHUB_REDIS_CLUSTER", backing.redis_cluster.to_string())
            .env("VISITHUB_HEARTBEAT_MS", "300")
            .env("VISITHUB_LOG", "info")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("the hub binary starts");
        let node = HubProcess { name: name.into(), endpoint: Endpoint::new(addr), metrics_addr, child: Some(child) };
        node.wait_ready(Duration::from_secs(60)).await;
        node
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.ready().await.is_some_and(|(status, _)| status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "node {} not ready within {within:?}", self.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/readyz`'s status and body, or `None` if the node does not answer.
    pub async fn ready(&self) -> Option<(u16, serde_json::Value)> {
        let resp = self.endpoint.http.get(self.endpoint.url("/readyz")).send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or_default()))
    }

    /// `kill -9`: no drain, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "node {} did not exit after SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl std::ops::Deref for HubProcess {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
