//! A NATS JetStream cluster on loopback: `nodes` `nats-server` processes (Debian's package)
//! with JetStream on, routed to each other, each on ephemeral ports and its own store
//! directory. For the tests and the demo; a deployment runs its servers on machines of their own.
//!
//! Every node can be killed (`SIGKILL`) and started again on the same ports and store, to test
//! what replication keeps.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to accept connections, and the cluster to elect its JetStream
/// leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running cluster; dropping it kills every node and removes the store directories.
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

struct Node {
    name: String,
    client_port: u16,
    route_port: u16,
    child: Option<Child>,
}

/// Why a cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("nats-server is not installed (Debian: apt-get install nats-server)")]
    NotInstalled,
    #[error("cannot start nats-server: {0}")]
    Spawn(std::io::Error),
    #[error("{0}")]
    NotReady(String),
}

impl NatsCluster {
    /// Whether `nats-server` can be run here.
    pub fn available() -> bool {
        Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success())
    }

    /// Starts `nodes` routed nodes with JetStream and waits until each accepts connections.
    ///
    /// # Errors
    ///
    /// `NotInstalled` without `nats-server`, `Spawn` if a process cannot start, `NotReady` if
    /// a node does not listen within 30 s.
    pub fn start(nodes: usize) -> Result<NatsCluster, ClusterError> {
        if !NatsCluster::available() {
            return Err(ClusterError::NotInstalled);
        }
        // A port chosen free can be taken by another process before its node binds it: that
        // node exits, and the cluster is started again on other ports.
        let mut attempt = 1;
        loop {
            match NatsCluster::start_once(nodes) {
                Err(ClusterError::NotReady(why)) if attempt < 3 => {
                    tracing::warn!("a NATS cluster did not start ({why}); again");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    fn start_once(nodes: usize) -> Result<NatsCluster, ClusterError> {
        let dir = std::env::temp_dir().join(format!("hongbao-nats-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&dir);
        let ports = free_ports(2 * nodes)?;
        let nodes = (0..nodes)
            .map(|i| Node {
                name: format!("n{i}"),
                client_port: ports[2 * i],
                route_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { nodes, dir };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_listening(i)?;
        }
        // A node that could not bind its ports exits: every one must still run once all listen.
        for node in &mut cluster.nodes {
            if let Some(Ok(Some(status))) = node.child.as_mut().map(|c| c.try_wait()) {
                return Err(ClusterError::NotReady(format!("nats-server {} exited: {status}", node.name)));
            }
        }
        Ok(cluster)
    }

    /// The client URLs of every node, comma-separated, as clients take them.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client_port)).collect::<Vec<_>>().join(",")
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Kills node `i` with `SIGKILL`: no goodbye to its peers, no flush.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again, on its ports and store, and waits until it listens.
    ///
    /// # Errors
    ///
    /// As [`NatsCluster::start`].
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_listening(i)
    }

    fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        let routes: Vec<String> = self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.route_port)).collect();
        let node = &self.nodes[i];
        let store = self.dir.join(&node.name);
        let child = Command::new("nats-server")
            .args(["--jetstream", "--store_dir"])
            .arg(&store)
            .args(["--server_name", &node.name, "--addr", "127.0.0.1", "--port", &node.client_port.to_string()])
            .args(["--cluster_name", "hongbao"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", node.route_port)])
            .args(["--routes", &routes.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(ClusterError::Spawn)?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    fn wait_listening(&mut self, i: usize) -> Result<(), ClusterError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let port = self.nodes[i].client_port;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(child) = self.nodes[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(ClusterError::NotReady(format!("nats-server {} exited: {status}", self.nodes[i].name)));
                }
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NotReady(format!(
                    "nats-server {} did not listen on {port}",
                    self.nodes[i].name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on now.
/// `n` ports free on loopback, all distinct: every one is held until all are chosen (ports
/// taken one at a time could repeat, and a node whose port another node took would die while
/// the other answers in its place).
fn free_ports(n: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").map_err(ClusterError::Spawn)).collect::<Result<Vec<_>, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr().map_err(ClusterError::Spawn)?.port())).collect()
}

/// Distinct per call in this process, for directory names.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
