//! `metac net`: the net kind's commands: export an Ethernet segment (a new TAP or an existing bridge), join one with
//! a TAP here, list segments and binds with their ports, addresses and counters, leave one.

use anyhow::Result;
use clap::Subcommand;
use metac_api::types::{BindView, ExportReq, ExportResp};
use metac_api::Client;
use metac_net::{NetBind, NetExport, NetList};
use serde::Serialize;

use super::{binds, human_bytes, print, short, table};

/// `metac net` subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Export an Ethernet segment; prints a ref. newlocal:NAME makes a TAP named NAME here, local:BRIDGE joins an
    /// existing bridge (and whatever is behind it) to the segment
    Export {
        /// newlocal:NAME or local:BRIDGE
        interface: String,
        /// The segment's MTU [default: 1500 for newlocal:, the bridge's for local:]
        #[arg(long)]
        mtu: Option<u16>,
        /// Name shown in the mesh [default: the interface's]
        #[arg(long)]
        name: Option<String>,
        /// Grant only receiving: binders see the segment's frames but cannot send (monitor ports)
        #[arg(long)]
        read_only: bool,
    },
    /// Join an exported segment: newlocal:NAME makes a TAP named NAME here, local:BRIDGE makes one a port of an
    /// existing bridge
    Bind {
        /// newlocal:NAME or local:BRIDGE
        interface: String,
        reference: String,
        /// Join again after the node restarts
        #[arg(long)]
        persistent: bool,
    },
    /// Leave a segment and remove the interface (by interface name, bind id or id prefix)
    Unbind {
        /// The TAP's name, the bind's id or a unique prefix of it
        name: String,
    },
    /// This node's exported segments (ports, learned addresses, frames, bytes, drops) and joined segments
    Ls,
}

/// `metac net ls --json`: the node's figures, each bind with its state.
#[derive(Serialize)]
struct Listing {
    segments: Vec<metac_net::SegmentView>,
    binds: Vec<BindRow>,
}

#[derive(Serialize)]
struct BindRow {
    #[serde(flatten)]
    figures: metac_net::BoundView,
    id: String,
    exporter: String,
    state: String,
    reason: Option<String>,
    persistent: bool,
}

/// Runs a `metac net` subcommand against the node behind `c`.
pub async fn run(c: &Client, json: bool, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Export { interface, mtu, name, read_only } => {
            let options = serde_json::to_value(NetExport { interface: interface.clone(), mtu })?;
            let body = ExportReq { kind: "net".into(), source: interface, name, read_only, options };
            let v: ExportResp = c.post("/v1/exports", &body).await?;
            print(json, &v, |v| v.reference.clone());
        }
        Cmd::Bind { interface, reference, persistent } => {
            let options = serde_json::to_value(NetBind { interface })?;
            binds::bind(c, json, reference, options, persistent).await?;
        }
        Cmd::Unbind { name } => binds::unbind(c, json, &name).await?,
        Cmd::Ls => {
            let figures: NetList = c.get("/v1/net").await?;
            let views: Vec<BindView> = c.get("/v1/binds?kind=net").await?;
            let binds = views
                .into_iter()
                .filter_map(|v| {
                    let f = figures.binds.iter().find(|b| b.interface == v.target)?.clone();
                    Some(BindRow {
                        figures: f,
                        id: v.id,
                        exporter: v.exporter,
                        state: v.state,
                        reason: v.reason,
                        persistent: v.persistent,
                    })
                })
                .collect();
            let l = Listing { segments: figures.segments, binds };
            print(json, &l, text);
        }
    }
    Ok(())
}

fn text(l: &Listing) -> String {
    let frames = |n: u64, b: u64| format!("{n} ({})", human_bytes(b));
    let ports = table(
        &["SEGMENT", "INTERFACE", "MTU", "PORT", "MACS", "IN", "OUT", "DROPPED"],
        l.segments.iter().flat_map(|s| {
            s.ports.iter().map(move |p| {
                vec![
                    s.name.clone(),
                    iface(&s.interface, &s.bridge),
                    s.mtu.to_string(),
                    p.name.clone(),
                    p.macs.to_string(),
                    frames(p.rx_frames, p.rx_bytes),
                    frames(p.tx_frames, p.tx_bytes),
                    format!(
                        "{} full, {} oversize, {} malformed, {} refused",
                        p.dropped, p.oversize, p.malformed, p.refused
                    ),
                ]
            })
        }),
    );
    let macs = table(
        &["SEGMENT", "MAC", "PORT", "SEEN"],
        l.segments.iter().flat_map(|s| {
            s.macs.iter().map(move |(m, p, age)| vec![s.name.clone(), m.clone(), p.clone(), format!("{age}s ago")])
        }),
    );
    let binds = table(
        &["ID", "INTERFACE", "SEGMENT", "EXPORTER", "STATE", "MTU", "SENT", "RECEIVED", "DROPPED"],
        l.binds.iter().map(|b| {
            let f = &b.figures;
            let state = match &b.reason {
                Some(r) => format!("{}: {r}", b.state),
                None if !f.can_send && b.state == "up" => "up (receive only)".into(),
                None => b.state.clone(),
            };
            vec![
                b.id.clone(),
                iface(&f.interface, &f.bridge),
                f.segment.clone(),
                short(&b.exporter),
                state,
                f.mtu.to_string(),
                frames(f.sent_frames, f.sent_bytes),
                frames(f.received_frames, f.received_bytes),
                f.dropped.to_string(),
            ]
        }),
    );
    format!("Exported segments\n{ports}\n\nLearned addresses\n{macs}\n\nJoined segments\n{binds}")
}

/// An interface, with the bridge it is a port of.
fn iface(name: &str, bridge: &Option<String>) -> String {
    match bridge {
        Some(b) => format!("{name} (in {b})"),
        None => name.to_string(),
    }
}
