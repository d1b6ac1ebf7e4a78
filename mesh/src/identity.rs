//! Node identity: one ed25519 key pair per node, the overlay address derived from it, and the X25519 key that
//! the overlay's WireGuard tunnels use. Everything a peer needs follows from the 32-byte public key.

use std::fmt;
use std::io::Write;
use std::net::Ipv6Addr;
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The overlay prefix `fd6f:e1da:f01c::/48`.
pub const OVERLAY_PREFIX: [u8; 6] = [0xfd, 0x6f, 0xe1, 0xda, 0xf0, 0x1c];

/// Errors loading or using an identity.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read identity key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write identity key {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error(
        "identity key {path} is {len} bytes, expected 32: the file is damaged; move it away to create a new identity"
    )]
    BadLength { path: String, len: usize },
    #[error("{0:?} is not a valid ed25519 public key")]
    BadPublicKey([u8; 32]),
    #[error("no system randomness: {0}")]
    Random(String),
}

/// A node's public key: what identifies a node everywhere in metac.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeKey(pub [u8; 32]);

impl NodeKey {
    /// The overlay address that belongs to this key.
    pub fn overlay_addr(&self) -> Ipv6Addr {
        overlay_addr(&self.0)
    }

    /// The key as an ed25519 verifying key; fails for byte strings that are not curve points.
    pub fn verifying(&self) -> Result<VerifyingKey, Error> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| Error::BadPublicKey(self.0))
    }

    /// Checks an ed25519 signature made by this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        match self.verifying() {
            Ok(k) => k.verify(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok(),
            Err(_) => false,
        }
    }

    /// Lowercase hex of the key.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<NodeKey> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(NodeKey(out))
    }

    /// The X25519 public key of this node's WireGuard tunnel: the Montgomery form of the ed25519 key.
    pub fn x25519_public(&self) -> Result<[u8; 32], Error> {
        Ok(self.verifying()?.to_montgomery().to_bytes())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The overlay address of an ed25519 public key: the /48 prefix, then the first 80 bits of
/// `blake3::derive_key("metac overlay address v1", key)`.
pub fn overlay_addr(public: &[u8; 32]) -> Ipv6Addr {
    overlay_addr_in("metac overlay address v1", public)
}

/// An address in the overlay prefix for `key` under a blake3 key-derivation `context`: the prefix, then the first
/// 80 bits of `blake3::derive_key(context, key)`. Nodes use [`overlay_addr`]'s context; other kinds of overlay
/// members (stock WireGuard guests) use their own, so their addresses never follow from a node's.
pub fn overlay_addr_in(context: &str, key: &[u8; 32]) -> Ipv6Addr {
    let h = blake3::derive_key(context, key);
    let mut a = [0u8; 16];
    a[..6].copy_from_slice(&OVERLAY_PREFIX);
    a[6..].copy_from_slice(&h[..10]);
    Ipv6Addr::from(a)
}

/// True if `addr` lies in `fd6f:e1da:f01c::/48`.
pub fn is_overlay_addr(addr: &Ipv6Addr) -> bool {
    addr.octets()[..6] == OVERLAY_PREFIX
}

/// Fills a buffer from the OS random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| Error::Random(e.to_string()))?;
    Ok(b)
}

/// A node's secret identity.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({:?})", self.public())
    }
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Result<Identity, Error> {
        Ok(Identity::from_secret(random_bytes::<32>()?))
    }

    /// The identity whose ed25519 secret seed is `seed`.
    pub fn from_secret(seed: [u8; 32]) -> Identity {
        Identity { signing: SigningKey::from_bytes(&seed) }
    }

    /// Loads the key at `path`, creating it (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Identity, Error> {
        let p = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => {
                let seed: [u8; 32] =
                    bytes.as_slice().try_into().map_err(|_| Error::BadLength { path: p.clone(), len: bytes.len() })?;
                tighten(path).map_err(|source| Error::Write { path: p, source })?;
                Ok(Identity::from_secret(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Identity::generate()?;
                id.write_new(path).map_err(|source| Error::Write { path: p, source })?;
                Ok(id)
            }
            Err(source) => Err(Error::Read { path: p, source }),
        }
    }

    fn write_new(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Write to a temporary name and rename, so a crash never leaves a half-written key behind.
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&self.secret())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// The 32-byte ed25519 secret seed.
    pub fn secret(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> NodeKey {
        NodeKey(self.signing.verifying_key().to_bytes())
    }

    /// The overlay address.
    pub fn overlay_addr(&self) -> Ipv6Addr {
        self.public().overlay_addr()
    }

    /// Signs a message.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// The X25519 static secret for WireGuard: the clamped scalar of the ed25519 secret (the standard
    /// Edwards-to-Montgomery map), so its public half is [`NodeKey::x25519_public`].
    pub fn x25519_secret(&self) -> [u8; 32] {
        self.signing.to_scalar_bytes()
    }
}

/// Makes a key file readable by its owner alone. A key that others could read (copied with `cp`, restored from a
/// backup) is fixed, with a warning: whoever read it can impersonate this node, and the user should know.
fn tighten(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "{} was readable by other users (mode {mode:o}); made it 0600. If anyone else could read it, they can act \
             as this node: delete it to make a new identity",
            path.display()
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_addr_is_in_prefix_and_stable() {
        let id = Identity::from_secret([7; 32]);
        let a = id.overlay_addr();
        assert!(is_overlay_addr(&a));
        assert_eq!(a, overlay_addr(&id.public().0));
        assert_ne!(a, Identity::from_secret([8; 32]).overlay_addr());
        assert_eq!(a.segments()[0], 0xfd6f);
        assert_eq!(a.segments()[2], 0xf01c);
    }

    #[test]
    fn x25519_public_is_montgomery_form_of_ed25519_public() {
        for seed in [[1u8; 32], [42; 32], [255; 32]] {
            let id = Identity::from_secret(seed);
            let secret = x25519_dalek::StaticSecret::from(id.x25519_secret());
            let public = x25519_dalek::PublicKey::from(&secret);
            assert_eq!(public.to_bytes(), id.public().x25519_public().unwrap());
        }
    }

    #[test]
    fn key_file_is_created_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("metac-id-test-{}", std::process::id()));
        let path = dir.join("identity.key");
        let a = Identity::load_or_create(&path).unwrap();
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // Attack (issue 10, finding 8): a key others can read was accepted silently. Now it is made 0600.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Identity::load_or_create(&path).unwrap().public(), a.public());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, b"short").unwrap();
        let err = Identity::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("5 bytes, expected 32"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hex_round_trip_and_signatures() {
        let id = Identity::from_secret([3; 32]);
        let k = id.public();
        assert_eq!(NodeKey::from_hex(&k.to_hex()), Some(k));
        assert_eq!(NodeKey::from_hex("zz"), None);
        let sig = id.sign(b"hello");
        assert!(k.verify(b"hello", &sig));
        assert!(!k.verify(b"hellO", &sig));
    }
}
