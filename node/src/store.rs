//! The node's store: one redb file at `$STATE/metac.redb` holding exports, issued and delegated tokens,
//! revocations, remembered peers, persistent binds, and each kind's own keys (see [`KindTable`]). Every write is
//! one durable transaction, so a node killed with SIGKILL comes back with everything it had acknowledged.
//!
//! Records are postcard, which is not self-describing: a field is added at the end of a record, and the record as
//! the earlier version wrote it is kept as a type of its own that is read and upgraded (`ExportV2`, `TokenV1`,
//! `BindV1`). Records from before the node knew its local users belong to root.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use metac_mesh::kind::{Kind, Rights};
use metac_mesh::token::{ResourceId, TokenId};
use metac_resource::Caller;

const EXPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("exports");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const REVOKED: TableDefinition<&str, u64> = TableDefinition::new("revoked");
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
const GUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("wg_guests");
const BINDS: TableDefinition<&str, &[u8]> = TableDefinition::new("binds");
const KINDS: TableDefinition<&str, &[u8]> = TableDefinition::new("kind_state");
const OVERLAY_RULES: TableDefinition<&str, &[u8]> = TableDefinition::new("overlay_rules");
const SAVED: TableDefinition<&str, &[u8]> = TableDefinition::new("saved_refs");

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the store {path} is in use by another metac node (one state dir per node; pass --state DIR)")]
    InUse { path: String },
    #[error("cannot open the store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store error: {0}")]
    Db(String),
    #[error("damaged store record in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
}

macro_rules! db_err {
    ($($t:ty),*) => { $(impl From<$t> for Error { fn from(e: $t) -> Self { Error::Db(e.to_string()) } })* };
}
db_err!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// One exported resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    /// Resource id.
    pub id: ResourceId,
    /// Its kind.
    pub kind: Kind,
    /// Human name.
    pub name: String,
    /// What is exported, in words (a path for files).
    pub source: String,
    /// Unix seconds when exported.
    pub created: u64,
    /// The most any of its refs grants (its first token's rights).
    pub rights: Rights,
    /// The kind's typed options, as JSON text (`null` for a record from before kinds had options: the kind derives
    /// them from `source`).
    pub options: String,
    /// The local user who exported it: the kind opens it as this user; only this uid or root may unexport it.
    pub owner: Caller,
}

/// An export as the first versions recorded it, before rights and options; read and upgraded on open.
#[derive(Deserialize)]
struct ExportV1 {
    id: ResourceId,
    kind: Kind,
    name: String,
    source: String,
    created: u64,
}

/// An export as recorded before owners.
#[derive(Deserialize)]
struct ExportV2 {
    id: ResourceId,
    kind: Kind,
    name: String,
    source: String,
    created: u64,
    rights: Rights,
    options: String,
}

impl From<ExportV1> for ExportV2 {
    fn from(v: ExportV1) -> ExportV2 {
        let rights = v.kind.rights();
        ExportV2 {
            id: v.id,
            kind: v.kind,
            name: v.name,
            source: v.source,
            created: v.created,
            rights,
            options: "null".into(),
        }
    }
}

impl From<ExportV2> for Export {
    fn from(v: ExportV2) -> Export {
        let ExportV2 { id, kind, name, source, created, rights, options } = v;
        Export { id, kind, name, source, created, rights, options, owner: Caller::root() }
    }
}

fn dec_export(b: &[u8]) -> Result<Export, Error> {
    upgraded::<Export, ExportV2>("exports", b)
        .or_else(|e| postcard::from_bytes::<ExportV1>(b).map(|v| ExportV2::from(v).into()).map_err(|_| e))
}

/// Decodes a record of `table`, or one as the version before wrote it (`Old`), upgraded. A record of the current
/// version never decodes as the old one by mistake: the current one is tried first, and an old record lacks the
/// fields at the end that the current one reads.
fn upgraded<T: DeserializeOwned, Old: DeserializeOwned + Into<T>>(table: &'static str, b: &[u8]) -> Result<T, Error> {
    dec(table, b).or_else(|e| postcard::from_bytes::<Old>(b).map(Into::into).map_err(|_| e))
}

/// A bind to re-establish when the node starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindRecord {
    /// The bind's id.
    pub id: String,
    /// The ref's kind.
    pub kind: Kind,
    /// The ref.
    pub reference: String,
    /// The kind's bind options, as JSON text.
    pub options: String,
    /// Unix seconds when made.
    pub created: u64,
    /// The local user it was made for: it comes back as theirs; only this uid or root may unbind it.
    pub owner: Caller,
}

/// A persistent bind as recorded before owners.
#[derive(Deserialize)]
struct BindV1 {
    id: String,
    kind: Kind,
    reference: String,
    options: String,
    created: u64,
}

impl From<BindV1> for BindRecord {
    fn from(v: BindV1) -> BindRecord {
        let BindV1 { id, kind, reference, options, created } = v;
        BindRecord { id, kind, reference, options, created, owner: Caller::root() }
    }
}

/// A token this node issued or delegated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's id (its last block).
    pub id: TokenId,
    /// The resource it grants.
    pub resource: ResourceId,
    /// The full ref string.
    pub reference: String,
    /// Unix seconds when made.
    pub created: u64,
    /// The parent token's id when this one was delegated from another.
    pub parent: Option<TokenId>,
    /// The uid of the local user it was issued or delegated for: its ref is shown to that user and root only.
    pub owner: u32,
}

/// A token as recorded before owners.
#[derive(Deserialize)]
struct TokenV1 {
    id: TokenId,
    resource: ResourceId,
    reference: String,
    created: u64,
    parent: Option<TokenId>,
}

impl From<TokenV1> for TokenRecord {
    fn from(v: TokenV1) -> TokenRecord {
        let TokenV1 { id, resource, reference, created, parent } = v;
        TokenRecord { id, resource, reference, created, parent, owner: 0 }
    }
}

fn dec_token(b: &[u8]) -> Result<TokenRecord, Error> {
    upgraded::<TokenRecord, TokenV1>("tokens", b)
}

fn dec_bind(b: &[u8]) -> Result<BindRecord, Error> {
    upgraded::<BindRecord, BindV1>("binds", b)
}

/// A stock WireGuard peer allowed into the overlay by `metac overlay wg-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    /// Its name on this node.
    pub name: String,
    /// Its X25519 public key.
    pub public: [u8; 32],
    /// Unix seconds when added.
    pub created: u64,
}

/// A ref a local user keeps under a name (`metac ref save NAME REF`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The uid of the user who saved it: names are per user, and a ref is shown to its user and root only.
    pub owner: u32,
    /// The name.
    pub name: String,
    /// The ref.
    pub reference: String,
    /// Unix seconds when saved.
    pub created: u64,
}

/// The store handle (cheap to share behind an `Arc`).
pub struct Store {
    db: Database,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("store records always encode")
}

fn dec<T: DeserializeOwned>(table: &'static str, b: &[u8]) -> Result<T, Error> {
    postcard::from_bytes(b).map_err(|e| Error::Corrupt { table, reason: e.to_string() })
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, Error> {
        let p = path.display().to_string();
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse { path: p.clone() },
            e => Error::Open { path: p.clone(), reason: e.to_string() },
        })?;
        // It holds every ref this node issued: its owner's alone, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Open { path: p.clone(), reason: format!("cannot make it private (chmod 600): {e}") })?;
        let w = db.begin_write()?;
        w.open_table(EXPORTS)?;
        w.open_table(TOKENS)?;
        w.open_table(REVOKED)?;
        w.open_table(PEERS)?;
        w.open_table(GUESTS)?;
        w.open_table(BINDS)?;
        w.open_table(KINDS)?;
        w.open_table(OVERLAY_RULES)?;
        w.open_table(SAVED)?;
        w.commit()?;
        Ok(Store { db })
    }

    fn put(&self, t: TableDefinition<&str, &[u8]>, key: &str, value: &[u8]) -> Result<(), Error> {
        let w = self.db.begin_write()?;
        w.open_table(t)?.insert(key, value)?;
        w.commit()?;
        Ok(())
    }

    fn all<T: DeserializeOwned>(&self, t: TableDefinition<&str, &[u8]>, name: &'static str) -> Result<Vec<T>, Error> {
        self.all_with(t, |b| dec(name, b))
    }

    fn all_with<T>(
        &self,
        t: TableDefinition<&str, &[u8]>,
        decode: impl Fn(&[u8]) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let r = self.db.begin_read()?;
        let table = r.open_table(t)?;
        let mut out = vec![];
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Records an export.
    pub fn put_export(&self, e: &Export) -> Result<(), Error> {
        self.put(EXPORTS, &e.id.to_string(), &enc(e))
    }

    /// Every export.
    pub fn exports(&self) -> Result<Vec<Export>, Error> {
        self.all_with(EXPORTS, dec_export)
    }

    /// Removes an export and revokes every token issued for it, in one transaction. Returns the export.
    pub fn remove_export(&self, id: &ResourceId, now: u64) -> Result<Option<Export>, Error> {
        let w = self.db.begin_write()?;
        let removed = {
            let mut exports = w.open_table(EXPORTS)?;
            let old = exports.remove(id.to_string().as_str())?.map(|v| dec_export(v.value())).transpose()?;
            old
        };
        if removed.is_some() {
            let tokens = w.open_table(TOKENS)?;
            let mut ids = vec![];
            for row in tokens.iter()? {
                let (_, v) = row?;
                let t = dec_token(v.value())?;
                if t.resource == *id {
                    ids.push(t.id);
                }
            }
            drop(tokens);
            let mut revoked = w.open_table(REVOKED)?;
            for t in ids {
                revoked.insert(t.to_string().as_str(), now)?;
            }
        }
        w.commit()?;
        Ok(removed)
    }

    /// Records a token.
    pub fn put_token(&self, t: &TokenRecord) -> Result<(), Error> {
        self.put(TOKENS, &t.id.to_string(), &enc(t))
    }

    /// Every token recorded.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        self.all_with(TOKENS, dec_token)
    }

    /// Revokes a token id (and so every token descended from it).
    pub fn revoke(&self, id: &TokenId, now: u64) -> Result<(), Error> {
        let w = self.db.begin_write()?;
        w.open_table(REVOKED)?.insert(id.to_string().as_str(), now)?;
        w.commit()?;
        Ok(())
    }

    /// Every revoked token id (hex).
    pub fn revoked(&self) -> Result<Vec<String>, Error> {
        let r = self.db.begin_read()?;
        let t = r.open_table(REVOKED)?;
        let mut out = vec![];
        for row in t.iter()? {
            out.push(row?.0.value().to_string());
        }
        Ok(out)
    }

    /// The `limit` most recently revoked token ids, newest first.
    pub fn recent_revocations(&self, limit: usize) -> Result<Vec<TokenId>, Error> {
        let r = self.db.begin_read()?;
        let t = r.open_table(REVOKED)?;
        let mut all = vec![];
        for row in t.iter()? {
            let (k, v) = row?;
            if let Ok(id) = k.value().parse::<TokenId>() {
                all.push((v.value(), id));
            }
        }
        all.sort_unstable_by(|a, b| b.cmp(a));
        Ok(all.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    /// Remembers peers' addresses, in one transaction (one sync to disk).
    pub fn put_peers(&self, peers: &[(String, Vec<String>)]) -> Result<(), Error> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(PEERS)?;
            for (key_hex, addrs) in peers {
                t.insert(key_hex.as_str(), enc(addrs).as_slice())?;
            }
        }
        w.commit()?;
        Ok(())
    }

    /// Records a stock WireGuard peer (guest) of the overlay, replacing one of the same name.
    pub fn put_guest(&self, g: &Guest) -> Result<(), Error> {
        self.put(GUESTS, &g.name, &enc(g))
    }

    /// Every guest.
    pub fn guests(&self) -> Result<Vec<Guest>, Error> {
        self.all(GUESTS, "wg_guests")
    }

    /// Forgets a guest. Returns whether there was one.
    pub fn remove_guest(&self, name: &str) -> Result<bool, Error> {
        self.remove(GUESTS, name)
    }

    /// Records a persistent bind.
    pub fn put_bind(&self, b: &BindRecord) -> Result<(), Error> {
        self.put(BINDS, &b.id, &enc(b))
    }

    /// Every persistent bind.
    pub fn binds(&self) -> Result<Vec<BindRecord>, Error> {
        self.all_with(BINDS, dec_bind)
    }

    /// Forgets a persistent bind. Returns whether there was one.
    pub fn remove_bind(&self, id: &str) -> Result<bool, Error> {
        self.remove(BINDS, id)
    }

    fn remove(&self, t: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool, Error> {
        let w = self.db.begin_write()?;
        let had = w.open_table(t)?.remove(key)?.is_some();
        w.commit()?;
        Ok(had)
    }

    /// Replaces the overlay's inbound rules.
    pub fn set_overlay_rules(&self, rules: &[crate::policy::Rule]) -> Result<(), Error> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(OVERLAY_RULES)?;
            t.retain(|_, _| false)?;
            for (i, r) in rules.iter().enumerate() {
                t.insert(format!("{i:08}").as_str(), enc(r).as_slice())?;
            }
        }
        w.commit()?;
        Ok(())
    }

    /// The overlay's inbound rules, in order.
    pub fn overlay_rules(&self) -> Result<Vec<crate::policy::Rule>, Error> {
        self.all(OVERLAY_RULES, "overlay_rules")
    }

    /// Saves a ref under a name of its user's, replacing one of the same name.
    pub fn put_saved(&self, s: &Saved) -> Result<(), Error> {
        self.put(SAVED, &format!("{}/{}", s.owner, s.name), &enc(s))
    }

    /// Every saved ref, of every user.
    pub fn saved(&self) -> Result<Vec<Saved>, Error> {
        self.all(SAVED, "saved_refs")
    }

    /// Forgets a user's saved ref. Returns whether there was one.
    pub fn remove_saved(&self, owner: u32, name: &str) -> Result<bool, Error> {
        self.remove(SAVED, &format!("{owner}/{name}"))
    }

    /// Every remembered peer address.
    pub fn peer_addrs(&self) -> Result<Vec<String>, Error> {
        Ok(self.all::<Vec<String>>(PEERS, "peers")?.into_iter().flatten().collect())
    }
}

/// One kind's corner of the store: its keys live in one table, prefixed with the kind's name.
pub struct KindTable {
    store: std::sync::Arc<Store>,
    prefix: String,
}

impl KindTable {
    /// The keys of `kind`.
    pub fn new(store: std::sync::Arc<Store>, kind: Kind) -> KindTable {
        KindTable { store, prefix: format!("{kind}/") }
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }
}

impl From<Error> for metac_resource::Error {
    fn from(e: Error) -> Self {
        metac_resource::Error::Store(e.to_string())
    }
}

impl metac_resource::KindStore for KindTable {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, metac_resource::Error> {
        let r = self.store.db.begin_read().map_err(Error::from)?;
        let t = r.open_table(KINDS).map_err(Error::from)?;
        Ok(t.get(self.key(key).as_str()).map_err(Error::from)?.map(|v| v.value().to_vec()))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), metac_resource::Error> {
        Ok(self.store.put(KINDS, &self.key(key), value)?)
    }

    fn remove(&self, key: &str) -> Result<bool, metac_resource::Error> {
        Ok(self.store.remove(KINDS, &self.key(key))?)
    }

    fn list(&self) -> Result<Vec<(String, Vec<u8>)>, metac_resource::Error> {
        let r = self.store.db.begin_read().map_err(Error::from)?;
        let t = r.open_table(KINDS).map_err(Error::from)?;
        let mut out = vec![];
        for row in t.range(self.prefix.as_str()..).map_err(Error::from)? {
            let (k, v) = row.map_err(Error::from)?;
            let Some(key) = k.value().strip_prefix(&self.prefix) else { break };
            out.push((key.to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_unexport_revokes_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metac.redb");
        let id = ResourceId([1; 16]);
        let e = Export {
            id,
            kind: Kind::File,
            name: "f".into(),
            source: "/tmp/f".into(),
            created: 1,
            rights: Rights::READ,
            options: r#"{"path":"/tmp/f"}"#.into(),
            owner: Caller { uid: 1000, gid: 1000, groups: vec![27, 4242] },
        };
        let t = TokenRecord {
            id: TokenId([2; 16]),
            resource: id,
            reference: "ref://x".into(),
            created: 1,
            parent: None,
            owner: 1000,
        };
        {
            let s = Store::open(&path).unwrap();
            s.put_export(&e).unwrap();
            s.put_token(&t).unwrap();
            assert!(matches!(Store::open(&path), Err(Error::InUse { .. })));
        }
        let s = Store::open(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "the store is private");
        assert_eq!(s.exports().unwrap(), vec![e.clone()]);
        assert_eq!(s.tokens().unwrap(), vec![t.clone()]);
        assert_eq!(s.remove_export(&id, 5).unwrap(), Some(e));
        assert_eq!(s.revoked().unwrap(), vec![t.id.to_string()]);
        s.revoke(&TokenId([3; 16]), 9).unwrap();
        assert_eq!(s.recent_revocations(10).unwrap(), vec![TokenId([3; 16]), t.id]);
        assert_eq!(s.recent_revocations(1).unwrap(), vec![TokenId([3; 16])]);
        assert!(s.exports().unwrap().is_empty());
        assert_eq!(s.remove_export(&id, 6).unwrap(), None);
        let g = Guest { name: "laptop".into(), public: [4; 32], created: 1 };
        s.put_guest(&g).unwrap();
        assert_eq!(s.guests().unwrap(), vec![g]);
        assert!(s.remove_guest("laptop").unwrap());
        assert!(!s.remove_guest("laptop").unwrap());
        let b = BindRecord {
            id: "b1".into(),
            kind: Kind::File,
            reference: "ref://x".into(),
            options: "{}".into(),
            created: 2,
            owner: Caller { uid: 1000, gid: 100, groups: vec![] },
        };
        s.put_bind(&b).unwrap();
        assert_eq!(s.binds().unwrap(), vec![b]);
        assert!(s.remove_bind("b1").unwrap());
        assert!(s.binds().unwrap().is_empty());
    }

    #[test]
    fn exports_recorded_by_the_first_versions_are_read_and_upgraded() {
        #[derive(Serialize)]
        struct V1 {
            id: ResourceId,
            kind: Kind,
            name: String,
            source: String,
            created: u64,
        }
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("metac.redb")).unwrap();
        let id = ResourceId([7; 16]);
        let old = V1 { id, kind: Kind::File, name: "disk".into(), source: "/srv/disk.img".into(), created: 3 };
        s.put(EXPORTS, &id.to_string(), &enc(&old)).unwrap();
        let e = &s.exports().unwrap()[0];
        assert_eq!((e.id, e.kind, e.name.as_str(), e.source.as_str()), (id, Kind::File, "disk", "/srv/disk.img"));
        assert_eq!((e.rights, e.options.as_str()), (Kind::File.rights(), "null"));
        assert_eq!(e.owner, Caller::root());
    }

    /// Exports, tokens and binds recorded before the node knew its local users are read, and are root's.
    #[test]
    fn records_from_before_owners_are_read_as_roots() {
        #[derive(Serialize)]
        struct ExportV2 {
            id: ResourceId,
            kind: Kind,
            name: String,
            source: String,
            created: u64,
            rights: Rights,
            options: String,
        }
        #[derive(Serialize)]
        struct TokenV1 {
            id: TokenId,
            resource: ResourceId,
            reference: String,
            created: u64,
            parent: Option<TokenId>,
        }
        #[derive(Serialize)]
        struct BindV1 {
            id: String,
            kind: Kind,
            reference: String,
            options: String,
            created: u64,
        }
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("metac.redb")).unwrap();
        let id = ResourceId([8; 16]);
        let (name, source, options) = ("disk".to_string(), "/srv/disk.img".to_string(), "{}".to_string());
        let old = ExportV2 { id, kind: Kind::File, name, source, created: 3, rights: Rights::READ, options };
        s.put(EXPORTS, &id.to_string(), &enc(&old)).unwrap();
        let tid = TokenId([9; 16]);
        let old = TokenV1 { id: tid, resource: id, reference: "ref://x".into(), created: 4, parent: None };
        s.put(TOKENS, &tid.to_string(), &enc(&old)).unwrap();
        let old =
            BindV1 { id: "b".into(), kind: Kind::File, reference: "ref://y".into(), options: "{}".into(), created: 5 };
        s.put(BINDS, "b", &enc(&old)).unwrap();

        let e = &s.exports().unwrap()[0];
        assert_eq!((e.id, e.rights, e.options.as_str(), &e.owner), (id, Rights::READ, "{}", &Caller::root()));
        let t = &s.tokens().unwrap()[0];
        assert_eq!((t.id, t.created, t.owner), (tid, 4, 0));
        let b = &s.binds().unwrap()[0];
        assert_eq!((b.id.as_str(), b.created, &b.owner), ("b", 5, &Caller::root()));
        // Unexport still finds the old token to revoke.
        s.remove_export(&id, 6).unwrap();
        assert_eq!(s.revoked().unwrap(), vec![tid.to_string()]);
    }

    #[test]
    fn kinds_keep_their_keys_apart() {
        use metac_resource::KindStore;
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Store::open(&dir.path().join("metac.redb")).unwrap());
        let fs = KindTable::new(s.clone(), Kind::Fs);
        let file = KindTable::new(s, Kind::File);
        fs.put("a", b"1").unwrap();
        fs.put("b", b"2").unwrap();
        file.put("a", b"3").unwrap();
        assert_eq!(fs.get("a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(file.get("a").unwrap(), Some(b"3".to_vec()));
        assert_eq!(fs.list().unwrap(), vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]);
        assert!(fs.remove("a").unwrap());
        assert!(!fs.remove("a").unwrap());
        assert_eq!(file.list().unwrap().len(), 1);
    }

    /// Peers remembered in one transaction are all there after a reopen, and a second write replaces a peer's.
    #[test]
    fn saved_refs_are_per_user_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metac.redb");
        let saved = |owner, name: &str| Saved {
            owner,
            name: name.into(),
            reference: format!("ref-{owner}-{name}"),
            created: 1,
        };
        {
            let s = Store::open(&path).unwrap();
            s.put_saved(&saved(0, "b")).unwrap();
            s.put_saved(&saved(1000, "b")).unwrap();
            s.put_saved(&saved(1000, "c")).unwrap();
            // The same name again replaces.
            s.put_saved(&Saved { reference: "ref-new".into(), ..saved(1000, "c") }).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let mut all = s.saved().unwrap();
        all.sort_by(|a, b| (a.owner, &a.name).cmp(&(b.owner, &b.name)));
        let got: Vec<_> = all.iter().map(|x| (x.owner, x.name.as_str(), x.reference.as_str())).collect();
        assert_eq!(got, vec![(0, "b", "ref-0-b"), (1000, "b", "ref-1000-b"), (1000, "c", "ref-new")]);
        assert!(s.remove_saved(1000, "b").unwrap());
        assert!(!s.remove_saved(1000, "b").unwrap(), "once");
        assert_eq!(s.saved().unwrap().len(), 2, "root's b is root's");
    }

    #[test]
    fn peers_remembered_together_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metac.redb");
        {
            let s = Store::open(&path).unwrap();
            let peers: Vec<(String, Vec<String>)> =
                (0..19).map(|i| (format!("{i:02x}"), vec![format!("/ip6/fd00::{i}/tcp/1")])).collect();
            s.put_peers(&peers).unwrap();
            s.put_peers(&[("00".into(), vec!["/ip6/fd00::99/tcp/1".into()])]).unwrap();
        }
        let mut addrs = Store::open(&path).unwrap().peer_addrs().unwrap();
        addrs.sort();
        assert_eq!(addrs.len(), 19);
        assert!(
            addrs.contains(&"/ip6/fd00::99/tcp/1".to_string()) && !addrs.contains(&"/ip6/fd00::0/tcp/1".to_string())
        );
    }
}
