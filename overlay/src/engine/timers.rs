//! The timer thread: boringtun's timers (handshake retries, keepalives, session expiry), the path choices of the
//! peer table, narrow endpoints found by a send, and tunnels dropped when idle.

use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::TunnResult;

use super::Inner;
use crate::table::{Path, Route, Step};

/// How often the timer thread runs while tunnels exist (boringtun asks for at least every 250 ms).
const TICK: Duration = Duration::from_millis(100);

/// How often it runs while there are none (only the rate limiter's reset and path probes are due).
const IDLE_TICK: Duration = Duration::from_secs(1);

impl Inner {
    /// Timers: boringtun's (handshake retries, keepalives, session expiry), path choice, idle tunnels.
    pub(super) fn timer_loop(&self) {
        let mut buf = vec![0u8; self.mtu.max(1500) + 256];
        let mut last_reset = Instant::now();
        let mut tick = TICK;
        while !self.stopped() {
            self.stop_fd.wait_readable(None, Some(tick));
            let now = Instant::now();
            if now.duration_since(last_reset) >= Duration::from_secs(1) {
                self.rate_limiter.reset_count();
                last_reset = now;
            }
            let table = self.table();
            let mut busy = false;
            for peer in table.peers() {
                let mut st = peer.state();
                busy |= st.path == Path::Relay;
                if let Some(ep) = peer.take_narrow_hint() {
                    self.leave_narrow(peer, &mut st, ep, now);
                }
                let Some(mut tunn) = st.tunn.take() else { continue };
                busy = true;
                let mut keep = true;
                match tunn.update_timers(&mut buf) {
                    TunnResult::WriteToNetwork(p) => {
                        if p[0] == 1 {
                            st.handshake_sent(now);
                        }
                        let l = p.len();
                        self.transmit(peer, st.route(), p, &[l]);
                    }
                    TunnResult::Err(WireGuardError::ConnectionExpired) => keep = false,
                    _ => {}
                }
                match st.step(now) {
                    Step::None => {}
                    Step::Handshake => {
                        if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, true) {
                            let l = p.len();
                            self.transmit(peer, st.route(), p, &[l]);
                        }
                    }
                    Step::Probe(ep) => {
                        if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, true) {
                            let l = p.len();
                            self.transmit(peer, Route { path: Path::Udp, endpoint: Some(ep), narrow: false }, p, &[l]);
                        }
                    }
                }
                if st.is_idle(now) {
                    keep = false;
                }
                if keep {
                    st.tunn = Some(tunn);
                } else {
                    st.waiting_since = None;
                }
            }
            // A new tunnel is made by a data thread; its first timers can wait up to IDLE_TICK, which only
            // delays a handshake retry (boringtun sends the first initiation itself).
            tick = if busy { TICK } else { IDLE_TICK };
        }
    }
}
