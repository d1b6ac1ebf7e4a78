//! Capability tokens (DESIGN section 3).
//!
//! A [`Token`] is a chain of signed blocks in the style of Biscuit. Block 0 is signed by the issuing node and names
//! the resource, its kind, the rights, and optionally an expiry and an audience. Every block names the public half of
//! a fresh key pair, and the next block must be signed by its secret half. An unsealed token carries that secret for
//! its last block, so whoever holds it can add a block offline; a block may only narrow (fewer rights, an earlier
//! expiry, an audience, a sub-path). [`Token::seal`] replaces the secret with a signature by it, after which nobody
//! can add blocks and nobody can drop blocks either: a proof for an earlier block's key cannot be made.
//!
//! Each signature covers the block's body bytes and the previous block's signature, so blocks from different tokens
//! cannot be spliced together; verification checks exactly the bytes that were received.
//!
//! Users pass tokens around inside a [`Ref`] (see [`crate::reference`]), in base64url. Decoding is bounded: at most
//! [`MAX_TOKEN_BYTES`] bytes and [`MAX_BLOCKS`] blocks.
//!
//! Layout: this file holds the token, its narrowing rules and verification; `wire` its encoding and base64 text.

#[cfg(test)]
pub(crate) mod tests;
mod wire;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::identity::{self, hex, random_bytes, Identity, NodeKey};
use crate::kind::{Kind, Rights};
/// Re-exported so that `token::Ref` paths keep working.
pub use crate::reference::Ref;
use wire::{to_vec, Sig};

/// The largest encoded token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// The most blocks a token may have.
pub const MAX_BLOCKS: usize = 16;
/// The longest base64url text of a token of [`MAX_TOKEN_BYTES`] bytes.
pub const MAX_TOKEN_TEXT: usize = (MAX_TOKEN_BYTES * 4).div_ceil(3);

const BLOCK_CONTEXT: &str = "metac token block v1";
const SEAL_CONTEXT: &str = "metac token seal v1";

/// Errors issuing, attenuating, decoding or parsing tokens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Identity(#[from] identity::Error),
    #[error("cannot issue: the token {0}")]
    Issue(Violation),
    #[error("the caveat {0}; a caveat can only narrow a ref")]
    Caveat(Violation),
    #[error("this ref is sealed and cannot be attenuated; ask whoever sealed it for an unsealed copy")]
    Sealed,
    #[error("this ref already has {MAX_BLOCKS} blocks, the most allowed; attenuate an earlier copy of it instead")]
    ChainFull,
    #[error("the attenuated token would be {len} bytes, more than the {MAX_TOKEN_BYTES} allowed; use a shorter path")]
    WouldBeTooLong { len: usize },
    #[error("the token's attenuation key does not match its last block: it is damaged; copy the whole ref again")]
    KeyMismatch,
    #[error("token is {len} bytes, more than the {MAX_TOKEN_BYTES} allowed; refusing to read it")]
    TooLong { len: usize },
    #[error("token has {count} blocks, but a token has 1 to {MAX_BLOCKS}; it is damaged or forged")]
    BlockCount { count: u64 },
    #[error("token bytes are damaged ({0}); copy the whole ref again")]
    Malformed(postcard::Error),
    #[error("token has {count} unexpected bytes after its end; copy exactly the ref you were given")]
    TrailingBytes { count: usize },
    #[error("block {block} of the token does not decode: it is damaged or from a newer metac")]
    BadBody { block: usize },
    #[error("token text is {len} characters, more than the {MAX_TOKEN_TEXT} a token can take; refusing to read it")]
    TextTooLong { len: usize },
    #[error("token text is not base64url without padding ({0}); copy the whole ref again")]
    Base64(base64::DecodeError),
    #[error("{0:?} is not an id: ids are 32 hex digits")]
    BadId(String),
}

/// Why a token does not verify. Each message tells the user what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("ref was issued by node {issuer}, not by this node ({verifier}); bind it through the node that issued it")]
    WrongIssuer { issuer: NodeKey, verifier: NodeKey },
    #[error("bad signature on block {block}: the ref was tampered with; ask its issuer for a new one")]
    BadSignature { block: usize },
    #[error(
        "the ref's final proof does not match its last block: it was truncated or tampered with; ask for a new one"
    )]
    BadProof,
    #[error("block {block} {violation}: the ref was forged; ask its issuer for a new one")]
    Invalid { block: usize, violation: Violation },
    #[error("revoked (token id {id}); ask the issuer for a new ref")]
    Revoked { id: TokenId },
    #[error("expired at {}; ask the issuer for a new ref", when(.at))]
    Expired { at: u64 },
    #[error("this ref is for node {audience}, not for node {bearer} (wrong audience); ask for a ref made out to you")]
    WrongAudience { audience: NodeKey, bearer: NodeKey },
    #[error("this ref is for resource {kind}, a kind this node does not know (from a newer metac); upgrade it")]
    UnknownKind { kind: Kind },
}

/// A way a block fails to be a valid narrowing of the block before it; read as "block N {violation}".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The block grants no right at all.
    NoRights,
    /// The block grants rights its kind does not have.
    RightsNotForKind { rights: Rights, kind: Kind },
    /// The block names a path on a kind other than fs.
    PathNotForKind { kind: Kind },
    /// The path is not absolute, contains `..` or a NUL byte.
    BadPath { path: String, reason: &'static str },
    /// The block widens `what` (rights, expiry, audience or path) from `from` to `to`.
    Widens { what: &'static str, from: String, to: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NoRights => f.write_str("grants no rights"),
            Violation::RightsNotForKind { rights, kind } => {
                write!(f, "grants {rights}, but {kind} refs can only have {}", kind.rights())
            }
            Violation::PathNotForKind { kind } => write!(f, "names a path, but only fs refs have paths, not {kind}"),
            Violation::BadPath { path, reason } => write!(f, "names path {path:?}, which {reason}"),
            Violation::Widens { what, from, to } => write!(f, "widens the {what} ({from} -> {to})"),
        }
    }
}

/// Formats unix seconds as RFC 3339, or as plain seconds past the year 9999.
fn when(t: &u64) -> String {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    if *t > LAST_SECOND_OF_9999 {
        return format!("unix time {t}");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(*t)).to_string()
}

fn parse_hex16(s: &str) -> Result<[u8; 16], Error> {
    let bad = || Error::BadId(s.to_string());
    let b = s.as_bytes();
    if b.len() != 32 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(b.chunks(2)) {
        let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
        let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
        *o = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex(&self.0))
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<$name, Error> {
                parse_hex16(s).map($name)
            }
        }
    };
}

hex_id!(
    /// The id of one block of a token; revoking it revokes that token and everything attenuated from it.
    TokenId
);
hex_id!(
    /// The id of an exported resource, chosen by the exporting node.
    ResourceId
);

impl ResourceId {
    /// A fresh random resource id.
    pub fn random() -> Result<ResourceId, identity::Error> {
        random_bytes().map(ResourceId)
    }
}

/// Restrictions to add when attenuating a token; `None` keeps what the token already has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caveat {
    /// The rights to keep; must be a non-empty subset of the current ones.
    pub rights: Option<Rights>,
    /// Unix seconds at which the token stops working; must not be later than the current expiry.
    pub expires: Option<u64>,
    /// The only node that may use the token; cannot change once set.
    pub audience: Option<NodeKey>,
    /// The absolute sub-path of an fs export the token is limited to; must lie within the current one.
    pub path: Option<String>,
}

/// What a token grants once every block is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The resource.
    pub resource: ResourceId,
    /// Its kind.
    pub kind: Kind,
    /// The rights granted.
    pub rights: Rights,
    /// Unix seconds from which the token no longer works.
    pub expires: Option<u64>,
    /// The only node that may use it, if limited.
    pub audience: Option<NodeKey>,
    /// The sub-path of an fs export it is limited to, if any; from [`Token::verify`] always absolute, with no empty,
    /// `.` or `..` components.
    pub path: Option<String>,
}

/// The restrictions every block states in full; a block's are the token's effective ones at that block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Caveats {
    id: TokenId,
    rights: Rights,
    expires: Option<u64>,
    audience: Option<NodeKey>,
    path: Option<String>,
    next_key: [u8; 32],
    /// `commit(secret of next_key)`: lets a verifier check the unsealed proof with one hash instead of a curve
    /// multiplication (the signature over this block makes the commitment as trustworthy as the key itself).
    next_commit: [u8; 32],
}

/// The body of block 0.
#[derive(Serialize, Deserialize)]
struct RootBody {
    issuer: NodeKey,
    resource: ResourceId,
    kind: Kind,
    caveats: Caveats,
}

/// One block as held in memory: the wire form plus its decoded caveats.
#[derive(Clone, PartialEq, Eq)]
struct Block {
    body: Vec<u8>,
    sig: Sig,
    caveats: Caveats,
}

/// What proves the holder received the whole chain: the last key's secret, or its signature sealing the chain.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Proof {
    Secret([u8; 32]),
    Seal(Sig),
}

/// A capability token: a chain of signed blocks that only ever narrow, see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    issuer: NodeKey,
    resource: ResourceId,
    kind: Kind,
    blocks: Vec<Block>,
    proof: Proof,
}

impl fmt::Debug for Token {
    // Never print the attenuation secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id())
            .field("issuer", &self.issuer)
            .field("resource", &self.resource)
            .field("kind", &self.kind)
            .field("depth", &self.depth())
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

/// The 32 bytes a block's signature signs: its body, chained to the previous block's signature.
fn block_digest(prev: Option<&Sig>, body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(BLOCK_CONTEXT);
    match prev {
        None => h.update(&[0]),
        Some(s) => h.update(&[1]).update(&s.0),
    };
    *h.update(body).finalize().as_bytes()
}

fn seal_digest(last: &Sig) -> [u8; 32] {
    blake3::derive_key(SEAL_CONTEXT, &last.0)
}

/// Signatures and proofs already verified, as keyed hashes of what was checked; bounded (it starts over when
/// full), and only ever remembers successes, so it can make verification faster but never more lenient.
pub struct SigCache {
    key: [u8; 32],
    seen: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    capacity: usize,
}

impl SigCache {
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> SigCache {
        // A random hash key: entries cannot be predicted or planted from outside.
        let key = random_bytes().unwrap_or([7; 32]);
        SigCache { key, seen: std::sync::Mutex::new(Default::default()), capacity }
    }

    fn check(&self, parts: &[&[u8]], verify: impl FnOnce() -> bool) -> bool {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        for p in parts {
            h.update(&(p.len() as u32).to_le_bytes()).update(p);
        }
        let id = *h.finalize().as_bytes();
        if self.seen.lock().expect("sig cache lock").contains(&id) {
            return true;
        }
        let ok = verify();
        if ok {
            let mut seen = self.seen.lock().expect("sig cache lock");
            if seen.len() >= self.capacity {
                seen.clear();
            }
            seen.insert(id);
        }
        ok
    }
}

/// Strict ed25519 verification: also refuses weak keys, so a crafted `next_key` cannot make forging trivial.
fn check_sig(key: &[u8; 32], msg: &[u8; 32], sig: &Sig) -> bool {
    match ed25519_dalek::VerifyingKey::from_bytes(key) {
        Ok(k) => k.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig.0)).is_ok(),
        Err(_) => false,
    }
}

/// The commitment to a block secret that the block before it carries.
fn commit(secret: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("metac token secret v1", secret)
}

fn public_of(seed: &[u8; 32]) -> [u8; 32] {
    Identity::from_secret(*seed).public().0
}

/// Path components, ignoring empty ones and `.`, so `/a//b/.` and `/a/b` are the same path.
fn components(p: &str) -> impl Iterator<Item = &str> {
    p.split('/').filter(|c| !c.is_empty() && *c != ".")
}

fn check_path(p: &str) -> Result<(), Violation> {
    let reason = if !p.starts_with('/') {
        "is not absolute"
    } else if p.contains('\0') {
        "contains a NUL byte"
    } else if components(p).any(|c| c == "..") {
        "contains a '..' component"
    } else {
        return Ok(());
    };
    Err(Violation::BadPath { path: p.to_string(), reason })
}

/// The canonical form of a checked path: `/` and the components joined by `/`.
fn normalize_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in components(p) {
        out.push('/');
        out.push_str(c);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn is_sub_path(child: &str, parent: &str) -> bool {
    let mut c = components(child);
    components(parent).all(|p| c.next() == Some(p))
}

fn opt_to_string<T: fmt::Display>(v: Option<&T>, none: &str) -> String {
    v.map_or_else(|| none.to_string(), T::to_string)
}

/// Checks that `next` is valid for `kind` and, if there is a `prev`, only narrows it. No allocation unless invalid.
fn check_block(kind: Kind, prev: Option<&Caveats>, next: &Caveats) -> Result<(), Violation> {
    if next.rights.is_empty() {
        return Err(Violation::NoRights);
    }
    if !next.rights.is_subset_of(kind.rights()) {
        return Err(Violation::RightsNotForKind { rights: next.rights, kind });
    }
    if let Some(p) = &next.path {
        if kind != Kind::Fs {
            return Err(Violation::PathNotForKind { kind });
        }
        check_path(p)?;
    }
    let Some(prev) = prev else { return Ok(()) };
    if !next.rights.is_subset_of(prev.rights) {
        return Err(Violation::Widens { what: "rights", from: prev.rights.to_string(), to: next.rights.to_string() });
    }
    if let Some(e) = prev.expires {
        if next.expires.is_none_or(|n| n > e) {
            let to = next.expires.as_ref().map_or_else(|| "never".to_string(), when);
            return Err(Violation::Widens { what: "expiry", from: when(&e), to });
        }
    }
    if let Some(a) = prev.audience.filter(|a| next.audience != Some(*a)) {
        let to = opt_to_string(next.audience.as_ref(), "anyone");
        return Err(Violation::Widens { what: "audience", from: a.to_string(), to });
    }
    if let Some(pp) = &prev.path {
        if !next.path.as_deref().is_some_and(|np| is_sub_path(np, pp)) {
            let to = opt_to_string(next.path.as_ref(), "the whole export");
            return Err(Violation::Widens { what: "path", from: pp.clone(), to });
        }
    }
    Ok(())
}

impl Token {
    /// Issues a new token for `resource`, signed by `issuer`, with an attenuation secret (unsealed).
    pub fn issue(
        issuer: &Identity,
        resource: ResourceId,
        kind: Kind,
        rights: Rights,
        expires: Option<u64>,
        audience: Option<NodeKey>,
    ) -> Result<Token, Error> {
        let secret = random_bytes::<32>()?;
        let id = TokenId(random_bytes()?);
        let t = Token::issue_from(issuer, resource, kind, rights, expires, audience, id, secret);
        check_block(kind, None, &t.blocks[0].caveats).map_err(Error::Issue)?;
        Ok(t)
    }

    /// [`Token::issue`] with the id and secret given and no check of the caveats (golden and attack tests).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn issue_from(
        issuer: &Identity,
        resource: ResourceId,
        kind: Kind,
        rights: Rights,
        expires: Option<u64>,
        audience: Option<NodeKey>,
        id: TokenId,
        secret: [u8; 32],
    ) -> Token {
        let caveats = Caveats {
            id,
            rights,
            expires,
            audience,
            path: None,
            next_key: public_of(&secret),
            next_commit: commit(&secret),
        };
        let root = RootBody { issuer: issuer.public(), resource, kind, caveats };
        let body = to_vec(&root);
        let sig = Sig(issuer.sign(&block_digest(None, &body)));
        let block = Block { body, sig, caveats: root.caveats };
        Token { issuer: root.issuer, resource, kind, blocks: vec![block], proof: Proof::Secret(secret) }
    }

    /// A copy of this token with one more block that narrows it by `c`; refuses anything that would widen it.
    pub fn attenuate(&self, c: &Caveat) -> Result<Token, Error> {
        self.attenuate_with(c, TokenId(random_bytes()?), random_bytes::<32>()?)
    }

    /// [`Token::attenuate`] with the new block's id and secret given.
    pub(crate) fn attenuate_with(&self, c: &Caveat, id: TokenId, next_secret: [u8; 32]) -> Result<Token, Error> {
        let Proof::Secret(secret) = &self.proof else { return Err(Error::Sealed) };
        let prev = &self.last().caveats;
        if blake3::Hash::from(commit(secret)) != blake3::Hash::from(prev.next_commit)
            || public_of(secret) != prev.next_key
        {
            return Err(Error::KeyMismatch);
        }
        if self.blocks.len() >= MAX_BLOCKS {
            return Err(Error::ChainFull);
        }
        let path = match &c.path {
            Some(p) => {
                check_path(p).map_err(Error::Caveat)?;
                Some(normalize_path(p))
            }
            None => prev.path.clone(),
        };
        let caveats = Caveats {
            id,
            rights: c.rights.unwrap_or(prev.rights),
            expires: c.expires.or(prev.expires),
            audience: c.audience.or(prev.audience),
            path,
            next_key: public_of(&next_secret),
            next_commit: commit(&next_secret),
        };
        check_block(self.kind, Some(prev), &caveats).map_err(Error::Caveat)?;
        let token = self.extend_unchecked(secret, caveats, next_secret);
        // Sealing swaps a 32-byte secret for a 64-byte signature; the sealed form must still decode.
        let len = token.encode().len() + 32;
        if len > MAX_TOKEN_BYTES {
            return Err(Error::WouldBeTooLong { len });
        }
        Ok(token)
    }

    /// Appends a block signed with `secret` without checking that it narrows; verify is what checks.
    fn extend_unchecked(&self, secret: &[u8; 32], caveats: Caveats, next_secret: [u8; 32]) -> Token {
        let body = to_vec(&caveats);
        let sig = Sig(Identity::from_secret(*secret).sign(&block_digest(Some(&self.last().sig), &body)));
        let mut token = self.clone();
        token.blocks.push(Block { body, sig, caveats });
        token.proof = Proof::Secret(next_secret);
        token
    }

    /// A copy that can no longer be attenuated: the secret is replaced by its signature over the last block.
    pub fn seal(&self) -> Token {
        let mut token = self.clone();
        if let Proof::Secret(secret) = &self.proof {
            token.proof = Proof::Seal(Sig(Identity::from_secret(*secret).sign(&seal_digest(&self.last().sig))));
        }
        token
    }

    /// True if the token cannot be attenuated.
    pub fn is_sealed(&self) -> bool {
        matches!(self.proof, Proof::Seal(_))
    }

    fn last(&self) -> &Block {
        // Every constructor makes at least the root block, and decode refuses zero blocks.
        self.blocks.last().expect("a token has at least one block")
    }

    /// The id of the last block: the id of this token as opposed to the ones it was attenuated from.
    pub fn id(&self) -> TokenId {
        self.last().caveats.id
    }

    /// The ids of all blocks, root first; revoking any of them revokes this token.
    pub fn ids(&self) -> Vec<TokenId> {
        self.blocks.iter().map(|b| b.caveats.id).collect()
    }

    /// The id of block 0, the token the issuer handed out.
    pub fn root_id(&self) -> TokenId {
        self.blocks[0].caveats.id
    }

    /// The node that issued the token.
    pub fn issuer(&self) -> NodeKey {
        self.issuer
    }

    /// The resource the token is for.
    pub fn resource(&self) -> ResourceId {
        self.resource
    }

    /// The kind of that resource.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The number of blocks, 1 for a freshly issued token.
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// What the token grants, folding all blocks, WITHOUT checking signatures or narrowing: for display only; use
    /// [`Token::verify`] before acting on it.
    pub fn effective(&self) -> Grant {
        let first = &self.blocks[0].caveats;
        let mut g = Grant {
            resource: self.resource,
            kind: self.kind,
            rights: first.rights,
            expires: first.expires,
            audience: first.audience,
            path: None,
        };
        for c in self.blocks.iter().map(|b| &b.caveats) {
            g.rights = g.rights.intersect(c.rights);
            g.expires = match (g.expires, c.expires) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            g.audience = g.audience.or(c.audience);
            if c.path.is_some() {
                g.path.clone_from(&c.path);
            }
        }
        g
    }

    /// Checks the token as its issuer: `issuer` is this node's key, `bearer` the authenticated node presenting it.
    /// Checks every signature and the final proof, that every block only narrows, revocation of any block id,
    /// expiry (expired once `now_unix >= expires`) and audience; returns what the token grants.
    pub fn verify(
        &self,
        issuer: &NodeKey,
        now_unix: u64,
        bearer: &NodeKey,
        is_revoked: impl Fn(&TokenId) -> bool,
    ) -> Result<Grant, VerifyError> {
        self.verify_with(issuer, now_unix, bearer, is_revoked, None)
    }

    /// [`Token::verify`] that skips the curve operations for signatures and proofs `cache` has seen verified; the
    /// exporter keeps one, so a ref bound again costs a few hashes.
    pub fn verify_cached(
        &self,
        issuer: &NodeKey,
        now_unix: u64,
        bearer: &NodeKey,
        is_revoked: impl Fn(&TokenId) -> bool,
        cache: &SigCache,
    ) -> Result<Grant, VerifyError> {
        self.verify_with(issuer, now_unix, bearer, is_revoked, Some(cache))
    }

    fn verify_with(
        &self,
        issuer: &NodeKey,
        now_unix: u64,
        bearer: &NodeKey,
        is_revoked: impl Fn(&TokenId) -> bool,
        cache: Option<&SigCache>,
    ) -> Result<Grant, VerifyError> {
        let check_sig = |key: &[u8; 32], msg: &[u8; 32], sig: &Sig| match cache {
            Some(c) => c.check(&[key, msg, &sig.0[..32], &sig.0[32..]], || check_sig(key, msg, sig)),
            None => check_sig(key, msg, sig),
        };
        if self.issuer != *issuer {
            return Err(VerifyError::WrongIssuer { issuer: self.issuer, verifier: *issuer });
        }
        if !self.kind.is_known() {
            return Err(VerifyError::UnknownKind { kind: self.kind });
        }
        let mut key = &self.issuer.0;
        let mut prev: Option<&Block> = None;
        for (i, b) in self.blocks.iter().enumerate() {
            if !check_sig(key, &block_digest(prev.map(|p| &p.sig), &b.body), &b.sig) {
                return Err(VerifyError::BadSignature { block: i });
            }
            check_block(self.kind, prev.map(|p| &p.caveats), &b.caveats)
                .map_err(|violation| VerifyError::Invalid { block: i, violation })?;
            key = &b.caveats.next_key;
            prev = Some(b);
        }
        let last = self.last();
        let proven = match &self.proof {
            // Constant-time comparison (blake3::Hash's Eq).
            Proof::Secret(secret) => blake3::Hash::from(commit(secret)) == blake3::Hash::from(last.caveats.next_commit),
            Proof::Seal(sig) => check_sig(key, &seal_digest(&last.sig), sig),
        };
        if !proven {
            return Err(VerifyError::BadProof);
        }
        if let Some(b) = self.blocks.iter().find(|b| is_revoked(&b.caveats.id)) {
            return Err(VerifyError::Revoked { id: b.caveats.id });
        }
        let c = &last.caveats;
        if let Some(at) = c.expires.filter(|&at| now_unix >= at) {
            return Err(VerifyError::Expired { at });
        }
        if let Some(audience) = c.audience.filter(|a| a != bearer) {
            return Err(VerifyError::WrongAudience { audience, bearer: *bearer });
        }
        Ok(Grant {
            resource: self.resource,
            kind: self.kind,
            rights: c.rights,
            expires: c.expires,
            audience: c.audience,
            path: c.path.as_deref().map(normalize_path),
        })
    }
}
