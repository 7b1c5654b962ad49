//! XMPP addresses per RFC 7622: `[localpart@]domainpart[/resourcepart]`.
//!
//! Every constructor normalises (RFC 7622 section 3: PRECIS UsernameCaseMapped
//! for the localpart, IDNA2008 via UTS #46 for the domainpart, PRECIS
//! OpaqueString for the resourcepart) and enforces the 1023-byte limit on each
//! part, so two JIDs compare equal exactly when they address the same entity,
//! and `Display` followed by `FromStr` gives back an equal value.
//!
//! ```
//! use starling_jid::{FullJid, Jid};
//!
//! let jid: FullJid = "User@Example.COM/Res".parse().unwrap();
//! assert_eq!(jid.to_string(), "user@example.com/Res");
//! assert_eq!(jid.bare().to_string(), "user@example.com");
//!
//! // The resource starts at the first '/', and may contain '@' and '/'.
//! let jid: Jid = "a.example.com/b@example.net/c".parse().unwrap();
//! assert_eq!(jid.node(), None);
//! assert_eq!(jid.resource(), Some("b@example.net/c"));
//! ```

use std::fmt;
use std::str::FromStr;

mod normalize;

pub use normalize::{
    normalize_domainpart, normalize_localpart, normalize_resourcepart, MAX_INPUT_PART_BYTES,
    MAX_PART_BYTES,
};

/// Why a string is not a valid JID (RFC 7622 section 3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    #[error("empty domainpart")]
    EmptyDomain,
    #[error("empty localpart before '@'")]
    EmptyLocal,
    #[error("empty resourcepart after '/'")]
    EmptyResource,
    #[error("localpart longer than 1023 bytes")]
    LocalTooLong,
    #[error("domainpart longer than 1023 bytes")]
    DomainTooLong,
    #[error("resourcepart longer than 1023 bytes")]
    ResourceTooLong,
    #[error("localpart is not valid under PRECIS UsernameCaseMapped")]
    InvalidLocal,
    #[error("domainpart is not a valid domain name or IP literal")]
    InvalidDomain,
    #[error("resourcepart is not valid under PRECIS OpaqueString")]
    InvalidResource,
    #[error("a full JID needs a resourcepart")]
    ResourceMissing,
    #[error("a bare JID must not have a resourcepart")]
    ResourceUnexpected,
}

/// An address without a resource: `[localpart@]domainpart`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BareJid {
    node: Option<String>,
    domain: String,
}

/// An address with a resource: `[localpart@]domainpart/resourcepart`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FullJid {
    bare: BareJid,
    resource: String,
}

/// Any XMPP address.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Jid {
    Bare(BareJid),
    Full(FullJid),
}

impl BareJid {
    /// Build from already separated parts; each part is normalised.
    pub fn from_parts(node: Option<&str>, domain: &str) -> Result<Self, JidError> {
        Ok(BareJid {
            node: node.map(normalize_localpart).transpose()?,
            domain: normalize_domainpart(domain)?,
        })
    }

    /// A domain-only address, such as the server itself.
    pub fn domain_jid(domain: &str) -> Result<Self, JidError> {
        Self::from_parts(None, domain)
    }

    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Add a resource, normalising it.
    pub fn with_resource(&self, resource: &str) -> Result<FullJid, JidError> {
        Ok(FullJid {
            bare: self.clone(),
            resource: normalize_resourcepart(resource)?,
        })
    }

    /// The domain-only address of this JID's domain.
    pub fn domain_bare(&self) -> BareJid {
        BareJid {
            node: None,
            domain: self.domain.clone(),
        }
    }
}

impl FullJid {
    pub fn bare(&self) -> &BareJid {
        &self.bare
    }

    pub fn to_bare(&self) -> BareJid {
        self.bare.clone()
    }

    pub fn node(&self) -> Option<&str> {
        self.bare.node()
    }

    pub fn domain(&self) -> &str {
        self.bare.domain()
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }
}

impl Jid {
    pub fn node(&self) -> Option<&str> {
        self.bare().node()
    }

    pub fn domain(&self) -> &str {
        self.bare().domain()
    }

    pub fn resource(&self) -> Option<&str> {
        match self {
            Jid::Bare(_) => None,
            Jid::Full(full) => Some(full.resource()),
        }
    }

    pub fn bare(&self) -> &BareJid {
        match self {
            Jid::Bare(bare) => bare,
            Jid::Full(full) => full.bare(),
        }
    }

    pub fn to_bare(&self) -> BareJid {
        self.bare().clone()
    }

    pub fn as_full(&self) -> Option<&FullJid> {
        match self {
            Jid::Bare(_) => None,
            Jid::Full(full) => Some(full),
        }
    }

    pub fn is_bare(&self) -> bool {
        matches!(self, Jid::Bare(_))
    }
}

/// Split `[local@]domain[/resource]` per RFC 7622 section 3.1: the resource
/// starts at the first '/', the localpart ends at the first '@' before it.
/// So the resourcepart may contain '@' and '/', and the other two parts may
/// contain neither (the localpart forbids both, section 3.3.1; the domainpart
/// allows neither under the STD3 rules, section 3.2).
fn split(input: &str) -> (Option<&str>, &str, Option<&str>) {
    let (rest, resource) = match input.find('/') {
        Some(slash) => (&input[..slash], Some(&input[slash + 1..])),
        None => (input, None),
    };
    match rest.find('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..], resource),
        None => (None, rest, resource),
    }
}

impl FromStr for Jid {
    type Err = JidError;

    fn from_str(input: &str) -> Result<Self, JidError> {
        let (node, domain, resource) = split(input);
        let bare = BareJid::from_parts(node, domain)?;
        match resource {
            None => Ok(Jid::Bare(bare)),
            Some(resource) => Ok(Jid::Full(bare.with_resource(resource)?)),
        }
    }
}

impl FromStr for BareJid {
    type Err = JidError;

    fn from_str(input: &str) -> Result<Self, JidError> {
        match input.parse::<Jid>()? {
            Jid::Bare(bare) => Ok(bare),
            Jid::Full(_) => Err(JidError::ResourceUnexpected),
        }
    }
}

impl FromStr for FullJid {
    type Err = JidError;

    fn from_str(input: &str) -> Result<Self, JidError> {
        match input.parse::<Jid>()? {
            Jid::Full(full) => Ok(full),
            Jid::Bare(_) => Err(JidError::ResourceMissing),
        }
    }
}

impl fmt::Display for BareJid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => write!(f, "{}@{}", node, self.domain),
            None => f.write_str(&self.domain),
        }
    }
}

impl fmt::Display for FullJid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.bare, self.resource)
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Jid::Bare(bare) => bare.fmt(f),
            Jid::Full(full) => full.fmt(f),
        }
    }
}

macro_rules! debug_as_display {
    ($($ty:ty),*) => {$(
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), self)
            }
        }
    )*};
}
debug_as_display!(BareJid, FullJid, Jid);

impl From<BareJid> for Jid {
    fn from(bare: BareJid) -> Self {
        Jid::Bare(bare)
    }
}

impl From<FullJid> for Jid {
    fn from(full: FullJid) -> Self {
        Jid::Full(full)
    }
}

impl PartialEq<BareJid> for Jid {
    fn eq(&self, other: &BareJid) -> bool {
        matches!(self, Jid::Bare(bare) if bare == other)
    }
}

impl PartialEq<FullJid> for Jid {
    fn eq(&self, other: &FullJid) -> bool {
        matches!(self, Jid::Full(full) if full == other)
    }
}

#[cfg(test)]
mod tests;
