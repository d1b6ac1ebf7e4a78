//! The binding side of a kind. A bind is a [`Session`] the node owns: it is created from a ref and the kind's bind
//! options, listed (`metac binds`), cut by unbind, revocation, expiry and node stop, and, when asked to persist,
//! stored and started again after a node restart. The node runs it in a loop: [`Session::run`] until it returns;
//! a refusal by the exporter ends it, other failures of a session that [`Session::reconnects`] are retried with a
//! bounded backoff, so it comes back by itself when the exporter does. A session reaches its exporter through its
//! [`Link`], which also carries its state for the listing.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metac_mesh::token::Ref;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{BoxFuture, BoxStream, Error};

/// What a bind is doing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum State {
    /// Reaching the exporter for the first time.
    Connecting,
    /// Serving.
    Up,
    /// Lost or could not reach the exporter; tries again after a backoff.
    Retrying {
        /// The last failure.
        reason: String,
        /// Failed attempts in a row.
        attempt: u32,
    },
    /// The exporter refused the ref (revoked, expired, wrong audience, unexported): final.
    Refused {
        /// The exporter's reason.
        reason: String,
    },
    /// The token expired while bound: cut at that second.
    Expired,
    /// Ended with an error that retrying would not mend.
    Failed {
        /// Why.
        reason: String,
    },
    /// Finished its work (a `file cat` that copied everything).
    Done,
}

impl State {
    /// The state's one-word name.
    pub fn name(&self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Up => "up",
            State::Retrying { .. } => "retrying",
            State::Refused { .. } => "refused",
            State::Expired => "expired",
            State::Failed { .. } => "failed",
            State::Done => "done",
        }
    }

    /// Why, for the states that have a reason.
    pub fn reason(&self) -> Option<&str> {
        match self {
            State::Retrying { reason, .. } | State::Refused { reason } | State::Failed { reason } => Some(reason),
            _ => None,
        }
    }

    /// True once the session will not run again.
    pub fn is_final(&self) -> bool {
        matches!(self, State::Refused { .. } | State::Expired | State::Failed { .. } | State::Done)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Retrying { reason, attempt } => write!(f, "retrying (attempt {attempt}): {reason}"),
            s => match s.reason() {
                Some(r) => write!(f, "{}: {r}", s.name()),
                None => f.write_str(s.name()),
            },
        }
    }
}

/// A session's live figures, shared between the session, the node's runner and the listing.
#[derive(Debug)]
pub struct Status {
    state: Mutex<State>,
    bytes: AtomicU64,
    /// Wakes [`Status::changed`] waiters at every change of state.
    notify: tokio::sync::Notify,
}

impl Default for Status {
    fn default() -> Self {
        Status { state: Mutex::new(State::Connecting), bytes: AtomicU64::new(0), notify: tokio::sync::Notify::new() }
    }
}

impl Status {
    /// The current state.
    pub fn state(&self) -> State {
        self.state.lock().expect("status lock").clone()
    }

    /// Sets the state, unless it is already final (a cut by expiry or refusal is not undone by a late success).
    pub fn set(&self, s: State) {
        let mut st = self.state.lock().expect("status lock");
        if !st.is_final() {
            *st = s;
            self.notify.notify_waiters();
        }
    }

    /// Waits until the state is one `done` accepts, and answers it (at once if it already is).
    pub async fn wait_for(&self, done: impl Fn(&State) -> bool) -> State {
        loop {
            let changed = self.notify.notified();
            tokio::pin!(changed);
            // Registered before the look, so that a change between the look and the wait is not missed.
            changed.as_mut().enable();
            let s = self.state();
            if done(&s) {
                return s;
            }
            changed.await;
        }
    }

    /// Bytes moved so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Counts `n` more bytes moved.
    pub fn count(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
}

/// Opens streams to the exporter of a ref, past the handshake (the node implements it).
pub trait Opener: Send + Sync {
    /// One stream for `protocol` to the exporter of `r`.
    fn open<'a>(&'a self, r: &'a Ref, protocol: &'static str) -> BoxFuture<'a, Result<BoxStream, Error>>;
}

/// A session's way to its exporter, and its status.
pub struct Link {
    reference: Ref,
    protocol: &'static str,
    opener: Arc<dyn Opener>,
    status: Arc<Status>,
}

impl Link {
    /// A link for `reference` over `opener`.
    pub fn new(reference: Ref, protocol: &'static str, opener: Arc<dyn Opener>, status: Arc<Status>) -> Link {
        Link { reference, protocol, opener, status }
    }

    /// Opens one more stream to the exporter; its first byte is the kind's protocol.
    pub async fn open(&self) -> Result<BoxStream, Error> {
        self.opener.open(&self.reference, self.protocol).await
    }

    /// The ref this session binds.
    pub fn reference(&self) -> &Ref {
        &self.reference
    }

    /// Marks the session up (serving).
    pub fn up(&self) {
        self.status.set(State::Up);
    }

    /// The session's status.
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }
}

/// One bind of some kind, run by the node.
pub trait Session: Send + 'static {
    /// What the bind shows as its target: a mount point, a socket path, `stdout`.
    fn target(&self) -> String;

    /// Whether a failed run is retried (long-lived binds) or ends the session (one-shot work such as `file cat`).
    fn reconnects(&self) -> bool {
        true
    }

    /// Does the bind's work until it is finished (`Ok`) or fails, or `cancel` fires (then return promptly). Calls
    /// [`Link::up`] once serving.
    fn run<'a>(&'a mut self, link: &'a Link, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<(), Error>>;

    /// Releases what the session holds (a socket, a mount) after its last run.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiter wakes at the change it waits for, not at a poll's next tick, and at once when it already holds.
    #[tokio::test]
    async fn a_waiter_wakes_at_the_change() {
        let s = std::sync::Arc::new(Status::default());
        let s2 = std::sync::Arc::clone(&s);
        let waiter = tokio::spawn(async move { s2.wait_for(|st| *st == State::Up || st.is_final()).await });
        tokio::task::yield_now().await;
        s.set(State::Retrying { reason: "not yet".into(), attempt: 1 });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a change it does not wait for leaves it waiting");
        s.set(State::Up);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(got, State::Up);
        assert_eq!(s.wait_for(|st| *st == State::Up).await, State::Up);
    }

    #[test]
    fn final_states_stick() {
        let s = Status::default();
        assert_eq!(s.state(), State::Connecting);
        s.set(State::Up);
        s.set(State::Expired);
        s.set(State::Up);
        assert_eq!(s.state(), State::Expired);
        assert_eq!(State::Retrying { reason: "gone".into(), attempt: 2 }.to_string(), "retrying (attempt 2): gone");
        assert_eq!(State::Refused { reason: "revoked".into() }.to_string(), "refused: revoked");
    }
}
