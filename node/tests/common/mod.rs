//! The in-process multi-node layer (DESIGN section 10): several real nodes in one test process, each with its own
//! state directory, talking over the real libp2p transport on loopback, sharing an injectable clock. No root, no
//! network namespaces: authorization, expiry, revocation and the session lifecycle are tested here; the netns lab
//! (tests/) keeps the real network.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metac_node::{Config, Node};
use metac_resource::{Caller, Clock, ManualClock, Plugin};
use tokio_util::sync::CancellationToken;

/// The caller of the nodes' methods in these tests: root, which a node that is not root acts for as itself.
pub const ROOT: Caller = Caller::root();

/// One node of a [`Cluster`].
pub struct TestNode {
    pub node: Option<Arc<Node>>,
    cancel: CancellationToken,
    pub config: Config,
}

impl TestNode {
    /// The running node.
    pub fn n(&self) -> &Arc<Node> {
        self.node.as_ref().expect("node is running")
    }

    /// Stops the node as SIGTERM would.
    pub async fn stop(&mut self) {
        if let Some(n) = self.node.take() {
            n.shutdown().await;
            self.cancel.cancel();
            // Let the mesh task release the store before a restart opens it again.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Arc::strong_count(&n) > 1 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Starts it again with the same state directory and port.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.cancel = CancellationToken::new();
        self.node = Some(Node::start(&self.config, self.cancel.clone()).await.expect("node restarts"));
    }

    /// The loopback address other nodes dial it at.
    pub async fn addr(&self) -> String {
        // The swarm reports its listen addresses shortly after it starts; IPv4 and IPv6 get ports of their own.
        for _ in 0..500 {
            let snap = self.n().snapshot().await.unwrap();
            let port = snap
                .listen
                .iter()
                .find_map(|a| a.strip_prefix("/ip4/127.0.0.1/tcp/").and_then(|p| p.parse::<u16>().ok()));
            if let Some(port) = port {
                return format!("127.0.0.1:{port}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the node listens on no 127.0.0.1 TCP address");
    }
}

/// Nodes in one process.
pub struct Cluster {
    pub nodes: Vec<TestNode>,
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
}

impl Cluster {
    /// `n` nodes, each bootstrapped to the ones before it, all on one manual clock standing at the real time.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| None).await
    }

    /// [`Cluster::start`], with the kinds of node `i` given by `kinds(i)` (`None`: this build's kinds).
    pub async fn start_with(n: usize, kinds: impl Fn(usize) -> Option<Vec<Arc<dyn Plugin>>>) -> Cluster {
        Cluster::start_configured(n, |i, c| c.kinds = kinds(i)).await
    }

    /// [`Cluster::start`], with node `i`'s configuration changed by `configure(i, config)` before it starts.
    pub async fn start_configured(n: usize, configure: impl Fn(usize, &mut Config)) -> Cluster {
        // METAC_TEST_LOG=debug (or any tracing filter) shows the nodes' logs.
        if let Ok(f) = std::env::var("METAC_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(f).with_test_writer().try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(metac_resource::clock::unix_now());
        let mut nodes: Vec<TestNode> = vec![];
        for i in 0..n {
            let mut peers = vec![];
            for p in &nodes {
                peers.push(p.addr().await);
            }
            let base = dir.path().join(format!("n{i}"));
            let mut config = Config::new(base.join("state"), base.join("metac.sock"));
            config.port = 0;
            config.peers = peers;
            config.mdns = false;
            config.overlay.enabled = false;
            config.direct_port = Some(0);
            config.clock = Arc::new(clock.clone()) as Arc<dyn Clock>;
            configure(i, &mut config);
            let cancel = CancellationToken::new();
            let node = Node::start(&config, cancel.clone()).await.expect("node starts");
            let mut n = TestNode { node: Some(node), cancel, config };
            // Restarts keep the port, as a real node on its fixed port does, so that peers redialing it find it.
            n.config.port = n.addr().await.rsplit(':').next().unwrap().parse().unwrap();
            nodes.push(n);
        }
        let c = Cluster { nodes, dir, clock };
        c.wait_mesh().await;
        c
    }

    /// Waits until every running node is connected to every other running node.
    pub async fn wait_mesh(&self) {
        let running: Vec<&TestNode> = self.nodes.iter().filter(|n| n.node.is_some()).collect();
        let want = running.len() - 1;
        wait(Duration::from_secs(20), "the nodes to connect", || async {
            for n in &running {
                if n.n().snapshot().await.unwrap().connected < want {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// A file of `len` bytes of a pattern, in the cluster's directory.
    pub fn file(&self, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let p = self.dir.path().join(name);
        std::fs::write(&p, &data).unwrap();
        (p, data)
    }

    /// Stops every node.
    pub async fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop().await;
        }
    }
}

/// Polls `cond` every 20 ms until it holds, or panics after `within` naming `what`.
pub async fn wait<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
