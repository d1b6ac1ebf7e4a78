//! The requests and responses of the node's local API, shared by the node (which serves them) and every client
//! (the CLI, the simulator, the benchmarks). Field names are the JSON's: the CLI's `--json` output and the netns
//! tests read them, so renaming one is a breaking change.
//!
//! Kinds travel as their lowercase names (`"file"`, `"fs"`, ...) in plain strings, so that a client lists
//! resources of kinds it was built without.

use serde::{Deserialize, Serialize};

/// The body of every error answer (4xx/5xx).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in words the user can act on.
    pub error: String,
}

/// `GET /v1/status`: this node at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// Node key, hex.
    pub key: String,
    /// libp2p peer id.
    pub peer_id: String,
    /// Overlay address.
    pub overlay: String,
    /// Mesh listen addresses.
    pub listen: Vec<String>,
    /// Nodes connected and synced.
    pub peers: usize,
    /// Connections up.
    pub connections: usize,
    /// Other nodes known.
    pub known_nodes: usize,
    /// Exports of this node.
    pub exports: usize,
    /// State directory.
    pub state: String,
    /// One-line summary of the overlay.
    pub overlay_status: String,
    /// One-line summary of where binds' data travels (the direct transport's port and streams).
    #[serde(default)]
    pub transport: String,
    /// The node's version.
    pub version: String,
}

/// `GET /v1/peers`: one known node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// Node key, hex.
    pub key: String,
    /// libp2p peer id.
    pub peer_id: String,
    /// Overlay address.
    pub overlay: String,
    /// Addresses from its advert.
    pub addrs: Vec<String>,
    /// A connection to it is up.
    pub reachable: bool,
    /// How this node learned of it (`mdns`, `bootstrap`, `gossip`, `inbound`).
    pub via: String,
    /// Milliseconds since last heard of.
    pub last_seen_ms: u64,
    /// Number of resources it adverts.
    pub resources: usize,
}

/// `GET /v1/resources[?kind=K]`: one resource in the mesh, this node's own included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceView {
    /// Exporting node's key, hex.
    pub node: String,
    /// Exporting node's overlay address.
    pub overlay: String,
    /// Kind name.
    pub kind: String,
    /// Name shown in the mesh.
    pub name: String,
    /// Resource id.
    pub id: String,
    /// Exported by this node.
    pub local: bool,
    /// Whether its exporter is connected; absent for this node's own resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
}

/// Query of `GET /v1/resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesQuery {
    /// Only this kind.
    pub kind: Option<String>,
}

/// `GET /v1/exports`: one export of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportView {
    /// Resource id.
    pub id: String,
    /// Kind name.
    pub kind: String,
    /// Name shown in the mesh.
    pub name: String,
    /// What is exported (a path, a device, ...).
    pub source: String,
    /// Unix seconds when exported.
    pub created: u64,
    /// Tokens issued for it.
    pub tokens: usize,
    /// Live binds right now.
    pub binds: usize,
    /// The uid of the local user who exported it: only that user or root may unexport it or revoke its refs.
    #[serde(default)]
    pub owner: u32,
}

/// `POST /v1/exports`: export a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportReq {
    /// Kind name.
    pub kind: String,
    /// What to export; its meaning is the kind's.
    pub source: String,
    /// Name shown in the mesh; the kind picks one when absent.
    pub name: Option<String>,
    /// Grant no write right.
    #[serde(default)]
    pub read_only: bool,
    /// Options of the kind, in its own typed shape; null when it has none.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub options: serde_json::Value,
}

/// Answer to `POST /v1/exports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportResp {
    /// Resource id.
    pub id: String,
    /// Name shown in the mesh.
    pub name: String,
    /// Kind name.
    pub kind: String,
    /// The root ref granting it.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// Answer to `DELETE /v1/exports/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// Resource id removed.
    pub removed: String,
    /// Its name.
    pub name: String,
}

/// `GET /v1/refs`: one token this node issued or delegated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// Token id.
    pub id: String,
    /// Parent token id when delegated.
    pub parent: Option<String>,
    /// Resource id.
    pub resource: String,
    /// Kind name.
    pub kind: String,
    /// Effective rights.
    pub rights: String,
    /// Expiry, unix seconds.
    pub expires: Option<u64>,
    /// Audience node key.
    pub audience: Option<String>,
    /// Revoked (it or an ancestor).
    pub revoked: bool,
    /// The ref; empty when it is another local user's (a ref is a capability: shown to its owner and root only).
    #[serde(rename = "ref")]
    pub reference: String,
    /// The uid of the local user it was issued or delegated for.
    #[serde(default)]
    pub owner: u32,
}

/// `POST /v1/refs/saved`: keep a ref under a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveReq {
    /// The name (`metac run --on NAME`).
    pub name: String,
    /// The ref.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// `GET /v1/refs/saved`: one ref the caller saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedView {
    /// Its name.
    pub name: String,
    /// Kind name.
    pub kind: String,
    /// Effective rights.
    pub rights: String,
    /// The issuing node's key.
    pub issuer: String,
    /// Expiry, unix seconds.
    pub expires: Option<u64>,
    /// What is known of its revocation.
    pub state: String,
    /// Unix seconds when saved.
    pub created: u64,
    /// The ref.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// Body naming one ref: `POST /v1/refs/show`, `/v1/refs/revoke`, `/v1/file/cat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefReq {
    /// The ref, as printed by `metac file export` and friends.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// Answer to `POST /v1/refs/show`: a decoded ref and what the node knows of its revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefView {
    /// The exporting node's key.
    pub issuer: String,
    /// Its overlay address.
    pub overlay: String,
    /// Resource id.
    pub resource: String,
    /// Kind name.
    pub kind: String,
    /// Effective rights.
    pub rights: String,
    /// Expiry, unix seconds.
    pub expires: Option<u64>,
    /// Audience node key.
    pub audience: Option<String>,
    /// Sub-path.
    pub path: Option<String>,
    /// Token id (last block).
    pub id: String,
    /// Every block id, root first.
    pub chain: Vec<String>,
    /// No more attenuation possible.
    pub sealed: bool,
    /// Revocation state as far as the answering node knows.
    pub state: String,
}

/// `POST /v1/refs/delegate`: make a narrower ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegateReq {
    /// The ref to narrow.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Keep only the read right.
    #[serde(default)]
    pub read_only: bool,
    /// Keep only these rights (`read,admin`); with `read_only`, only read of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rights: Option<String>,
    /// Seconds from now.
    pub expires_in: Option<u64>,
    /// Only this node (key, peer id or overlay address) may use it.
    pub to: Option<String>,
    /// Forbid further delegation.
    #[serde(default)]
    pub seal: bool,
    /// Narrow an fs ref to this sub-tree of the export (`sub/dir` or `/sub/dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Answer to `POST /v1/refs/delegate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegateResp {
    /// The new ref.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its token id.
    pub id: String,
}

/// Answer to `POST /v1/refs/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResp {
    /// Always true on success.
    pub revoked: bool,
    /// What was revoked and what it cut.
    pub message: String,
}

/// `POST /v1/overlay/wg-config`: admit a stock WireGuard peer. The answer is the node's JSON (name, addr,
/// public_key, replaced, config), read as a `serde_json::Value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgConfigReq {
    /// Guest name.
    pub name: String,
    /// Address (IP or IP:PORT) at which the guest reaches this node.
    pub endpoint: Option<String>,
    /// The guest's own WireGuard public key, base64.
    pub public_key: Option<String>,
}

/// Answer to `DELETE /v1/overlay/guests/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRemoved {
    /// The guest's name.
    pub removed: String,
}

/// `GET /v1/binds?kind=K`: one live or persistent bind of this node to a remote resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindView {
    /// Bind id.
    pub id: String,
    /// Kind name.
    pub kind: String,
    /// The ref it binds with; empty when the bind is another local user's (shown to its owner and root only).
    #[serde(rename = "ref")]
    pub reference: String,
    /// Exporting node's key.
    pub exporter: String,
    /// Where the resource appears here (a mount point, a device, an address).
    pub target: String,
    /// Its state: `connecting`, `up`, `retrying`, `refused`, `expired`, `failed` or `done`.
    pub state: String,
    /// Why it is in that state, when it is not up.
    pub reason: Option<String>,
    /// Restored when the node restarts.
    pub persistent: bool,
    /// Unix seconds when made.
    pub created: u64,
    /// Bytes carried so far.
    pub bytes: u64,
    /// The uid of the local user who made it: only that user or root may unbind it.
    #[serde(default)]
    pub owner: u32,
}

/// `POST /v1/overlay/allow` and `/v1/overlay/deny`: a rule of the overlay's inbound policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayRuleReq {
    /// `PORT[/tcp|udp]`.
    pub rule: String,
    /// Only from this node (key, peer id or overlay address).
    #[serde(default)]
    pub from: Option<String>,
}

/// The overlay's inbound policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayPolicy {
    /// What the default lets in.
    pub default: String,
    /// The rules, e.g. `allow 22/tcp from 31d734c364ff76dc`.
    pub rules: Vec<String>,
}

/// `POST /v1/binds`: bind a ref with its kind's bind options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindReq {
    /// The ref to bind.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The kind's bind options (`null` for its defaults).
    #[serde(default)]
    pub options: serde_json::Value,
    /// Re-establish the bind after a node restart.
    #[serde(default)]
    pub persistent: bool,
}

/// Query of `GET /v1/binds`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindsQuery {
    /// Only this kind.
    pub kind: Option<String>,
}

/// Answer to `DELETE /v1/binds/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unbound {
    /// Bind id removed.
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn local_resources_have_no_reachable_field() {
        let r = ResourceView {
            node: "n".into(),
            overlay: "fd6f::1".into(),
            kind: "file".into(),
            name: "x".into(),
            id: "i".into(),
            local: true,
            reachable: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("reachable").is_none());
        assert_eq!(serde_json::from_value::<ResourceView>(v).unwrap(), r);
    }

    #[test]
    fn export_request_without_options_is_the_old_body() {
        let r = ExportReq {
            kind: "file".into(),
            source: "/x".into(),
            name: None,
            read_only: true,
            options: serde_json::Value::Null,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v, json!({ "kind": "file", "source": "/x", "name": null, "read_only": true }));
        let back: ExportReq = serde_json::from_value(json!({ "kind": "file", "source": "/x" })).unwrap();
        assert!(!back.read_only && back.options.is_null() && back.name.is_none());
    }

    #[test]
    fn refs_are_named_ref_on_the_wire() {
        let v = serde_json::to_value(RefReq { reference: "r".into() }).unwrap();
        assert_eq!(v, json!({ "ref": "r" }));
        let b: BindView = serde_json::from_value(json!({
            "id": "b", "kind": "fs", "ref": "r", "exporter": "e", "target": "/mnt", "state": "up",
            "reason": null, "persistent": false, "created": 1, "bytes": 2,
        }))
        .unwrap();
        assert_eq!(b.reference, "r");
    }
}
