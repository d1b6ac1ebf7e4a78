//! Unit and property tests of tokens. `reference` tests reuse the helpers marked `pub(crate)`.

use super::wire::{to_vec, Sig, WireBlockRef};
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
    let a = t.attenuate(&Caveat { audience: Some(bearer()), path: Some("/a".into()), ..Caveat::default() }).unwrap();
    let refused = |c: Caveat| a.attenuate(&c).unwrap_err().to_string();
    let e = refused(caveat_rights(Rights::READ | Rights::WRITE));
    assert_eq!(e, "the caveat widens the rights (read -> read,write); a caveat can only narrow a ref");
    assert!(refused(caveat_rights(Rights::NONE)).contains("grants no rights"));
    assert!(refused(caveat_rights(Rights::EXEC)).contains("grants exec, but fs refs can only have read,write,admin"));
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
        proptest::option::of(prop::sample::select(vec!["/", "/a", "/a/b", "/a/b/c", "/b", "a", "/a/../b", "/a//b/"])),
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

/// A token built from fixed ids and secrets: its bytes must never change (old refs keep working).
fn golden_token() -> Token {
    let issuer = ident(1);
    let t = Token::issue_from(
        &issuer,
        ResourceId([5; 16]),
        Kind::File,
        Rights::READ | Rights::WRITE,
        Some(LATER),
        None,
        TokenId([6; 16]),
        [7; 32],
    );
    t.attenuate_with(&caveat_rights(Rights::READ), TokenId([8; 16]), [9; 32]).unwrap()
}

#[test]
fn token_encoding_is_pinned() {
    let t = golden_token();
    let hex: String = t.encode().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, GOLDEN_TOKEN, "token encoding changed");
    assert_eq!(Token::decode(&t.encode()).unwrap(), t);
    assert!(check(&ident(1), &t).is_ok());
}

/// [`golden_token`]: two blocks (a root for a `file` resource, read+write, expiring; a read-only narrowing) and
/// the attenuation secret.
const GOLDEN_TOKEN: &str = concat!(
    "028a018a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c05050505050505050505050505",
    "0505050006060606060606060606060606060606030180a8d6b9070000ea4a6c63e29c520abef5507b132ec5f9954776",
    "aebebe7b92421eea691446d22c0831591c0e6da79f921c800566928a3ba0cc78847bff077f5d25cfa9bbf84cb78d612f",
    "8f807058bc43f203c8b67b764f7a00f8d18fb04822425cea0326e9d29d87bdf5c4b4ddc2c311d967d932d6a90f8f7e09",
    "99276673fabfcd6a02913a97075908080808080808080808080808080808010180a8d6b9070000fd1724385aa0c75b64",
    "fb78cd602fa1d991fdebf76b13c58ed702eac835e9f61841a017c4f35e8931396bc68eb312d777965c96fa41ebd1a250",
    "fd3d413c7f8a30dcc19d7182a23ee3d85c6a10d061f71e648f9b5288c3b23653dbb1f858b0a0ca33f4b946e6153b2fd6",
    "c7ef1692675409409b6c4b7c7c2f9fdcd77ce808e62f0100090909090909090909090909090909090909090909090909",
    "0909090909090909",
);

#[test]
fn a_token_of_an_unknown_kind_decodes_but_is_refused_clearly() {
    let issuer = ident(1);
    let t = Token::issue_from(
        &issuer,
        ResourceId([5; 16]),
        Kind::Unknown(42),
        Rights::READ,
        None,
        None,
        TokenId([6; 16]),
        [7; 32],
    );
    let back = Token::decode(&t.encode()).unwrap();
    assert_eq!(back.kind(), Kind::Unknown(42));
    let e = check(&issuer, &back).unwrap_err();
    assert_eq!(e, VerifyError::UnknownKind { kind: Kind::Unknown(42) });
    assert!(e.to_string().contains("kind-42, a kind this node does not know"), "{e}");
}
