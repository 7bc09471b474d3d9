//! `hongbao serve --cluster`: two nodes on a three-node NATS JetStream cluster on loopback.
//! The first serves the partition while the second waits for its lease; the first is killed
//! (`SIGKILL`) after a storm, and the second takes the partition over, rebuilds it from the
//! replicated stream and serves every acknowledged grab. Skipped, saying so, without
//! `nats-server` (`.ci/run` installs it).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hongbao::UserId;
use hongbao_cluster::NatsCluster;
use hongbao_server::auth::{mint, Claims};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_hongbao");

/// A `hongbao serve --cluster` process and the lines it prints.
struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Node {
    fn start(dir: &std::path::Path, urls: &str, name: &str) -> Node {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--public-key"])
            .arg(dir.join("hongbao-host.pub"))
            .args(["--cluster", urls, "--node", name, "--lease-ttl-secs", "2", "--no-rate-limits"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Node { child, lines }
    }

    /// Where it listens, once it serves (it prints it then).
    fn serving(&self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Some(base) = line.strip_prefix("listening on ") {
                return Some(base.to_owned());
            }
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test at a time: each runs a NATS cluster of three and hongbao nodes on two cores.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A NATS cluster of three, or `None` (saying so) without `nats-server`. A cluster that is
/// installed but does not start fails the test.
fn nats() -> Option<NatsCluster> {
    match NatsCluster::start(3) {
        Ok(cluster) => Some(cluster),
        Err(e @ hongbao_cluster::ClusterError::NotInstalled) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("the NATS cluster did not start: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_partition_is_served_by_the_standby_with_every_acknowledged_grab() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = nats() else { return };
    let dir = std::env::temp_dir().join(format!("hongbao-cluster-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let keygen = Command::new(BIN).args(["keygen", "--dir"]).arg(&dir).output().unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let private = std::fs::read_to_string(dir.join("hongbao-host.key")).unwrap();

    let mut first = Node::start(&dir, &cluster.urls(), "a");
    let base = first.serving(Duration::from_secs(60)).expect("the first node serves");
    let standby = Node::start(&dir, &cluster.urls(), "b");
    assert_eq!(standby.serving(Duration::from_secs(3)), None, "the standby waits while the lease is renewed");

    let http = reqwest::Client::new();
    let host = mint(private.as_bytes(), &Claims::host(600)).unwrap();
    let call = |method: reqwest::Method, url: String, token: String, body: Value| {
        let http = http.clone();
        async move {
            let res = http.request(method, url).bearer_auth(token).header("X-Device-Id", "d").json(&body).send().await;
            let res = res.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let members: Vec<u64> = (2..=61).collect();
    let roster: Vec<u64> = std::iter::once(1).chain(members.iter().copied()).collect();
    let (s, _) =
        call(reqwest::Method::PUT, format!("{base}/v1/groups/7/members"), host.clone(), json!({ "members": roster }))
            .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        reqwest::Method::POST,
        format!("{base}/v1/wallets/1/deposit"),
        host.clone(),
        json!({ "op": 1, "amount": "30" }),
    )
    .await;
    assert_eq!(s, 200);
    let sender = mint(private.as_bytes(), &Claims::member(UserId(1), "d", &["pwd"], 600)).unwrap();
    let packet = json!({ "id": 9, "group": 7, "split": { "kind": "lucky", "total": "30.00", "shares": 30 } });
    let (s, body) = call(reqwest::Method::POST, format!("{base}/v1/packets"), sender, packet).await;
    assert_eq!(s, 200, "{body}");
    let grabs = members.iter().map(|&m| {
        let token = mint(private.as_bytes(), &Claims::member(UserId(m), "d", &["pwd"], 600)).unwrap();
        let url = format!("{base}/v1/packets/9/grab");

        async move { (m, call(reqwest::Method::POST, url, token, Value::Null).await) }
    });
    let mut won = Vec::new();
    for (m, (status, body)) in futures::future::join_all(grabs).await {
        if status == 200 {
            won.push((m, body["amount"].as_str().unwrap().to_owned()));
        }
    }
    assert_eq!(won.len(), 30);

    // The owner is killed; the standby's lease wait ends when the dead one's runs out.
    let killed = Instant::now();
    let _ = first.child.kill();
    let _ = first.child.wait();
    let base = standby.serving(Duration::from_secs(60)).expect("the standby takes the partition over");
    eprintln!("failover: {:?} from SIGKILL to the standby listening (lease TTL 2 s)", killed.elapsed());
    for (m, amount) in won {
        let (s, wallet) = call(reqwest::Method::GET, format!("{base}/v1/wallets/{m}"), host.clone(), Value::Null).await;
        assert_eq!(s, 200, "{wallet}");
        assert_eq!(wallet["balance"], amount, "member {m}");
    }
    let (s, audit) = call(reqwest::Method::GET, format!("{base}/v1/audit"), host.clone(), Value::Null).await;
    assert_eq!((s, audit["balanced"].as_bool()), (200, Some(true)), "{audit}");
    // The cluster audit replays the replicated stream itself, read-only.
    let audit = Command::new(BIN).args(["audit", "--json", "--cluster", &cluster.urls()]).output().unwrap();
    let report: Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert!(audit.status.success(), "{report}");
    assert_eq!(report["ok"], true, "{report}");
    // The deposit, the send and the 30 claims at least.
    assert!(report["partitions"][0]["records"].as_u64().unwrap() >= 32, "{report}");
    assert_eq!(report["totals_fen"]["deposits"], 3_000, "{report}");
    drop(standby);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `scripts/cluster.sh` starts three NATS servers and three nodes, one of which serves, and
/// stops them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_script_starts_and_stops_everything() {
    let _serial = one_at_a_time().await;
    if !NatsCluster::available() {
        return eprintln!("skipped: nats-server is not installed");
    }
    let dir = std::env::temp_dir().join(format!("hongbao-cluster-script-{}", std::process::id()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster.sh");
    let run = |what: &str| {
        Command::new("bash")
            .arg(script)
            .arg(what)
            .env("HONGBAO_BIN", BIN)
            .env("HONGBAO_CLUSTER_DIR", &dir)
            .output()
            .unwrap()
    };
    let started = run("start");
    let text = String::from_utf8_lossy(&started.stdout).into_owned();
    assert!(started.status.success(), "{text}{}", String::from_utf8_lossy(&started.stderr));
    for name in ["nats0", "nats1", "nats2", "node0", "node1", "node2"] {
        assert!(text.contains(&format!("{name}  running")), "{name}: {text}");
    }
    let base =
        text.lines().find_map(|l| l.split("listening on ").nth(1)).unwrap_or_else(|| panic!("{text}")).to_owned();
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert!(ready.status().is_success(), "{ready:?}");
    let cleaned = run("clean");
    assert!(cleaned.status.success(), "{}", String::from_utf8_lossy(&cleaned.stderr));
    assert!(!dir.exists());
    assert!(reqwest::get(format!("{base}/readyz")).await.is_err(), "the serving node stopped");
}

/// `hongbao audit --cluster --partitions N` audits every partition's stream, and the cluster
/// as a whole with the shares won across partitions still in flight counted: here two
/// partitions run with no relay, so every share won in partition 0 by a member whose wallet is
/// in partition 1 is still on its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_audit_counts_the_remittances_in_flight() {
    use hongbao::{Amount, Config, GroupId, NewPacket, OpId, PacketId, Partition, Split};
    use hongbao_cluster::{LeaseSpec, Owner, PartitionSpec, StreamSpec};

    let _serial = one_at_a_time().await;
    let Some(cluster) = nats() else { return };
    let part = |i: u32| Partition::new(i, 2).unwrap();
    let mut owners = Vec::new();
    for i in 0..2 {
        let spec = PartitionSpec {
            urls: cluster.urls(),
            node: "a".into(),
            stream: StreamSpec { stream: format!("HONGBAO_P{i}"), subject: format!("hongbao.p{i}"), replicas: 3 },
            lease: LeaseSpec {
                bucket: "hongbao_leases".into(),
                key: format!("p{i}"),
                ttl: Duration::from_secs(2),
                replicas: 3,
            },
        };
        let config = Config { arbiters: 1, wallet_shards: 1, ..Config::default() }.with_partition(part(i));
        owners.push(Owner::take(&spec, config).await.unwrap());
    }
    let members: Vec<UserId> = (1..=40).map(UserId).collect();
    for owner in &owners {
        owner.engine.set_members(GroupId(1), members.clone()).await.unwrap();
    }
    let sender = *members.iter().find(|&&u| part(0).of_user(u) == 0).unwrap();
    let packet = (1..).map(PacketId).find(|&p| part(0).of_packet(p) == 0).unwrap();
    let p0 = &owners[0].engine;
    p0.deposit(OpId(1), sender, Amount::fen(4_000)).await.unwrap();
    let split = Split::lucky(Amount::fen(4_000), 40);
    p0.send_packet(NewPacket { id: packet, sender, group: GroupId(1), split, greeting: String::new() }).await.unwrap();
    let (mut count, mut fen) = (0, 0);
    for &u in &members {
        if let Some(r) = p0.grab(packet, u).await.unwrap().remitted {
            (count, fen) = (count + 1, fen + r.amount.as_fen());
        }
    }
    assert!(count > 0, "shares crossed");
    for owner in owners {
        owner.stop().await;
    }
    let audit = Command::new(BIN)
        .args(["audit", "--json", "--cluster", &cluster.urls(), "--partitions", "2"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert!(audit.status.success(), "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["in_flight_remittances"], count, "{report}");
    assert_eq!(report["totals_fen"]["in_flight"], fen, "{report}");
    assert_eq!(report["partitions"][0]["totals_fen"]["remitted"], fen, "{report}");
    assert_eq!(report["partitions"].as_array().unwrap().len(), 2, "{report}");
    // A cluster has at least one partition.
    let one = Command::new(BIN).args(["audit", "--json", "--cluster", &cluster.urls(), "--partitions", "0"]).output();
    assert!(!one.unwrap().status.success(), "zero partitions is refused");
}
