//! The end of detached streams that were not resumed (XEP-0198 section 5):
//! when a stream's resumption timeout passes, its session ends (contacts get
//! unavailable presence, RFC 6121 section 4.5.2) and the stanzas it left
//! unacknowledged or parked go where a stanza for an unavailable resource goes
//! (RFC 6121 section 8.5: another resource, offline storage, or an error to
//! the sender). Every router replica sweeps; the store hands each expired
//! stream to exactly one of them.

use std::sync::Arc;
use std::time::Duration;

use starling_xmpp::{parse_element, Limits};
use tokio::task::JoinHandle;

use crate::router::SessionRouter;

/// How often a router looks for expired streams.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Streams taken per look.
const SWEEP_BATCH: usize = 256;

impl SessionRouter {
    /// End the detached streams whose timeout passed; how many were ended.
    pub async fn expire_detached_streams(&self) -> usize {
        let Some(store) = self.resumption.clone() else {
            return 0;
        };
        let expired = match store.take_expired(SWEEP_BATCH).await {
            Ok(expired) => expired,
            Err(error) => {
                tracing::warn!(%error, "looking for expired detached streams failed");
                return 0;
            }
        };
        let count = expired.len();
        for stream in expired {
            tracing::info!(jid = %stream.jid, stanzas = stream.stanzas.len(), "resumption timeout passed, session ends");
            let limits = Limits {
                max_stanza_bytes: usize::MAX / 2,
                ..Limits::default()
            };
            for xml in stream.stanzas {
                let stanza = match parse_element(xml.as_bytes(), &limits) {
                    Ok(stanza) => stanza,
                    Err(error) => {
                        tracing::warn!(jid = %stream.jid, %error, "a parked stanza does not parse, dropped");
                        continue;
                    }
                };
                if let Some(reply) = self.reroute_undeliverable(stanza, &stream.addr).await {
                    if let Err(error) = self
                        .send_reply(&starling_api::Origin::Server, reply, None)
                        .await
                    {
                        tracing::warn!(%error, "the error for a stanza of an expired stream was not delivered");
                    }
                }
            }
            // Unbound once its stanzas found their place (its own address is
            // `failed` for them, never picked again): when its contacts see it
            // leave, every message it left is stored or delivered.
            if let Err(error) = self.unbind_resource(&stream.jid, &stream.addr).await {
                tracing::warn!(jid = %stream.jid, %error, "unbinding an expired stream's session failed");
            }
        }
        count
    }
}

/// Sweep for expired streams every second until the task is aborted.
pub fn spawn_resumption_expiry(router: Arc<SessionRouter>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(SWEEP_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            while router.expire_detached_streams().await == SWEEP_BATCH {}
        }
    })
}
