//! Node adverts: what a node tells the mesh about itself (its addresses and the resources it exports), signed by
//! its key so that anyone can relay them and nobody can forge them. Last sequence number wins per node.

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, NodeKey};
use crate::kind::Kind;
use crate::token::{ResourceId, TokenId};

/// Largest encoded advert accepted, checked before decoding.
pub const MAX_ADVERT_BYTES: usize = 64 * 1024;
/// Most resources one advert may list.
pub const MAX_RESOURCES: usize = 1024;
/// Most listen addresses one advert may list.
pub const MAX_ADDRS: usize = 32;
/// Most revoked token ids one advert may list.
pub const MAX_REVOKED: usize = 256;
/// Longest name, description or address string in an advert.
pub const MAX_STRING: usize = 1024;

/// Why an advert was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("advert is {0} bytes, more than the {MAX_ADVERT_BYTES} allowed")]
    TooLarge(usize),
    #[error("advert does not decode: {0}")]
    Decode(String),
    #[error("advert lists {0} {1}, more than the {2} allowed")]
    TooMany(usize, &'static str, usize),
    #[error("advert has a string of {0} bytes, more than the {MAX_STRING} allowed")]
    LongString(usize),
    #[error("advert signature does not verify for node {0}")]
    BadSignature(NodeKey),
}

/// One exported resource as the mesh sees it: never a token, unless exported for the whole mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceInfo {
    /// The resource's id, unique on its node.
    pub id: ResourceId,
    /// What kind of resource it is.
    pub kind: Kind,
    /// A short human name.
    pub name: String,
    /// A longer description, may be empty.
    pub description: String,
    /// A ref anyone in the mesh may use, for resources exported `--public`.
    pub public_ref: Option<String>,
}

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// The node's public key.
    pub node: NodeKey,
    /// Increases with every change; the highest wins.
    pub seq: u64,
    /// Multiaddrs the node listens on.
    pub addrs: Vec<String>,
    /// The UDP endpoint of the node's overlay tunnel, if it runs one.
    pub tunnel: Option<String>,
    /// The resources the node exports.
    pub resources: Vec<ResourceInfo>,
    /// Token ids this node revoked, newest first (at most [`MAX_REVOKED`]), for everyone's information: the
    /// exporter enforces revocation itself, this lets others tell a user before they try.
    pub revoked: Vec<TokenId>,
}

impl Advert {
    fn check_bounds(&self) -> Result<(), Error> {
        if self.resources.len() > MAX_RESOURCES {
            return Err(Error::TooMany(self.resources.len(), "resources", MAX_RESOURCES));
        }
        if self.revoked.len() > MAX_REVOKED {
            return Err(Error::TooMany(self.revoked.len(), "revoked tokens", MAX_REVOKED));
        }
        if self.addrs.len() > MAX_ADDRS {
            return Err(Error::TooMany(self.addrs.len(), "addresses", MAX_ADDRS));
        }
        let strings = self.addrs.iter().chain(self.tunnel.iter()).chain(
            self.resources.iter().flat_map(|r| [&r.name, &r.description].into_iter().chain(r.public_ref.iter())),
        );
        for s in strings {
            if s.len() > MAX_STRING {
                return Err(Error::LongString(s.len()));
            }
        }
        Ok(())
    }

    /// Signs the advert with `id`; only `self.node`'s own identity makes an advert that verifies.
    pub fn sign(&self, id: &Identity) -> Signed {
        let body = postcard::to_allocvec(self).expect("adverts always encode");
        let sig = id.sign(&signing_input(&body));
        Signed { body, sig: sig.to_vec(), advert: self.clone() }
    }
}

fn signing_input(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 20);
    m.extend_from_slice(b"metac advert v1\0");
    m.extend_from_slice(body);
    m
}

/// Decodes exactly one value: trailing bytes are refused, so every advert has one encoding.
fn exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|e| Error::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::Decode(format!("{} unexpected bytes after the advert", rest.len())));
    }
    Ok(v)
}

/// The wire form of a signed advert.
#[derive(Serialize, Deserialize)]
struct Wire {
    body: Vec<u8>,
    sig: Vec<u8>,
}

/// A signed advert: the exact bytes that were signed, the signature, and the decoded advert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    body: Vec<u8>,
    sig: Vec<u8>,
    advert: Advert,
}

impl Signed {
    /// The advert (already checked for bounds; signature checked by [`Signed::verify`]).
    pub fn advert(&self) -> &Advert {
        &self.advert
    }

    /// The node that signed it.
    pub fn node(&self) -> NodeKey {
        self.advert.node
    }

    /// Its sequence number.
    pub fn seq(&self) -> u64 {
        self.advert.seq
    }

    /// Checks the signature against the advert's own node key.
    pub fn verify(&self) -> Result<(), Error> {
        let sig: [u8; 64] = self.sig.as_slice().try_into().map_err(|_| Error::BadSignature(self.advert.node))?;
        if self.advert.node.verify(&signing_input(&self.body), &sig) {
            Ok(())
        } else {
            Err(Error::BadSignature(self.advert.node))
        }
    }

    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(&Wire { body: self.body.clone(), sig: self.sig.clone() }).expect("adverts always encode")
    }

    /// Decodes from the wire, bounded; does not check the signature.
    pub fn decode(bytes: &[u8]) -> Result<Signed, Error> {
        if bytes.len() > MAX_ADVERT_BYTES {
            return Err(Error::TooLarge(bytes.len()));
        }
        let wire: Wire = exact(bytes)?;
        let advert: Advert = exact(&wire.body)?;
        advert.check_bounds()?;
        Ok(Signed { body: wire.body, sig: wire.sig, advert })
    }

    /// Bytes this advert takes on the wire (for traffic accounting).
    pub fn wire_len(&self) -> usize {
        self.body.len() + self.sig.len() + 4
    }
}

impl Serialize for Signed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire { body: self.body.clone(), sig: self.sig.clone() }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Signed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        if wire.body.len() > MAX_ADVERT_BYTES {
            return Err(serde::de::Error::custom(Error::TooLarge(wire.body.len())));
        }
        let advert: Advert = exact(&wire.body).map_err(serde::de::Error::custom)?;
        advert.check_bounds().map_err(serde::de::Error::custom)?;
        Ok(Signed { body: wire.body, sig: wire.sig, advert })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(id: &Identity, seq: u64) -> Advert {
        Advert {
            node: id.public(),
            seq,
            addrs: vec!["/ip6/fd00:77::1/tcp/4747".into()],
            tunnel: None,
            resources: vec![ResourceInfo {
                id: ResourceId([1; 16]),
                kind: Kind::File,
                name: "disk.img".into(),
                description: String::new(),
                public_ref: None,
            }],
            revoked: vec![TokenId([2; 16])],
        }
    }

    #[test]
    fn sign_encode_decode_verify() {
        let id = Identity::from_secret([9; 32]);
        let s = sample(&id, 3).sign(&id);
        let d = Signed::decode(&s.encode()).unwrap();
        assert_eq!(d, s);
        d.verify().unwrap();
    }

    #[test]
    fn forged_advert_is_refused() {
        let id = Identity::from_secret([9; 32]);
        let other = Identity::from_secret([10; 32]);
        // Signed by another key but claiming to be `id`.
        let mut a = sample(&id, 3);
        let good = a.sign(&id);
        a.seq = 4;
        let body = postcard::to_allocvec(&a).unwrap();
        let forged = Signed { sig: other.sign(&signing_input(&body)).to_vec(), body, advert: a };
        assert_eq!(forged.verify(), Err(Error::BadSignature(id.public())));
        // A flipped byte in the body.
        let mut bytes = good.encode();
        let n = bytes.len();
        bytes[n - 70] ^= 1;
        if let Ok(s) = Signed::decode(&bytes) {
            assert!(s.verify().is_err());
        }
    }

    #[test]
    fn encoding_is_pinned() {
        let id = Identity::from_secret([9; 32]);
        let bytes = sample(&id, 3).sign(&id).encode();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN, "advert encoding changed");
    }

    /// `sample(Identity::from_secret([9; 32]), 3)`, signed: body (node, seq, addrs, tunnel, resources with kind
    /// `file` = 0, revoked) and signature.
    const GOLDEN: &str = concat!(
        "6afd1724385aa0c75b64fb78cd602fa1d991fdebf76b13c58ed702eac835e9f6180301182f6970362f666430303a3737",
        "3a3a312f7463702f3437343700010101010101010101010101010101010100086469736b2e696d670000010202020202",
        "020202020202020202020240deb2ffc8b3adaca639fd65ca41f5c3fd78e345b9bd246820e6ba9237ecb7412a6f130335",
        "bc9d39d2075816d6ec362d8bfb77ae53b79e1cb5e123434968a48c00",
    );

    #[test]
    fn an_advert_with_a_kind_from_a_newer_metac_is_accepted_and_relayed_unchanged() {
        let id = Identity::from_secret([9; 32]);
        let mut a = sample(&id, 3);
        a.resources[0].kind = Kind::Unknown(77);
        let s = a.sign(&id);
        let bytes = s.encode();
        let d = Signed::decode(&bytes).unwrap();
        d.verify().unwrap();
        assert_eq!(d.advert().resources[0].kind, Kind::Unknown(77));
        assert_eq!(d.advert().resources[0].kind.to_string(), "kind-77");
        assert_eq!(d.encode(), bytes, "relayed bytes must be the signed ones");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let id = Identity::from_secret([9; 32]);
        let mut bytes = sample(&id, 1).sign(&id).encode();
        bytes.push(0);
        assert_eq!(Signed::decode(&bytes), Err(Error::Decode("1 unexpected bytes after the advert".into())));
    }

    #[test]
    fn oversized_is_refused_before_decoding() {
        assert_eq!(Signed::decode(&vec![0; MAX_ADVERT_BYTES + 1]), Err(Error::TooLarge(MAX_ADVERT_BYTES + 1)));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Signed::decode(&bytes);
        }
    }
}
