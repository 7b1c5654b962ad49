//! Archiving one-to-one messages (XEP-0313 Message Archive Management,
//! section 5 "Business Rules"; XEP-0441 preferences) and stamping them with
//! their archive id as a XEP-0359 `<stanza-id/>`.
//!
//! For a chat or normal message a client sends to a local account:
//!
//! 1. The router decides which archives keep it: the sender's (its outgoing
//!    copy, `with` = the recipient) and the recipient's (`with` = the
//!    sender's full JID), each by its owner's preferences (XEP-0441), read
//!    from storage once and then cached in the process ([`PrefsCache`]):
//!    a change made through any router invalidates the entry in every
//!    process at once, over the same channel as the block lists
//!    (`starling_bus::Blocklists::on_invalidation`; entries are trusted
//!    `account_cache::ENTRY_TTL` at most). Only a `roster` default whose lists do not
//!    decide asks storage for the message ([`ArchiveStore::archive_decisions`]:
//!    roster membership is not cached).
//! 2. It assigns one archive id ([`Archiver::next_id`], monotonic in this
//!    process, time-ordered across processes) and stamps
//!    `<stanza-id id by='recipient'/>` on the message before it is delivered
//!    or stored offline, after removing any `<stanza-id/>` a client forged in
//!    the name of one of the two accounts or of the server (XEP-0359
//!    section 3.1). The sender's carbon copies get `by='sender'`.
//! 3. Once the message was delivered or stored offline (not bounced: XEP-0313
//!    section 5.1, a rejected message is not archived), the entries go to a
//!    bounded queue that one task per router drains into
//!    [`ArchiveStore::archive_messages`] calls of what came in [`LINGER`]
//!    (at most [`MAX_BATCH`] entries):
//!    the archive write is off the delivery path, and many messages share one
//!    transaction (one gRPC call in the cluster). A full queue makes routing
//!    wait (never a drop); a failed write is retried, then counted
//!    (`starling_router_archive_total{outcome="failed"}`) and logged.
//!
//! A message that goes to offline storage carries the stamp, so the copy the
//! account receives at login and the archived one share one id.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use starling_api::{
    ApiError, ApiResult, ArchiveDefault, ArchiveEntry, ArchiveId, ArchivePrefs, StorageApi,
    ARCHIVE_ID_NODE_BITS,
};
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::{ns, stanza, Element, MessageType};
use tokio::sync::{mpsc, oneshot};

use crate::account_cache::AccountCache;
use crate::metrics::RouterMetrics;
use crate::router::SessionRouter;

/// The most entries one storage call writes.
pub(crate) const MAX_BATCH: usize = 256;
/// Entries waiting for the writer; past it routing waits for room.
const QUEUE_CAPACITY: usize = 8192;
/// Bytes of stanzas queued for the writer or being written (issue 18: bounded
/// in bytes, not only in entries: 8,192 entries of 256 KiB would be 2 GiB);
/// past it routing waits for room. An entry larger than it takes all of it.
pub(crate) const QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Attempts of one batch write when storage is unavailable.
const WRITE_ATTEMPTS: u32 = 3;

enum Job {
    /// An entry, with its share of [`QUEUE_BYTES`], given back once written.
    Entry(ArchiveEntry, tokio::sync::OwnedSemaphorePermit),
    /// Answer once everything queued before is written (or failed).
    Flush(oneshot::Sender<()>),
}

/// The archiving preferences (XEP-0441) of accounts, cached per process
/// (`account_cache.rs`).
#[derive(Default)]
pub(crate) struct PrefsCache {
    cache: AccountCache<Arc<ArchivePrefs>>,
}

impl PrefsCache {
    /// Forget one account's preferences, or everyone's.
    pub(crate) fn invalidate(&self, user: Option<&BareJid>) {
        self.cache.invalidate(user);
    }

    async fn prefs(
        &self,
        storage: &dyn StorageApi,
        user: &BareJid,
    ) -> ApiResult<Arc<ArchivePrefs>> {
        self.cache
            .get_or_load(user, || async {
                Ok(Arc::new(storage.archive_prefs(user).await?))
            })
            .await
    }

    /// Whether each `(owner, with)` is archived: from the cached preferences,
    /// and from storage only where a `roster` default has to decide.
    pub(crate) async fn decisions(
        &self,
        storage: &dyn StorageApi,
        pairs: &[(BareJid, Jid)],
    ) -> ApiResult<Vec<bool>> {
        let mut decisions = Vec::with_capacity(pairs.len());
        for (owner, with) in pairs {
            let prefs = self.prefs(storage, owner).await?;
            let listed = |jids: &[Jid]| {
                jids.iter().any(|listed| match listed {
                    Jid::Bare(bare) => bare == with.bare(),
                    full @ Jid::Full(_) => full == with,
                })
            };
            let decision = if listed(&prefs.never) {
                false
            } else if listed(&prefs.always) {
                true
            } else {
                match prefs.default {
                    ArchiveDefault::Always => true,
                    ArchiveDefault::Never => false,
                    ArchiveDefault::Roster => {
                        let asked = [(owner.clone(), with.clone())];
                        let answer = storage.archive_decisions(&asked).await?;
                        answer.first().copied().unwrap_or(false)
                    }
                }
            };
            decisions.push(decision);
        }
        Ok(decisions)
    }
}

/// The archive ids this router assigns and its batched writer.
pub(crate) struct Archiver {
    /// The low byte of every id: this process's, chosen at random.
    node: i64,
    /// The last id assigned.
    last: AtomicI64,
    writer: OnceLock<mpsc::Sender<Job>>,
    /// [`QUEUE_BYTES`] as permits, one per byte.
    queued_bytes: Arc<tokio::sync::Semaphore>,
    pub(crate) prefs: Arc<PrefsCache>,
}

impl Archiver {
    pub(crate) fn new() -> Self {
        Archiver {
            node: i64::from(rand::random::<u8>()),
            last: AtomicI64::new(0),
            writer: OnceLock::new(),
            queued_bytes: Arc::new(tokio::sync::Semaphore::new(QUEUE_BYTES)),
            prefs: Arc::default(),
        }
    }

    /// A new id: the current time in microseconds (or one more than the
    /// last id's, so that ids only grow in this process) shifted over this
    /// process's byte. Two routers differ in the low byte, so they never
    /// assign the same id in the same microsecond (unless their random
    /// bytes collide, when the second write of that id is skipped).
    pub(crate) fn next_id(&self, now: SystemTime) -> ArchiveId {
        let now_micros = now.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
            i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX >> 9)
        });
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let micros = now_micros.max((last >> ARCHIVE_ID_NODE_BITS) + 1);
            let id = (micros << ARCHIVE_ID_NODE_BITS) | self.node;
            match self
                .last
                .compare_exchange_weak(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return ArchiveId(id),
                Err(current) => last = current,
            }
        }
    }

    fn writer(&self, storage: &Arc<dyn StorageApi>, metrics: &RouterMetrics) -> &mpsc::Sender<Job> {
        self.writer.get_or_init(|| {
            let (job_tx, job_rx) = mpsc::channel(QUEUE_CAPACITY);
            tokio::spawn(write_batches(job_rx, storage.clone(), metrics.clone()));
            job_tx
        })
    }

    /// Queue entries for the writer (waiting while the queue is full).
    pub(crate) async fn enqueue(
        &self,
        storage: &Arc<dyn StorageApi>,
        metrics: &RouterMetrics,
        entries: Vec<ArchiveEntry>,
    ) {
        let writer = self.writer(storage, metrics);
        let count = entries.len();
        for entry in entries {
            let bytes = entry.stanza_xml.len().clamp(1, QUEUE_BYTES);
            let Ok(permit) = Arc::clone(&self.queued_bytes)
                .acquire_many_owned(u32::try_from(bytes).unwrap_or(u32::MAX))
                .await
            else {
                metrics.count_archive("failed", 1);
                return;
            };
            if writer.send(Job::Entry(entry, permit)).await.is_err() {
                // The writer task is gone (the runtime is shutting down).
                metrics.count_archive("failed", 1);
                tracing::warn!("archive writer gone, entry lost");
                return;
            }
        }
        metrics.count_archive("queued", count);
    }

    /// Wait until every entry queued so far is written (or failed).
    pub(crate) async fn flush(&self, storage: &Arc<dyn StorageApi>, metrics: &RouterMetrics) {
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .writer(storage, metrics)
            .send(Job::Flush(done_tx))
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
    }
}

/// How long the writer waits for more entries after the first of a batch:
/// archive writes are then one transaction per [`LINGER`] (or per
/// [`MAX_BATCH`] entries) under load, instead of one per message, and an
/// archived message is visible to queries at most this much later.
pub(crate) const LINGER: Duration = Duration::from_millis(10);

/// The writer task: the entries of up to [`LINGER`] (at most [`MAX_BATCH`])
/// in one call; a flush request ends the wait at once.
async fn write_batches(
    mut job_rx: mpsc::Receiver<Job>,
    storage: Arc<dyn StorageApi>,
    metrics: RouterMetrics,
) {
    let mut batch: Vec<ArchiveEntry> = Vec::with_capacity(MAX_BATCH);
    // Held until the batch is written: the bytes stay counted until then.
    let mut permits: Vec<tokio::sync::OwnedSemaphorePermit> = Vec::with_capacity(MAX_BATCH);
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(job) = job_rx.recv().await {
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                Job::Entry(entry, permit) => {
                    batch.push(entry);
                    permits.push(permit);
                }
                Job::Flush(done_tx) => flushes.push(done_tx),
            }
            if batch.len() >= MAX_BATCH || !flushes.is_empty() {
                break;
            }
            // Past the deadline (an elapsed timeout), the batch is written.
            next = tokio::time::timeout_at(deadline, job_rx.recv())
                .await
                .ok()
                .flatten();
        }
        if !batch.is_empty() {
            write_batch(&*storage, &batch, &metrics).await;
            batch.clear();
            permits.clear();
        }
        for done_tx in flushes.drain(..) {
            let _ = done_tx.send(());
        }
    }
}

async fn write_batch(storage: &dyn StorageApi, batch: &[ArchiveEntry], metrics: &RouterMetrics) {
    let mut attempt = 1;
    loop {
        match storage.archive_messages(batch).await {
            Ok(_) => {
                metrics.count_archive("written", batch.len());
                return;
            }
            // Writes are idempotent (an id archived twice is skipped): a
            // failure that is not a refusal (unavailable, a deadlock or a
            // removed account's foreign key on PostgreSQL) is tried again.
            Err(error) if attempt < WRITE_ATTEMPTS && !matches!(error, ApiError::Invalid(_)) => {
                tracing::warn!(%error, attempt, "archive write failed, retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(error) => {
                metrics.count_archive("failed", batch.len());
                tracing::error!(%error, entries = batch.len(), "archive write failed, entries lost");
                return;
            }
        }
    }
}

/// Whether a message is kept in a user archive (XEP-0313 section 5.1.1):
/// chat or normal with a body, unless a XEP-0334 hint says otherwise
/// (`<store/>` keeps any, `<no-store/>` and `<no-permanent-store/>` keep
/// none). Errors, groupchat and headlines never; nor what the server
/// forwards itself (carbons, archive results).
pub(crate) fn is_archivable(message: &Element) -> bool {
    if !matches!(
        MessageType::from_attr(stanza::stanza_type(message)),
        MessageType::Chat | MessageType::Normal
    ) {
        return false;
    }
    if message.has_child("no-store", ns::HINTS)
        || message.has_child("no-permanent-store", ns::HINTS)
    {
        return false;
    }
    if message
        .children()
        .any(|child| child.namespace() == ns::CARBONS || child.is("result", ns::MAM))
    {
        return false;
    }
    message.has_child("store", ns::HINTS) || message.has_child("body", ns::CLIENT)
}

/// Remove the `<stanza-id/>` elements claimed by one of `owners` (XEP-0359
/// section 3.1: an entity stamping ids removes any other claiming to be
/// its own, so a client cannot forge an archive id).
pub(crate) fn strip_forged_stanza_ids(message: &mut Element, owners: &[&str]) {
    if !message.has_child("stanza-id", ns::SID) {
        return;
    }
    message.nodes_mut().retain(|node| match node {
        starling_xmpp::Node::Element(child) if child.is("stanza-id", ns::SID) => !child
            .attr("by")
            .is_some_and(|by| owners.iter().any(|owner| by.eq_ignore_ascii_case(owner))),
        _ => true,
    });
}

/// `<stanza-id xmlns='urn:xmpp:sid:0' id by/>` (XEP-0359 section 3.1).
pub(crate) fn stanza_id_element(id: ArchiveId, by: &BareJid) -> Element {
    Element::new("stanza-id", ns::SID)
        .with_attr("id", id.to_text())
        .with_attr("by", by.to_string())
}

/// The archiving of one message a client sent, decided before it is routed.
pub(crate) struct ArchivePlan {
    pub(crate) id: ArchiveId,
    sender: BareJid,
    /// The recipient's `with` (the sender's full JID) when its archive keeps it.
    recipient: Option<(BareJid, Jid)>,
    /// The sender's `with` (the recipient as addressed) when its archive keeps it.
    outgoing_with: Option<Jid>,
    stanza_xml: String,
}

impl ArchivePlan {
    /// Whether the sender's archive keeps the message (its carbons then
    /// carry the id `by` the sender).
    pub(crate) fn sender_archives(&self) -> bool {
        self.outgoing_with.is_some()
    }

    pub(crate) fn sender(&self) -> &BareJid {
        &self.sender
    }
}

impl SessionRouter {
    /// Decide the archiving of a message `sender` sent to the local account
    /// `recipient` as `to` (step 1 and 2 of the module documentation), and
    /// stamp it; `None` when no archive keeps it.
    pub(crate) async fn plan_archive(
        &self,
        sender: &FullJid,
        to: &Jid,
        message: &mut Element,
    ) -> Option<ArchivePlan> {
        let recipient = to.bare().clone();
        let sender_bare = sender.bare().clone();
        let sender_text = sender_bare.to_string();
        let recipient_text = recipient.to_string();
        strip_forged_stanza_ids(
            message,
            &[&sender_text, &recipient_text, &self.config.domain],
        );
        if !is_archivable(message) {
            return None;
        }
        // Issue 18: what one message adds to the archives is bounded
        // (`mam.max_message_bytes`); a larger message is delivered, not archived.
        if message.stanza_xml_len() > self.config.mam_max_message_bytes {
            self.metrics.count_archive("too_large", 1);
            return None;
        }
        let to_self = recipient == sender_bare;
        let mut pairs = vec![(sender_bare.clone(), to.clone())];
        if !to_self {
            pairs.push((recipient.clone(), Jid::Full(sender.clone())));
        }
        let decisions = match self.archive.prefs.decisions(&*self.storage, &pairs).await {
            Ok(decisions) if decisions.len() == pairs.len() => decisions,
            Ok(_) | Err(_) => {
                self.metrics.count_archive("undecided", pairs.len());
                tracing::warn!(from = %sender, to = %to, "archive preferences unreadable, message not archived");
                return None;
            }
        };
        // A message to oneself is one entry, in the one archive.
        let (outgoing, incoming) = if to_self {
            (decisions[0], false)
        } else {
            (decisions[0], decisions[1])
        };
        if !outgoing && !incoming {
            return None;
        }
        let id = self.archive.next_id((self.clock)());
        let stamp_owner = if incoming || to_self {
            Some(&recipient)
        } else {
            None
        };
        if let Some(owner) = stamp_owner {
            message.append_child(stanza_id_element(id, owner));
        }
        Some(ArchivePlan {
            id,
            sender: sender_bare,
            recipient: incoming.then(|| (recipient, Jid::Full(sender.clone()))),
            outgoing_with: outgoing.then(|| to.clone()),
            stanza_xml: message.to_stanza_xml(),
        })
    }

    /// Step 3: queue the entries of a message that was delivered or stored.
    pub(crate) async fn archive_routed(&self, plan: ArchivePlan) {
        let mut entries = Vec::with_capacity(2);
        if let Some(with) = plan.outgoing_with {
            entries.push(ArchiveEntry {
                owner: plan.sender,
                id: plan.id,
                with,
                stanza_xml: plan.stanza_xml.clone(),
            });
        }
        if let Some((owner, with)) = plan.recipient {
            entries.push(ArchiveEntry {
                owner,
                id: plan.id,
                with,
                stanza_xml: plan.stanza_xml,
            });
        }
        self.archive
            .enqueue(&self.storage, &self.metrics, entries)
            .await;
    }

    /// Wait until every archive entry this router queued is written (tests,
    /// and a router that stops).
    pub async fn flush_archive(&self) {
        self.archive.flush(&self.storage, &self.metrics).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::parse_element;

    fn message(xml: &str) -> Element {
        parse_element(xml.as_bytes(), &Default::default()).expect("test stanza parses")
    }

    #[test]
    fn chat_and_normal_with_a_body_are_archived() {
        assert!(is_archivable(&message(
            "<message xmlns='jabber:client' type='chat'><body>hi</body></message>"
        )));
        assert!(is_archivable(&message(
            "<message xmlns='jabber:client'><body>hi</body></message>"
        )));
        for xml in [
            "<message xmlns='jabber:client' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message xmlns='jabber:client' type='groupchat'><body>hi</body></message>",
            "<message xmlns='jabber:client' type='headline'><body>hi</body></message>",
            "<message xmlns='jabber:client' type='error'><body>hi</body></message>",
            "<message xmlns='jabber:client' type='chat'><body>hi</body><no-store xmlns='urn:xmpp:hints'/></message>",
            "<message xmlns='jabber:client' type='chat'><body>hi</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>",
        ] {
            assert!(!is_archivable(&message(xml)), "{xml}");
        }
        assert!(is_archivable(&message(
            "<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:receipts' id='1'/><store xmlns='urn:xmpp:hints'/></message>"
        )));
    }

    #[test]
    fn forged_stanza_ids_of_our_accounts_are_removed() {
        let mut forged = message(
            "<message xmlns='jabber:client' type='chat'><body>hi</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='fake' by='Juliet@example.com'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='theirs' by='room@muc.example.org'/>\
             <origin-id xmlns='urn:xmpp:sid:0' id='mine'/></message>",
        );
        strip_forged_stanza_ids(&mut forged, &["juliet@example.com", "example.com"]);
        assert_eq!(
            forged.to_xml(),
            "<message xmlns='jabber:client' type='chat'><body>hi</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='theirs' by='room@muc.example.org'/>\
             <origin-id xmlns='urn:xmpp:sid:0' id='mine'/></message>"
        );
    }

    #[test]
    fn ids_grow_and_keep_the_process_byte() {
        let archiver = Archiver::new();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let first = archiver.next_id(now);
        let second = archiver.next_id(now);
        let earlier = archiver.next_id(now - Duration::from_secs(5));
        assert!(first < second && second < earlier);
        assert_eq!(first.micros(), 1_700_000_000_000_000);
        assert_eq!(second.micros(), first.micros() + 1);
        assert_eq!(first.0 & 0xff, second.0 & 0xff);
        assert_eq!(
            stanza_id_element(first, &"juliet@example.com".parse().unwrap()).to_xml(),
            format!(
                "<stanza-id xmlns='urn:xmpp:sid:0' id='{}' by='juliet@example.com'/>",
                first.0
            )
        );
    }
}
