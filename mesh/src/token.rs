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

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::identity::{self, hex, random_bytes, Identity, NodeKey};
use crate::kind::{Kind, Rights};
/// Re-exported so that `token::Ref` paths keep working.
pub use crate::reference::Ref;

/// The largest encoded token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// The most blocks a token may have.
pub const MAX_BLOCKS: usize = 16;
/// The longest base64url text of a token of [`MAX_TOKEN_BYTES`] bytes.
pub const MAX_TOKEN_TEXT: usize = (MAX_TOKEN_BYTES * 4).div_ceil(3);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
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

/// An ed25519 signature; serde has no impls for arrays over 32, so this encodes as a 64-tuple (no length prefix).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Sig([u8; 64]);

impl Serialize for Sig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sig, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sig, A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(Sig(out))
            }
        }
        d.deserialize_tuple(64, V)
    }
}

/// One block as it travels: the body bytes exactly as signed, and the signature.
#[derive(Serialize, Deserialize)]
struct WireBlock {
    body: Vec<u8>,
    sig: Sig,
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

/// postcard only fails to encode types that serde cannot describe, or on a full fixed buffer; these are neither.
fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encodes plain structs into a Vec")
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
        let caveats = Caveats {
            id: TokenId(random_bytes()?),
            rights,
            expires,
            audience,
            path: None,
            next_key: public_of(&secret),
            next_commit: commit(&secret),
        };
        check_block(kind, None, &caveats).map_err(Error::Issue)?;
        let root = RootBody { issuer: issuer.public(), resource, kind, caveats };
        let body = to_vec(&root);
        let sig = Sig(issuer.sign(&block_digest(None, &body)));
        let block = Block { body, sig, caveats: root.caveats };
        Ok(Token { issuer: root.issuer, resource, kind, blocks: vec![block], proof: Proof::Secret(secret) })
    }

    /// A copy of this token with one more block that narrows it by `c`; refuses anything that would widen it.
    pub fn attenuate(&self, c: &Caveat) -> Result<Token, Error> {
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
        let next_secret = random_bytes::<32>()?;
        let caveats = Caveats {
            id: TokenId(random_bytes()?),
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

    /// The postcard encoding: the blocks (body bytes and signature each), then the secret or the seal.
    pub fn encode(&self) -> Vec<u8> {
        let blocks: Vec<WireBlockRef<'_>> =
            self.blocks.iter().map(|b| WireBlockRef { body: &b.body, sig: &b.sig }).collect();
        to_vec(&(blocks, &self.proof))
    }

    /// Decodes [`Token::encode`] output, refusing oversized input, too many blocks and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Token, Error> {
        if bytes.len() > MAX_TOKEN_BYTES {
            return Err(Error::TooLong { len: bytes.len() });
        }
        // The block count is postcard's length prefix of the sequence; check it before reading any block.
        let (count, mut rest) = postcard::take_from_bytes::<u64>(bytes).map_err(Error::Malformed)?;
        if count == 0 || count > MAX_BLOCKS as u64 {
            return Err(Error::BlockCount { count });
        }
        let mut wire = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let (b, r) = postcard::take_from_bytes::<WireBlock>(rest).map_err(Error::Malformed)?;
            wire.push(b);
            rest = r;
        }
        let (proof, rest) = postcard::take_from_bytes::<Proof>(rest).map_err(Error::Malformed)?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes { count: rest.len() });
        }
        let mut wire = wire.into_iter();
        let root = wire.next().expect("count >= 1");
        let body: RootBody = decode_exact(&root.body).ok_or(Error::BadBody { block: 0 })?;
        let mut blocks = vec![Block { body: root.body, sig: root.sig, caveats: body.caveats }];
        for (i, b) in wire.enumerate() {
            let caveats = decode_exact(&b.body).ok_or(Error::BadBody { block: i + 1 })?;
            blocks.push(Block { body: b.body, sig: b.sig, caveats });
        }
        Ok(Token { issuer: body.issuer, resource: body.resource, kind: body.kind, blocks, proof })
    }

    /// The token as base64url without padding, as it appears in a ref.
    pub fn to_base64(&self) -> String {
        B64.encode(self.encode())
    }

    /// Decodes [`Token::to_base64`] output; checks the length before decoding anything.
    pub fn from_base64(s: &str) -> Result<Token, Error> {
        if s.len() > MAX_TOKEN_TEXT {
            return Err(Error::TextTooLong { len: s.len() });
        }
        Token::decode(&B64.decode(s).map_err(Error::Base64)?)
    }
}

/// Borrowed twin of [`WireBlock`] for encoding without copying bodies; serializes identically.
#[derive(Serialize)]
struct WireBlockRef<'a> {
    body: &'a [u8],
    sig: &'a Sig,
}

/// Decodes a block body, refusing trailing bytes so that one body has exactly one encoding.
fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match postcard::take_from_bytes(bytes) {
        Ok((v, [])) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_000;
    const LATER: u64 = 2_000_000_000;

    pub(crate) fn ident(n: u8) -> Identity {
        Identity::from_secret([n; 32])
    }

    fn bearer() -> NodeKey {
        ident(9).public()
    }

    pub(crate) fn fs_token(rights: Rights) -> (Identity, Token) {
        let issuer = ident(1);
        let t = Token::issue(&issuer, ResourceId([5; 16]), Kind::Fs, rights, Some(LATER), None).unwrap();
        (issuer, t)
    }

    fn check(issuer: &Identity, t: &Token) -> Result<Grant, VerifyError> {
        t.verify(&issuer.public(), NOW, &bearer(), |_| false)
    }

    fn caveat_rights(r: Rights) -> Caveat {
        Caveat { rights: Some(r), ..Caveat::default() }
    }

    /// Adds a block without the narrowing checks, as a holder of the secret could by hand.
    fn forge(t: &Token, f: impl FnOnce(&mut Caveats)) -> Token {
        let Proof::Secret(secret) = &t.proof else { panic!("sealed") };
        let mut c = t.last().caveats.clone();
        c.id = TokenId([0xee; 16]);
        f(&mut c);
        let next = [0x42; 32];
        c.next_key = public_of(&next);
        c.next_commit = commit(&next);
        t.extend_unchecked(secret, c, next)
    }

    #[test]
    fn cached_verification_agrees_and_never_accepts_what_failed() {
        let (issuer, t) = fs_token(Rights::READ | Rights::WRITE);
        let t = t.attenuate(&caveat_rights(Rights::READ)).unwrap();
        let cache = SigCache::new(2);
        for _ in 0..3 {
            assert_eq!(t.verify_cached(&issuer.public(), NOW, &bearer(), |_| false, &cache), check(&issuer, &t));
        }
        // A widening block forged by a holder of the secret fails the same way with a warm cache.
        let bad = forge(&t, |c| c.rights = Rights::READ | Rights::WRITE);
        let cached = bad.verify_cached(&issuer.public(), NOW, &bearer(), |_| false, &cache);
        assert_eq!(cached, check(&issuer, &bad));
        assert!(cached.is_err());
        // A flipped signature byte in block 1 fails although block 0 is cached.
        let mut bytes = t.encode();
        let good = check(&issuer, &t).unwrap();
        let mut refused = 0;
        for i in 0..bytes.len() {
            bytes[i] ^= 0x10;
            if let Ok(m) = Token::decode(&bytes) {
                match m.verify_cached(&issuer.public(), NOW, &bearer(), |_| false, &cache) {
                    Ok(g) => assert!(m == t || g == good, "byte {i} changed the grant"),
                    Err(_) => refused += 1,
                }
            }
            bytes[i] ^= 0x10;
        }
        assert!(refused > 100, "most single-byte changes are refused ({refused})");
    }

    #[test]
    fn issue_then_verify_grants_what_was_issued() {
        let (issuer, t) = fs_token(Rights::READ | Rights::WRITE);
        let g = check(&issuer, &t).unwrap();
        assert_eq!(g.resource, ResourceId([5; 16]));
        assert_eq!(
            (g.kind, g.rights, g.expires, g.audience, g.path.clone()),
            (Kind::Fs, t.effective().rights, Some(LATER), None, None)
        );
        assert_eq!(g, t.effective());
        assert_eq!((t.depth(), t.id(), t.root_id(), t.issuer()), (1, t.root_id(), t.ids()[0], issuer.public()));
        assert!(!t.is_sealed());
    }

    #[test]
    fn attenuation_narrows_and_verifies() {
        let (issuer, t) = fs_token(Rights::READ | Rights::WRITE | Rights::ADMIN);
        let a = t
            .attenuate(&Caveat {
                rights: Some(Rights::READ | Rights::WRITE),
                expires: Some(5_000),
                audience: Some(bearer()),
                path: Some("/home//alice/./src/".into()),
            })
            .unwrap();
        let b = a
            .attenuate(&Caveat {
                rights: Some(Rights::READ),
                path: Some("/home/alice/src/lib".into()),
                ..Caveat::default()
            })
            .unwrap();
        let g = check(&issuer, &b).unwrap();
        assert_eq!(g.rights, Rights::READ);
        assert_eq!(g.expires, Some(5_000));
        assert_eq!(g.audience, Some(bearer()));
        assert_eq!(g.path.as_deref(), Some("/home/alice/src/lib"));
        assert_eq!(a.effective().path.as_deref(), Some("/home/alice/src"));
        assert_eq!(g, b.effective());
        assert_eq!(b.depth(), 3);
        assert_eq!(b.ids(), [t.id(), a.id(), b.id()]);
        assert_eq!(b.root_id(), t.id());
        // Attenuating with an empty caveat only adds a block.
        let c = b.attenuate(&Caveat::default()).unwrap();
        assert_eq!(check(&issuer, &c).unwrap(), g);
    }

    #[test]
    fn attenuation_refuses_widening() {
        let (_, t) = fs_token(Rights::READ);
        let a =
            t.attenuate(&Caveat { audience: Some(bearer()), path: Some("/a".into()), ..Caveat::default() }).unwrap();
        let refused = |c: Caveat| a.attenuate(&c).unwrap_err().to_string();
        let e = refused(caveat_rights(Rights::READ | Rights::WRITE));
        assert_eq!(e, "the caveat widens the rights (read -> read,write); a caveat can only narrow a ref");
        assert!(refused(caveat_rights(Rights::NONE)).contains("grants no rights"));
        assert!(
            refused(caveat_rights(Rights::EXEC)).contains("grants exec, but fs refs can only have read,write,admin")
        );
        let e = refused(Caveat { expires: Some(LATER + 1), ..Caveat::default() });
        assert!(e.contains("widens the expiry (2033-05-18T03:33:20Z -> 2033-05-18T03:33:21Z)"), "{e}");
        let e = refused(Caveat { audience: Some(ident(2).public()), ..Caveat::default() });
        assert!(e.contains("widens the audience"), "{e}");
        assert!(refused(Caveat { path: Some("/b".into()), ..Caveat::default() }).contains("widens the path (/a -> /b)"));
        assert!(refused(Caveat { path: Some("/".into()), ..Caveat::default() }).contains("widens the path"));
        assert!(refused(Caveat { path: Some("a/b".into()), ..Caveat::default() }).contains("is not absolute"));
        assert!(refused(Caveat { path: Some("/a/../b".into()), ..Caveat::default() }).contains("'..'"));
        assert!(refused(Caveat { path: Some("/a/\0".into()), ..Caveat::default() }).contains("NUL"));
        let issuer = ident(1);
        let file = Token::issue(&issuer, ResourceId([1; 16]), Kind::File, Rights::READ, None, None).unwrap();
        let e = file.attenuate(&Caveat { path: Some("/x".into()), ..Caveat::default() }).unwrap_err().to_string();
        assert!(e.contains("only fs refs have paths"), "{e}");
    }

    #[test]
    fn issue_refuses_rights_the_kind_lacks() {
        let issuer = ident(1);
        let e = Token::issue(&issuer, ResourceId([1; 16]), Kind::Fs, Rights::EXEC, None, None).unwrap_err();
        assert_eq!(e.to_string(), "cannot issue: the token grants exec, but fs refs can only have read,write,admin");
        let e = Token::issue(&issuer, ResourceId([1; 16]), Kind::Compute, Rights::NONE, None, None).unwrap_err();
        assert!(matches!(e, Error::Issue(Violation::NoRights)));
        assert!(Token::issue(&issuer, ResourceId([1; 16]), Kind::Compute, Rights::EXEC, None, None).is_ok());
    }

    #[test]
    fn chain_length_is_bounded() {
        let (issuer, mut t) = fs_token(Rights::READ);
        for _ in 1..MAX_BLOCKS {
            t = t.attenuate(&Caveat::default()).unwrap();
        }
        assert_eq!(t.depth(), MAX_BLOCKS);
        assert!(matches!(t.attenuate(&Caveat::default()), Err(Error::ChainFull)));
        let sealed = t.seal();
        assert!(sealed.encode().len() <= MAX_TOKEN_BYTES);
        assert_eq!(Token::decode(&sealed.encode()).unwrap(), sealed);
        check(&issuer, &sealed).unwrap();
        let long = "/x".repeat(2000);
        let (_, t) = fs_token(Rights::READ);
        assert!(matches!(
            t.attenuate(&Caveat { path: Some(long), ..Caveat::default() }),
            Err(Error::WouldBeTooLong { .. })
        ));
    }

    #[test]
    fn sealed_tokens_verify_but_refuse_attenuation() {
        let (issuer, t) = fs_token(Rights::READ);
        let s = t.attenuate(&Caveat { expires: Some(NOW + 1), ..Caveat::default() }).unwrap().seal();
        assert!(s.is_sealed());
        assert_eq!(s.seal(), s);
        check(&issuer, &s).unwrap();
        assert!(matches!(s.attenuate(&Caveat::default()), Err(Error::Sealed)));
        assert_eq!(Token::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn dropping_blocks_fails_verify() {
        let (issuer, t) = fs_token(Rights::READ | Rights::WRITE);
        let narrow = t.attenuate(&caveat_rights(Rights::READ)).unwrap().attenuate(&Caveat::default()).unwrap();
        for token in [narrow.clone(), narrow.seal()] {
            let mut cut = token.clone();
            cut.blocks.truncate(1);
            assert_eq!(check(&issuer, &cut), Err(VerifyError::BadProof));
        }
    }

    #[test]
    fn tampered_signature_or_body_fails_verify() {
        let (issuer, t) = fs_token(Rights::READ | Rights::WRITE);
        let t = t.attenuate(&caveat_rights(Rights::READ)).unwrap();
        for block in 0..2 {
            let mut bad = t.clone();
            bad.blocks[block].sig.0[10] ^= 1;
            assert_eq!(check(&issuer, &bad), Err(VerifyError::BadSignature { block }));
            let mut bad = t.clone();
            bad.blocks[block].body[3] ^= 1;
            assert_eq!(check(&issuer, &bad), Err(VerifyError::BadSignature { block }));
        }
        let e = VerifyError::BadSignature { block: 1 }.to_string();
        assert!(e.starts_with("bad signature on block 1: the ref was tampered with"), "{e}");
        let mut bad = t.clone();
        bad.proof = Proof::Secret([3; 32]);
        assert_eq!(check(&issuer, &bad), Err(VerifyError::BadProof));
        assert!(matches!(bad.attenuate(&Caveat::default()), Err(Error::KeyMismatch)));
    }

    #[test]
    fn blocks_cannot_be_spliced_between_tokens() {
        let (issuer, a) = fs_token(Rights::READ | Rights::WRITE);
        let (_, b) = fs_token(Rights::READ | Rights::WRITE);
        let b1 = b.attenuate(&caveat_rights(Rights::READ)).unwrap();
        let mut spliced = a.clone();
        spliced.blocks.push(b1.blocks[1].clone());
        spliced.proof = b1.proof.clone();
        assert_eq!(check(&issuer, &spliced), Err(VerifyError::BadSignature { block: 1 }));
    }

    #[test]
    fn expiry() {
        let (issuer, t) = fs_token(Rights::READ);
        let t = t.attenuate(&Caveat { expires: Some(2_000), ..Caveat::default() }).unwrap();
        let at = |now| t.verify(&issuer.public(), now, &bearer(), |_| false);
        assert!(at(1_999).is_ok());
        assert_eq!(at(2_000), Err(VerifyError::Expired { at: 2_000 }));
        let e = at(5_000).unwrap_err().to_string();
        assert_eq!(e, "expired at 1970-01-01T00:33:20Z; ask the issuer for a new ref");
        assert_eq!(
            VerifyError::Expired { at: u64::MAX }.to_string(),
            format!("expired at unix time {}; ask the issuer for a new ref", u64::MAX)
        );
    }

    #[test]
    fn revoking_any_block_id_revokes() {
        let (issuer, t) = fs_token(Rights::READ);
        let child = t.attenuate(&Caveat::default()).unwrap();
        for id in [t.id(), child.id()] {
            let r = child.verify(&issuer.public(), NOW, &bearer(), |x| *x == id);
            assert_eq!(r, Err(VerifyError::Revoked { id }));
            assert!(r.unwrap_err().to_string().starts_with(&format!("revoked (token id {id})")));
        }
        // Revoking the child leaves the parent usable.
        assert!(t.verify(&issuer.public(), NOW, &bearer(), |x| *x == child.id()).is_ok());
    }

    #[test]
    fn audience_must_be_the_bearer() {
        let (issuer, t) = fs_token(Rights::READ);
        let t = t.attenuate(&Caveat { audience: Some(ident(2).public()), ..Caveat::default() }).unwrap();
        let e = check(&issuer, &t).unwrap_err();
        assert_eq!(e, VerifyError::WrongAudience { audience: ident(2).public(), bearer: bearer() });
        assert!(e.to_string().contains("(wrong audience)"));
        assert!(t.verify(&issuer.public(), NOW, &ident(2).public(), |_| false).is_ok());
    }

    #[test]
    fn wrong_issuer() {
        let (issuer, t) = fs_token(Rights::READ);
        let other = ident(3);
        let e = check(&other, &t).unwrap_err();
        assert_eq!(e, VerifyError::WrongIssuer { issuer: issuer.public(), verifier: other.public() });
        assert!(e.to_string().starts_with(&format!("ref was issued by node {}, not by this node", issuer.public())));
    }

    #[test]
    fn hand_built_widening_blocks_fail_verify() {
        let (issuer, t) = fs_token(Rights::READ | Rights::WRITE);
        let t = t
            .attenuate(&Caveat {
                rights: Some(Rights::READ),
                audience: Some(bearer()),
                path: Some("/a".into()),
                ..Caveat::default()
            })
            .unwrap();
        let bad = forge(&t, |c| c.rights = Rights::READ | Rights::WRITE);
        let e = check(&issuer, &bad).unwrap_err();
        assert!(matches!(e, VerifyError::Invalid { block: 2, .. }));
        assert!(e.to_string().starts_with("block 2 widens the rights (read -> read,write)"), "{e}");
        let cases: [fn(&mut Caveats); 6] = [
            |c| c.expires = None,
            |c| c.expires = Some(LATER + 1),
            |c| c.audience = None,
            |c| c.path = Some("/".into()),
            |c| c.path = Some("/a/../b".into()),
            |c| c.rights = Rights::NONE,
        ];
        for f in cases {
            assert!(matches!(check(&issuer, &forge(&t, f)), Err(VerifyError::Invalid { block: 2, .. })));
        }
        // The forged blocks also survive encoding, so the issuer sees exactly this on the wire.
        assert_eq!(check(&issuer, &Token::decode(&bad.encode()).unwrap()), Err(e));
    }

    #[test]
    fn verify_returns_normalized_paths() {
        let (issuer, t) = fs_token(Rights::READ);
        let t = forge(&t, |c| c.path = Some("/a//b/./".into()));
        assert_eq!(check(&issuer, &t).unwrap().path.as_deref(), Some("/a/b"));
        let t = t.attenuate(&Caveat { path: Some("/a/b/c".into()), ..Caveat::default() }).unwrap();
        assert_eq!(check(&issuer, &t).unwrap().path.as_deref(), Some("/a/b/c"));
    }

    #[test]
    fn encode_decode_round_trip_and_limits() {
        let (_, t) = fs_token(Rights::READ);
        let t = t.attenuate(&Caveat { path: Some("/p".into()), ..Caveat::default() }).unwrap();
        let bytes = t.encode();
        assert_eq!(Token::decode(&bytes).unwrap(), t);
        assert_eq!(Token::from_base64(&t.to_base64()).unwrap(), t);

        let mut long = bytes.clone();
        long.resize(MAX_TOKEN_BYTES + 1, 0);
        assert!(matches!(Token::decode(&long), Err(Error::TooLong { len: 4097 })));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(Token::decode(&trailing), Err(Error::TrailingBytes { count: 1 })));
        assert!(matches!(Token::decode(&[0]), Err(Error::BlockCount { count: 0 })));
        assert!(matches!(Token::decode(&[17, 1, 2, 3]), Err(Error::BlockCount { count: 17 })));
        assert!(matches!(Token::decode(&[]), Err(Error::Malformed(_))));
        assert!(matches!(Token::decode(&bytes[..bytes.len() - 1]), Err(Error::Malformed(_))));
        // A block whose body is not a block body.
        let junk = to_vec(&(vec![WireBlockRef { body: &[1, 2, 3], sig: &Sig([0; 64]) }], Proof::Secret([0; 32])));
        assert!(matches!(Token::decode(&junk), Err(Error::BadBody { block: 0 })));

        assert!(matches!(Token::from_base64(&"A".repeat(MAX_TOKEN_TEXT + 1)), Err(Error::TextTooLong { .. })));
        assert!(matches!(Token::from_base64("a+b/"), Err(Error::Base64(_))));
        assert!(matches!(Token::from_base64(&format!("{}=", t.to_base64())), Err(Error::Base64(_))));
    }

    #[test]
    fn ids_round_trip_as_hex() {
        let id = TokenId([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(id.to_string().parse::<TokenId>().unwrap(), id);
        let r = ResourceId::random().unwrap();
        assert_eq!(r.to_string().parse::<ResourceId>().unwrap(), r);
        assert!(matches!("xyz".parse::<ResourceId>(), Err(Error::BadId(_))));
        assert!(matches!("zz".repeat(16).parse::<TokenId>(), Err(Error::BadId(_))));
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let (_, t) = fs_token(Rights::READ);
        let Proof::Secret(secret) = t.proof else { unreachable!() };
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(&hex(&secret)) && !dbg.contains(&format!("{secret:?}")), "{dbg}");
    }

    /// A random caveat, often widening, over a small set of audiences and paths so that collisions happen.
    fn caveat() -> impl Strategy<Value = Caveat> {
        (
            proptest::option::of(0u32..16),
            proptest::option::of(1u64..4_000),
            proptest::option::of(0u8..3),
            proptest::option::of(prop::sample::select(vec![
                "/", "/a", "/a/b", "/a/b/c", "/b", "a", "/a/../b", "/a//b/",
            ])),
        )
            .prop_map(|(rights, expires, audience, path)| Caveat {
                rights: rights.map(Rights),
                expires,
                audience: audience.map(|n| ident(10 + n).public()),
                path: path.map(str::to_string),
            })
    }

    /// A random valid token: issued by one of a few nodes, then attenuated by whichever random caveats are valid.
    pub(crate) fn token() -> impl Strategy<Value = (Identity, Token)> {
        (
            0u8..3,
            prop::sample::select(Kind::ALL.to_vec()),
            1u32..16,
            proptest::option::of(1u64..4_000),
            proptest::collection::vec(caveat(), 0..5),
            any::<bool>(),
        )
            .prop_map(|(who, kind, bits, expires, caveats, sealed)| {
                let issuer = ident(1 + who);
                let rights = Rights(bits).intersect(kind.rights());
                let rights = if rights.is_empty() { kind.rights() } else { rights };
                let mut t = Token::issue(&issuer, ResourceId([who; 16]), kind, rights, expires, None).unwrap();
                for c in &caveats {
                    if let Ok(next) = t.attenuate(c) {
                        t = next;
                    }
                }
                (issuer, if sealed { t.seal() } else { t })
            })
    }

    pub(crate) fn bearer_of(t: &Token) -> NodeKey {
        t.effective().audience.unwrap_or_else(bearer)
    }

    proptest! {
        #[test]
        fn prop_caveats_never_widen((issuer, t) in token(), caveats in proptest::collection::vec(caveat(), 1..6)) {
            let mut t = t;
            for c in &caveats {
                let Ok(next) = t.attenuate(c) else { continue };
                let (p, n) = (t.effective(), next.effective());
                prop_assert!(!n.rights.is_empty() && n.rights.is_subset_of(p.rights));
                if let Some(pe) = p.expires {
                    prop_assert!(n.expires.is_some_and(|ne| ne <= pe));
                }
                if p.audience.is_some() {
                    prop_assert_eq!(n.audience, p.audience);
                }
                if let Some(pp) = &p.path {
                    prop_assert!(is_sub_path(n.path.as_deref().unwrap(), pp));
                }
                let g = next.verify(&issuer.public(), 0, &bearer_of(&next), |_| false);
                prop_assert_eq!(g, Ok(n));
                t = next;
            }
        }

        #[test]
        fn prop_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..8192)) {
            let _ = Token::decode(&bytes);
        }

        #[test]
        fn prop_decode_of_valid_prefix_never_panics((_, t) in token(), tail in proptest::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>()) {
            let mut bytes = t.encode();
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend_from_slice(&tail);
            let _ = Token::decode(&bytes);
        }

        #[test]
        fn prop_parse_never_panics(s in ".{0,300}", tail in "[A-Za-z0-9_-]{0,300}") {
            let _ = Token::from_base64(&s);
            let _ = Token::from_base64(&tail);
        }

        #[test]
        fn prop_any_single_byte_change_is_caught((issuer, t) in token(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let mut bytes = t.encode();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            if let Ok(m) = Token::decode(&bytes) {
                let verified = m.verify(&issuer.public(), 0, &bearer_of(&t), |_| false);
                prop_assert!(verified.is_err() || m == t, "byte {} ^ {:#x} still verifies: {:?}", i, flip, verified);
            }
        }
    }
}
