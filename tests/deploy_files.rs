//! deploy/ stays in step with the hub: every setting it names exists, the probes point at the
//! hub's real endpoints, and the compose file has the whole cluster.

use std::collections::BTreeSet;
use std::path::Path;

use visithub::config::Config;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const FILES: &[&str] = &[
    "deploy/Dockerfile",
    "deploy/docker-compose.yml",
    "deploy/k8s/deployment.yaml",
    "deploy/k8s/service.yaml",
    "deploy/k8s/pdb.yaml",
    "deploy/k8s/secret.example.yaml",
];

/// `VISITHUB_*` names in a text.
fn settings_named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("VISITHUB_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
        out.insert(name["VISITHUB_".len()..].to_lowercase());
        rest = &rest[at + name.len()..];
    }
    out
}

#[test]
fn every_setting_deploy_names_is_a_real_one() {
    let keys = serde_json::to_value(Config::default()).unwrap();
    let keys = keys.as_object().unwrap();
    let mut named = BTreeSet::new();
    for file in FILES {
        named.extend(settings_named(&read(file)));
    }
    assert!(named.contains("redis_url") && named.contains("database_url") && named.contains("node_id"), "{named:?}");
    let unknown: Vec<&String> = named.iter().filter(|n| !keys.contains_key(n.as_str())).collect();
    assert!(unknown.is_empty(), "deploy/ names settings the hub does not have: {unknown:?}");
}

#[test]
fn probes_use_the_hubs_health_endpoints() {
    let deployment = read("deploy/k8s/deployment.yaml");
    for probe in [
        "readinessProbe:\n            httpGet: { path: /readyz",
        "livenessProbe:\n            httpGet: { path: /healthz",
    ] {
        assert!(deployment.contains(probe), "missing {probe}");
    }
    let routes = read("src/api/mod.rs");
    assert!(routes.contains("\"/readyz\"") && routes.contains("\"/healthz\""));
    assert!(read("deploy/k8s/pdb.yaml").contains("kind: PodDisruptionBudget"));
    assert!(read("deploy/k8s/service.yaml").contains("kind: Service"));
}

#[test]
fn compose_runs_three_nodes_with_redis_postgres_replica_and_monitoring() {
    let compose = read("deploy/docker-compose.yml");
    for service in [
        "  hub-1:",
        "  hub-2:",
        "  hub-3:",
        "  redis:",
        "  postgres:",
        "  postgres-replica:",
        "  prometheus:",
        "  grafana:",
    ] {
        assert!(compose.contains(&format!("\n{service}\n")), "compose lacks {service}");
    }
    // Each node has its own name; all share one signing key.
    for n in 1..=3 {
        assert!(compose.contains(&format!("VISITHUB_NODE_ID: hub-{n}")));
    }
    assert!(compose.contains("../grafana/alerts.yml") && compose.contains("../grafana/provisioning"));
}
