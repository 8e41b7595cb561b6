//! The domain: queues, visits, caregivers, presence and wait-time estimates. Names no web
//! framework, Redis or SQL type: it talks to the [`Store`] and [`Bus`] traits.

mod access;
pub mod alarm;
pub mod audit;
mod caregivers;
mod chat;
mod cluster;
pub mod estimator;
pub mod hours;
pub mod intake_rules;
mod lifecycle;
mod live;
mod members;
mod portal;
mod presence;
mod presence_feed;
mod provider_load;
pub mod queues;
mod router;
pub mod sdp_check;
mod settings;
mod signaling;
pub mod turn;
mod validate;
mod visits;

use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;

pub use audit::Scope;
pub use caregivers::{CaregiverPatch, MAX_SUBJECT_LEN, NewCaregiver};
pub use chat::HistoryPage;
pub use estimator::{EstimateInputs, Estimator, Learned, LearnedMeans, Staffing};
pub use portal::{ConversationView, PortalSnapshot};
pub use queues::QueueView;
pub use router::SessionLink;
pub use settings::{MAX_QUEUE_CAP, SettingsPatch};
pub use turn::TurnOptions;
pub use visits::{IntakeReceipt, IntakeRequest, VisitView};

use crate::auth::TokenKeys;
use crate::bus::{Bus, BusEvent, BusHandler, Topic};
use crate::clock::Clock;
use crate::live::{LiveState, QueueChange};
use crate::metrics::Metrics;
use crate::model::{StateSettings, UsState, VisitId};
use crate::store::Store;
use presence::Presence;
use queues::Queues;
pub use router::Router;

/// Domain settings, from the hub's configuration.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub patient_token_ttl_secs: u64,
    pub default_queue_cap: u32,
    pub default_busy_intake_per_hour: u32,
    pub prior_visit_secs: u32,
    pub prior_pickup_secs: u32,
    pub estimator_alpha: f64,
    pub max_sdp_bytes: usize,
    pub max_live_visits_per_provider: u32,
    pub max_conversations_per_caregiver: u32,
    pub max_chat_body_chars: usize,
    pub chat_page_max: u32,
    pub abandon_grace_secs: u64,
    pub still_there_after_secs: u64,
    pub still_there_timeout_secs: u64,
    pub turn: TurnOptions,
    /// This node's name in the cluster registry.
    pub node_id: String,
    /// How often the node renews its registry record; it expires after three missed beats.
    pub heartbeat_ms: u64,
    /// See [`queues::Lane::pace`].
    pub board_every_ms: u64,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            patient_token_ttl_secs: 12 * 3600,
            default_queue_cap: 200,
            default_busy_intake_per_hour: 20,
            prior_visit_secs: 15 * 60,
            prior_pickup_secs: 60,
            estimator_alpha: 0.2,
            max_sdp_bytes: 16 * 1024,
            max_live_visits_per_provider: 1,
            max_conversations_per_caregiver: 20,
            max_chat_body_chars: 4000,
            chat_page_max: 100,
            abandon_grace_secs: 120,
            still_there_after_secs: 15 * 60,
            still_there_timeout_secs: 120,
            turn: TurnOptions { ttl_secs: 3600, ..TurnOptions::default() },
            node_id: "local".into(),
            heartbeat_ms: 1000,
            board_every_ms: 100,
        }
    }
}

pub struct Hub {
    options: HubOptions,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    keys: TokenKeys,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    audit_writer: audit::AuditWriter,
    queues: Queues,
    presence: Presence,
    presence_feed: presence_feed::PresenceFeed,
    router: Router,
    settings: DashMap<UsState, StateSettings>,
    estimators: DashMap<UsState, Estimator>,
    live: live::LiveVisits,
    /// The visits each provider holds, in memory on a single node.
    loads: provider_load::ProviderLoads,
    /// Conversations' members, in memory on a single node.
    members: members::Members,
    /// Queue order, locks and the node registry, shared by the nodes of a cluster.
    live_state: Arc<dyn LiveState>,
    /// What this node knows of the other nodes.
    cluster: cluster::ClusterView,
    /// Patients' open sockets per visit, and the abandonment timers of those with none.
    patient_sockets: DashMap<VisitId, u32>,
    abandon_timers: DashMap<VisitId, tokio::task::AbortHandle>,
    /// When visits this node started went `in_visit`, until their wrap-up learns the duration
    /// from it (no read of the stored transitions); a visit started elsewhere is read instead.
    started: DashMap<VisitId, chrono::DateTime<chrono::Utc>>,
    me: std::sync::OnceLock<Weak<Hub>>,
}

impl Hub {
    /// Loads settings, builds the queues in live state from the store's waiting visits (if
    /// no node did yet), attaches to the bus and joins the cluster registry.
    pub async fn start(
        options: HubOptions,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        live_state: Arc<dyn LiveState>,
        keys: TokenKeys,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Hub>> {
        let prior = Estimator::new(options.prior_visit_secs, options.prior_pickup_secs, options.estimator_alpha);
        // The only writer keeps providers' loads; read before the hub serves anything.
        let (loads, members) = match live_state.is_shared() {
            true => (provider_load::ProviderLoads::default(), members::Members::default()),
            false => (
                provider_load::ProviderLoads::local(store.live_visits().await?),
                members::Members::local(store.open_conversations().await?),
            ),
        };
        let hub = Arc::new(Hub {
            queues: Queues::new(prior.inputs(Staffing::default())),
            audit_writer: audit::AuditWriter::start(store.clone()),
            store,
            bus,
            keys,
            presence: Presence::new(options.max_live_visits_per_provider, clock.clone()),
            clock,
            metrics,
            presence_feed: presence_feed::PresenceFeed::default(),
            router: Router::default(),
            settings: DashMap::new(),
            estimators: DashMap::new(),
            live: live::LiveVisits::default(),
            loads,
            members,
            live_state,
            cluster: cluster::ClusterView::default(),
            patient_sockets: DashMap::new(),
            abandon_timers: DashMap::new(),
            started: DashMap::new(),
            me: std::sync::OnceLock::new(),
            options,
        });
        let _ = hub.me.set(Arc::downgrade(&hub));
        for s in hub.store.state_settings().await? {
            hub.settings.insert(s.state, s);
        }
        let handler: Weak<dyn BusHandler> = Arc::downgrade(&hub) as Weak<dyn BusHandler>;
        hub.bus.attach(handler);
        hub.join_cluster().await?;
        Ok(hub)
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The metrics page, with the queue gauges read now.
    pub fn render_metrics(&self) -> String {
        let now = self.clock.now();
        for view in self.queues.views() {
            let state = view.state.code();
            let m = &self.metrics;
            m.queue_depth.with_label_values(&[state]).set(view.len() as i64);
            let oldest = view.entries.first().map_or(0, |e| (now - e.enqueued_at).num_seconds().max(0));
            m.queue_oldest_wait.with_label_values(&[state]).set(oldest);
            m.queue_estimated_wait.with_label_values(&[state]).set(view.estimate.wait_for(view.len() + 1) as i64);
        }
        self.metrics.store_pool_in_use.set(self.store.connections_in_use() as i64);
        if let Some((replica, primary)) = self.store.replica_reads() {
            for (label, total) in [("replica", replica), ("primary", primary)] {
                let counter = self.metrics.store_replica_reads.with_label_values(&[label]);
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        self.metrics.render()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    pub fn live_state(&self) -> &Arc<dyn LiveState> {
        &self.live_state
    }

    pub fn node_id(&self) -> &str {
        &self.options.node_id
    }

    /// Marks, for every node, the point where this node takes session `session_id` over.
    pub async fn hand_over(&self, session_id: &str, token: &str) -> anyhow::Result<()> {
        let event = BusEvent::Handover { session_id: session_id.to_string(), token: token.to_string() };
        self.bus.publish(&Topic::Cluster, event).await
    }

    /// The newest view of a state's queue, and later ones as they come.
    pub fn watch_queue(&self, state: UsState) -> tokio::sync::watch::Receiver<Arc<QueueView>> {
        self.queues.subscribe(state)
    }

    /// Routes `topic` to a local session, subscribing the node on the bus if it is the first.
    pub async fn listen(&self, topic: Topic, link: SessionLink) -> anyhow::Result<()> {
        if self.router.add(topic.clone(), link) && !matches!(topic, Topic::Session(_)) {
            self.bus.subscribe(&topic).await?;
        }
        Ok(())
    }

    pub async fn unlisten(&self, topic: &Topic, session_id: u64) {
        // The node itself always listens to queue changes (see `join_cluster`).
        if self.router.remove(topic, session_id)
            && !matches!(topic, Topic::Queue(_) | Topic::Cluster | Topic::Session(_))
            && let Err(e) = self.bus.unsubscribe(topic).await
        {
            tracing::warn!(%topic, error = %e, "bus unsubscribe failed");
        }
    }

    fn estimate(&self, state: UsState) -> EstimateInputs {
        let staffing = self.presence.staffing(state);
        match self.estimators.get(&state) {
            Some(e) => e.inputs(staffing),
            None => self.new_estimator().inputs(staffing),
        }
    }

    /// An estimator that has learned nothing yet: the configured priors.
    fn new_estimator(&self) -> Estimator {
        Estimator::new(self.options.prior_visit_secs, self.options.prior_pickup_secs, self.options.estimator_alpha)
    }

    /// Takes the state's mean visit duration as the cluster learned it.
    fn adopt_means(&self, state: UsState, means: LearnedMeans) {
        self.estimators.entry(state).or_insert_with(|| self.new_estimator()).adopt(means);
    }

    /// Shows a state's queue as this node holds it on its board: now, or when its turn comes
    /// (`board_every_ms`).
    fn refresh_board(&self, state: UsState) {
        let lane = self.queues.lane(state);
        match lane.pace(tokio::time::Instant::now(), Duration::from_millis(self.options.board_every_ms)) {
            queues::Paced::Now => self.publish_board(state, &lane),
            queues::Paced::At(due) => match self.me.get().and_then(Weak::upgrade) {
                Some(hub) => {
                    tokio::spawn(async move {
                        tokio::time::sleep_until(due).await;
                        lane.publishing(tokio::time::Instant::now());
                        hub.publish_board(state, &lane);
                    });
                }
                // The hub is going away: nobody is left to read the board later.
                None => self.publish_board(state, &lane),
            },
            queues::Paced::Scheduled => {}
        }
    }

    /// The state's board as this node holds the queue now: a publication waiting for its turn
    /// is made at once. For a console about to follow the board, whose snapshot shows a change
    /// just made; patients' sessions follow the board at its pace.
    pub fn board_now(&self, state: UsState) -> Arc<QueueView> {
        let lane = self.queues.lane(state);
        if !lane.board_is_current() {
            self.publish_board(state, &lane);
        }
        lane.board.borrow().clone()
    }

    /// The queue as this node holds it now, for a reader who does not follow the board (REST):
    /// built apart while a publication waits for its turn, which it does not hasten.
    pub fn view_now(&self, state: UsState) -> Arc<QueueView> {
        let lane = self.queues.lane(state);
        if lane.board_is_current() {
            return lane.board.borrow().clone();
        }
        let (busy, estimate) = self.board_inputs(state);
        Arc::new(lane.view(state, busy, estimate))
    }

    fn publish_board(&self, state: UsState, lane: &queues::Lane) {
        let (busy, estimate) = self.board_inputs(state);
        lane.refresh_board(state, busy, estimate);
    }

    fn board_inputs(&self, state: UsState) -> (bool, EstimateInputs) {
        (self.settings.get(&state).is_some_and(|s| s.busy), self.estimate(state))
    }

    /// Tells every node (this one included) that a state's queue changed.
    async fn announce_queue(&self, state: UsState, change: QueueChange) {
        if let Err(e) = self.bus.publish(&Topic::Queue(state), BusEvent::QueueChanged { state, change }).await {
            // The change is stored; nodes that missed it catch up on the next change.
            tracing::warn!(state = %state, error = %e, "queue change not published");
        }
    }

    async fn publish(&self, topic: Topic, event: BusEvent) {
        if let Err(e) = self.bus.publish(&topic, event).await {
            tracing::warn!(%topic, error = %e, "bus publish failed");
        }
    }

    /// Staffing of these states changed: new estimates for everyone waiting there.
    async fn staffing_changed(&self, states: Vec<UsState>) {
        for state in states {
            match self.live_state.queue_bump(state).await {
                Ok(change) => self.queue_changed(state, change).await,
                Err(e) => tracing::warn!(state = %state, error = %e, "staffing change not announced"),
            }
        }
    }
}

impl BusHandler for Hub {
    fn deliver(&self, topic: &Topic, event: Arc<BusEvent>) {
        match &*event {
            BusEvent::QueueChanged { state, change } => self.take_queue_change(*state, change),
            BusEvent::SettingsChanged { state } => self.schedule_settings_reload(*state),
            BusEvent::Handover { session_id, .. } => {
                self.router.dispatch(&Topic::Session(session_id.clone()), event.clone())
            }
            BusEvent::VisitUpdated(u) => {
                // Another node may have moved the visit: read it afresh next time.
                self.live.forget_unless(&u.visit_id, u.status);
                // A visit this node started and another node wrapped up or ended: its start
                // time is of no more use here (else it would stay forever).
                if u.status != crate::model::VisitStatus::InVisit {
                    self.started.remove(&u.visit_id);
                }
                if u.status.is_final() {
                    self.live.over_now(&u.visit_id);
                }
                self.router.dispatch(topic, event)
            }
            _ => self.router.dispatch(topic, event),
        }
    }

    fn resync(&self) {
        self.schedule_resync();
    }
}
