//! The binding side: a TAP on this node joined to the exported segment. The interface is made when the bind is
//! made and stays while the bind reconnects (so addresses on it survive an exporter restart); it goes on unbind,
//! refusal, expiry and node stop.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use metac_resource::{frame as framing, BoxFuture, Error, Link, Session};
use tokio_util::sync::CancellationToken;

use crate::frame::{MAX_MTU, MIN_MTU};
use crate::proto::{Welcome, MAX_WELCOME};
use crate::pump;
use crate::switch::Counters;
use crate::tap::Tap;
use crate::{BindEntry, Registry};

pub(crate) struct NetSession {
    tap: Option<Arc<Tap>>,
    entry: Arc<BindEntry>,
    registry: Arc<Registry>,
}

impl NetSession {
    pub(crate) fn new(tap: Tap, bridge: Option<String>, registry: Arc<Registry>) -> NetSession {
        let entry = Arc::new(BindEntry {
            interface: tap.name().to_string(),
            bridge,
            segment: Mutex::new(String::new()),
            mtu: AtomicU16::new(0),
            can_send: AtomicBool::new(false),
            counters: Arc::new(Counters::default()),
        });
        registry.binds.lock().expect("registry").push(Arc::clone(&entry));
        NetSession { tap: Some(Arc::new(tap)), entry, registry }
    }
}

impl Session for NetSession {
    fn target(&self) -> String {
        self.entry.interface.clone()
    }

    fn run<'a>(&'a mut self, link: &'a Link, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let tap = Arc::clone(self.tap.as_ref().expect("a session runs only before it is closed"));
            let mut stream = tokio::select! {
                s = link.open() => s?,
                _ = cancel.cancelled() => return Ok(()),
            };
            let w: Welcome = framing::read(&mut stream, MAX_WELCOME).await?;
            if !(MIN_MTU..=MAX_MTU).contains(&w.mtu) {
                return Err(Error::Protocol(format!(
                    "the exporter states an MTU of {}, outside {MIN_MTU}..={MAX_MTU}",
                    w.mtu
                )));
            }
            tap.set_mtu(w.mtu).map_err(Error::Unavailable)?;
            let e = &self.entry;
            *e.segment.lock().expect("bind entry") = w.segment.clone();
            e.mtu.store(w.mtu, Ordering::Relaxed);
            e.can_send.store(w.can_send, Ordering::Relaxed);
            link.up();
            tracing::info!(
                interface = tap.name(),
                segment = w.segment,
                mtu = w.mtu,
                can_send = w.can_send,
                "joined the segment"
            );

            let (r, mut w_half) = tokio::io::split(stream);
            let (c1, c2) = (Arc::clone(&e.counters), Arc::clone(&e.counters));
            let (s1, s2) = (Arc::clone(link.status()), Arc::clone(link.status()));
            let tap2 = Arc::clone(&tap);
            let (mtu, can_send) = (w.mtu, w.can_send);
            let out = async move {
                pump::tap_to_stream(&tap, &mut w_half, mtu, can_send, &c1, |n| s1.count(n)).await.map_err(Error::from)
            };
            let inb = async move {
                pump::stream_to_tap(r, &tap2, mtu, &c2, |n| s2.count(n)).await?;
                Err(Error::Unreachable("the exporter closed the segment's stream".into()))
            };
            match pump::race(out, inb, cancel).await {
                None => Ok(()),
                Some(r) => r,
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // The TAP disappears with its last descriptor.
            self.tap = None;
            self.registry.binds.lock().expect("registry").retain(|b| !Arc::ptr_eq(b, &self.entry));
        })
    }
}

impl Drop for NetSession {
    fn drop(&mut self) {
        self.registry.binds.lock().expect("registry").retain(|b| !Arc::ptr_eq(b, &self.entry));
    }
}
