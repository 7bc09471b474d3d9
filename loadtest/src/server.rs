//! `hongbao serve` as a target: the same requests over HTTP (`http://HOST:PORT`) or each
//! member's WebSocket (`ws://HOST:PORT`), with tokens signed by the key the server trusts
//! (`--key FILE`, the private half of its `--public-key`).
//!
//! Setup (rosters, deposits) goes through the host's routes, sends through the sender's
//! token, grabs through the grabber's: every request is authenticated as in production. Ids
//! are offset by a random base per run, so runs against one server never collide. Over
//! WebSocket each grabbing member has a socket of their own, watching no group (the figure is
//! the grab path, not the fan-out), opened at their first grab.
//!
//! A cluster's nodes are given joined by `+` (`http://HOST:PORT+HOST:PORT`): each member talks
//! to one node (by user id), which forwards to the node serving what they ask for; the host's
//! setup goes through the first. On a cluster of several partitions (its `/readyz` says how
//! many) each packet's id is placed in its sender's partition, as the server requires.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hongbao::{Amount, GroupId, PacketId, Partition, UserId};
use hongbao_server::auth::{mint, Claims};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::target::{Answer, LuckySend, Reply, Verdict};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Which surface of the server is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// HTTP/1.1: one request at a time per connection.
    Http,
    /// A WebSocket per member.
    Ws,
    /// The chat host's relay sockets (`relay://`): `--connections` of them, each carrying many
    /// members' grabs at once, each grab with its member's token.
    Relay,
}

/// One host relay socket: grabs go out through `out`; replies come back to whoever waits for
/// their id.
struct Relay {
    out: tokio::sync::mpsc::UnboundedSender<String>,
    waiting: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<RelayAnswer>>>>,
}

/// A relay's answer to one grab, read without building a JSON tree.
#[derive(serde::Deserialize)]
struct RelayAnswer {
    id: Option<u64>,
    #[serde(default)]
    ok: bool,
    grab: Option<RelayGrab>,
    error: Option<RelayError>,
}

#[derive(serde::Deserialize)]
struct RelayGrab {
    amount: Amount,
    #[serde(default)]
    already: bool,
}

#[derive(serde::Deserialize)]
struct RelayError {
    error: String,
    #[serde(default)]
    message: String,
}

pub struct ServerTarget {
    /// As given: `http://…` or `ws://…`.
    pub url: String,
    /// The nodes: a member talks to `bases[user % len]`, the host to the first.
    bases: Vec<String>,
    /// The cluster's placement, when it has several partitions.
    placement: Option<Partition>,
    /// Each packet's id on the server, once sent (see `packet`).
    packet_ids: Mutex<HashMap<u64, u64>>,
    surface: Surface,
    http: reqwest::Client,
    key: String,
    host: String,
    tokens: Mutex<HashMap<u64, Arc<str>>>,
    sockets: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Option<Socket>>>>>,
    relays: Vec<Relay>,
    next_request: AtomicU64,
    /// HTTP/1.1 carries one request per connection at a time: at most `--connections` are in
    /// flight, each on a kept-alive connection of the pool.
    in_flight: tokio::sync::Semaphore,
    /// Added to every packet, group and operation id of this run.
    offset: u64,
    /// How long a request may go unanswered (`--timeout-secs`).
    timeout: Duration,
}

impl ServerTarget {
    /// Checks that the server answers and accepts the key's tokens.
    pub async fn connect(
        url: &str,
        key_path: Option<&std::path::Path>,
        connections: usize,
        timeout: Duration,
    ) -> Result<ServerTarget, String> {
        let (surface, rest) = match url.split_once("://") {
            Some(("http", rest)) => (Surface::Http, rest),
            Some(("ws", rest)) => (Surface::Ws, rest),
            Some(("relay", rest)) => (Surface::Relay, rest),
            _ => return Err(format!("a server target is http://, ws:// or relay://HOST:PORT, not {url}")),
        };
        let key_path =
            key_path.ok_or("a server target needs --key FILE: the private key whose public half the server trusts")?;
        let key =
            std::fs::read_to_string(key_path).map_err(|e| format!("cannot read --key {}: {e}", key_path.display()))?;
        let host = mint(key.as_bytes(), &Claims::host(24 * 3600))?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let bases: Vec<String> = rest.split('+').map(|node| format!("http://{}", node.trim_end_matches('/'))).collect();
        let mut partitions = None;
        for base in &bases {
            let ready =
                http.get(format!("{base}/readyz")).send().await.map_err(|e| format!("cannot reach {base}: {e}"))?;
            if !ready.status().is_success() {
                return Err(format!("{base}/readyz answers {}", ready.status()));
            }
            let ready: Value = ready.json().await.map_err(|e| format!("{base}/readyz: {e}"))?;
            let count = u32::try_from(ready["of"].as_u64().unwrap_or(1)).unwrap_or(u32::MAX);
            if *partitions.get_or_insert(count) != count {
                return Err(format!("{url}: the nodes disagree on the cluster's partitions"));
            }
            let audit =
                http.get(format!("{base}/v1/audit")).bearer_auth(&host).send().await.map_err(|e| e.to_string())?;
            if !audit.status().is_success() {
                return Err(format!(
                    "{base} refuses this key's host token ({}): is --key the pair of its --public-key?",
                    audit.status()
                ));
            }
        }
        let placement = match partitions.unwrap_or(1) {
            1 => None,
            count => Some(Partition::new(0, count).map_err(|e| format!("{url}: {e}"))?),
        };
        let offset = (u64::from(rand::random::<u32>()) + 1) << 24;
        let relays =
            if surface == Surface::Relay { open_relays(&bases, &host, connections).await? } else { Vec::new() };
        Ok(ServerTarget {
            url: url.to_owned(),
            bases,
            placement,
            packet_ids: Mutex::new(HashMap::new()),
            surface,
            http,
            key,
            host,
            tokens: Mutex::new(HashMap::new()),
            sockets: Mutex::new(HashMap::new()),
            relays,
            next_request: AtomicU64::new(1),
            in_flight: tokio::sync::Semaphore::new(connections.max(1)),
            offset,
            timeout,
        })
    }

    /// A member's token, minted once (strongly authenticated, so large sends pass step-up).
    fn token(&self, user: UserId) -> Result<Arc<str>, String> {
        if let Some(token) = self.tokens.lock().get(&user.0) {
            return Ok(Arc::clone(token));
        }
        let claims = Claims::member(user, &device(user), &["pwd", "bio"], 24 * 3600);
        let token: Arc<str> = mint(self.key.as_bytes(), &claims)?.into();
        self.tokens.lock().insert(user.0, Arc::clone(&token));
        Ok(token)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        who: Option<UserId>,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let _connection = self.in_flight.acquire().await.map_err(|e| e.to_string())?;
        let mut req = self.http.request(method, format!("{}{path}", self.base(who)));
        req = match who {
            Some(user) => req.bearer_auth(&*self.token(user)?).header("X-Device-Id", device(user)),
            None => req.bearer_auth(&self.host),
        };
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let body = res.json::<Value>().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    pub fn group(&self, group: GroupId) -> u64 {
        group.0 + self.offset
    }

    /// The node `user` talks to (the host: the first).
    fn base(&self, user: Option<UserId>) -> &str {
        &self.bases[user.map_or(0, |u| u.0 as usize % self.bases.len())]
    }

    /// A packet's id on the server: offset, and on a cluster of several partitions the first
    /// id from its own range placed in its sender's partition (chosen at its send).
    pub fn packet(&self, packet: PacketId) -> u64 {
        self.packet_ids.lock().get(&packet.0).copied().unwrap_or(packet.0 + self.offset)
    }

    /// The id `packet`, sent by `sender` (offset), takes on the server.
    fn place_packet(&self, packet: PacketId, sender: UserId) -> Result<u64, String> {
        let Some(placement) = self.placement else { return Ok(packet.0 + self.offset) };
        // Each packet scans a range of its own, 64 draws per partition long: a range with no
        // id in the sender's partition has a chance of about e^-64.
        let span = 64 * u64::from(placement.count());
        let from = self.offset + packet.0 * span;
        let id = (from..from + span)
            .find(|&id| placement.of_packet(PacketId(id)) == placement.of_user(sender))
            .ok_or_else(|| format!("no id for packet {} in its sender's partition", packet.0))?;
        self.packet_ids.lock().insert(packet.0, id);
        Ok(id)
    }

    /// Users are offset too, so that each run starts from empty wallets.
    fn user(&self, user: UserId) -> UserId {
        UserId(user.0 + self.offset)
    }

    pub async fn set_members(&self, group: GroupId, members: Vec<UserId>) -> Result<(), String> {
        let path = format!("/v1/groups/{}/members", self.group(group));
        let members: Vec<UserId> = members.into_iter().map(|u| self.user(u)).collect();
        match self.call(reqwest::Method::PUT, None, &path, Some(json!({ "members": members }))).await? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("roster refused ({status}): {body}")),
        }
    }

    pub async fn deposit(&self, op: u64, user: UserId, fen: u64) -> Answer {
        let body = json!({ "op": op + self.offset, "amount": Amount::fen(fen) });
        match self
            .call(reqwest::Method::POST, None, &format!("/v1/wallets/{}/deposit", self.user(user).0), Some(body))
            .await
        {
            Ok((200, _)) => Answer::ok("deposited"),
            other => refusal(other, "deposit_refused"),
        }
    }

    pub async fn send(&self, send: &LuckySend) -> Answer {
        let split = json!({ "kind": "lucky", "total": Amount::fen(send.fen), "shares": send.shares });
        let sender = self.user(send.sender);
        let id = match self.place_packet(send.packet, sender) {
            Ok(id) => id,
            Err(e) => return refusal(Err(e), "send_refused"),
        };
        let body = json!({ "id": id, "group": self.group(send.group), "split": split, "greeting": "恭喜发财" });
        match self.call(reqwest::Method::POST, Some(sender), "/v1/packets", Some(body)).await {
            Ok((200, _)) => Answer::ok("sent"),
            other => refusal(other, "send_refused"),
        }
    }

    pub async fn grab(&self, packet: PacketId, user: UserId) -> Reply {
        let user = self.user(user);
        let answer = match self.surface {
            Surface::Http => {
                let path = format!("/v1/packets/{}/grab", self.packet(packet));
                self.call(reqwest::Method::POST, Some(user), &path, None).await.map(|(status, body)| {
                    if status == 200 {
                        (true, body)
                    } else {
                        (false, body)
                    }
                })
            }
            Surface::Ws => match tokio::time::timeout(self.timeout, self.grab_over_socket(packet, user)).await {
                Ok(answer) => answer,
                Err(_) => return Reply::Error(format!("no answer within {:?}", self.timeout)),
            },
            Surface::Relay => return self.grab_over_relay(packet, user).await,
        };
        match answer {
            Ok((true, body)) => {
                let fen = body["amount"].as_str().and_then(|a| a.parse::<Amount>().ok()).map_or(0, Amount::as_fen);
                if body["already"] == true {
                    Reply::AlreadyGrabbed(fen)
                } else {
                    Reply::Won(fen)
                }
            }
            Ok((false, body)) => match body["error"].as_str().unwrap_or("") {
                "sold_out" => Reply::SoldOut,
                "not_eligible" => Reply::NotEligible,
                "expired" => Reply::Expired,
                "unknown_packet" => Reply::UnknownPacket,
                "busy" => Reply::Busy,
                other => Reply::Error(format!("{other}: {}", body["message"])),
            },
            Err(e) => Reply::Error(e),
        }
    }

    /// One grab over the member's socket: (ok, the grab or the error body).
    async fn grab_over_socket(&self, packet: PacketId, user: UserId) -> Result<(bool, Value), String> {
        let slot = Arc::clone(self.sockets.lock().entry(user.0).or_default());
        let mut socket = slot.lock().await;
        if socket.is_none() {
            *socket = Some(self.open_socket(user).await?);
        }
        let ws = socket.as_mut().expect("opened above");
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let grab = json!({ "op": "grab", "id": id, "packet": self.packet(packet) }).to_string();
        if let Err(e) = ws.send(Message::text(grab)).await {
            *socket = None;
            return Err(e.to_string());
        }
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let reply: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                    if reply["type"] == "reply" && reply["id"] == id {
                        let ok = reply["ok"] == true;
                        let body = if ok { reply["grab"].clone() } else { reply["error"].clone() };
                        return Ok((ok, body));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    *socket = None;
                    return Err(e.to_string());
                }
                None => {
                    *socket = None;
                    return Err("the server closed the socket".into());
                }
            }
        }
    }

    /// One grab through a relay (`user` already offset).
    async fn grab_over_relay(&self, packet: PacketId, user: UserId) -> Reply {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let relay = &self.relays[id as usize % self.relays.len()];
        let token = match self.token(user) {
            Ok(token) => token,
            Err(e) => return Reply::Error(e),
        };
        // Tokens and device ids hold no character JSON escapes.
        let grab = format!(
            r#"{{"op":"grab","id":{id},"packet":{},"token":"{token}","device":"{}"}}"#,
            self.packet(packet),
            device(user)
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        relay.waiting.lock().insert(id, tx);
        if relay.out.send(grab).is_err() {
            return Reply::Error("the relay socket closed".into());
        }
        let Ok(answer) = tokio::time::timeout(self.timeout, rx).await else {
            relay.waiting.lock().remove(&id);
            return Reply::Error(format!("no answer within {:?}", self.timeout));
        };
        match answer {
            Ok(RelayAnswer { ok: true, grab: Some(g), .. }) if g.already => Reply::AlreadyGrabbed(g.amount.as_fen()),
            Ok(RelayAnswer { ok: true, grab: Some(g), .. }) => Reply::Won(g.amount.as_fen()),
            Ok(RelayAnswer { error: Some(e), .. }) => match e.error.as_str() {
                "sold_out" => Reply::SoldOut,
                "not_eligible" => Reply::NotEligible,
                "expired" => Reply::Expired,
                "unknown_packet" => Reply::UnknownPacket,
                "busy" => Reply::Busy,
                other => Reply::Error(format!("{other}: {}", e.message)),
            },
            Ok(_) => Reply::Error("a reply with neither a grab nor an error".into()),
            Err(_) => Reply::Error("the relay socket closed".into()),
        }
    }

    async fn open_socket(&self, user: UserId) -> Result<Socket, String> {
        let url = format!("ws://{}/ws", self.base(Some(user)).trim_start_matches("http://"));
        let (mut ws, _) =
            tokio_tungstenite::connect_async(&url).await.map_err(|e| format!("cannot open {url}: {e}"))?;
        let auth = json!({ "op": "auth", "token": &*self.token(user)?, "device": device(user), "groups": [] });
        ws.send(Message::text(auth.to_string())).await.map_err(|e| e.to_string())?;
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains("\"hello\"") => Ok(ws),
            other => Err(format!("the socket was refused: {other:?}")),
        }
    }

    pub async fn balance(&self, user: UserId) -> Result<u64, String> {
        match self.call(reqwest::Method::GET, None, &format!("/v1/wallets/{}", self.user(user).0), None).await? {
            (200, body) => {
                Ok(body["balance"].as_str().and_then(|a| a.parse::<Amount>().ok()).map_or(0, Amount::as_fen))
            }
            (status, body) => Err(format!("balance refused ({status}): {body}")),
        }
    }

    pub async fn claims(&self, packet: PacketId) -> Result<Vec<(UserId, u64)>, String> {
        let mut claims = Vec::new();
        let mut after = 0;
        loop {
            let path = format!("/v1/packets/{}?after={after}", self.packet(packet));
            let (status, body) = self.call(reqwest::Method::GET, None, &path, None).await?;
            if status != 200 {
                return Err(format!("packet view refused ({status}): {body}"));
            }
            for c in body["claims"].as_array().into_iter().flatten() {
                let fen = c["amount"].as_str().and_then(|a| a.parse::<Amount>().ok()).map_or(0, Amount::as_fen);
                claims.push((UserId(c["user"].as_u64().unwrap_or(0).wrapping_sub(self.offset)), fen));
            }
            match body["claims_next"].as_u64() {
                Some(next) => after = next,
                None => return Ok(claims),
            }
        }
    }

    pub async fn audit(&self) -> Result<Verdict, String> {
        let (status, a) = self.call(reqwest::Method::GET, None, "/v1/audit", None).await?;
        if status != 200 {
            return Err(format!("audit refused ({status}): {a}"));
        }
        let detail = format!(
            "wallets {} + escrow {} + pending {} = deposits {} - withdrawals {} (the whole server)",
            a["wallets"].as_str().unwrap_or("?"),
            a["escrow"].as_str().unwrap_or("?"),
            a["pending"].as_str().unwrap_or("?"),
            a["deposits"].as_str().unwrap_or("?"),
            a["withdrawals"].as_str().unwrap_or("?")
        );
        Ok(Verdict { balanced: a["balanced"] == true, detail })
    }
}

/// `connections` relay sockets, spread over the nodes at `bases`, authenticated with the host's
/// token, each with a writer and a reader task.
async fn open_relays(bases: &[String], host: &str, connections: usize) -> Result<Vec<Relay>, String> {
    let mut relays = Vec::with_capacity(connections);
    for n in 0..connections.max(1) {
        let url = format!("ws://{}/ws", bases[n % bases.len()].trim_start_matches("http://"));
        let (mut ws, _) =
            tokio_tungstenite::connect_async(&url).await.map_err(|e| format!("cannot open {url}: {e}"))?;
        ws.send(Message::text(json!({ "op": "auth", "token": host }).to_string())).await.map_err(|e| e.to_string())?;
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains("\"relay\":true") => {}
            other => return Err(format!("the relay was refused: {other:?}")),
        }
        let (mut sink, mut stream) = ws.split();
        let (out, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<String>();
        let waiting: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<RelayAnswer>>>> = Arc::default();
        tokio::spawn(async move {
            while let Some(text) = outgoing.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        });
        let replies = Arc::clone(&waiting);
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else { continue };
                let Ok(reply) = serde_json::from_str::<RelayAnswer>(&text) else { continue };
                if let Some(id) = reply.id {
                    if let Some(waiter) = replies.lock().remove(&id) {
                        let _ = waiter.send(reply);
                    }
                }
            }
            // The socket ended: whoever still waits hears it closed.
            replies.lock().clear();
        });
        relays.push(Relay { out, waiting });
    }
    Ok(relays)
}

fn device(user: UserId) -> String {
    format!("loadtest-{}", user.0)
}

impl ServerTarget {
    /// An instant transfer from `from`.
    pub async fn transfer(&self, id: u64, from: UserId, to: UserId, fen: u64) -> Answer {
        let body = json!({ "id": id + self.offset, "to": self.user(to), "amount": Amount::fen(fen) });
        match self.call(reqwest::Method::POST, Some(self.user(from)), "/v1/transfers", Some(body)).await {
            Ok((200, _)) => Answer::ok("transfer_sent"),
            other => refusal(other, "transfer_error"),
        }
    }

    /// The receiver accepts.
    pub async fn accept(&self, id: u64, by: UserId) -> Answer {
        let path = format!("/v1/transfers/{}/accept", id + self.offset);
        match self.call(reqwest::Method::POST, Some(self.user(by)), &path, None).await {
            Ok((200, _)) => Answer::ok("accepted"),
            other => refusal(other, "transfer_error"),
        }
    }
}

/// A refusal in the server's words: the kinds the reports count by name, anything else as
/// `other`, with the server's message (or why no answer came).
fn refusal(answer: Result<(u16, Value), String>, other: &'static str) -> Answer {
    const KINDS: [&str; 5] = ["insufficient_funds", "too_late", "busy", "daily_limit", "unavailable"];
    match answer {
        Ok((status, body)) => {
            let error = body["error"].as_str().unwrap_or("");
            let kind = KINDS.iter().find(|k| **k == error).copied().unwrap_or(other);
            let message = body["message"].as_str().map_or_else(|| body.to_string(), str::to_string);
            Answer::refused(kind, format!("{status} {error}: {message}"))
        }
        Err(e) => Answer::refused(other, e),
    }
}
