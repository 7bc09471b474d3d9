//! Which engine answers a request: the one engine of a single server, or, on a cluster, the
//! partition that holds what the request names — served here, or forwarded to the node that
//! serves it.
//!
//! # Forwarding
//!
//! Any node accepts any request. A handler asks [`Partitions`] for the engine of the wallet,
//! packet or transfer the request names; when another node serves that partition the answer
//! is an `elsewhere` refusal, and the [`Forwarding`] middleware sends the same request (method,
//! path, body, the member's token) to that node and answers with its reply. The request
//! carries the cluster's secret, so the serving node trusts the client address it names (for
//! rate limits) and never forwards it again: a partition that moved meanwhile answers
//! `elsewhere`, and this node asks again (up to three times, as the leases are seen to move).
//!
//! A request whose forwarded answer never came back may have happened: it answers
//! `outcome_unknown`, and a retry (the same ids) returns its first outcome.
//!
//! # What every partition holds
//!
//! Rosters and orgs are kept by every partition. A change of them is applied to each partition
//! (here, or forwarded as one leg naming its partition); the reply is partition 0's when every
//! leg succeeded, else the first refusal. A read of them is answered by any partition served
//! here.

use std::future::{ready, Future, Ready};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{forward_ready, Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{header, StatusCode};
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use hongbao::{Engine, GrabError, Grabbed, PacketId, Partition, Remittance, TransferId, UserId};
use hongbao_cluster::Directory;
use tokio::sync::watch;

use crate::reply::ApiError;

/// Carries the cluster's secret: the request was forwarded by a node of the cluster.
pub const FORWARDED_HEADER: &str = "x-hongbao-forwarded";
/// The address of the client a forwarded request came from.
pub const CLIENT_HEADER: &str = "x-hongbao-client";
/// On a forwarded request: apply it to this partition only (a leg of a change every partition
/// makes).
pub const PARTITION_HEADER: &str = "x-hongbao-partition";

/// The route a node asks another to wait on for a share it remitted there, or for a packet it
/// sent there to open.
pub const AWAIT_PATH: &str = "/v1/cluster/remittances/await";

/// How many times an audit of the cluster reads again the partitions it read too early for a
/// consistent cut ([`hongbao::ClusterAudit::behind`]).
pub const AUDIT_CATCH_UP_ROUNDS: usize = 10;

/// How long a grab's answer waits for a share won for a wallet another partition holds to be
/// seen there (read-your-writes); past it the answer names the remittance, which arrives.
pub const CREDIT_WAIT: Duration = Duration::from_secs(5);

/// Requests this node has in flight to the others at most, of each of two kinds: requests
/// forwarded (and socket grabs), and waits for a share's credit. Each holds a connection
/// (HTTP/1.1), kept alive for the next. More wait for one to finish; what waits is bounded by
/// what the server takes in (its connections and each socket's grabs in flight). The two kinds
/// have bounds of their own because a forwarded grab's handler waits for a credit: sharing one
/// bound, two nodes forwarding to each other could each hold every permit the other's
/// handlers need.
pub const FORWARDS_IN_FLIGHT_MAX: usize = 256;

/// Grabs this node has in flight over its links to the others at most (grabs of packets other
/// nodes serve). More are answered `Busy` at once, as are those past the serving node's own
/// bound (`ws_relay_inflight_max` per link).
pub const LINKED_MAX: usize = 4096;

/// How many times a forward is tried when the partition moves under it.
const FORWARD_TRIES: u32 = 3;

/// A response to forward to the node serving this partition.
#[derive(Clone, Copy, Debug)]
pub struct Forward(pub u32);

/// The body of a request, kept so it can be forwarded.
#[derive(Clone, Debug)]
struct RawBody(Bytes);

/// Where requests go.
#[derive(Clone)]
pub enum Partitions {
    /// One engine holds everything.
    Whole(Engine),
    /// One node of a cluster.
    Cluster(Arc<Node>),
}

/// A node of a cluster, as the server sees it.
pub struct Node {
    partition: Partition,
    serving: watch::Receiver<std::collections::BTreeMap<u32, Engine>>,
    directory: Directory,
    secret: String,
    http: reqwest::Client,
    forwards: tokio::sync::Semaphore,
    awaits: tokio::sync::Semaphore,
    /// The links to the other nodes, by address.
    links: parking_lot::Mutex<std::collections::HashMap<String, Arc<Link>>>,
    /// Held while a link opens.
    opening: tokio::sync::Mutex<()>,
    /// Grabs in flight over the links at most.
    linked: tokio::sync::Semaphore,
    /// How long a grab over a link waits for its answer.
    timeout: Duration,
}

impl Partitions {
    /// A node of a cluster of `count` partitions: those in `serving` are answered here, the
    /// others forwarded to the node `directory` names.
    ///
    /// # Panics
    ///
    /// If `count` is not a valid partition count.
    pub fn cluster(
        count: u32,
        serving: watch::Receiver<std::collections::BTreeMap<u32, Engine>>,
        directory: Directory,
        secret: String,
        timeout: Duration,
    ) -> Partitions {
        // Straight to the other nodes (never through a proxy the environment names: requests
        // carry the cluster's secret), and idle connections let go before the other side's
        // keep-alive (5 s) closes them under a request.
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .tcp_nodelay(true)
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(FORWARDS_IN_FLIGHT_MAX)
            .build()
            .expect("an HTTP client");
        let (forwards, awaits) =
            (tokio::sync::Semaphore::new(FORWARDS_IN_FLIGHT_MAX), tokio::sync::Semaphore::new(FORWARDS_IN_FLIGHT_MAX));
        let partition = Partition::new(0, count).expect("a valid partition count");
        let (links, linked) = (parking_lot::Mutex::default(), tokio::sync::Semaphore::new(LINKED_MAX));
        Partitions::Cluster(Arc::new(Node {
            partition,
            serving,
            directory,
            secret,
            http,
            forwards,
            awaits,
            links,
            opening: tokio::sync::Mutex::new(()),
            linked,
            timeout,
        }))
    }

    /// How many partitions there are (1 for a single engine).
    pub fn count(&self) -> u32 {
        match self {
            Partitions::Whole(_) => 1,
            Partitions::Cluster(node) => node.partition.count(),
        }
    }

    /// Partition `index`'s engine if it is served here; else `elsewhere`, to be forwarded.
    pub fn at(&self, index: u32) -> Result<Engine, ApiError> {
        match self {
            Partitions::Whole(engine) => Ok(engine.clone()),
            Partitions::Cluster(node) => node.serving.borrow().get(&index).cloned().ok_or_else(|| elsewhere(index)),
        }
    }

    /// The engine of `user`'s wallet.
    pub fn of_user(&self, user: UserId) -> Result<Engine, ApiError> {
        self.at(self.place(|p| p.of_user(user)))
    }

    /// The engine of a packet.
    pub fn of_packet(&self, packet: PacketId) -> Result<Engine, ApiError> {
        self.at(self.place(|p| p.of_packet(packet)))
    }

    /// The engine of a transfer.
    pub fn of_transfer(&self, transfer: TransferId) -> Result<Engine, ApiError> {
        self.at(self.place(|p| p.of_transfer(transfer)))
    }

    fn place(&self, of: impl Fn(Partition) -> u32) -> u32 {
        match self {
            Partitions::Whole(_) => 0,
            Partitions::Cluster(node) => of(node.partition),
        }
    }

    /// An engine to read what every partition holds (rosters, orgs): one served here, else
    /// partition 0's owner is asked.
    pub fn any(&self) -> Result<Engine, ApiError> {
        match self {
            Partitions::Whole(engine) => Ok(engine.clone()),
            Partitions::Cluster(node) => node.serving.borrow().values().next().cloned().ok_or_else(|| elsewhere(0)),
        }
    }

    /// `user`'s grab of `packet`, here or on the node serving it (for a socket's grab; an
    /// HTTP grab is forwarded whole): the engine's result, and whether a share that left for
    /// another partition was seen in its wallet.
    pub async fn grab(&self, packet: PacketId, user: UserId) -> (Result<Grabbed, GrabError>, bool) {
        match (self.of_packet(packet), self) {
            (Ok(engine), _) => self.grab_on(&engine, packet, user).await,
            (Err(_), Partitions::Cluster(node)) => {
                match node.grab(self.place(|p| p.of_packet(packet)), packet, user).await {
                    Some(done) => done,
                    // Taken over by this node meanwhile.
                    None => self.grab_here(packet, user).await,
                }
            }
            (Err(_), Partitions::Whole(_)) => unreachable!("a whole engine holds every packet"),
        }
    }

    /// `user`'s grab of `packet` in the partition served here (`Elsewhere` if it is not): the
    /// engine's result, and whether a share that left for another partition was seen in its
    /// wallet.
    pub async fn grab_here(&self, packet: PacketId, user: UserId) -> (Result<Grabbed, GrabError>, bool) {
        match self.of_packet(packet) {
            Ok(engine) => self.grab_on(&engine, packet, user).await,
            Err(_) => (Err(GrabError::Elsewhere { partition: self.place(|p| p.of_packet(packet)) }), false),
        }
    }

    /// A grab on `engine`, the packet's, and whether its share is in its wallet.
    async fn grab_on(&self, engine: &Engine, packet: PacketId, user: UserId) -> (Result<Grabbed, GrabError>, bool) {
        let result = engine.grab(packet, user).await;
        let credited = self.credited(&result).await;
        (result, credited)
    }

    /// Whether `secret` is this cluster's.
    pub fn is_secret(&self, secret: &str) -> bool {
        matches!(self, Partitions::Cluster(node) if constant_time_eq(secret.as_bytes(), node.secret.as_bytes()))
    }

    /// Waits (up to [`CREDIT_WAIT`]) until a share won for a wallet in another partition is
    /// in that wallet, here or on the node serving it: the grab's answer then promises that a
    /// balance read sees it. True when it is, or never left.
    pub async fn credited(&self, grabbed: &Result<Grabbed, GrabError>) -> bool {
        let Ok(Grabbed { remitted: Some(remittance), .. }) = grabbed else { return true };
        match (self.at(remittance.to), self) {
            (Ok(engine), _) => tokio::time::timeout(CREDIT_WAIT, engine.await_remittance(remittance))
                .await
                .is_ok_and(|credited| credited.is_ok()),
            (Err(_), Partitions::Cluster(node)) => node.await_remote(remittance).await,
            (Err(_), Partitions::Whole(_)) => true,
        }
    }

    /// Asks the node serving the partition of a packet or transfer sent from here
    /// (`remittance` carries it) to wait until it arrives, and answers what that node says: its
    /// view there, or why it went back. `None` if no node answered.
    pub async fn arrival(&self, remittance: &Remittance) -> Option<Result<serde_json::Value, ApiError>> {
        let Partitions::Cluster(node) = self else { return None };
        let wait =
            |address: &str| node.http.post(format!("{address}{AWAIT_PATH}")).json(remittance).timeout(CREDIT_WAIT);
        match node.send(&node.awaits, remittance.to, wait).await {
            Sent::Reply(reply) => Some(json_of(relay_reply(reply).await, remittance.to).await),
            Sent::NoOwner | Sent::NoAnswer => None,
        }
    }

    /// Whether `user` is in `group`'s roster, by an engine served here (`false` if none is).
    pub fn is_member(&self, group: hongbao::GroupId, user: UserId) -> bool {
        self.any().is_ok_and(|engine| engine.is_member(group, user))
    }

    /// The engines served here, by partition.
    pub fn local(&self) -> Vec<(u32, Engine)> {
        match self {
            Partitions::Whole(engine) => vec![(0, engine.clone())],
            Partitions::Cluster(node) => node.serving.borrow().iter().map(|(i, e)| (*i, e.clone())).collect(),
        }
    }

    /// Ready to serve: a single engine is; a node of a cluster once it serves a partition
    /// (it reads rosters from one, for its sockets). A partition nobody serves for a moment
    /// (another node died) does not make this node unready: what it serves is fine, and a
    /// request for that partition answers `unavailable` until one takes it.
    pub fn ready(&self) -> Result<(), String> {
        let Partitions::Cluster(node) = self else { return Ok(()) };
        if node.serving.borrow().is_empty() {
            return Err("this node serves no partition (yet)".into());
        }
        Ok(())
    }

    /// The partitions nobody serves now, as far as this node knows.
    pub fn orphans(&self) -> Vec<u32> {
        let Partitions::Cluster(node) = self else { return Vec::new() };
        let serving = node.serving.borrow();
        (0..node.partition.count()).filter(|i| !serving.contains_key(i) && node.directory.owner(*i).is_none()).collect()
    }

    /// Whether `req` was forwarded by a node of this cluster.
    pub fn forwarded(&self, req: &HttpRequest) -> bool {
        let given = req.headers().get(FORWARDED_HEADER).map_or(&b""[..], |v| v.as_bytes());
        std::str::from_utf8(given).is_ok_and(|given| self.is_secret(given))
    }

    /// The client's address: the peer's, or the one a node of the cluster forwarded for.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        if self.forwarded(req) {
            return req.headers().get(CLIENT_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        }
        req.peer_addr().map(|a| a.ip())
    }

    /// The partition a forwarded leg names, if `req` is one.
    pub fn leg(&self, req: &HttpRequest) -> Option<u32> {
        if !self.forwarded(req) {
            return None;
        }
        req.headers().get(PARTITION_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
    }

    /// Applies `op` to every partition — here for those served here, forwarded as a leg to
    /// the others. Partition 0 decides first: its refusal is the answer, and nothing changed
    /// anywhere. Then the others, at once; when all of them applied it, the answer is
    /// partition 0's. When some did not, the answer is `outcome_unknown` naming them: the
    /// change is in some partitions only, and the same request again (these changes are
    /// idempotent) completes it. A leg forwarded here applies it to its partition only.
    ///
    /// Partition 0 orders conflicting changes (two orgs taking one group: one is refused
    /// there, before any other partition sees it). Two different rosters set at once for one
    /// group through two nodes may reach the other partitions in either order: a host writes a
    /// group's roster from one place.
    pub async fn everywhere<F, Fut>(&self, req: &HttpRequest, op: F) -> Result<HttpResponse, ApiError>
    where
        F: Fn(Engine) -> Fut,
        Fut: Future<Output = Result<HttpResponse, ApiError>>,
    {
        let node = match self {
            Partitions::Whole(engine) => return op(engine.clone()).await,
            Partitions::Cluster(node) => node,
        };
        if let Some(index) = self.leg(req) {
            return op(self.at(index)?).await;
        }
        let leg = |index: u32| {
            let (local, op) = (self.at(index).ok(), &op);
            async move {
                match local {
                    Some(engine) => op(engine).await.unwrap_or_else(|e| actix_web::ResponseError::error_response(&e)),
                    None => node.forward(index, req, true).await,
                }
            }
        };
        let first = leg(0).await;
        if !first.status().is_success() {
            return Ok(first);
        }
        let rest = futures::future::join_all((1..node.partition.count()).map(leg)).await;
        let mut missing = Vec::new();
        let mut why = serde_json::Map::new();
        for (index, reply) in (1u32..).zip(rest) {
            if !reply.status().is_success() {
                let body = actix_web::body::to_bytes(reply.into_body()).await.unwrap_or_default();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let kind = body["error"].as_str().unwrap_or("internal");
                why.insert(index.to_string(), serde_json::Value::from(kind));
                missing.push(index);
            }
        }
        if missing.is_empty() {
            return Ok(first);
        }
        let message = format!(
            "applied in partition 0 and every other but {missing:?}, which did not take it (see `refusals`): once \
             they can, send the same change again to complete it"
        );
        let reply = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "outcome_unknown", message);
        Err(reply.with("partitions_missing", missing).with("refusals", why))
    }

    /// Asks partition `index` (here, or its owner) with `req` as a leg, and reads its JSON
    /// reply: for reads that gather every partition (the audit).
    pub async fn ask(&self, index: u32, req: &HttpRequest) -> Result<serde_json::Value, ApiError> {
        let Partitions::Cluster(node) = self else { return Err(ApiError::invalid("not a cluster")) };
        json_of(node.forward(index, req, true).await, index).await
    }
}

/// The JSON body of partition `index`'s reply, or the refusal it carries.
async fn json_of(reply: HttpResponse, index: u32) -> Result<serde_json::Value, ApiError> {
    let status = reply.status();
    let body = actix_web::body::to_bytes(reply.into_body()).await.unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status.is_success() {
        Ok(json)
    } else {
        let kind = json["error"].as_str().unwrap_or("internal").to_owned();
        let message = json["message"].as_str().unwrap_or("").to_owned();
        Err(ApiError::new(status, &kind, format!("partition {index}: {message}")).with("partition", index))
    }
}

impl Node {
    /// Asks the node serving `remittance`'s receiver to wait until it is applied there.
    async fn await_remote(&self, remittance: &Remittance) -> bool {
        let wait =
            |address: &str| self.http.post(format!("{address}{AWAIT_PATH}")).json(remittance).timeout(CREDIT_WAIT);
        matches!(self.send(&self.awaits, remittance.to, wait).await, Sent::Reply(reply) if reply.status().is_success())
    }

    /// Sends `req` (with its kept body) to the node serving partition `index`, and answers its
    /// reply; `leg` names the partition so the node applies it there only.
    async fn forward(&self, index: u32, req: &HttpRequest, leg: bool) -> HttpResponse {
        let body = req.extensions().get::<RawBody>().map_or_else(Bytes::new, |b| b.0.clone());
        let path = req.uri().path_and_query().map_or(req.path(), |p| p.as_str());
        let client = req.peer_addr().map(|a| a.ip().to_string());
        // actix speaks `http` 0.2 and reqwest 1.x: the method and headers go over as text.
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
        let sent = self
            .send(&self.forwards, index, |address| {
                let mut out = self.http.request(method.clone(), format!("{address}{path}")).body(body.clone());
                for name in ["authorization", "content-type", crate::auth::DEVICE_HEADER] {
                    if let Some(value) = req.headers().get(name) {
                        out = out.header(name, value.as_bytes());
                    }
                }
                if let Some(client) = &client {
                    out = out.header(CLIENT_HEADER, client);
                }
                if leg {
                    out = out.header(PARTITION_HEADER, index.to_string());
                }
                out
            })
            .await;
        let refusal = match sent {
            Sent::Reply(reply) => return relay_reply(reply).await,
            Sent::NoOwner => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("partition {index} has no owner now (one is taking it over); nothing changed: retry"),
            )
            .with("partition", index)
            .retry_after(1),
            Sent::NoAnswer => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "outcome_unknown",
                format!(
                    "partition {index} was asked and did not answer; it may have happened: retry (the same request \
                     returns its first outcome)"
                ),
            ),
        };
        actix_web::ResponseError::error_response(&refusal)
    }

    /// Sends a request `build` makes for an address to the node serving partition `index`,
    /// carrying the cluster's secret; again (up to [`FORWARD_TRIES`] times) while no node
    /// serves it, the node cannot be reached, or it answers that it no longer serves it.
    async fn send(
        &self,
        bound: &tokio::sync::Semaphore,
        index: u32,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Sent {
        let Ok(_connection) = bound.acquire().await else { return Sent::NoOwner };
        for attempt in 0..FORWARD_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            let served_here = self.serving.borrow().contains_key(&index);
            let Some(address) = self.directory.owner(index).filter(|_| !served_here) else { continue };
            match build(&address).header(FORWARDED_HEADER, &self.secret).send().await {
                Ok(reply) if reply.status() == reqwest::StatusCode::MISDIRECTED_REQUEST => {
                    // It no longer serves the partition: ask again whoever does now.
                    self.directory.forget(index, &address);
                }
                Ok(reply) => return Sent::Reply(reply),
                Err(e) if e.is_connect() => {
                    // Nothing reached it: it is gone, or going.
                    self.directory.forget(index, &address);
                }
                Err(e) => {
                    tracing::warn!(partition = index, %address, "a request sent to another node got no answer: {e}");
                    return Sent::NoAnswer;
                }
            }
        }
        Sent::NoOwner
    }

    /// A grab of a packet another node serves, by a member this node authenticated: sent over
    /// the link to that node, with many others in flight. The engine's result there, and
    /// whether the share was seen in its wallet; `None` if the partition is served here now.
    async fn grab(&self, index: u32, packet: PacketId, user: UserId) -> Option<(Result<Grabbed, GrabError>, bool)> {
        // Past the bound the answer is `Busy` at once: nothing waits without bound.
        let Ok(_permit) = self.linked.try_acquire() else { return Some((Err(GrabError::Busy), false)) };
        for attempt in 0..FORWARD_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            if self.serving.borrow().contains_key(&index) {
                return None;
            }
            let Some(address) = self.directory.owner(index) else { continue };
            let link = match self.link(&address).await {
                Ok(link) => link,
                Err(e) => {
                    // Nothing was sent; the lease says who serves it, so ask again.
                    tracing::debug!(partition = index, %address, "no link: {e}");
                    continue;
                }
            };
            let Some((id, answer)) = link.grab(packet, user) else { continue };
            match tokio::time::timeout(self.timeout, answer).await {
                Ok(Ok(LinkReply { result: Err(GrabError::Elsewhere { .. }), .. })) => {
                    // It no longer serves the partition: ask again whoever does now.
                    self.directory.forget(index, &address);
                }
                Ok(Ok(reply)) => return Some((reply.result, reply.credited)),
                // Sent, and the link died or no answer came in time: it may have happened.
                Ok(Err(_)) => return Some((Err(GrabError::OutcomeUnknown), false)),
                Err(_) => {
                    link.forget(id);
                    return Some((Err(GrabError::OutcomeUnknown), false));
                }
            }
        }
        Some((Err(GrabError::Unavailable), false))
    }

    /// The link to the node at `address`, opened if there is none alive (one opening at a
    /// time, so a burst opens one link, not one per grab).
    async fn link(&self, address: &str) -> Result<Arc<Link>, String> {
        let alive = |links: &std::collections::HashMap<String, Arc<Link>>| {
            links.get(address).filter(|link| link.alive()).map(Arc::clone)
        };
        if let Some(link) = alive(&self.links.lock()) {
            return Ok(link);
        }
        let _opening = self.opening.lock().await;
        if let Some(link) = alive(&self.links.lock()) {
            return Ok(link);
        }
        let link = Arc::new(Link::open(address, &self.secret).await?);
        self.links.lock().insert(address.to_owned(), Arc::clone(&link));
        Ok(link)
    }
}

/// How long opening a link may take.
const LINK_OPEN_WITHIN: Duration = Duration::from_secs(5);

/// How often a link pings the other node; a link that hears nothing for three of these closes.
const LINK_PING: Duration = Duration::from_secs(10);

/// A link to another node: one WebSocket carrying this node's grabs of packets it serves, many
/// at once, each answered by its id. When every handle to it is gone, it closes.
struct Link {
    out: tokio::sync::mpsc::Sender<tokio_tungstenite::tungstenite::Message>,
    /// The grabs sent and not answered yet, by id; `None` once the link closed.
    waiting: Arc<parking_lot::Mutex<Option<Waiting>>>,
    next: std::sync::atomic::AtomicU64,
}

/// Whoever waits for each grab sent over a link.
type Waiting = std::collections::HashMap<u64, tokio::sync::oneshot::Sender<LinkReply>>;

impl Link {
    /// Opens the link: a socket to `address`'s `/ws`, introduced with the cluster's secret;
    /// a writer (which also pings) and a reader task on the current runtime.
    async fn open(address: &str, secret: &str) -> Result<Link, String> {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let url = format!("ws://{}/ws", address.trim_start_matches("http://"));
        let opening = async {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.map_err(|e| e.to_string())?;
            let hello = serde_json::json!({ "op": "node", "secret": secret }).to_string();
            ws.send(Message::text(hello)).await.map_err(|e| e.to_string())?;
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.contains("\"node\":true") => Ok(ws),
                other => Err(format!("the link was refused: {other:?}")),
            }
        };
        let ws = tokio::time::timeout(LINK_OPEN_WITHIN, opening)
            .await
            .map_err(|_| format!("{url} did not open within {LINK_OPEN_WITHIN:?}"))??;
        let (mut sink, mut stream) = ws.split();
        let (out, mut outgoing) = tokio::sync::mpsc::channel::<Message>(LINKED_MAX);
        let waiting = Arc::new(parking_lot::Mutex::new(Some(Waiting::new())));
        tokio::spawn(async move {
            let mut ping = tokio::time::interval(LINK_PING);
            loop {
                let message = tokio::select! {
                    message = outgoing.recv() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    _ = ping.tick() => Message::Ping(Default::default()),
                };
                if sink.send(message).await.is_err() {
                    return;
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        });
        let replies = Arc::clone(&waiting);
        tokio::spawn(async move {
            loop {
                match tokio::time::timeout(LINK_PING * 3, stream.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<LinkReply>(&text) {
                        Ok(reply) => {
                            let waiter = replies.lock().as_mut().and_then(|waiting| waiting.remove(&reply.id));
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(reply);
                            }
                        }
                        // Its waiter times out: outcome unknown.
                        Err(e) => tracing::warn!("a reply on a link does not read: {e}"),
                    },
                    Ok(Some(Ok(_))) => {}
                    // Closed, failed, or silent too long.
                    _ => break,
                }
            }
            // Whoever still waits hears so (their grab may have happened); the link takes no
            // more.
            replies.lock().take();
        });
        Ok(Link { out, waiting, next: std::sync::atomic::AtomicU64::new(1) })
    }

    fn alive(&self) -> bool {
        self.waiting.lock().is_some() && !self.out.is_closed()
    }

    /// Sends a grab; its id, and the receiver its reply comes on. `None` if the link is closed
    /// or full (nothing was sent).
    fn grab(&self, packet: PacketId, user: UserId) -> Option<(u64, tokio::sync::oneshot::Receiver<LinkReply>)> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let frame = serde_json::to_string(&LinkGrab { id, packet, user }).ok()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.lock().as_mut()?.insert(id, tx);
        if self.out.try_send(tokio_tungstenite::tungstenite::Message::text(frame)).is_err() {
            self.forget(id);
            return None;
        }
        Some((id, rx))
    }

    /// Stops waiting for grab `id`'s reply.
    fn forget(&self, id: u64) {
        if let Some(waiting) = self.waiting.lock().as_mut() {
            waiting.remove(&id);
        }
    }
}

/// What became of a request sent to another node.
enum Sent {
    /// Its answer.
    Reply(reqwest::Response),
    /// No node served the partition: it was not sent, nothing changed.
    NoOwner,
    /// It was sent and no answer came: it may have happened.
    NoAnswer,
}

/// A grab sent over a link to the node serving its packet.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct LinkGrab {
    pub id: u64,
    pub packet: PacketId,
    pub user: UserId,
}

/// Its answer: the engine's result, and whether a share that left for another partition was
/// seen in its wallet.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct LinkReply {
    pub id: u64,
    pub result: Result<Grabbed, GrabError>,
    pub credited: bool,
}

impl LinkReply {
    /// The frame answering grab `id`.
    pub fn to(id: u64, result: Result<Grabbed, GrabError>, credited: bool) -> String {
        serde_json::to_string(&LinkReply { id, result, credited }).unwrap_or_default()
    }
}

/// The reply of another node, as this node's.
async fn relay_reply(reply: reqwest::Response) -> HttpResponse {
    let status = StatusCode::from_u16(reply.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HttpResponse::build(status);
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = reply.headers().get(name.as_str()).and_then(|v| v.to_str().ok()) {
            out.insert_header((name, value.to_owned()));
        }
    }
    match reply.bytes().await {
        Ok(body) => out.body(body),
        Err(e) => actix_web::ResponseError::error_response(&ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "outcome_unknown",
            format!("the partition's owner answered and its reply was cut off ({e}); it may have happened: retry"),
        )),
    }
}

/// The refusal that sends a request to partition `index`'s node.
pub fn elsewhere(index: u32) -> ApiError {
    ApiError::new(StatusCode::MISDIRECTED_REQUEST, "elsewhere", format!("partition {index} is served by another node"))
        .with("partition", index)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware that keeps each request's body (up to `body_max`) and forwards a request
/// answered `elsewhere` to the partition's node (see the module's documentation).
pub struct Forwarding {
    pub partitions: Partitions,
    pub body_max: usize,
}

impl<S, B> Transform<S, ServiceRequest> for Forwarding
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = ForwardingService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ForwardingService {
            service: Rc::new(service),
            partitions: self.partitions.clone(),
            body_max: self.body_max,
        }))
    }
}

pub struct ForwardingService<S> {
    service: Rc<S>,
    partitions: Partitions,
    body_max: usize,
}

impl<S, B> Service<ServiceRequest> for ForwardingService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let Partitions::Cluster(node) = self.partitions.clone() else {
            return Box::pin(async move { service.call(req).await.map(ServiceResponse::map_into_boxed_body) });
        };
        let (forwarded, body_max) = (self.partitions.forwarded(req.request()), self.body_max);
        Box::pin(async move {
            if req.path() == "/ws" {
                return service.call(req).await.map(ServiceResponse::map_into_boxed_body);
            }
            let mut payload = req.take_payload();
            let mut body = actix_web::web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                body.extend_from_slice(&chunk?);
                if body.len() > body_max {
                    let error = ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!("the body exceeds {body_max} bytes"),
                    );
                    return Ok(req.error_response(error.with("limit", body_max)));
                }
            }
            let body = body.freeze();
            req.extensions_mut().insert(RawBody(body.clone()));
            req.set_payload(Payload::from(body));
            let res = service.call(req).await?;
            // A request forwarded here is never forwarded again: its node asks again.
            let forward = res.response().extensions().get::<Forward>().copied().filter(|_| !forwarded);
            let Some(Forward(index)) = forward else {
                return Ok(res.map_into_boxed_body());
            };
            let (request, _) = res.into_parts();
            let reply = node.forward(index, &request, false).await;
            Ok(ServiceResponse::new(request, reply))
        })
    }
}
