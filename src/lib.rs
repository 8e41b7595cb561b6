//! visithub: a real-time signaling hub for on-demand virtual healthcare visits.
//!
//! Layers, top to bottom (dependencies point down only): the composition root in `main.rs`
//! and [`app`]; the edges [`api`] (REST) and [`gateway`] (WebSocket sessions); the domain
//! [`hub`]; and [`bus`], [`store`], [`auth`], [`protocol`] and [`model`] beneath it.

pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod gateway;
pub mod hub;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod redis_link;
pub mod store;
