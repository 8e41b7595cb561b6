//! What each client request does. Authorization is checked here for what the request
//! touches, on top of the role the socket was opened with.

use serde_json::{Value, json};
use tokio_stream::wrappers::WatchStream;

use super::session::{Session, deadline_of};
use crate::error::{ErrorCode, HubError, HubResult};
use crate::protocol::ClientMessage;

impl Session {
    pub(super) async fn handle(&mut self, msg: ClientMessage) -> HubResult<Value> {
        let hub = self.gw.hub.clone();
        match msg {
            ClientMessage::Ping(_) => Ok(json!({ "server_time": hub.clock().now() })),
            ClientMessage::QueueSubscribe(r) => {
                self.principal.require_covers(r.state)?;
                if !self.boards.contains_key(&r.state) {
                    // The stream yields the current view first: that becomes the snapshot.
                    self.sent_views.remove(&r.state);
                    self.boards
                        .insert(r.state, WatchStream::new(hub.watch_queue(r.state)));
                }
                Ok(json!({}))
            }
            ClientMessage::QueueUnsubscribe(r) => {
                self.boards.remove(&r.state);
                self.sent_views.remove(&r.state);
                Ok(json!({}))
            }
            ClientMessage::PresenceSet(p) => {
                hub.set_presence(&self.principal, p.status).await?;
                Ok(json!({}))
            }
            ClientMessage::StateSetBusy(b) => {
                let settings = hub.set_busy(&self.principal, b.state, b.busy).await?;
                serde_json::to_value(settings).map_err(HubError::internal)
            }
            ClientMessage::SessionRefresh(r) => {
                let fresh = hub.authenticate(&r.token).await?;
                if fresh.subject != self.principal.subject || fresh.role != self.principal.role {
                    return Err(HubError::new(
                        ErrorCode::Forbidden,
                        "a refresh token must be for the same subject and role",
                    ));
                }
                self.principal.expires_at = fresh.expires_at;
                self.token_deadline = deadline_of(fresh.expires_at);
                Ok(json!({ "expires_at": fresh.expires_at }))
            }
            _ => Err(HubError::code(ErrorCode::UnknownMessageType)),
        }
    }
}
