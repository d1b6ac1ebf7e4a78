//! metac-net: the `net` kind. An Ethernet segment exported by one node (`metac net export newlocal:NAME` makes a TAP
//! there, `local:BRIDGE` joins an existing bridge) and joined by others (`metac net bind newlocal:NAME REF` makes a
//! TAP on the binder, `local:BRIDGE` makes it a port of a bridge there). It is Ethernet, not routed IP: ARP,
//! neighbour discovery, DHCP, multicast and other protocols than IP cross it.
//!
//! - [`frame`]: a record (virtio-net header and frame) and the checks every frame passes before it is switched;
//! - [`proto`]: metac-net/1 on the bind's stream;
//! - [`switch`]: the exporter's learning switch, with bounded queues and a bounded address table;
//! - [`tap`]: TAP devices with offloads, bridges;
//! - `pump`: the loops that move records; `exporter`, `session`: the two sides of a bind.
//!
//! Making and attaching interfaces is what `ip link` does with CAP_NET_ADMIN: only root may ask a node for it.

pub mod frame;
pub mod proto;
pub mod switch;
pub mod tap;

mod exporter;
mod pump;
mod session;

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use axum::Json;
use metac_resource::{BoxFuture, Caller, Ctx, Error, ExportSpec, Exporter, Kind, Prepared, Ref, ResourceKind, Session};
use serde::{Deserialize, Serialize};

pub use proto::PROTOCOL;
use switch::{Counters, PortView, Switch};

/// The MTU of a new segment unless one is asked for.
pub const DEFAULT_MTU: u16 = 1500;

/// What a net export records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetExport {
    /// `newlocal:NAME` (a new TAP) or `local:BRIDGE` (a TAP made a port of that bridge).
    pub interface: String,
    /// The segment's MTU [default: 1500 for a new TAP, the bridge's for `local:`].
    #[serde(default)]
    pub mtu: Option<u16>,
}

/// What a net bind asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetBind {
    /// `newlocal:NAME` (a new TAP) or `local:BRIDGE` (a TAP made a port of that bridge).
    pub interface: String,
}

/// Where a segment meets a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Iface {
    /// A new TAP of this name.
    New(String),
    /// A new TAP, made a port of this existing bridge.
    Bridge(String),
}

impl Iface {
    /// Parses `newlocal:NAME` or `local:BRIDGE`.
    pub fn parse(s: &str) -> Result<Iface, Error> {
        let (iface, name) = if let Some(n) = s.strip_prefix("newlocal:") {
            (Iface::New(n.to_string()), n)
        } else if let Some(n) = s.strip_prefix("local:") {
            (Iface::Bridge(n.to_string()), n)
        } else {
            return Err(Error::BadOptions(format!(
                "{s:?}: name the interface as newlocal:NAME (a new TAP) or local:BRIDGE (an existing bridge)"
            )));
        };
        tap::check_name(name).map_err(Error::BadOptions)?;
        Ok(iface)
    }

    /// The TAP this side uses: the new one's name, or one named after the bridge and `salt` (a bridge takes
    /// several).
    pub fn tap_name(&self, salt: &str) -> String {
        match self {
            Iface::New(n) => n.clone(),
            Iface::Bridge(b) => {
                let h = tap::fnv(&[salt]);
                let b: String = b.chars().take(7).collect();
                format!("mx{b}{:06x}", h & 0xff_ffff)
            }
        }
    }

    /// Checks that this side can be made now: a new name is free, a bridge exists.
    fn check_local(&self) -> Result<(), Error> {
        match self {
            Iface::New(n) if tap::index(n).is_some() => {
                Err(Error::BadOptions(format!("an interface named {n} exists already: choose another name")))
            }
            Iface::Bridge(b) if tap::index(b).is_none() => {
                Err(Error::BadOptions(format!("there is no interface {b} (local: names an existing bridge)")))
            }
            _ => Ok(()),
        }
    }
}

fn root_only(caller: &Caller, what: &str) -> Result<(), Error> {
    if caller.is_root() {
        return Ok(());
    }
    Err(Error::Refused {
        by: "this node".into(),
        reason: format!("{caller} may not {what}: making and attaching network interfaces needs root (CAP_NET_ADMIN)"),
    })
}

/// What this node's segments and binds are doing, for `metac net ls`.
#[derive(Default)]
pub(crate) struct Registry {
    segments: Mutex<std::collections::HashMap<String, SegmentEntry>>,
    binds: Mutex<Vec<Arc<BindEntry>>>,
}

pub(crate) struct SegmentEntry {
    name: String,
    interface: String,
    bridge: Option<String>,
    switch: Arc<Switch>,
}

pub(crate) struct BindEntry {
    interface: String,
    bridge: Option<String>,
    segment: Mutex<String>,
    mtu: AtomicU16,
    can_send: AtomicBool,
    counters: Arc<Counters>,
}

/// An exported segment as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentView {
    pub id: String,
    pub name: String,
    pub interface: String,
    pub bridge: Option<String>,
    pub mtu: u16,
    pub ports: Vec<PortView>,
    /// Learned addresses: MAC, port, seconds since a frame from it.
    pub macs: Vec<(String, String, u64)>,
}

/// A bound segment as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundView {
    pub interface: String,
    pub bridge: Option<String>,
    pub segment: String,
    pub mtu: u16,
    pub can_send: bool,
    pub sent_frames: u64,
    pub sent_bytes: u64,
    pub received_frames: u64,
    pub received_bytes: u64,
    /// Frames not sent or not delivered: larger than the MTU, malformed, or sent on a read-only bind.
    pub dropped: u64,
}

/// `GET /v1/net`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetList {
    pub segments: Vec<SegmentView>,
    pub binds: Vec<BoundView>,
}

impl Registry {
    fn list(&self) -> NetList {
        let mut segments: Vec<SegmentView> = self
            .segments
            .lock()
            .expect("registry")
            .iter()
            .map(|(id, s)| SegmentView {
                id: id.clone(),
                name: s.name.clone(),
                interface: s.interface.clone(),
                bridge: s.bridge.clone(),
                mtu: s.switch.mtu(),
                ports: s.switch.ports(),
                macs: s.switch.macs(),
            })
            .collect();
        segments.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let binds = self
            .binds
            .lock()
            .expect("registry")
            .iter()
            .map(|b| {
                let c = &b.counters;
                BoundView {
                    interface: b.interface.clone(),
                    bridge: b.bridge.clone(),
                    segment: b.segment.lock().expect("bind entry").clone(),
                    mtu: b.mtu.load(Ordering::Relaxed),
                    can_send: b.can_send.load(Ordering::Relaxed),
                    sent_frames: l(&c.rx_frames),
                    sent_bytes: l(&c.rx_bytes),
                    received_frames: l(&c.tx_frames),
                    received_bytes: l(&c.tx_bytes),
                    dropped: l(&c.oversize) + l(&c.malformed) + l(&c.refused),
                }
            })
            .collect();
        NetList { segments, binds }
    }
}

/// The `net` kind.
#[derive(Default, Clone)]
pub struct Net {
    registry: Arc<Registry>,
}

impl ResourceKind for Net {
    type ExportOptions = NetExport;
    type BindOptions = NetBind;

    fn kind(&self) -> Kind {
        Kind::Net
    }

    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn prepare(&self, source: &str, options: Option<NetExport>, caller: &Caller) -> Result<Prepared<NetExport>, Error> {
        root_only(caller, "export a network segment")?;
        let mut o = options.unwrap_or(NetExport { interface: source.to_string(), mtu: None });
        let iface = Iface::parse(&o.interface)?;
        iface.check_local()?;
        let mtu = match (&iface, o.mtu) {
            (_, Some(m)) => m,
            (Iface::New(_), None) => DEFAULT_MTU,
            (Iface::Bridge(b), None) => tap::mtu(b).map_err(Error::BadOptions)?,
        };
        if !(frame::MIN_MTU..=frame::MAX_MTU).contains(&mtu) {
            return Err(Error::BadOptions(format!(
                "an MTU of {mtu} is outside {}..={}",
                frame::MIN_MTU,
                frame::MAX_MTU
            )));
        }
        o.mtu = Some(mtu);
        let name = match &iface {
            Iface::New(n) | Iface::Bridge(n) => n.clone(),
        };
        Ok(Prepared { source: o.interface.clone(), name, options: o })
    }

    fn open<'a>(
        &'a self,
        spec: ExportSpec<NetExport>,
        _ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>> {
        Box::pin(async move {
            let iface = Iface::parse(&spec.options.interface)?;
            let mtu = spec.options.mtu.unwrap_or(DEFAULT_MTU);
            let e = exporter::NetExporter::open(
                spec.id.to_string(),
                spec.name.clone(),
                &iface,
                mtu,
                Arc::clone(&self.registry),
            )?;
            Ok(Arc::new(e) as Arc<dyn Exporter>)
        })
    }

    fn bind(&self, reference: &Ref, options: NetBind, caller: &Caller, ctx: &Ctx) -> Result<Box<dyn Session>, Error> {
        root_only(caller, "bind a network segment")?;
        let iface = Iface::parse(&options.interface)?;
        iface.check_local()?;
        let r = reference.to_string();
        let name = iface.tap_name(&r);
        let mac = tap::stable_mac(&["metac net bind", &ctx.me.to_string(), &r, &name]);
        let t = tap::Tap::create(&name, DEFAULT_MTU, mac).map_err(Error::Unavailable)?;
        let bridge = match &iface {
            Iface::Bridge(b) => {
                t.join_bridge(b).map_err(Error::BadOptions)?;
                Some(b.clone())
            }
            Iface::New(_) => None,
        };
        Ok(Box::new(session::NetSession::new(t, bridge, Arc::clone(&self.registry))))
    }

    fn routes(&self, _ctx: Ctx) -> axum::Router {
        axum::Router::new().route("/v1/net", get(list)).with_state(Arc::clone(&self.registry))
    }
}

async fn list(State(r): State<Arc<Registry>>) -> Json<NetList> {
    Json(r.list())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_are_named_newlocal_or_local_and_checked() {
        assert_eq!(Iface::parse("newlocal:tap0").unwrap(), Iface::New("tap0".into()));
        assert_eq!(Iface::parse("local:br0").unwrap(), Iface::Bridge("br0".into()));
        for bad in ["tap0", "newlocal:", "local:a/b", "newlocal:waytoolonginterfacename", "remote:x"] {
            assert!(matches!(Iface::parse(bad), Err(Error::BadOptions(_))), "{bad}");
        }
        let t = Iface::Bridge("labbridge0".into()).tap_name("ref://x");
        assert!(t.len() <= 15 && t.starts_with("mxlabbrid"), "{t}");
        assert_ne!(t, Iface::Bridge("labbridge0".into()).tap_name("ref://y"));
        tap::check_name(&t).unwrap();
    }

    /// A local user other than root gets a clear refusal, never an interface made with the node's rights.
    #[test]
    fn only_root_may_make_interfaces_through_the_node() {
        let user = Caller { uid: 1000, gid: 1000, groups: vec![] };
        let e = Net::default().prepare("newlocal:evil0", None, &user).unwrap_err();
        assert!(e.to_string().contains("needs root"), "{e}");
        assert_eq!(tap::index("evil0"), None);
    }

    /// A mesh member holding a good ref plays the attacker on a live exporter (a real TAP, the real serve): frames
    /// with made-up headers, frames over the MTU and a flood of made-up source addresses are dropped and counted,
    /// never switched; the table stays bounded; a record length past the bound ends that bind with a message, and
    /// the segment goes on serving others. Needs root (it makes a TAP); under CI it runs and fails loudly without.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_binder_sending_garbage_loses_only_its_own_frames() {
        use metac_resource::{Bind, Exporter, NodeKey, Rights};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test makes a TAP device and needs root");
        let registry = Arc::new(Registry::default());
        let name = format!("mtatk{}", std::process::id() % 100_000);
        let e = Arc::new(
            exporter::NetExporter::open(
                "atk".into(),
                "attacked".into(),
                &Iface::New(name.clone()),
                1500,
                Arc::clone(&registry),
            )
            .unwrap(),
        );
        let bind = |rights| Bind { peer: NodeKey([7; 32]), rights, path: None, expires: None };
        let (mut evil, theirs) = tokio::io::duplex(1 << 20);
        let served = tokio::spawn(Arc::clone(&e).serve(
            bind(Rights::READ | Rights::WRITE),
            Box::new(theirs),
            Default::default(),
        ));
        let (mut good, goods) = tokio::io::duplex(1 << 20);
        let _good_served = tokio::spawn(Arc::clone(&e).serve(bind(Rights::READ), Box::new(goods), Default::default()));
        let w: proto::Welcome = metac_resource::frame::read(&mut evil, proto::MAX_WELCOME).await.unwrap();
        assert_eq!((w.mtu, w.can_send, w.segment.as_str()), (1500, true, "attacked"));
        let _: proto::Welcome = metac_resource::frame::read(&mut good, proto::MAX_WELCOME).await.unwrap();

        let rec = |src: [u8; 6], payload: usize, hdr: frame::VnetHdr| {
            let mut r = hdr.bytes().to_vec();
            r.extend_from_slice(&[0xff; 6]);
            r.extend_from_slice(&src);
            r.extend_from_slice(&[0x88, 0xb5]);
            r.resize(r.len() + payload, 0xaa);
            r
        };
        let mut wire = Vec::new();
        proto::encode(&mut wire, &rec([2, 0, 0, 0, 0, 1], 100, frame::VnetHdr::PLAIN));
        proto::encode(
            &mut wire,
            &rec([2, 0, 0, 0, 0, 1], 100, frame::VnetHdr { gso_type: 77, ..frame::VnetHdr::PLAIN }),
        );
        proto::encode(&mut wire, &rec([2, 0, 0, 0, 0, 1], 2000, frame::VnetHdr::PLAIN));
        for i in 0..3000u32 {
            let b = i.to_be_bytes();
            proto::encode(&mut wire, &rec([2, 9, b[0], b[1], b[2], b[3]], 46, frame::VnetHdr::PLAIN));
        }
        evil.write_all(&wire).await.unwrap();

        let port = |reg: &Registry| {
            reg.list().segments[0].ports.iter().find(|p| p.can_send && p.name.starts_with("bind")).cloned()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while port(&registry).is_none_or(|p| p.rx_frames < 3003) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let p = port(&registry).unwrap();
        assert_eq!((p.rx_frames, p.malformed, p.oversize), (3003, 1, 1), "{p:?}");

        // The good binder, a receive-only port, sees the well-formed broadcasts, never the rest. What the new TAP's
        // kernel sends on its own (router solicitations, MLD) comes too, from another address, and is passed over.
        let mut ours = Vec::new();
        for _ in 0..10_000 {
            let mut len = [0u8; 4];
            let wait = std::time::Duration::from_millis(500);
            match tokio::time::timeout(wait, good.read_exact(&mut len)).await {
                Err(_) => break,
                Ok(r) => r.unwrap(),
            };
            let mut rec = vec![0u8; u32::from_be_bytes(len) as usize];
            good.read_exact(&mut rec).await.unwrap();
            let src: [u8; 6] = rec[frame::VNET_HDR + 6..frame::VNET_HDR + 12].try_into().unwrap();
            if src == [2, 0, 0, 0, 0, 1] || src[..2] == [2, 9] {
                ours.push((src, rec.len()));
            }
        }
        assert_eq!(ours.first(), Some(&([2, 0, 0, 0, 0, 1], frame::MIN_RECORD + 100)), "the first well-formed frame");
        assert!(
            ours[1..].iter().all(|(src, len)| src[1] == 9 && *len == frame::MIN_RECORD + 46),
            "only the well-formed frames reached the good binder"
        );
        assert!(ours.len() > 1 && ours.len() <= 3001, "{} frames", ours.len());
        assert_eq!(p.macs, switch::MAX_PER_PORT, "made-up addresses fill only this port's share");

        // A length past the bound: that bind ends with a message; the segment and the good binder stay.
        evil.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), served).await.unwrap().unwrap();
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("outside"), "{msg}");
        let ports = registry.list().segments[0].ports.clone();
        assert_eq!(ports.len(), 2, "the local port and the good binder remain: {ports:?}");
        assert!(ports.iter().all(|p| p.macs <= 1), "what the attacker's port learned went with it: {ports:?}");
        e.close().await;
        assert_eq!(tap::index(&name), None, "the segment's TAP goes on close");
    }
}
