//! visithub-loadtest: plays patients, support staff and providers against one hub or a
//! cluster of nodes over real sockets, and reports throughput, latency percentiles, errors by
//! code, lost and duplicated events, and the hub's own memory and CPU.
//!
//! Every scenario is bounded in count and time and stops by itself. The wire types come from
//! the `visithub` crate: there is one copy of the protocol.

pub mod bare;
pub mod conn;
pub mod hubproc;
pub mod progress;
pub mod reference;
pub mod report;
pub mod rest;
pub mod scenarios;
pub mod stats;
pub mod target;
pub mod workers;

pub use report::Report;
pub use scenarios::{Scenario, run};
pub use target::{Auth, Context};
