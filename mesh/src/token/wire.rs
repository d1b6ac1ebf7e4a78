//! How a token travels: the postcard encoding of its blocks and final proof, the base64url text inside a ref, and
//! bounded decoding that checks sizes and the block count before reading anything.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Block, Error, Proof, RootBody, Token, MAX_BLOCKS, MAX_TOKEN_BYTES, MAX_TOKEN_TEXT};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// An ed25519 signature; serde has no impls for arrays over 32, so this encodes as a 64-tuple (no length prefix).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Sig(pub(super) [u8; 64]);

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

/// postcard only fails to encode types that serde cannot describe, or on a full fixed buffer; these are neither.
pub(super) fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encodes plain structs into a Vec")
}

impl Token {
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
pub(super) struct WireBlockRef<'a> {
    pub(super) body: &'a [u8],
    pub(super) sig: &'a Sig,
}

/// Decodes a block body, refusing trailing bytes so that one body has exactly one encoding.
fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match postcard::take_from_bytes(bytes) {
        Ok((v, [])) => Some(v),
        _ => None,
    }
}
