//! A member's WebSocket (`/ws`): live events of their groups and transfers, and grabs.
//!
//! Browsers cannot set headers on a WebSocket, so the token travels in the first message:
//!
//! ```text
//! → {"op":"auth","token":"…","device":"phone-1","groups":[7],"since":{"epoch":…,"seq":41}}
//! ← {"type":"hello","epoch":…,"seq":57,"user":2,"groups":[7]}
//! ← {"type":"event","seq":42,"event":{"kind":"grabbed",…}}        (what was missed, then live)
//! → {"op":"grab","id":"r1","packet":1001}
//! ← {"type":"reply","id":"r1","ok":true,"grab":{…},"already":false}
//! → {"op":"watch","group":8}
//! ```
//!
//! Refusals are `{"type":"reply","id":…,"ok":false,"error":{"error":kind,"status":…,…}}`,
//! the same body as over HTTP. A socket that does not authenticate within `ws_auth_secs`, sends
//! a message over `ws_message_bytes_max`, stays silent for three pings, or falls
//! `ws_buffer_len` events behind is closed with a reason.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use futures::stream::FuturesUnordered;
use futures::{Future, StreamExt};
use hongbao::{GrabError, GroupId, PacketId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::abuse::Action;
use crate::api::{grab_reply, Ctx};
use crate::auth::{Member, Principal};
use crate::hub::{Join, TOO_MANY_SOCKETS, TOO_SLOW};
use crate::reply::ApiError;

/// What a client sends.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Auth {
        token: String,
        /// A member's device; none for the host's relay.
        #[serde(default)]
        device: Option<String>,
        #[serde(default)]
        groups: Vec<GroupId>,
        #[serde(default)]
        since: Option<Since>,
    },
    Grab {
        id: Value,
        packet: PacketId,
        /// Only on the host's relay (each grab with its member's token): refused here.
        #[serde(default)]
        token: Option<String>,
    },
    Watch {
        group: GroupId,
    },
    /// Another node of the cluster opens a link, with the cluster's secret.
    Node {
        secret: String,
    },
}

#[derive(Deserialize)]
struct Since {
    /// The server run the client last heard from (omitted: this one, for a first connection
    /// that wants the recent history).
    #[serde(default)]
    epoch: Option<u64>,
    seq: u64,
}

/// A grab in flight: its reply frame, once it completes.
type Pending = Pin<Box<dyn Future<Output = String>>>;

/// `GET /ws`: upgrades, then runs the member's session on this worker.
pub async fn upgrade(
    ctx: web::Data<Ctx>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    if ctx.hub.clients() >= ctx.settings.ws_clients_max {
        let error = ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_clients",
            "too many WebSocket clients; retry later",
        );
        return Err(error.into());
    }
    let (response, session, stream) = actix_ws::handle(&req, body).map_err(|e| {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "not_websocket",
            format!("not a WebSocket upgrade: {e}"),
        )
    })?;
    let max = ctx.settings.ws_message_bytes_max;
    let stream = stream.max_frame_size(max).aggregate_continuations().max_continuation_size(max);
    let ip = req.peer_addr().map(|a| a.ip());
    actix_web::rt::spawn(run(ctx.into_inner(), session, stream, ip));
    Ok(response)
}

fn close(code: CloseCode, reason: &str) -> Option<CloseReason> {
    Some(CloseReason { code, description: Some(reason.to_owned()) })
}

/// Who authenticated a socket.
enum Caller {
    /// A member, watching these groups, resuming after this event.
    Member(Arc<Member>, Vec<GroupId>, Option<(u64, u64)>),
    /// The chat host, relaying its members' grabs.
    Host,
    /// Another node of the cluster, sending the grabs of members it authenticated.
    Node,
}

async fn run(ctx: Arc<Ctx>, mut session: Session, mut stream: actix_ws::AggregatedMessageStream, ip: Option<IpAddr>) {
    crate::telemetry::ws_connected(1);
    let reason = match authenticate(&ctx, &mut session, &mut stream).await {
        Ok(Caller::Member(member, groups, since)) => {
            serve(&ctx, &mut session, &mut stream, member, groups, since, ip).await
        }
        Ok(Caller::Host) => relay(&ctx, &mut session, &mut stream).await,
        Ok(Caller::Node) => node_link(&ctx, &mut session, &mut stream).await,
        Err(reason) => reason,
    };
    crate::telemetry::ws_connected(-1);
    // The close frame too may find no room: the socket is dropped either way.
    let _ = tokio::time::timeout(Duration::from_secs(1), session.close(reason)).await;
}

/// Waits for the `auth` message and checks it: the token, the device, each group's roster.
async fn authenticate(
    ctx: &Ctx,
    session: &mut Session,
    stream: &mut actix_ws::AggregatedMessageStream,
) -> Result<Caller, Option<CloseReason>> {
    let deadline = Duration::from_secs(ctx.settings.ws_auth_secs);
    let first = match tokio::time::timeout(deadline, stream.next()).await {
        Err(_) => return Err(close(CloseCode::Policy, "no auth message in time")),
        Ok(Some(Ok(AggregatedMessage::Text(text)))) => text,
        Ok(Some(Err(_))) => return Err(close(CloseCode::Size, "message too large or malformed")),
        Ok(_) => return Err(close(CloseCode::Policy, "the first message must be auth")),
    };
    let request = serde_json::from_str::<Request>(&first);
    if let Ok(Request::Node { secret }) = &request {
        if !ctx.partitions.is_secret(secret) {
            return Err(close(CloseCode::Policy, "not a node of this cluster"));
        }
        let _ = session.text(json!({ "type": "hello", "node": true }).to_string()).await;
        return Ok(Caller::Node);
    }
    let Ok(Request::Auth { token, device, groups, since }) = request else {
        return Err(close(CloseCode::Policy, "the first message must be {\"op\":\"auth\",…}"));
    };
    let member = match ctx.verifier.verify(&token, device.as_deref()) {
        Ok(Principal::Member(member)) => member,
        Ok(Principal::Host) => {
            let _ = session.text(json!({ "type": "hello", "relay": true }).to_string()).await;
            return Ok(Caller::Host);
        }
        Err(e) => return refuse(session, ApiError::unauthorized(&e)).await,
    };
    if let Some(group) = groups.iter().find(|g| !ctx.partitions.is_member(**g, member.user)) {
        let error = ApiError::forbidden(format!("not a member of group {}", group.0)).with("group", group.0);
        return refuse(session, error).await;
    }
    Ok(Caller::Member(member, groups, since.map(|s| (s.epoch.unwrap_or(ctx.hub.epoch), s.seq))))
}

/// Tells the client why, then closes.
async fn refuse<T>(session: &mut Session, error: ApiError) -> Result<T, Option<CloseReason>> {
    let _ = session.text(json!({ "type": "error", "error": error.to_json() }).to_string()).await;
    Err(close(CloseCode::Policy, error.kind()))
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    ctx: &Ctx,
    session: &mut Session,
    stream: &mut actix_ws::AggregatedMessageStream,
    member: Arc<Member>,
    groups: Vec<GroupId>,
    since: Option<(u64, u64)>,
    ip: Option<IpAddr>,
) -> Option<CloseReason> {
    let (tx, mut pushes) = mpsc::channel(ctx.settings.ws_buffer_len);
    let (kick, mut kicked) = watch::channel(None);
    let Some(conn) = ctx.hub.join(Join { user: member.user, groups, since, tx, kick }).await else {
        return close(CloseCode::Away, "the server is shutting down");
    };
    if let Some(reason) = *kicked.borrow() {
        // Refused at the door (too many sockets) or the server is closing.
        let code = if reason == TOO_MANY_SOCKETS { CloseCode::Policy } else { CloseCode::Away };
        return close(code, reason);
    }
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    let ping_every = Duration::from_secs(ctx.settings.ws_ping_secs);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut silent_pings = 0u32;
    // A send the client does not read within a ping interval ends the socket.
    let within = ping_every;
    // The token's life is the socket's: it closes when the token expires (with the leeway an
    // HTTP request gets), and the client reconnects with a fresh one.
    let lifetime =
        member.expires_at.saturating_add(ctx.settings.token_leeway_secs).saturating_sub(crate::auth::unix_now());
    let expired = tokio::time::sleep(Duration::from_secs(lifetime));
    tokio::pin!(expired);
    let reason = loop {
        let out = tokio::select! {
            _ = kicked.changed() => break kicked_reason(&kicked),
            _ = &mut expired => break close(CloseCode::Policy, "the token expired"),
            push = pushes.recv() => match push {
                Some(frame) => frame.to_string(),
                // The hub let go of this socket: it said why first.
                None => break kicked_reason(&kicked),
            },
            Some(out) = pending.next(), if !pending.is_empty() => out,
            _ = ping.tick() => match keep_alive(session, &mut silent_pings, &mut kicked, within).await {
                Ok(()) => continue,
                Err(reason) => break reason,
            },
            message = stream.next() => match receive(session, message, &mut silent_pings, &mut kicked, within).await {
                Ok(Some(text)) => match handle(ctx, &member, ip, conn, &text, &mut pending) {
                    Some(out) => out,
                    None => continue,
                },
                Ok(None) => continue,
                Err(reason) => break reason,
            },
        };
        if let Err(reason) = send(session, Out::Text(out), &mut kicked, within).await {
            break reason;
        }
    };
    ctx.hub.leave(conn);
    reason
}

/// One client message: a grab starts (its reply comes when it completes), a watch is checked.
fn handle(
    ctx: &Ctx,
    member: &Member,
    ip: Option<IpAddr>,
    conn: u64,
    text: &str,
    pending: &mut FuturesUnordered<Pending>,
) -> Option<String> {
    let error = |id: Value, e: ApiError| {
        Some(json!({ "type": "reply", "id": id, "ok": false, "error": e.to_json() }).to_string())
    };
    match serde_json::from_str::<Request>(text) {
        Err(e) => error(Value::Null, ApiError::invalid(format!("not a request: {e}"))),
        Ok(Request::Auth { .. } | Request::Node { .. }) => {
            error(Value::Null, ApiError::invalid("already authenticated"))
        }
        Ok(Request::Watch { group }) => {
            if !ctx.partitions.is_member(group, member.user) {
                return error(
                    json!({ "watch": group }),
                    ApiError::forbidden(format!("not a member of group {}", group.0)),
                );
            }
            ctx.hub.watch(conn, group);
            Some(json!({ "type": "watching", "group": group }).to_string())
        }
        Ok(Request::Grab { id, token: Some(_), .. }) => {
            error(id, ApiError::invalid("a member's socket grabs for its member: no token in a grab"))
        }
        Ok(Request::Grab { id, packet, .. }) => {
            let max = ctx.settings.ws_inflight_max;
            match start_grab(ctx, pending, max, &id, packet, member.user, ip) {
                Ok(()) => None,
                Err(e) => error(id, e),
            }
        }
    }
}

/// The chat host's relay: a socket authenticated with the host's token that carries many
/// members' grabs at once, each with the member's own token and device, checked exactly as a
/// member's request over HTTP (the rate limits per member apply; the host's address is not
/// limited, as it speaks for many). It hears no events. A chat server that already holds its
/// members' connections uses one relay (or a few) instead of a socket per member, and its
/// grabs are multiplexed: up to `ws_relay_inflight_max` in flight per relay.
async fn relay(
    ctx: &Ctx,
    session: &mut Session,
    stream: &mut actix_ws::AggregatedMessageStream,
) -> Option<CloseReason> {
    multiplex(ctx, session, stream, |text, pending| Ok(relay_grab(ctx, text, pending))).await
}

/// A socket that carries many requests at once and hears no events (the host's relay, a node
/// link): each message is handed to `on_text`, which answers at once (`Some`) or starts a
/// request among `pending`, whose frame is sent when it completes.
async fn multiplex(
    ctx: &Ctx,
    session: &mut Session,
    stream: &mut actix_ws::AggregatedMessageStream,
    mut on_text: impl FnMut(&str, &mut FuturesUnordered<Pending>) -> Result<Option<String>, Option<CloseReason>>,
) -> Option<CloseReason> {
    let mut kicked = ctx.hub.closing();
    // A socket that authenticated once the stop had begun closes at once.
    if kicked.borrow().is_some() {
        return kicked_reason(&kicked);
    }
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    let ping_every = Duration::from_secs(ctx.settings.ws_ping_secs);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut silent_pings = 0u32;
    loop {
        let out = tokio::select! {
            _ = kicked.changed() => return kicked_reason(&kicked),
            Some(out) = pending.next(), if !pending.is_empty() => out,
            _ = ping.tick() => match keep_alive(session, &mut silent_pings, &mut kicked, ping_every).await {
                Ok(()) => continue,
                Err(reason) => return reason,
            },
            message = stream.next() => match receive(session, message, &mut silent_pings, &mut kicked, ping_every).await {
                Ok(Some(text)) => match on_text(&text, &mut pending) {
                    Ok(Some(out)) => out,
                    Ok(None) => continue,
                    Err(reason) => return reason,
                },
                Ok(None) => continue,
                Err(reason) => return reason,
            },
        };
        if let Err(reason) = send(session, Out::Text(out), &mut kicked, ping_every).await {
            return reason;
        }
    }
}

/// A link from another node of the cluster: grabs of packets this node serves, for members the
/// other node authenticated, many in flight at once (up to `ws_relay_inflight_max`, then
/// `Busy`). Each is answered with the engine's result and whether the share is in its wallet
/// (`cluster::LinkReply`); a packet this node does not serve answers `Elsewhere`, and the
/// other node asks again whoever serves it now. It hears no events.
async fn node_link(
    ctx: &Ctx,
    session: &mut Session,
    stream: &mut actix_ws::AggregatedMessageStream,
) -> Option<CloseReason> {
    multiplex(ctx, session, stream, |text, pending| {
        let Ok(grab) = serde_json::from_str::<crate::cluster::LinkGrab>(text) else {
            return Err(close(CloseCode::Invalid, "a node link carries grabs"));
        };
        if pending.len() >= ctx.settings.ws_relay_inflight_max {
            return Ok(Some(crate::cluster::LinkReply::to(grab.id, Err(GrabError::Busy), false)));
        }
        let partitions = ctx.partitions.clone();
        pending.push(Box::pin(async move {
            let (result, credited) = partitions.grab_here(grab.packet, grab.user).await;
            crate::cluster::LinkReply::to(grab.id, result, credited)
        }));
        Ok(None)
    })
    .await
}

/// One relayed grab: its member's token checked, then started.
fn relay_grab(ctx: &Ctx, text: &str, pending: &mut FuturesUnordered<Pending>) -> Option<String> {
    let error = |id: Value, e: ApiError| {
        crate::telemetry::reply_kind("ws_relay_grab", e.kind());
        Some(json!({ "type": "reply", "id": id, "ok": false, "error": e.to_json() }).to_string())
    };
    let (id, packet, token, device) = match serde_json::from_str::<RelayedGrab>(text) {
        Ok(RelayedGrab { op: "grab", id, packet, token, device }) => (id, packet, token, device),
        _ => return error(Value::Null, ApiError::invalid("a relay carries grabs, each with its member's token")),
    };
    let member = match ctx.verifier.verify(&token, device.as_deref()) {
        Ok(Principal::Member(member)) => member,
        Ok(Principal::Host) => return error(id, ApiError::forbidden("a grab is a member's")),
        Err(e) => return error(id, ApiError::unauthorized(&e)),
    };
    match start_grab(ctx, pending, ctx.settings.ws_relay_inflight_max, &id, packet, member.user, None) {
        Ok(()) => None,
        Err(e) => error(id, e),
    }
}

/// Starts `user`'s grab of `packet` among the socket's `pending` ones (its reply comes when it
/// completes), unless `max` are in flight already (`busy`) or the member is over their rate
/// limit.
fn start_grab(
    ctx: &Ctx,
    pending: &mut FuturesUnordered<Pending>,
    max: usize,
    id: &Value,
    packet: PacketId,
    user: hongbao::UserId,
    ip: Option<IpAddr>,
) -> Result<(), ApiError> {
    if pending.len() >= max {
        return Err(ApiError::engine(&GrabError::Busy));
    }
    ctx.limits.check(Action::Grab, user, ip)?;
    let (id, partitions) = (id.clone(), ctx.partitions.clone());
    pending.push(Box::pin(async move {
        // Here, or on the node serving the packet's partition.
        let started = std::time::Instant::now();
        let (result, credited) = partitions.grab(packet, user).await;
        crate::telemetry::grab_latency(started.elapsed());
        reply(id, packet, result, credited)
    }));
    Ok(())
}

/// A ping tick: the fourth in a row the client has not answered (with anything) ends it.
async fn keep_alive(
    session: &mut Session,
    silent_pings: &mut u32,
    kicked: &mut watch::Receiver<Option<&'static str>>,
    within: Duration,
) -> Result<(), Option<CloseReason>> {
    *silent_pings += 1;
    if *silent_pings > 3 {
        return Err(close(CloseCode::Policy, "no answer to pings"));
    }
    send(session, Out::Ping, kicked, within).await
}

/// A client frame: its text to handle, nothing (a ping answered, a pong, a binary frame), or
/// the end of the socket.
async fn receive(
    session: &mut Session,
    message: Option<Result<AggregatedMessage, actix_ws::ProtocolError>>,
    silent_pings: &mut u32,
    kicked: &mut watch::Receiver<Option<&'static str>>,
    within: Duration,
) -> Result<Option<bytestring::ByteString>, Option<CloseReason>> {
    *silent_pings = 0;
    match message {
        None | Some(Ok(AggregatedMessage::Close(_))) => Err(None),
        Some(Err(_)) => Err(close(CloseCode::Size, "message too large or malformed")),
        Some(Ok(AggregatedMessage::Ping(bytes))) => {
            send(session, Out::Pong(bytes), kicked, within).await.map(|()| None)
        }
        Some(Ok(AggregatedMessage::Pong(_) | AggregatedMessage::Binary(_))) => Ok(None),
        Some(Ok(AggregatedMessage::Text(text))) => Ok(Some(text)),
    }
}

/// What the server sends on a socket.
enum Out {
    Text(String),
    Ping,
    Pong(actix_web::web::Bytes),
}

/// Sends one message, unless the hub says close first or the client has not made room for it
/// within `within` (a client that stops reading fills the socket's buffers, and then every
/// send waits).
async fn send(
    session: &mut Session,
    out: Out,
    kicked: &mut watch::Receiver<Option<&'static str>>,
    within: Duration,
) -> Result<(), Option<CloseReason>> {
    let sent = async {
        match out {
            Out::Text(text) => session.text(text).await,
            Out::Ping => session.ping(b"").await,
            Out::Pong(bytes) => session.pong(&bytes).await,
        }
    };
    tokio::select! {
        sent = tokio::time::timeout(within, sent) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(None),
            Err(_) => Err(close(CloseCode::Policy, TOO_SLOW)),
        },
        _ = kicked.changed() => Err(kicked_reason(kicked)),
    }
}

/// Why the hub closed this socket: too slow (a policy), or the server going away.
fn kicked_reason(kicked: &watch::Receiver<Option<&'static str>>) -> Option<CloseReason> {
    match *kicked.borrow() {
        Some(TOO_SLOW) => close(CloseCode::Policy, TOO_SLOW),
        Some(reason) => close(CloseCode::Away, reason),
        None => close(CloseCode::Away, "closed"),
    }
}

/// A grab's reply frame, serialized straight from its parts (no JSON tree: the relay sends
/// one per grab).
#[derive(Serialize)]
struct ReplyFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a Value,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    grab: Option<&'a crate::api::GrabReply>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

fn reply(id: Value, packet: PacketId, result: Result<hongbao::Grabbed, GrabError>, credited: bool) -> String {
    let frame = match grab_reply(packet, result, credited) {
        Ok(body) => {
            serde_json::to_string(&ReplyFrame { kind: "reply", id: &id, ok: true, grab: Some(&body), error: None })
        }
        Err(e) => {
            crate::telemetry::reply_kind("ws_grab", e.kind());
            serde_json::to_string(&ReplyFrame {
                kind: "reply",
                id: &id,
                ok: false,
                grab: None,
                error: Some(e.to_json()),
            })
        }
    };
    frame.unwrap_or_default()
}

/// A relayed grab as it arrives: read flat, the token borrowed from the frame.
#[derive(Deserialize)]
struct RelayedGrab<'a> {
    op: &'a str,
    id: Value,
    packet: PacketId,
    #[serde(borrow)]
    token: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    device: Option<std::borrow::Cow<'a, str>>,
}
