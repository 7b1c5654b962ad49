//! The admin operations, against the service contracts only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use starling_api::{
    ApiError, ApiResult, S2sStreamInfo, SessionRecord, SessionRegistry, StorageApi,
};
use starling_bus::{Bus, Delivery, Recipient};
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::{ns, Element, StreamErrorCondition};

use crate::membership::{Membership, S2sStreamSource};
use crate::users;

/// ListSessions returns at most this many sessions unless asked for fewer.
pub const DEFAULT_PAGE_LIMIT: usize = 1000;
/// ... and never more than this.
pub const MAX_PAGE_LIMIT: usize = 10_000;
/// The longest drain window a DrainNode may ask for.
pub const MAX_DRAIN_WINDOW: Duration = Duration::from_secs(3600);
/// The stream error a kicked session gets unless another is asked for:
/// RFC 6120 section 4.9.3.14, the entity violated a local service policy.
pub const DEFAULT_KICK_CONDITION: StreamErrorCondition = StreamErrorCondition::PolicyViolation;

/// One page of sessions, ordered by full JID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPage {
    pub sessions: Vec<SessionRecord>,
    /// The last full JID of this page when more follow.
    pub next_after: Option<String>,
}

/// A connection-manager with its session count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: String,
    pub alive: bool,
    pub draining_since_unix_ms: Option<u64>,
    pub sessions: u64,
}

/// The message type of an announcement (RFC 6121 section 5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnnounceType {
    /// Shown but not answered, the usual type of a server announcement.
    #[default]
    Headline,
    Normal,
}

impl AnnounceType {
    pub fn parse(value: &str) -> ApiResult<Self> {
        match value {
            "" | "headline" => Ok(AnnounceType::Headline),
            "normal" => Ok(AnnounceType::Normal),
            other => Err(ApiError::Invalid(format!(
                "message type {other:?}: expected headline or normal"
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            AnnounceType::Headline => "headline",
            AnnounceType::Normal => "normal",
        }
    }
}

/// Everything the admin API acts on.
#[derive(Clone)]
pub struct AdminService {
    domain: BareJid,
    registry: Arc<dyn SessionRegistry>,
    bus: Arc<dyn Bus>,
    storage: Arc<dyn StorageApi>,
    membership: Arc<dyn Membership>,
    /// Where the server-to-server streams are read; `None`: none are listed.
    s2s_streams: Option<Arc<dyn S2sStreamSource>>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Invalid(message.into())
}

impl AdminService {
    pub fn new(
        domain: &str,
        registry: Arc<dyn SessionRegistry>,
        bus: Arc<dyn Bus>,
        storage: Arc<dyn StorageApi>,
        membership: Arc<dyn Membership>,
    ) -> ApiResult<Self> {
        let domain = BareJid::domain_jid(domain)
            .map_err(|error| invalid(format!("domain {domain:?}: {error}")))?;
        Ok(AdminService {
            domain,
            registry,
            bus,
            storage,
            membership,
            s2s_streams: None,
        })
    }

    /// List the server-to-server streams from `source` (ListS2sStreams).
    pub fn with_s2s_streams(mut self, source: Arc<dyn S2sStreamSource>) -> Self {
        self.s2s_streams = Some(source);
        self
    }

    /// `node` alone, or every node the cluster knows.
    async fn node_ids(&self, node: Option<&str>) -> ApiResult<Vec<String>> {
        Ok(match node {
            Some(node) => vec![node.to_string()],
            None => self
                .membership
                .nodes()
                .await?
                .into_iter()
                .map(|status| status.node)
                .collect(),
        })
    }

    /// Every session of the cluster, or of one node (deduplicated by full JID).
    async fn sessions_on(&self, node: Option<&str>) -> ApiResult<Vec<SessionRecord>> {
        let nodes = self.node_ids(node).await?;
        let mut by_jid = BTreeMap::new();
        for node in nodes {
            for record in self.registry.node_sessions(&node).await? {
                by_jid.insert(record.jid.to_string(), record);
            }
        }
        Ok(by_jid.into_values().collect())
    }

    /// ListSessions: filtered by node and/or account, ordered by full JID,
    /// `limit` at a time after the full JID `after`.
    pub async fn list_sessions(
        &self,
        node: Option<&str>,
        account: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> ApiResult<SessionPage> {
        let limit = match limit {
            0 => DEFAULT_PAGE_LIMIT,
            limit => limit.min(MAX_PAGE_LIMIT),
        };
        let mut sessions = match account {
            Some(account) => {
                let account: BareJid = account
                    .parse()
                    .map_err(|_| invalid(format!("{account:?} is not a valid bare JID")))?;
                let mut sessions = self.registry.sessions(&account).await?;
                sessions.retain(|record| node.is_none_or(|node| record.addr.node == node));
                sessions
            }
            None => self.sessions_on(node).await?,
        };
        sessions.sort_by_key(|record| record.jid.to_string());
        if let Some(after) = after {
            sessions.retain(|record| record.jid.to_string().as_str() > after);
        }
        let next_after = (sessions.len() > limit).then(|| sessions[limit - 1].jid.to_string());
        sessions.truncate(limit);
        Ok(SessionPage {
            sessions,
            next_after,
        })
    }

    /// CountSessions: the total and the count of every known node.
    pub async fn count_sessions(&self) -> ApiResult<(u64, Vec<(String, u64)>)> {
        let mut per_node = Vec::new();
        let mut total = 0;
        for status in self.membership.nodes().await? {
            let count = self.registry.node_sessions(&status.node).await?.len() as u64;
            total += count;
            per_node.push((status.node, count));
        }
        Ok((total, per_node))
    }

    /// KickSession: close one session (a full JID) or every session of an
    /// account (a bare JID) with a stream error (RFC 6120 section 4.9). The
    /// connection-manager holding the stream closes it, and the session ends
    /// as on any disconnect: unbound, unavailable presence broadcast.
    /// Returns the sessions whose node took the request.
    pub async fn kick(
        &self,
        jid: &str,
        condition: Option<&str>,
        text: Option<&str>,
    ) -> ApiResult<Vec<FullJid>> {
        let condition = match condition {
            None => DEFAULT_KICK_CONDITION,
            Some(name) => StreamErrorCondition::from_name(name).ok_or_else(|| {
                invalid(format!(
                    "{name:?} is not a stream error condition of RFC 6120 section 4.9.3"
                ))
            })?,
        };
        let target: Jid = jid
            .trim()
            .parse()
            .map_err(|_| invalid(format!("{jid:?} is not a valid JID")))?;
        let sessions = match &target {
            Jid::Full(full) => self.registry.session(full).await?.into_iter().collect(),
            Jid::Bare(bare) => self.registry.sessions(bare).await?,
        };
        if sessions.is_empty() {
            return Err(ApiError::NotFound(format!("no session of {target}")));
        }
        let mut kicked = Vec::new();
        let mut unreachable = BTreeSet::new();
        for record in sessions {
            let delivery = Delivery::Close {
                conn: record.addr.conn,
                condition,
                text: text.map(str::to_string),
            };
            if self.bus.publish(&record.addr.node, delivery).await? > 0 {
                tracing::info!(jid = %record.jid, node = %record.addr.node, %condition, "admin: session kicked");
                kicked.push(record.jid);
            } else {
                unreachable.insert(record.addr.node);
            }
        }
        if kicked.is_empty() {
            return Err(ApiError::Unavailable(format!(
                "no connection-manager took the request: {}",
                unreachable.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(kicked)
    }

    /// Announce: one message from the server's domain to every online
    /// session, or to those on one node (the XEP-0133 "send announcement to
    /// online users" command, as RFC 6121 section 5 messages of type headline
    /// or normal). One bus envelope per node carries every recipient.
    pub async fn announce(
        &self,
        text: &str,
        node: Option<&str>,
        message_type: AnnounceType,
        subject: Option<&str>,
    ) -> ApiResult<u64> {
        if text.trim().is_empty() {
            return Err(invalid("the announcement text must not be empty"));
        }
        let mut message = Element::new("message", ns::CLIENT)
            .with_attr("from", self.domain.to_string())
            .with_attr("type", message_type.as_str())
            .with_attr("id", uuid::Uuid::new_v4().simple().to_string());
        if let Some(subject) = subject.filter(|subject| !subject.is_empty()) {
            message = message.with_child(Element::new("subject", ns::CLIENT).with_text(subject));
        }
        let message =
            Arc::new(message.with_child(Element::new("body", ns::CLIENT).with_text(text)));
        let mut by_node: BTreeMap<String, Vec<Recipient>> = BTreeMap::new();
        for record in self.sessions_on(node).await? {
            by_node
                .entry(record.addr.node)
                .or_default()
                .push(Recipient {
                    conn: record.addr.conn,
                    to: Some(record.jid.to_string()),
                });
        }
        let mut delivered = 0;
        for (node, recipients) in by_node {
            let count = recipients.len() as u64;
            let delivery = Delivery::Stanza {
                recipients,
                stanza: Arc::clone(&message),
                // An announcement enters the cluster here, not at a client's edge.
                routed_at: None,
            };
            match self.bus.publish(&node, delivery).await {
                Ok(receivers) if receivers > 0 => delivered += count,
                Ok(_) => tracing::warn!(node = %node, "announcement: the node does not receive"),
                Err(error) => tracing::warn!(node = %node, %error, "announcement: publish failed"),
            }
        }
        tracing::info!(recipients = delivered, node = ?node, "admin: announcement sent");
        Ok(delivered)
    }

    pub async fn add_user(&self, jid: &str, password: &str) -> ApiResult<BareJid> {
        let account = users::add(self.storage.as_ref(), jid, password).await?;
        tracing::info!(jid = %account, "admin: account created");
        Ok(account)
    }

    pub async fn set_password(&self, jid: &str, password: &str) -> ApiResult<BareJid> {
        let account = users::passwd(self.storage.as_ref(), jid, password).await?;
        tracing::info!(jid = %account, "admin: password changed");
        Ok(account)
    }

    pub async fn remove_user(&self, jid: &str) -> ApiResult<BareJid> {
        let account = users::remove(self.storage.as_ref(), jid).await?;
        tracing::info!(jid = %account, "admin: account removed");
        Ok(account)
    }

    /// RevokeFastTokens: an account's FAST tokens, of one client or all.
    pub async fn revoke_fast_tokens(&self, jid: &str, agent_id: Option<&str>) -> ApiResult<u64> {
        let (account, revoked) =
            users::revoke_fast_tokens(self.storage.as_ref(), jid, agent_id).await?;
        tracing::info!(jid = %account, revoked, "admin: fast tokens revoked");
        Ok(revoked)
    }

    /// The accounts of `domain`, or of the server's domain when `None`.
    pub async fn list_users(&self, domain: Option<&str>) -> ApiResult<Vec<BareJid>> {
        let domain = domain.unwrap_or(self.domain.domain());
        Ok(users::list(self.storage.as_ref(), domain).await?)
    }

    /// ListNodes: every known connection-manager with its state and sessions.
    pub async fn list_nodes(&self) -> ApiResult<Vec<NodeInfo>> {
        let mut nodes = Vec::new();
        for status in self.membership.nodes().await? {
            let sessions = self.registry.node_sessions(&status.node).await?.len() as u64;
            nodes.push(NodeInfo {
                node: status.node,
                alive: status.alive,
                draining_since_unix_ms: status.draining_since_unix_ms,
                sessions,
            });
        }
        Ok(nodes)
    }

    /// DrainNode: ask a live connection-manager to drain (see the
    /// connection-manager's `drain` module); `None`: its configured window.
    pub async fn drain(&self, node: &str, window: Option<Duration>) -> ApiResult<()> {
        if window.is_some_and(|window| window > MAX_DRAIN_WINDOW) {
            return Err(invalid(format!(
                "the drain window is at most {} seconds",
                MAX_DRAIN_WINDOW.as_secs()
            )));
        }
        let status = self
            .membership
            .nodes()
            .await?
            .into_iter()
            .find(|status| status.node == node)
            .ok_or_else(|| ApiError::NotFound(format!("no node {node:?} in the cluster")))?;
        if !status.alive {
            return Err(ApiError::Unavailable(format!("node {node:?} is not alive")));
        }
        let receivers = self.bus.publish(node, Delivery::Drain { window }).await?;
        if receivers == 0 {
            return Err(ApiError::Unavailable(format!(
                "node {node:?} does not receive its delivery channel"
            )));
        }
        tracing::info!(node = %node, window_secs = ?window.map(|window| window.as_secs()), "admin: node drain requested");
        Ok(())
    }

    /// ListS2sStreams: the open server-to-server streams of every known
    /// node (or of one), one row per remote domain and stream, filtered by
    /// domain when given, ordered by domain, direction and node.
    pub async fn list_s2s_streams(
        &self,
        node: Option<&str>,
        domain: Option<&str>,
    ) -> ApiResult<Vec<S2sStreamInfo>> {
        let Some(source) = &self.s2s_streams else {
            return Ok(Vec::new());
        };
        let domain = domain
            .map(|domain| {
                starling_jid::normalize_domainpart(domain)
                    .map_err(|_| invalid(format!("{domain:?} is not a valid domain")))
            })
            .transpose()?;
        let nodes = self.node_ids(node).await?;
        let mut rows = source.streams(&nodes).await?;
        if let Some(domain) = &domain {
            rows.retain(|row| &row.domain == domain);
        }
        rows.sort_by(|a, b| {
            (&a.domain, &a.direction, &a.node).cmp(&(&b.domain, &b.direction, &b.node))
        });
        Ok(rows)
    }
}
