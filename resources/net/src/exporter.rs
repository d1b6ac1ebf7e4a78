//! The exporting side: the segment's own interface (a new TAP, or a TAP made a port of an existing bridge) and the
//! switch, opened once per export and at every node start; each bind is a port of the switch for as long as it is
//! served.

use std::sync::{Arc, Mutex};

use metac_resource::{frame as framing, Bind, BoxFuture, BoxStream, Error, Exporter, Rights};
use tokio_util::sync::CancellationToken;

use crate::proto::Welcome;
use crate::pump;
use crate::switch::Switch;
use crate::tap::Tap;
use crate::{Iface, Registry, SegmentEntry};

pub(crate) struct NetExporter {
    name: String,
    id: String,
    switch: Arc<Switch>,
    registry: Arc<Registry>,
    cancel: CancellationToken,
    local: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl NetExporter {
    /// Makes the segment's interface and switch, and starts switching the interface's frames.
    pub(crate) fn open(
        id: String,
        name: String,
        iface: &Iface,
        mtu: u16,
        registry: Arc<Registry>,
    ) -> Result<Self, Error> {
        let tap_name = iface.tap_name(&id);
        let mac = crate::tap::stable_mac(&["metac net export", &id]);
        let tap = Tap::create(&tap_name, mtu, mac).map_err(Error::Unavailable)?;
        if let Iface::Bridge(br) = iface {
            tap.join_bridge(br).map_err(|e| Error::Unavailable(format!("cannot attach segment {name}: {e}")))?;
        }
        let switch = Switch::new(mtu);
        let tap = Arc::new(tap);
        let out = Arc::clone(&tap);
        let port = switch.add_direct_port(format!("local {tap_name}"), Box::new(move |rec| out.try_send(rec).is_ok()));
        let cancel = CancellationToken::new();
        let local = tokio::spawn(pump::local_port(tap, port, cancel.clone()));
        registry.segments.lock().expect("registry").insert(
            id.clone(),
            SegmentEntry {
                name: name.clone(),
                interface: tap_name,
                bridge: match iface {
                    Iface::Bridge(b) => Some(b.clone()),
                    Iface::New(_) => None,
                },
                switch: Arc::clone(&switch),
            },
        );
        Ok(NetExporter { name, id, switch, registry, cancel, local: Mutex::new(Some(local)) })
    }
}

impl Exporter for NetExporter {
    fn serve(
        self: Arc<Self>,
        bind: Bind,
        mut stream: BoxStream,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            if !bind.rights.contains(Rights::READ) {
                return Err(Error::Refused { by: "this node".into(), reason: "the ref does not grant read".into() });
            }
            let can_send = bind.rights.contains(Rights::WRITE);
            let welcome = Welcome { mtu: self.switch.mtu(), can_send, segment: self.name.clone() };
            framing::write(&mut stream, &welcome).await?;
            let peer = bind.peer.to_string();
            let label = format!("bind {}{}", &peer[..peer.len().min(16)], if can_send { "" } else { " (read-only)" });
            let (port, mut rx) = self.switch.add_port(label, can_send);
            // The port stays until both directions have stopped. Were it dropped with the reading task, its queue
            // would close, and the writing task's clean end could win the race against the reader's error.
            let port = Arc::new(port);
            let reader_port = Arc::clone(&port);
            let (r, mut w) = tokio::io::split(stream);
            let from_binder = async move {
                let port = reader_port;
                let mut records = pump::Records::new(r);
                while let Some(rec) = records.next(&|_| {}).await? {
                    port.forward(rec);
                }
                Ok("the binder left".to_string())
            };
            let to_binder = async move {
                pump::queue_to_stream(&mut rx, &mut w, |_| {})
                    .await
                    .map(|_| "the segment closed".to_string())
                    .map_err(Error::from)
            };
            let r = pump::race(from_binder, to_binder, &cancel).await;
            drop(port);
            match r {
                None | Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e),
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.cancel.cancel();
            let local = self.local.lock().expect("exporter lock").take();
            if let Some(t) = local {
                // The TAP goes with the task: when this returns, its name is free again.
                let _ = t.await;
            }
            self.registry.segments.lock().expect("registry").remove(&self.id);
        })
    }
}

impl Drop for NetExporter {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
