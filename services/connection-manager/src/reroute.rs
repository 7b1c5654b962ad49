//! Handing stanzas a connection did not take back to the router, in order:
//! one connection's stanzas always go through the same task (RFC 6120
//! section 10.1), across a drain or a resumption too.

use std::sync::Arc;

use starling_api::SessionAddr;
use starling_xmpp::Element;
use tracing::Instrument;

/// One stanza to hand back to the router.
pub(crate) struct Reroute {
    pub stanza: Element,
    pub failed: SessionAddr,
    /// Wait until this journal applied what was submitted before (the stanza
    /// was marked as no longer in flight there).
    pub journal: Option<tokio::sync::mpsc::UnboundedSender<crate::sm::JournalOp>>,
    pub span: tracing::Span,
}

/// How many tasks reroute; a connection's stanzas always go to the same one.
pub(crate) const REROUTE_TASKS: usize = 8;

/// The tasks that hand stanzas back to the router, each in the order it got them.
pub(crate) fn spawn_rerouters(
    router: Arc<dyn starling_api::RouterApi>,
) -> Vec<tokio::sync::mpsc::UnboundedSender<Reroute>> {
    (0..REROUTE_TASKS)
        .map(|_| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Reroute>();
            let router = Arc::clone(&router);
            tokio::spawn(async move {
                while let Some(reroute) = rx.recv().await {
                    let Reroute {
                        stanza,
                        failed,
                        journal,
                        span,
                    } = reroute;
                    async {
                        if let Some(journal) = journal {
                            crate::sm::journal_barrier(&journal).await;
                        }
                        if let Err(error) = router.undeliverable(stanza, &failed).await {
                            tracing::warn!(%error, "rerouting an undeliverable stanza failed");
                        }
                    }
                    .instrument(span)
                    .await;
                }
            });
            tx
        })
        .collect()
}
