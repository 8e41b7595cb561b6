//! The hub on PostgreSQL (with a delayed streaming replica), configured the way an operator
//! does it: intake, then reading the visit back at once never misses it.

#[path = "support/pg.rs"]
mod pg;

use pg::PgCluster;
use visithub::app::App;
use visithub::config::{Config, Secret};
use visithub::hub::IntakeRequest;
use visithub::model::{UsState, VisitStatus};

#[tokio::test]
async fn a_hub_configured_with_database_and_replica_urls_reads_its_own_writes() {
    let cluster = PgCluster::with_replica("2s");
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        database_url: Some(Secret::new(cluster.primary_url())),
        replica_url: Some(Secret::new(cluster.replica_url())),
        ..Config::default()
    };
    assert!(!format!("{config:?}").contains("postgres://"), "URLs with passwords stay out of logs");
    let (app, _) = App::from_config(config).await.unwrap();
    let hub = app.hub();
    // The node's own store: its reads know the position of its writes.
    let store = hub.store().clone();
    for i in 0..20 {
        let req = IntakeRequest {
            display_name: format!("P{i}"),
            state: UsState::parse("WA").unwrap(),
            reason: "cough".into(),
        };
        let receipt = hub.intake(req, None).await.unwrap();
        let visit = store.get_visit(&receipt.visit_id).await.unwrap().expect("read back at once");
        assert_eq!(visit.status, VisitStatus::Waiting);
    }
    // Replica use is on the metrics page: these reads all fell back to the primary, since
    // the replica replays 2 s late.
    let page = hub.render_metrics();
    let fallbacks = page
        .lines()
        .find(|l| l.starts_with("visithub_store_replica_reads_total{") && l.contains(r#"served_by="primary""#));
    let fallbacks: u64 = fallbacks.expect("replica metric").rsplit(' ').next().unwrap().parse().unwrap();
    assert!(fallbacks >= 20, "{fallbacks}");
    // The SQLite file was not used.
    assert!(!dir.path().join("visithub.db").exists());
}
