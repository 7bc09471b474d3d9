//! `hongbao serve --cluster`: nodes on a three-node NATS JetStream cluster on loopback, each
//! serving the partitions whose leases it holds and forwarding the rest. Two nodes serve three
//! partitions: a storm goes through both, every request forwarded to its partition's node; a
//! member's socket on one node hears the grabs of packets the other serves; then one node and
//! one of the three NATS servers are killed (`SIGKILL`) mid-storm, the other node takes the
//! partitions over, and every acknowledged grab and transfer is there, nobody is paid twice and
//! the cluster conserves money. Skipped,
//! saying so, without `nats-server` (`.ci/run` installs it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hongbao::{PacketId, Partition, TransferId, UserId};
use hongbao_cluster::NatsCluster;
use hongbao_server::auth::{mint, Claims};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_hongbao");

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A `hongbao serve --cluster` process and the lines it prints.
struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: std::path::PathBuf,
}

impl Node {
    fn start(dir: &std::path::Path, urls: &str, name: &str, partitions: u32) -> Node {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--public-key"])
            .arg(dir.join("hongbao-host.pub"))
            .args(["--cluster", urls, "--node", name, "--lease-ttl-secs", "2", "--no-rate-limits"])
            .args(["--partitions", &partitions.to_string()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
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
        Node { child, lines, log: dir.join(format!("{name}.log")) }
    }

    /// Where it listens, once it prints it.
    fn listening(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Some(rest) = line.split(" listening on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!("the node did not listen within {within:?}; its log ends:\n{}", tail.join("\n"));
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

/// Polls `base`'s `/readyz` until it answers 200 and `until` holds of its body.
async fn ready(base: &str, within: Duration, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(res) = reqwest::get(format!("{base}/readyz")).await {
            if res.status().is_success() {
                let body: Value = res.json().await.unwrap();
                if until(&body) {
                    return body;
                }
            }
        }
        assert!(Instant::now() < deadline, "{base} was not ready within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fen(amount: &Value) -> u64 {
    let text = amount.as_str().unwrap_or_else(|| panic!("an amount: {amount}"));
    let (yuan, cents) = text.split_once('.').unwrap_or((text, "00"));
    yuan.parse::<u64>().unwrap() * 100 + cents.parse::<u64>().unwrap()
}

/// Calls the cluster: a status (0 when the node could not be reached) and a JSON body.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    private: String,
}

impl Api {
    /// A member's token (an admin of org `ADMIN_OF` for member 1), or the host's.
    fn token(&self, user: Option<u64>) -> String {
        let claims = match user {
            Some(user) => {
                let mut claims = Claims::member(UserId(user), "d", &["pwd"], 600);
                if user == 1 {
                    claims.adm = vec![ADMIN_OF];
                }
                claims
            }
            None => Claims::host(600),
        };
        mint(self.private.as_bytes(), &claims).unwrap()
    }

    /// A call, tried again while it answers 503 (a partition changing hands: nothing changed)
    /// or `outcome_unknown` (the same request again returns its first outcome, or completes a
    /// change some partitions missed), as a client would.
    async fn call(&self, method: reqwest::Method, url: String, user: Option<u64>, body: Value) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = self.http.request(method.clone(), &url).bearer_auth(self.token(user)).header("X-Device-Id", "d");
            let req = if body.is_null() { req } else { req.json(&body) };
            let (status, body) = match req.send().await {
                Ok(res) => (res.status().as_u16(), res.json::<Value>().await.unwrap_or(Value::Null)),
                Err(_) => (0, Value::Null),
            };
            let again = status == 503 || (status == 500 && body["error"] == "outcome_unknown");
            if !again || Instant::now() > deadline {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, base: &str, path: &str, user: Option<u64>) -> (u16, Value) {
        self.call(reqwest::Method::GET, format!("{base}{path}"), user, Value::Null).await
    }

    async fn post(&self, base: &str, path: &str, user: Option<u64>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, format!("{base}{path}"), user, body).await
    }

    /// A grab, tried again (through the other node after a failure to connect) until it has
    /// an outcome: the share won (`Some`), or none left (`None`).
    async fn grab_until_decided(&self, bases: &[String], first: usize, packet: u64, user: u64) -> Option<u64> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut node = first;
        loop {
            let (s, body) = self
                .post(&bases[node % bases.len()], &format!("/v1/packets/{packet}/grab"), Some(user), Value::Null)
                .await;
            match s {
                200 => return Some(fen(&body["amount"])),
                410 => return None,
                // Unreachable (killed), no owner yet, or an outcome not known: the same grab
                // again returns its first outcome.
                0 => node += 1,
                500 | 503 => {}
                _ => panic!("grab of {packet} by {user}: {s} {body}"),
            }
            assert!(Instant::now() < deadline, "grab of {packet} by {user} undecided");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const PARTS: u32 = 3;
const MEMBERS: u64 = 90;
const GROUP: u64 = 7;
const ADMIN_OF: u64 = 5;

fn placement() -> Partition {
    Partition::new(0, PARTS).unwrap()
}

/// The first id from `from` that `of` places in partition `i`.
fn id_in(i: u32, from: u64, of: impl Fn(u64) -> u32) -> u64 {
    (from..).find(|&id| of(id) == i).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_three_partitions_and_one_killed_mid_storm_loses_nothing() {
    let _serial = one_at_a_time().await;
    let Some(mut cluster) = nats() else { return };
    let dir = std::env::temp_dir().join(format!("hongbao-cluster-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let keygen = Command::new(BIN).args(["keygen", "--dir"]).arg(&dir).output().unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let api = Api {
        http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
        private: std::fs::read_to_string(dir.join("hongbao-host.key")).unwrap(),
    };

    let a = Node::start(&dir, &cluster.urls(), "a", PARTS);
    let b = Node::start(&dir, &cluster.urls(), "b", PARTS);
    let bases = vec![a.listening(Duration::from_secs(60)), b.listening(Duration::from_secs(60))];
    // Each node serves at least one partition and knows who serves the others.
    for base in &bases {
        ready(base, Duration::from_secs(60), |body| body["orphans"] == json!([])).await;
    }
    let (a_base, b_base) = (&bases[0], &bases[1]);

    // A roster is a change every partition makes: applied through a, read through b.
    let members: Vec<u64> = (1..=MEMBERS).collect();
    let (s, body) = api
        .call(reqwest::Method::PUT, format!("{a_base}/v1/groups/{GROUP}/members"), None, json!({ "members": members }))
        .await;
    assert_eq!((s, body["count"].as_u64()), (200, Some(MEMBERS)), "{body}");
    let (s, body) = api.get(b_base, &format!("/v1/groups/{GROUP}/members"), None).await;
    assert_eq!((s, body["count"].as_u64()), (200, Some(MEMBERS)), "{body}");
    // So are an org, its policy and its groups: made through one node, read through the other.
    let (s, body) = api.post(a_base, "/v1/orgs", None, json!({ "id": ADMIN_OF, "admins": [1], "name": "Acme" })).await;
    assert_eq!(s, 200, "{body}");
    let put = reqwest::Method::PUT;
    let policy = json!({ "recall": { "kind": "off" } });
    let (s, body) = api.call(put, format!("{b_base}/v1/orgs/{ADMIN_OF}/policy"), Some(1), policy).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = api.post(a_base, &format!("/v1/orgs/{ADMIN_OF}/groups"), Some(1), json!({ "group": 70 })).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = api.get(b_base, &format!("/v1/orgs/{ADMIN_OF}"), Some(1)).await;
    assert_eq!((s, body["groups"].as_array().map(Vec::len)), (200, Some(1)), "{body}");
    // Each partition keeps its own operation log, read through either node.
    let (s, body) = api.get(a_base, &format!("/v1/orgs/{ADMIN_OF}/log"), Some(1)).await;
    assert_eq!((s, body["error"].as_str()), (422, Some("invalid_request")), "{body}");
    for i in 0..PARTS {
        let (s, body) =
            api.get(&bases[i as usize % 2], &format!("/v1/orgs/{ADMIN_OF}/log?partition={i}"), Some(1)).await;
        let kinds: Vec<&str> = body["entries"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
        assert_eq!((s, kinds), (200, vec!["org_created", "policy_set", "group_attached"]), "partition {i}: {body}");
    }

    // One sender, one packet and one transfer per partition; the money goes in through b.
    let place = placement();
    let senders: Vec<u64> = (0..PARTS).map(|i| id_in(i, 1, |u| place.of_user(UserId(u)))).collect();
    let mut expected: BTreeMap<u64, i64> = members.iter().map(|&m| (m, 0)).collect();
    for (i, &sender) in senders.iter().enumerate() {
        let (s, body) = api
            .post(b_base, &format!("/v1/wallets/{sender}/deposit"), None, json!({ "op": i + 1, "amount": "100.00" }))
            .await;
        assert_eq!(s, 200, "{body}");
        *expected.get_mut(&sender).unwrap() += 10_000;
    }
    // Sender i's packet is placed in partition i + `shift`: with a shift, it is debited in the
    // sender's partition and opens in its own, and the answer is its view there.
    let send_packets = |from: u64, shift: u32| {
        let (api, bases, senders) = (api.clone(), bases.clone(), senders.clone());
        async move {
            let mut packets = Vec::new();
            for (i, &sender) in senders.iter().enumerate() {
                let id = id_in((i as u32 + shift) % PARTS, from, |p| place.of_packet(PacketId(p)));
                let packet =
                    json!({ "id": id, "group": GROUP, "split": { "kind": "lucky", "total": "30.00", "shares": 30 } });
                let (s, body) = api.post(&bases[i % 2], "/v1/packets", Some(sender), packet).await;
                assert_eq!((s, body["id"].as_u64(), body["shares_left"].as_u64()), (200, Some(id), Some(30)), "{body}");
                // Open where it is placed once the answer came, asked through the other node.
                let (s, body) = api.get(&bases[(i + 1) % 2], &format!("/v1/packets/{id}"), None).await;
                assert_eq!((s, body["status"]["kind"].as_str()), (200, Some("open")), "{body}");
                packets.push(id);
            }
            packets
        }
    };
    let first = send_packets(1_000, 0).await;
    for &sender in &senders {
        *expected.get_mut(&sender).unwrap() -= 3_000;
    }

    // Both serve partitions (each does once both are ready: a node above its share hands one
    // over to a node below it), none twice.
    let mut held = Vec::new();
    for base in &bases {
        let body = ready(base, Duration::from_secs(5), |_| true).await;
        held.push(body["partitions"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect::<Vec<_>>());
    }
    eprintln!("node a serves partitions {:?}, node b {:?}", held[0], held[1]);
    let mut all: Vec<u64> = held.concat();
    all.sort_unstable();
    assert_eq!((all, held[0].is_empty() || held[1].is_empty()), (vec![0, 1, 2], false), "{held:?}");

    // A member's socket on b, watching the group.
    let ws = format!("{}/ws", b_base.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    let auth = json!({ "op": "auth", "token": api.token(Some(MEMBERS)), "device": "d", "groups": [GROUP] });
    socket.send(tokio_tungstenite::tungstenite::Message::text(auth.to_string())).await.unwrap();
    // The grabs it hears of, by packet.
    let mut heard: HashSet<u64> = HashSet::new();
    let next_frame = async |socket: &mut Socket, heard: &mut HashSet<u64>| -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), socket.next()).await;
            let Ok(Some(Ok(message))) = message else { panic!("the socket went quiet; heard grabs of {heard:?}") };
            let Ok(text) = message.into_text() else { continue };
            let frame: Value = serde_json::from_str(&text).unwrap_or_default();
            if frame["event"]["kind"] == "grabbed" {
                heard.insert(frame["event"]["packet"].as_u64().unwrap());
            }
            return frame;
        }
    };
    // Its member grabs every packet over it first: those node a serves are grabbed there.
    let socket_grabber = MEMBERS;
    let mut socket_won = 0i64;
    for (n, &packet) in first.iter().enumerate() {
        let grab = json!({ "op": "grab", "id": n, "packet": packet });
        socket.send(tokio_tungstenite::tungstenite::Message::text(grab.to_string())).await.unwrap();
        let reply = loop {
            let frame = next_frame(&mut socket, &mut heard).await;
            if frame["type"] == "reply" {
                break frame;
            }
        };
        assert_eq!((reply["id"].as_u64(), reply["ok"].as_bool()), (Some(n as u64), Some(true)), "{reply}");
        assert!(reply["grab"].get("remitted").is_none(), "the share is in the wallet: {reply}");
        socket_won += fen(&reply["grab"]["amount"]) as i64;
    }
    *expected.get_mut(&socket_grabber).unwrap() += socket_won;

    // Storm 1: every member grabs every packet, each through one node and reading their
    // balance through the other right after each share: it is there (read-your-writes).
    let storm = members.iter().filter(|&&m| m != socket_grabber).map(|&m| {
        let (api, bases, first) = (api.clone(), bases.clone(), first.clone());
        async move {
            let mut balance = 0i64;
            let mut won = 0;
            for &packet in &first {
                let (s, body) =
                    api.post(&bases[m as usize % 2], &format!("/v1/packets/{packet}/grab"), Some(m), Value::Null).await;
                match s {
                    200 => {
                        assert!(body.get("remitted").is_none(), "the share is in the wallet: {body}");
                        balance += fen(&body["amount"]) as i64;
                        won += 1;
                    }
                    410 => continue,
                    _ => panic!("grab of {packet} by {m}: {s} {body}"),
                }
                let (s, me) = api.get(&bases[(m as usize + 1) % 2], "/v1/me", Some(m)).await;
                assert_eq!(s, 200, "{me}");
                if !senders_has(m) {
                    assert_eq!(fen(&me["balance"]) as i64, balance, "member {m} reads their share at once: {me}");
                }
            }
            (m, balance, won)
        }
    });
    fn senders_has(m: u64) -> bool {
        let place = placement();
        (0..PARTS).any(|i| id_in(i, 1, |u| place.of_user(UserId(u))) == m)
    }
    let mut shares = 0;
    for (m, balance, won) in futures::future::join_all(storm).await {
        *expected.get_mut(&m).unwrap() += balance;
        shares += won;
    }
    assert_eq!(shares + first.len(), 90, "three packets of 30 shares");

    // The socket on b heard the grabs of every packet, including those a serves.
    while heard.len() < first.len() {
        next_frame(&mut socket, &mut heard).await;
    }

    // A transfer per partition to a member whose wallet is elsewhere, placed in a third
    // partition (debited in the sender's, held in its own: the answer is its view there), and
    // accepted through the other node.
    for (i, &sender) in senders.iter().enumerate() {
        let id = id_in((i as u32 + 2) % PARTS, 1, |t| place.of_transfer(TransferId(t)));
        let to = id_in((i as u32 + 1) % PARTS, 20, |u| place.of_user(UserId(u)));
        let (s, body) = api
            .post(&bases[i % 2], "/v1/transfers", Some(sender), json!({ "id": id, "to": to, "amount": "5.00" }))
            .await;
        let status = body["status"]["kind"].as_str();
        assert_eq!((s, body["id"].as_u64(), status), (200, Some(id), Some("awaiting_acceptance")), "{body}");
        let (s, body) =
            api.post(&bases[(i + 1) % 2], &format!("/v1/transfers/{id}/accept"), Some(to), Value::Null).await;
        assert_eq!(s, 200, "{body}");
        *expected.get_mut(&sender).unwrap() -= 500;
        *expected.get_mut(&to).unwrap() += 500;
    }

    // The audit through a reads every partition, here and on b, at once; a partition read
    // before a remittance it sent was applied elsewhere is read again, so the first answer
    // balances while the relay runs.
    let (s, audit) = api.get(a_base, "/v1/audit", None).await;
    assert_eq!((s, audit["partitions"].as_u64(), audit["balanced"].as_bool()), (200, Some(3), Some(true)), "{audit}");

    // Storm 2: node a killed (SIGKILL) once a third of its grabs are answered, then one of the
    // three NATS servers too (the streams and buckets are R3: two of three carry on). Its
    // packets were each sent from another partition than their own.
    let second = send_packets(5_000, 1).await;
    for &sender in &senders {
        *expected.get_mut(&sender).unwrap() -= 3_000;
    }
    let answered = Arc::new(AtomicUsize::new(0));
    let storm = members.iter().map(|&m| {
        let (api, bases, second, answered) = (api.clone(), bases.clone(), second.clone(), Arc::clone(&answered));
        tokio::spawn(async move {
            let mut won = Vec::new();
            for &packet in &second {
                if let Some(amount) = api.grab_until_decided(&bases, m as usize, packet, m).await {
                    won.push((packet, amount));
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            (m, won)
        })
    });
    let storm: Vec<_> = storm.collect();
    while answered.load(Ordering::Relaxed) < 90 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut a = a;
    let killed = Instant::now();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // While b takes a's partitions over, and the members retry their grabs.
    cluster.kill(2);
    let nats_killed = Instant::now();
    let all: Vec<u64> = (0..u64::from(PARTS)).collect();
    // Taking a partition over asks JetStream's API, which answers only once the NATS servers
    // left have elected leaders in place of the dead one's: that, not the lease, is most of it.
    ready(b_base, Duration::from_secs(150), |body| body["partitions"].as_array().is_some_and(|p| p.len() == all.len()))
        .await;
    eprintln!(
        "failover: {:?} from SIGKILL of a (and of a NATS server) to b serving every partition (lease TTL 2 s)",
        killed.elapsed()
    );

    let mut acknowledged: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for task in storm {
        let (m, won) = task.await.unwrap();
        for (packet, amount) in won {
            acknowledged.entry(packet).or_default().push((m, amount));
            *expected.get_mut(&m).unwrap() += amount as i64;
        }
    }

    eprintln!("storm 2 ended {:?} after a NATS server was killed", nats_killed.elapsed());
    // Every acknowledged grab is in its packet, once; every packet sold out.
    for &packet in &second {
        let (s, view) = api.get(b_base, &format!("/v1/packets/{packet}?limit=200"), None).await;
        assert_eq!(s, 200, "{view}");
        let claims: HashMap<u64, u64> = view["claims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["user"].as_u64().unwrap(), fen(&c["amount"])))
            .collect();
        assert_eq!(claims.len(), 30, "nobody twice, every share taken: {view}");
        let mut acked = acknowledged.remove(&packet).unwrap_or_default();
        acked.sort_unstable();
        let mut held: Vec<(u64, u64)> = claims.into_iter().collect();
        held.sort_unstable();
        assert_eq!(held, acked, "packet {packet}: the claims are the grabs acknowledged");
    }
    // Every balance is its deposits, sends, transfers and shares: the relay carried every share
    // won elsewhere, once, the dead node's outbox included.
    let deadline = Instant::now() + Duration::from_secs(180);
    for (&m, &balance) in &expected {
        loop {
            let (s, wallet) = api.get(b_base, &format!("/v1/wallets/{m}"), None).await;
            assert_eq!(s, 200, "{wallet}");
            if fen(&wallet["balance"]) as i64 == balance {
                break;
            }
            assert!(Instant::now() < deadline, "member {m}: {wallet}, expected {balance} fen");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("every balance settled {:?} after the NATS server was killed", nats_killed.elapsed());
    let (s, audit) = api.get(b_base, "/v1/audit", None).await;
    assert_eq!((s, audit["balanced"].as_bool()), (200, Some(true)), "{audit}");
    assert_eq!((audit["partitions"].as_u64(), audit["in_flight_count"].as_u64()), (Some(3), Some(0)), "{audit}");
    assert_eq!(fen(&audit["deposits"]), 30_000, "{audit}");
    drop(b);
    // The streams, read by the cluster audit, say the same (with the NATS server back).
    cluster.restart(2).unwrap();
    let audited = Instant::now();
    let report = Command::new(BIN)
        .args(["audit", "--json", "--cluster", &cluster.urls(), "--partitions", "3"])
        .output()
        .unwrap();
    eprintln!("the cluster audit took {:?}", audited.elapsed());
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!((report["ok"].as_bool(), report["in_flight_remittances"].as_u64()), (Some(true), Some(0)), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `scripts/cluster.sh` starts three NATS servers and three nodes, which share the three
/// partitions out, and stops them all.
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
            .env("HONGBAO_LEASE_TTL_SECS", "2")
            .output()
            .unwrap()
    };
    // Whatever happens, everything started is stopped.
    struct Clean<F: Fn(&str) -> std::process::Output>(F);
    impl<F: Fn(&str) -> std::process::Output> Drop for Clean<F> {
        fn drop(&mut self) {
            let _ = (self.0)("clean");
        }
    }
    let clean = Clean(run);
    let started = (clean.0)("start");
    let text = String::from_utf8_lossy(&started.stdout).into_owned();
    assert!(started.status.success(), "{text}{}", String::from_utf8_lossy(&started.stderr));
    for name in ["nats0", "nats1", "nats2", "node0", "node1", "node2"] {
        assert!(text.contains(&format!("{name}  running")), "{name}: {text}");
    }
    // Every node answers, and once the partitions are shared out each serves one.
    let bases: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .map(|url| url.trim_end_matches(':').to_owned())
        .collect();
    assert_eq!(bases.len(), 3, "{text}");
    for base in &bases {
        let body =
            ready(base, Duration::from_secs(90), |body| body["partitions"].as_array().is_some_and(|p| p.len() == 1))
                .await;
        assert_eq!(body["of"], 3, "{body}");
    }
    let base = bases[0].clone();
    drop(clean);
    assert!(!dir.exists());
    assert!(reqwest::get(format!("{base}/readyz")).await.is_err(), "the serving node stopped");
}

/// `hongbao audit --cluster --partitions N` audits every partition's stream, and the cluster
/// as a whole with the shares won across partitions still in flight counted: here two
/// partitions run with no relay, so every share won in partition 0 by a member whose wallet is
/// in partition 1 is still on its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_audit_counts_the_remittances_in_flight() {
    use hongbao::{
        Amount, Arrival, Config, GroupId, NewPacket, NewTransfer, OpId, PacketId, Partition, Split, TransferId,
    };
    use hongbao_cluster::{LeaseSpec, Owner, PartitionSpec};

    let _serial = one_at_a_time().await;
    let Some(cluster) = nats() else { return };
    let part = |i: u32| Partition::new(i, 2).unwrap();
    let mut owners = Vec::new();
    for i in 0..2 {
        let spec = PartitionSpec {
            urls: cluster.urls(),
            node: "a".into(),
            stream: hongbao_cluster::fleet::stream(i, 3, Some(20)),
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
    // A packet sent in partition 1 whose id places it in partition 0: its total is on its way.
    let far_sender = (1_001..).map(UserId).find(|&u| part(0).of_user(u) == 1).unwrap();
    let far_packet = (packet.0 + 1..).map(PacketId).find(|&p| part(0).of_packet(p) == 0).unwrap();
    let p1 = &owners[1].engine;
    p1.set_members(GroupId(2), vec![far_sender]).await.unwrap();
    p1.deposit(OpId(2), far_sender, Amount::fen(800)).await.unwrap();
    let split = Split::Fixed { each: Amount::fen(100), shares: 5 };
    let far = NewPacket { id: far_packet, sender: far_sender, group: GroupId(2), split, greeting: "远".into() };
    p1.send_packet(far).await.unwrap();
    // And a transfer whose id places it in partition 0: its amount is on its way too.
    let far_transfer = (1..).map(TransferId).find(|&t| part(0).of_transfer(t) == 0).unwrap();
    let (amount, arrival, note) = (Amount::fen(300), Arrival::Instant, String::new());
    let transfer = NewTransfer { id: far_transfer, from: far_sender, to: sender, amount, arrival, note, org: None };
    p1.transfer(transfer).await.unwrap();
    assert_eq!(p1.balance(far_sender).await.unwrap(), Amount::ZERO);
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
    assert_eq!(report["in_flight_remittances"], count + 2, "{report}");
    assert_eq!(report["read_again"], json!([]), "a quiet cluster is a consistent cut: {report}");
    assert_eq!(report["totals_fen"]["in_flight"], fen + 800, "{report}");
    assert_eq!(report["partitions"][0]["totals_fen"]["remitted"], fen, "{report}");
    assert_eq!(report["partitions"][1]["totals_fen"]["remitted"], 800, "{report}");
    assert_eq!(report["partitions"].as_array().unwrap().len(), 2, "{report}");
    // A cluster has at least one partition.
    let one = Command::new(BIN).args(["audit", "--json", "--cluster", &cluster.urls(), "--partitions", "0"]).output();
    assert!(!one.unwrap().status.success(), "zero partitions is refused");
}
