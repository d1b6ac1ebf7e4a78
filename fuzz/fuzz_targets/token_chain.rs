//! Adversarial token chains for `metac_mesh::token`. The input builds a chain the way an attacker holding some of its
//! secrets could: a root issued by a fixed node (or claimed by another), then attenuations that narrow, widen or are
//! signed by the wrong key or over the wrong block, blocks swapped, dropped, duplicated, truncated or spliced in from
//! a second chain, bytes flipped, inner blocks rewritten and re-signed, sealed or unsealed with any key. The chain is
//! written in the token's wire format by this target (it knows the format, as an attacker would) and decoded by
//! `Token::decode`, then verified for a few (verifier, now, bearer) triples.
//!
//! Checks: nothing panics; decode accepts exactly what the format allows and re-encodes to the same bytes; `verify`
//! accepts exactly when a model written from the design does (every block signed by the key the block before it
//! names, over that block's signature; the proof matching the last block; every block a narrowing; no block revoked,
//! not expired, audience the bearer), so in particular a chain with a block signed by a key not entitled to sign it
//! never verifies; a grant is within every block of its chain (rights a subset, expiry no later, audience the same,
//! path beneath); the cached verification agrees; and `attenuate` never widens a token nor makes a refused one pass.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use metac_mesh::token::{self, SigCache};
use metac_mesh::{Caveat, Grant, Identity, Kind, NodeKey, ResourceId, Rights, Token, TokenId, VerifyError};
use serde::{Deserialize, Serialize};

const BLOCK_CONTEXT: &str = "metac token block v1";
const SEAL_CONTEXT: &str = "metac token seal v1";
const SECRET_CONTEXT: &str = "metac token secret v1";

/// Every key in play is `Identity::from_secret([seed; 32])` for a seed in `1..=KEYS`; 1 is the issuer, 2 another node.
const KEYS: u8 = 16;
const ISSUER: u8 = 1;
/// Most operations on a chain per input.
const MAX_OPS: usize = 24;

/// Reads the input a few bytes at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map(|(b, r)| (*b, r)).unwrap_or((0, &[]));
        self.0 = rest;
        b
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |v, _| v << 8 | u64::from(self.u8()))
    }

    /// Mostly small times, so that expiries and `now` meet; sometimes any, or the very end.
    fn time(&mut self) -> u64 {
        match self.u8() {
            b @ 0..=199 => u64::from(b) * 10,
            200..=254 => self.u64(),
            255 => u64::MAX,
        }
    }

    fn opt_time(&mut self) -> Option<u64> {
        if self.u8() & 1 == 0 {
            None
        } else {
            Some(self.time())
        }
    }

    fn seed(&mut self) -> u8 {
        1 + self.u8() % KEYS
    }

    fn key(&mut self) -> NodeKey {
        keys()[usize::from(self.seed())].1
    }

    fn opt_key(&mut self) -> Option<NodeKey> {
        if self.u8() & 1 == 0 {
            None
        } else {
            Some(self.key())
        }
    }

    /// A path over a few components, `.`, `..`, empty ones and a NUL, absolute or not.
    fn path(&mut self) -> String {
        const PARTS: [&str; 7] = ["a", "b", "c", ".", "..", "", "a\0"];
        let head = self.u8();
        let parts: Vec<&str> = (0..head % 5).map(|_| PARTS[usize::from(self.u8()) % PARTS.len()]).collect();
        let joined = parts.join("/");
        if head & 0x80 == 0 {
            format!("/{joined}")
        } else {
            joined
        }
    }

    fn opt_path(&mut self) -> Option<String> {
        if self.u8() % 3 == 2 {
            Some(self.path())
        } else {
            None
        }
    }

    fn index(&mut self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            usize::from(self.u8()) % len
        }
    }
}

/// The identities of seeds `1..=KEYS` (index 0 unused), made once: deriving public keys is the slow part.
fn keys() -> &'static [(Identity, NodeKey)] {
    static K: OnceLock<Vec<(Identity, NodeKey)>> = OnceLock::new();
    K.get_or_init(|| {
        (0..=KEYS)
            .map(|s| {
                let id = Identity::from_secret([s; 32]);
                let public = id.public();
                (id, public)
            })
            .collect()
    })
}

fn seed_of(key: &[u8; 32]) -> Option<u8> {
    (1..=KEYS).find(|&s| keys()[usize::from(s)].1 .0 == *key)
}

// The wire format, written from the design: block bodies are postcard structs, blocks are (body, 64-byte signature),
// the token is the block sequence then the proof enum.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Caveats {
    id: TokenId,
    rights: Rights,
    expires: Option<u64>,
    audience: Option<NodeKey>,
    path: Option<String>,
    next_key: [u8; 32],
    next_commit: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct RootBody {
    issuer: NodeKey,
    resource: ResourceId,
    kind: Kind,
    caveats: Caveats,
}

type Sig = [u8; 64];

/// A signature as it was made: by which public key, over what digest. Whatever is in a block now is valid exactly
/// when it is still these bytes and the key and digest are the ones verification expects.
#[derive(Clone, Copy, PartialEq)]
struct Signed {
    sig: Sig,
    key: [u8; 32],
    digest: [u8; 32],
}

impl Signed {
    fn holds(&self, sig: &Sig, key: [u8; 32], digest: [u8; 32]) -> bool {
        self.sig == *sig && self.key == key && self.digest == digest
    }
}

#[derive(Clone)]
struct Block {
    body: Vec<u8>,
    sig: Sig,
    signed: Signed,
}

#[derive(Clone)]
enum Proof {
    Secret([u8; 32]),
    Seal { sig: Sig, signed: Signed },
}

#[derive(Clone)]
struct Chain {
    blocks: Vec<Block>,
    proof: Proof,
}

fn block_digest(prev: Option<&Sig>, body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(BLOCK_CONTEXT);
    match prev {
        None => h.update(&[0]),
        Some(s) => h.update(&[1]).update(s),
    };
    *h.update(body).finalize().as_bytes()
}

fn seal_digest(last: &Sig) -> [u8; 32] {
    blake3::derive_key(SEAL_CONTEXT, last)
}

fn commit(seed: u8) -> [u8; 32] {
    blake3::derive_key(SECRET_CONTEXT, &[seed; 32])
}

fn sign(seed: u8, digest: [u8; 32]) -> (Sig, Signed) {
    let (id, public) = &keys()[usize::from(seed)];
    let sig = id.sign(&digest);
    (sig, Signed { sig, key: public.0, digest })
}

fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encodes plain structs")
}

fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match postcard::take_from_bytes(bytes) {
        Ok((v, [])) => Some(v),
        _ => None,
    }
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

impl Chain {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![];
        varint(&mut out, self.blocks.len() as u64);
        for b in &self.blocks {
            varint(&mut out, b.body.len() as u64);
            out.extend_from_slice(&b.body);
            out.extend_from_slice(&b.sig);
        }
        match &self.proof {
            Proof::Secret(s) => {
                out.push(0);
                out.extend_from_slice(s);
            }
            Proof::Seal { sig, .. } => {
                out.push(1);
                out.extend_from_slice(sig);
            }
        }
        out
    }

    /// The caveats of block `i` as they read at position `i` (a root body at 0).
    fn caveats(&self, i: usize) -> Option<Caveats> {
        let body = &self.blocks.get(i)?.body;
        if i == 0 {
            decode_exact::<RootBody>(body).map(|r| r.caveats)
        } else {
            decode_exact::<Caveats>(body)
        }
    }

    /// The seed of the key the last block names, if it is one of ours: whoever holds it may add a block.
    fn holder(&self) -> Option<u8> {
        self.caveats(self.blocks.len().checked_sub(1)?).and_then(|c| seed_of(&c.next_key))
    }

    fn last_sig(&self) -> Option<&Sig> {
        self.blocks.last().map(|b| &b.sig)
    }

    /// Appends a block with `caveats`, signed by `seed` over the signature of `prev` (the last block if `None`),
    /// and makes the proof the secret of the new block's key.
    fn push(&mut self, caveats: &Caveats, seed: u8, prev: Option<Sig>, next: u8) {
        let body = to_vec(caveats);
        let prev = prev.or_else(|| self.last_sig().copied());
        let (sig, signed) = sign(seed, block_digest(prev.as_ref(), &body));
        self.blocks.push(Block { body, sig, signed });
        self.proof = Proof::Secret([next; 32]);
    }

    /// Signs block `i` again with `seed`, over the signature now before it.
    fn resign(&mut self, i: usize, seed: u8) {
        let prev = i.checked_sub(1).map(|p| self.blocks[p].sig);
        let b = &mut self.blocks[i];
        (b.sig, b.signed) = sign(seed, block_digest(prev.as_ref(), &b.body));
    }
}

fn new_caveats(input: &mut Input, prev: Option<&Caveats>, narrow: bool) -> (Caveats, u8) {
    let next = input.seed();
    let id = TokenId([input.u8(); 16]);
    let c = match prev {
        Some(p) if narrow => {
            let rights = p.rights.intersect(Rights(u32::from(input.u8())));
            let cut = u64::from(input.u8());
            Caveats {
                id,
                rights: if rights.is_empty() { p.rights } else { rights },
                expires: p.expires.map(|e| e.saturating_sub(cut)).or_else(|| input.opt_time()),
                audience: p.audience.or_else(|| input.opt_key()),
                path: match (&p.path, input.u8() % 3) {
                    (Some(pp), 0) => Some(format!("{pp}/{}", input.path())),
                    (pp, _) => pp.clone(),
                },
                next_key: [0; 32],
                next_commit: [0; 32],
            }
        }
        _ => Caveats {
            id,
            rights: Rights(u32::from((input.u8() & 0x1f) ^ 1)),
            expires: input.opt_time(),
            audience: input.opt_key(),
            path: input.opt_path(),
            next_key: [0; 32],
            next_commit: [0; 32],
        },
    };
    (Caveats { next_key: keys()[usize::from(next)].1 .0, next_commit: commit(next), ..c }, next)
}

/// A root for `kind`, claimed by `issuer` and signed by `signer`.
fn root(input: &mut Input, kind: Kind, resource: ResourceId) -> Chain {
    let claimed = if input.u8() % 8 == 7 { 2 } else { ISSUER };
    let signer = if input.u8() % 8 == 7 { input.seed() } else { claimed };
    let (caveats, next) = new_caveats(input, None, false);
    let body = to_vec(&RootBody { issuer: keys()[usize::from(claimed)].1, resource, kind, caveats });
    let (sig, signed) = sign(signer, block_digest(None, &body));
    Chain { blocks: vec![Block { body, sig, signed }], proof: Proof::Secret([next; 32]) }
}

/// A second chain to splice from: same issuer, honest narrowing blocks.
fn make_donor(input: &mut Input, kind: Kind, resource: ResourceId) -> Chain {
    let mut d = root(input, kind, resource);
    for _ in 0..input.u8() % 4 {
        let holder = d.holder().unwrap_or(ISSUER);
        let (c, next) = new_caveats(input, d.caveats(d.blocks.len() - 1).as_ref(), true);
        d.push(&c, holder, None, next);
    }
    d
}

/// One move of the attacker; `donor` is made from the input the first time a move needs it.
fn step(input: &mut Input, chain: &mut Chain, donor: &mut Option<Chain>, kind: Kind, resource: ResourceId) {
    let len = chain.blocks.len();
    let last = len.checked_sub(1).and_then(|i| chain.caveats(i));
    match input.u8() % 14 {
        // Attenuations: narrowing, anything, signed by any key, or over the wrong block.
        op @ 0..=3 => {
            let (c, next) = new_caveats(input, last.as_ref(), op == 0);
            let holder = chain.holder().unwrap_or(ISSUER);
            let signer = if op == 2 { input.seed() } else { holder };
            let prev = (op == 3).then(|| match input.u8() % 3 {
                0 => [0; 64],
                1 => {
                    let d = donor.get_or_insert_with(|| make_donor(input, kind, resource));
                    d.blocks[input.index(d.blocks.len())].sig
                }
                _ => chain.blocks.get(input.index(len)).map_or([0; 64], |b| b.sig),
            });
            chain.push(&c, signer, prev, next);
        }
        4 if len > 1 => {
            let (i, j) = (input.index(len), input.index(len));
            chain.blocks.swap(i, j);
        }
        5 => chain.blocks.truncate(input.index(len + 1)),
        6 if len > 0 => {
            let b = chain.blocks[input.index(len)].clone();
            chain.blocks.insert(input.index(len + 1), b);
        }
        7 => {
            let d = donor.get_or_insert_with(|| make_donor(input, kind, resource));
            let b = d.blocks[input.index(d.blocks.len())].clone();
            chain.blocks.insert(input.index(len + 1), b);
            if input.u8() & 1 == 0 {
                chain.proof = d.proof.clone();
            }
        }
        8 if len > 0 => {
            chain.blocks.remove(input.index(len));
        }
        // Seal with the holder's key or any other.
        9 if len > 0 => {
            let seed = if input.u8() % 4 == 3 { input.seed() } else { chain.holder().unwrap_or(ISSUER) };
            let (sig, signed) = sign(seed, seal_digest(chain.last_sig().expect("a block")));
            chain.proof = Proof::Seal { sig, signed };
        }
        // Any secret as the proof (the right one unseals a sealed chain).
        10 => chain.proof = Proof::Secret([input.seed(); 32]),
        // Flip a byte of a body, a signature or the proof.
        11 if len > 0 => {
            let b = &mut chain.blocks[input.index(len)];
            let (at, flip) = (usize::from(input.u8()), input.u8().max(1));
            match input.u8() % 3 {
                0 if !b.body.is_empty() => {
                    let n = b.body.len();
                    b.body[at % n] ^= flip;
                }
                1 => b.sig[at % 64] ^= flip,
                _ => match &mut chain.proof {
                    Proof::Secret(s) => s[at % 32] ^= flip,
                    Proof::Seal { sig, .. } => sig[at % 64] ^= flip,
                },
            }
        }
        // Sign a block again, by any key, over the block now before it.
        12 if len > 0 => {
            let i = input.index(len);
            chain.resign(i, input.seed());
        }
        // Rewrite an inner block's caveats (any, also wider) and sign it with the key entitled to: what a holder
        // of an earlier block's secret can do. Verification must still refuse anything wider.
        13 if len > 1 => {
            let i = 1 + input.index(len - 1);
            let prev = chain.caveats(i - 1);
            let narrow = input.u8() & 1 == 0;
            let (c, _) = new_caveats(input, prev.as_ref(), narrow);
            let keep_keys = chain.caveats(i).map(|old| (old.next_key, old.next_commit));
            let (next_key, next_commit) = keep_keys.unwrap_or((c.next_key, c.next_commit));
            chain.blocks[i].body = to_vec(&Caveats { next_key, next_commit, ..c });
            let entitled = prev.and_then(|p| seed_of(&p.next_key)).unwrap_or(ISSUER);
            chain.resign(i, entitled);
        }
        _ => {}
    }
}

/// What decoding must find in the chain's bytes.
struct Model {
    issuer: NodeKey,
    resource: ResourceId,
    kind: Kind,
    caveats: Vec<Caveats>,
}

fn model_decode(chain: &Chain, bytes: &[u8]) -> Option<Model> {
    if bytes.len() > token::MAX_TOKEN_BYTES || chain.blocks.is_empty() || chain.blocks.len() > token::MAX_BLOCKS {
        return None;
    }
    let root: RootBody = decode_exact(&chain.blocks[0].body)?;
    let mut caveats = vec![root.caveats];
    for b in &chain.blocks[1..] {
        caveats.push(decode_exact(&b.body)?);
    }
    Some(Model { issuer: root.issuer, resource: root.resource, kind: root.kind, caveats })
}

fn components(p: &str) -> impl Iterator<Item = &str> {
    p.split('/').filter(|c| !c.is_empty() && *c != ".")
}

fn is_beneath(child: &str, parent: &str) -> bool {
    let (c, p): (Vec<&str>, Vec<&str>) = (components(child).collect(), components(parent).collect());
    c.len() >= p.len() && c[..p.len()] == p[..]
}

/// The design's narrowing rule for a block after `prev` (the root if `None`).
fn narrows(kind: Kind, prev: Option<&Caveats>, next: &Caveats) -> bool {
    if next.rights.is_empty() || !next.rights.is_subset_of(kind.rights()) {
        return false;
    }
    if let Some(p) = &next.path {
        if kind != Kind::Fs || !p.starts_with('/') || p.contains('\0') || components(p).any(|c| c == "..") {
            return false;
        }
    }
    let Some(prev) = prev else { return true };
    next.rights.is_subset_of(prev.rights)
        && prev.expires.is_none_or(|e| next.expires.is_some_and(|n| n <= e))
        && prev.audience.is_none_or(|a| next.audience == Some(a))
        && prev.path.as_deref().is_none_or(|pp| next.path.as_deref().is_some_and(|np| is_beneath(np, pp)))
}

/// Who may verify what with which bearer, at what time, with which ids revoked.
struct Check {
    verifier: NodeKey,
    now: u64,
    bearer: NodeKey,
    revoked: [TokenId; 2],
}

impl Check {
    fn read(input: &mut Input) -> Check {
        let verifier = if input.u8() % 8 == 7 { input.key() } else { keys()[usize::from(ISSUER)].1 };
        let (now, bearer) = (input.time(), input.key());
        // Block ids are `[b; 16]`; zeros, which a spent input gives, revoke none of them.
        let mut revoked = || TokenId([input.u8() ^ 0x55; 16]);
        Check { verifier, now, bearer, revoked: [revoked(), revoked()] }
    }

    fn verify(&self, t: &Token) -> Result<Grant, VerifyError> {
        t.verify(&self.verifier, self.now, &self.bearer, |id| self.revoked.contains(id))
    }

    fn verify_cached(&self, t: &Token, cache: &SigCache) -> Result<Grant, VerifyError> {
        t.verify_cached(&self.verifier, self.now, &self.bearer, |id| self.revoked.contains(id), cache)
    }

    /// Whether the design accepts the chain.
    fn accepts(&self, chain: &Chain, m: &Model) -> bool {
        let mut key = m.issuer.0;
        let mut prev: Option<&Block> = None;
        for (i, b) in chain.blocks.iter().enumerate() {
            let digest = block_digest(prev.map(|p| &p.sig), &b.body);
            if !b.signed.holds(&b.sig, key, digest) {
                return false;
            }
            key = m.caveats[i].next_key;
            prev = Some(b);
        }
        let last = m.caveats.last().expect("a block");
        let proven = match &chain.proof {
            Proof::Secret(s) => blake3::derive_key(SECRET_CONTEXT, s) == last.next_commit,
            Proof::Seal { sig, signed } => signed.holds(sig, key, seal_digest(chain.last_sig().expect("a block"))),
        };
        m.issuer == self.verifier
            && m.kind.is_known()
            && proven
            && (0..m.caveats.len()).all(|i| narrows(m.kind, i.checked_sub(1).map(|p| &m.caveats[p]), &m.caveats[i]))
            && !m.caveats.iter().any(|c| self.revoked.contains(&c.id))
            && last.expires.is_none_or(|e| self.now < e)
            && last.audience.is_none_or(|a| a == self.bearer)
    }
}

/// A grant is within every block of its chain, and usable by this bearer now.
fn check_grant(g: &Grant, m: &Model, c: &Check) {
    assert_eq!((g.resource, g.kind), (m.resource, m.kind));
    assert!(!g.rights.is_empty() && g.rights.is_subset_of(m.kind.rights()), "grant {:?}", g.rights);
    for (i, b) in m.caveats.iter().enumerate() {
        assert!(g.rights.is_subset_of(b.rights), "grant {:?} wider than block {i}'s {:?}", g.rights, b.rights);
        if let Some(e) = b.expires {
            assert!(g.expires.is_some_and(|x| x <= e), "grant expiry {:?} after block {i}'s {e}", g.expires);
        }
        if let Some(a) = b.audience {
            assert_eq!(g.audience, Some(a), "grant audience differs from block {i}'s");
        }
        if let Some(p) = &b.path {
            assert!(g.path.as_deref().is_some_and(|gp| is_beneath(gp, p)), "grant path {:?} not in {p:?}", g.path);
        }
    }
    assert!(g.expires.is_none_or(|e| c.now < e), "an expired grant");
    assert!(g.audience.is_none_or(|a| a == c.bearer), "a grant for another bearer");
    if let Some(p) = &g.path {
        let normal = p == "/" || (p.starts_with('/') && !p.ends_with('/') && !p.contains("//"));
        assert!(normal && !p.contains('\0') && components(p).all(|c| c != ".." && c != "."), "path {p:?}");
    }
}

/// `narrow` is within `wide`: what an attenuation must give.
fn check_narrower(narrow: &Grant, wide: &Grant) {
    assert!(narrow.rights.is_subset_of(wide.rights), "attenuation widened rights");
    if let Some(e) = wide.expires {
        assert!(narrow.expires.is_some_and(|x| x <= e), "attenuation widened the expiry");
    }
    if wide.audience.is_some() {
        assert_eq!(narrow.audience, wide.audience, "attenuation changed the audience");
    }
    if let Some(p) = &wide.path {
        assert!(narrow.path.as_deref().is_some_and(|n| is_beneath(n, p)), "attenuation widened the path");
    }
}

fn read_caveat(input: &mut Input) -> Caveat {
    let rights = (input.u8() & 1 == 1).then(|| Rights(u32::from(input.u8() & 0x1f)));
    Caveat { rights, expires: input.opt_time(), audience: input.opt_key(), path: input.opt_path() }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let kind = Kind::from_wire_id(u32::from(input.u8() % 8));
    let resource = ResourceId([input.u8() % 2; 16]);
    let mut chain = root(&mut input, kind, resource);
    let mut donor = None;
    // Once the input runs out every move reads zeros: a narrowing attenuation, so short inputs make long chains.
    for _ in 0..=usize::from(input.u8()) % MAX_OPS {
        step(&mut input, &mut chain, &mut donor, kind, resource);
    }
    let checks = [Check::read(&mut input), Check::read(&mut input)];

    let bytes = chain.encode();
    let model = model_decode(&chain, &bytes);
    let t = match Token::decode(&bytes) {
        Ok(t) => t,
        Err(e) => {
            assert!(model.is_none(), "a well-formed chain was refused: {e}");
            return;
        }
    };
    let m = model.expect("decode accepted a chain the format does not allow");
    assert_eq!(t.encode(), bytes, "re-encoding changed the bytes");
    assert_eq!(t.ids(), m.caveats.iter().map(|c| c.id).collect::<Vec<_>>());
    assert_eq!((t.issuer(), t.resource(), t.kind(), t.depth()), (m.issuer, m.resource, m.kind, m.caveats.len()));
    assert_eq!(t.is_sealed(), matches!(chain.proof, Proof::Seal { .. }));

    let cache = SigCache::new(64);
    let results: Vec<_> = checks.iter().map(|c| c.verify(&t)).collect();
    for (c, got) in checks.iter().zip(&results) {
        assert_eq!(got.is_ok(), c.accepts(&chain, &m), "verify disagrees with the design: {got:?}");
        assert_eq!(&c.verify_cached(&t, &cache), got, "cached verification disagrees");
        assert_eq!(&c.verify_cached(&t, &cache), got, "warm cached verification disagrees");
        match got {
            Ok(g) => {
                check_grant(g, &m, c);
                let e = t.effective();
                assert_eq!((e.rights, e.expires, e.audience), (g.rights, g.expires, g.audience));
            }
            Err(e) => drop(e.to_string()),
        }
    }

    // An honest holder attenuates what it received: never wider, never laundering a refused token.
    let caveat = read_caveat(&mut input);
    match t.attenuate(&caveat) {
        Err(e) => {
            let _ = e.to_string();
            if t.is_sealed() {
                assert!(matches!(e, token::Error::Sealed), "a sealed token failed to attenuate with {e}");
            }
        }
        Ok(t2) => {
            assert!(!t.is_sealed(), "a sealed token was attenuated");
            assert_eq!(t2.depth(), t.depth() + 1);
            assert_eq!(Token::decode(&t2.encode()).expect("an attenuated token decodes"), t2);
            let sealed = t2.seal();
            assert_eq!(Token::decode(&sealed.encode()).expect("a sealed token decodes"), sealed);
            for (c, before) in checks.iter().zip(&results) {
                let after = c.verify_cached(&t2, &cache);
                assert_eq!(c.verify_cached(&sealed, &cache), after, "sealing changed the verdict");
                match (before, &after) {
                    (Err(e), Ok(_)) => panic!("attenuating made a token refused with {e:?} verify"),
                    (Ok(wide), Ok(narrow)) => check_narrower(narrow, wide),
                    (Ok(_), Err(e)) => assert!(
                        matches!(e, VerifyError::Expired { .. } | VerifyError::WrongAudience { .. }),
                        "an honest attenuation of a good token was refused: {e:?}"
                    ),
                    (Err(_), Err(_)) => {}
                }
            }
        }
    }
});
