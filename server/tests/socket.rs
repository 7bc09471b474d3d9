//! The member's WebSocket through a real client: events of their groups and transfers in
//! order, grabs over the socket, resume after a reconnect, and every way a socket is closed.

mod common;

use std::time::Duration;

use common::{lucky, settings, Harness};
use futures::{SinkExt, StreamExt};
use hongbao::{Amount, GroupId, NewPacket, OpId, PacketId, Split, UserId};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(h: &Harness, who: &common::Who, groups: &[u64], since: Option<Value>) -> (Socket, Value) {
    let (mut socket, _) = tokio_tungstenite::connect_async(&h.ws).await.expect("the socket opens");
    let mut auth = json!({ "op": "auth", "token": who.token, "device": who.device, "groups": groups });
    if let Some(since) = since {
        auth["since"] = since;
    }
    socket.send(Message::text(auth.to_string())).await.unwrap();
    let hello = next(&mut socket).await;
    (socket, hello)
}

/// The next JSON message (pings and pongs skipped), or `{"closed": code, "reason": …}`.
async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next()).await.expect("a message in time");
        match message {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) =
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((0, String::new()));
                return json!({ "closed": code, "reason": reason });
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return json!({ "closed": 0, "reason": e.to_string() }),
            None => return json!({ "closed": 0, "reason": "end of stream" }),
        }
    }
}

/// Reads until the server closes the socket: (frames read before, the close).
async fn until_closed(socket: &mut Socket) -> (usize, Value) {
    let mut frames = 0;
    loop {
        let message = next(socket).await;
        if message.get("closed").is_some() {
            return (frames, message);
        }
        frames += 1;
    }
}

/// The next event's body.
async fn event(socket: &mut Socket) -> Value {
    let message = next(socket).await;
    assert_eq!(message["type"], "event", "{message}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_hear_their_groups_and_transfers_and_grab_over_the_socket() {
    let mut h = Harness::start("socket-live", settings());
    h.group_with_funds(7, &[1, 2, 3], 100).await;
    let (ada, bo, chen) = (h.member(1), h.member(2), h.member(3));
    let (mut bo_socket, hello) = open(&h, &bo, &[7], None).await;
    assert_eq!((hello["type"].as_str(), hello["user"].as_u64()), (Some("hello"), Some(2)), "{hello}");
    let (mut chen_socket, _) = open(&h, &chen, &[7], None).await;

    h.post(&ada, "/v1/packets", lucky(1, 7, "3.00", 2)).await;
    let sent = event(&mut bo_socket).await;
    assert_eq!(
        (sent["event"]["kind"].as_str(), sent["event"]["packet"].as_u64()),
        (Some("packet_sent"), Some(1)),
        "{sent}"
    );

    bo_socket.send(Message::text(json!({ "op": "grab", "id": "r1", "packet": 1 }).to_string())).await.unwrap();
    // The grab's reply and its event travel apart (the reply from the grab, the event through
    // the fan-out): either may come first.
    let (first, second) = (next(&mut bo_socket).await, next(&mut bo_socket).await);
    let (grabbed, reply) = if first["type"] == "event" { (first, second) } else { (second, first) };
    assert_eq!((grabbed["event"]["kind"].as_str(), grabbed["event"]["user"].as_u64()), (Some("grabbed"), Some(2)));
    assert_eq!(
        (reply["type"].as_str(), reply["id"].as_str(), reply["ok"].as_bool()),
        (Some("reply"), Some("r1"), Some(true)),
        "{reply}"
    );
    assert_eq!(reply["grab"]["amount"], grabbed["event"]["amount"]);
    bo_socket.send(Message::text(json!({ "op": "grab", "id": 2, "packet": 1 }).to_string())).await.unwrap();
    let again = next(&mut bo_socket).await;
    assert_eq!((again["id"].as_u64(), again["grab"]["already"].as_bool()), (Some(2), Some(true)), "{again}");
    bo_socket.send(Message::text(json!({ "op": "grab", "id": 3, "packet": 99 }).to_string())).await.unwrap();
    let unknown = next(&mut bo_socket).await;
    assert_eq!(
        (unknown["ok"].as_bool(), unknown["error"]["error"].as_str()),
        (Some(false), Some("unknown_packet")),
        "{unknown}"
    );
    assert_eq!(unknown["error"]["status"].as_u64(), Some(404));
    bo_socket.send(Message::text("{nonsense")).await.unwrap();
    let bad = next(&mut bo_socket).await;
    assert_eq!(bad["error"]["error"].as_str(), Some("invalid_request"), "{bad}");

    // Chen hears the group's events in order, and not Ada's transfer to Bo.
    let order: Vec<String> = [event(&mut chen_socket).await, event(&mut chen_socket).await]
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, ["packet_sent", "grabbed"]);
    h.post(&ada, "/v1/transfers", json!({ "id": 5, "to": 2, "amount": "1.00" })).await;
    let transfer = event(&mut bo_socket).await;
    assert_eq!(
        (transfer["event"]["kind"].as_str(), transfer["event"]["transfer"].as_u64()),
        (Some("transfer_sent"), Some(5))
    );
    h.post(&chen, "/v1/packets/1/grab", json!({})).await;
    let chen_next = event(&mut chen_socket).await;
    assert_eq!(chen_next["event"]["kind"].as_str(), Some("grabbed"), "no transfer of others reaches Chen: {chen_next}");
    let sold = event(&mut chen_socket).await;
    assert_eq!(
        (sold["event"]["kind"].as_str(), sold["event"]["best_luck"].as_u64().is_some()),
        (Some("sold_out"), true),
        "{sold}"
    );

    // A member removed from the group hears no more of it.
    h.post(&h.host(), "/v1/groups/7/members/remove", json!({ "members": [3] })).await;
    h.post(&ada, "/v1/packets", lucky(2, 7, "1.00", 1)).await;
    h.post(&ada, "/v1/transfers", json!({ "id": 6, "to": 3, "amount": "1.00" })).await;
    let after = event(&mut chen_socket).await;
    assert_eq!(
        after["event"]["kind"].as_str(),
        Some("transfer_sent"),
        "the packet of a group Chen left is not pushed: {after}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resumes_from_its_sequence_number_within_the_window() {
    let mut small = settings();
    small.ws_replay_len = 6;
    let mut h = Harness::start("socket-resume", small);
    h.group_with_funds(7, &[1, 2], 100).await;
    let (ada, bo) = (h.member(1), h.member(2));
    let (mut socket, hello) = open(&h, &bo, &[7], None).await;
    h.post(&ada, "/v1/packets", lucky(1, 7, "1.00", 1)).await;
    let seen = event(&mut socket).await;
    let (epoch, last) = (hello["epoch"].clone(), seen["seq"].as_u64().unwrap());
    drop(socket);

    // Missed while away: two packets.
    h.post(&ada, "/v1/packets", lucky(2, 7, "1.00", 1)).await;
    h.post(&ada, "/v1/packets", lucky(3, 7, "1.00", 1)).await;
    let (mut socket, _) = open(&h, &bo, &[7], Some(json!({ "epoch": epoch, "seq": last }))).await;
    let missed: Vec<(u64, u64)> = [event(&mut socket).await, event(&mut socket).await]
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["event"]["packet"].as_u64().unwrap()))
        .collect();
    assert_eq!(missed.iter().map(|m| m.1).collect::<Vec<_>>(), [2, 3], "exactly what was missed, in order");
    assert!(missed[0].0 > last && missed[1].0 > missed[0].0);
    h.post(&ada, "/v1/packets", lucky(4, 7, "1.00", 1)).await;
    assert_eq!(event(&mut socket).await["event"]["packet"].as_u64(), Some(4), "then live, with no duplicate");
    drop(socket);

    // Past the window (6 events), or from another run of the server: resync.
    for id in 5..=12 {
        h.post(&ada, "/v1/packets", lucky(id, 7, "1.00", 1)).await;
    }
    let (mut socket, _) = open(&h, &bo, &[7], Some(json!({ "epoch": epoch, "seq": last }))).await;
    assert_eq!(next(&mut socket).await["type"].as_str(), Some("resync"));
    let (mut socket, _) = open(&h, &bo, &[7], Some(json!({ "epoch": 1, "seq": 3 }))).await;
    assert_eq!(next(&mut socket).await["type"].as_str(), Some("resync"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_closed_with_a_reason() {
    let mut bounded = settings();
    bounded.ws_buffer_len = 8;
    bounded.ws_message_bytes_max = 1024;
    bounded.ws_auth_secs = 1;
    let limits = hongbao::Limits { greeting_bytes_max: 32 * 1024, ..hongbao::Limits::default() };
    let mut h = Harness::start_with("socket-close", bounded, limits, None);
    h.group_with_funds(7, &[1, 2], 100).await;
    let bo = h.member(2);

    // Refused at auth: another device, a group not theirs, a token of nobody's.
    let (mut s, refused) = open(&h, &common::Who { device: Some("d9".into()), ..bo.clone() }, &[7], None).await;
    assert_eq!(
        (refused["type"].as_str(), refused["error"]["reason"].as_str()),
        (Some("error"), Some("wrong_device")),
        "{refused}"
    );
    assert_eq!(next(&mut s).await["closed"].as_u64(), Some(u64::from(u16::from(CloseCode::Policy))));
    let (_, refused) = open(&h, &bo, &[8], None).await;
    assert_eq!(refused["error"]["error"].as_str(), Some("forbidden"), "{refused}");
    // Silent after connecting: closed once `ws_auth_secs` pass.
    let (mut silent, _) = tokio_tungstenite::connect_async(&h.ws).await.unwrap();
    let closed = next(&mut silent).await;
    assert_eq!(closed["reason"].as_str(), Some("no auth message in time"), "{closed}");

    // A message over the bound.
    let (mut big, _) = open(&h, &bo, &[7], None).await;
    big.send(Message::text("x".repeat(4096))).await.unwrap();
    let closed = next(&mut big).await;
    assert_eq!(closed["closed"].as_u64(), Some(u64::from(u16::from(CloseCode::Size))), "{closed}");

    // A client that stops reading is dropped, not buffered without bound.
    let (mut slow, _) = open(&h, &bo, &[7], None).await;
    h.engine.deposit(OpId(77), UserId(1), Amount::yuan(10_000)).await.unwrap();
    let greeting = "红".repeat(10_000);
    for id in 1..=600u64 {
        let split = Split::lucky(Amount::fen(100), 1);
        let spec =
            NewPacket { id: PacketId(id), sender: UserId(1), group: GroupId(7), split, greeting: greeting.clone() };
        h.engine.send_packet(spec).await.unwrap();
    }
    let (frames, closed) = until_closed(&mut slow).await;
    assert_eq!(closed["reason"].as_str(), Some(hongbao_server::hub::TOO_SLOW), "after {frames} frames: {closed}");
    assert!(frames < 600, "the server stopped sending: {frames} frames");

    // A graceful stop closes every socket, saying so.
    let (mut last, _) = open(&h, &bo, &[7], None).await;
    let stopping = tokio::spawn(async move {
        h.stop().await;
        h
    });
    // (Events of the storm above may still arrive first.)
    let (_, closed) = until_closed(&mut last).await;
    assert_eq!(
        (closed["closed"].as_u64(), closed["reason"].as_str()),
        (Some(u64::from(u16::from(CloseCode::Away))), Some(hongbao_server::service::SHUTTING_DOWN)),
        "{closed}"
    );
    drop(stopping.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_are_bounded() {
    let mut one = settings();
    one.ws_clients_max = 1;
    let mut h = Harness::start("socket-bound", one);
    h.group_with_funds(7, &[1, 2], 10).await;
    let (first, hello) = open(&h, &h.member(1), &[7], None).await;
    assert_eq!(hello["type"].as_str(), Some("hello"));
    let refused = tokio_tungstenite::connect_async(&h.ws).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("a second client is refused at the upgrade: {refused:?}")
    };
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
    assert_eq!(body["error"].as_str(), Some("too_many_clients"), "{body}");
    // (A client that never answers the server's close would hold the graceful stop for up to
    // `shutdown_secs`.)
    drop(first);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_holds_few_sockets_and_a_long_backlog_is_a_resync() {
    let mut bounded = settings();
    bounded.ws_per_user_max = 2;
    bounded.ws_buffer_len = 16;
    let mut h = Harness::start("socket-member", bounded);
    h.group_with_funds(7, &[1, 2], 10).await;
    let bo = h.member(2);
    let (_a, first) = open(&h, &bo, &[7], None).await;
    let (_b, _) = open(&h, &bo, &[7], None).await;
    let (mut third, refused) = open(&h, &bo, &[7], None).await;
    assert_eq!(refused["reason"].as_str(), Some(hongbao_server::hub::TOO_MANY_SOCKETS), "{refused}");
    assert!(next(&mut third).await.get("closed").is_some() || refused.get("closed").is_some());
    let (_c, other) = open(&h, &h.member(1), &[7], None).await;
    assert_eq!(other["type"].as_str(), Some("hello"), "another member is not held back");
    drop((_a, _b, _c));

    // Forty events missed, more than the socket's queue of sixteen: resync, not "too slow".
    for op in 0..40u64 {
        h.engine.deposit(OpId(1_000 + op), UserId(2), Amount::fen(1)).await.unwrap();
    }
    let since = json!({ "epoch": first["epoch"], "seq": first["seq"] });
    let (mut socket, hello) = open(&h, &bo, &[7], Some(since)).await;
    assert_eq!(hello["type"].as_str(), Some("hello"), "{hello}");
    assert_eq!(next(&mut socket).await["type"].as_str(), Some("resync"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_relay_carries_many_members_grabs_each_with_its_token() {
    let mut h = Harness::start("socket-relay", settings());
    h.group_with_funds(7, &[1, 2, 3], 10).await;
    h.post(&h.member(1), "/v1/packets", lucky(1, 7, "3.00", 2)).await;
    let (mut relay, _) = tokio_tungstenite::connect_async(&h.ws).await.unwrap();
    relay.send(Message::text(json!({ "op": "auth", "token": h.host().token }).to_string())).await.unwrap();
    let hello = next(&mut relay).await;
    assert_eq!(hello["relay"].as_bool(), Some(true), "{hello}");

    // Three grabs in flight at once on one socket, for three members.
    for (id, user) in [(10, 1u64), (11, 2), (12, 3)] {
        let who = h.member(user);
        let grab = json!({ "op": "grab", "id": id, "packet": 1, "token": who.token, "device": who.device });
        relay.send(Message::text(grab.to_string())).await.unwrap();
    }
    let mut replies: Vec<Value> = Vec::new();
    for _ in 0..3 {
        replies.push(next(&mut relay).await);
    }
    replies.sort_by_key(|r| r["id"].as_u64());
    let oks: Vec<bool> = replies.iter().map(|r| r["ok"] == true).collect();
    assert_eq!(oks.iter().filter(|ok| **ok).count(), 2, "two shares for three members: {replies:?}");
    assert!(replies.iter().any(|r| r["error"]["error"] == "sold_out"), "{replies:?}");
    let (_, view) = h.get(&h.member(2), "/v1/packets/1").await;
    assert_eq!(view["claims"].as_array().map(Vec::len), Some(2));

    // Each grab is checked as the member's own: another device, or no token, is refused.
    let bo = h.member(2);
    let forged = json!({ "op": "grab", "id": 20, "packet": 1, "token": bo.token, "device": "d9" });
    relay.send(Message::text(forged.to_string())).await.unwrap();
    let refused = next(&mut relay).await;
    assert_eq!(
        (refused["id"].as_u64(), refused["error"]["reason"].as_str()),
        (Some(20), Some("wrong_device")),
        "{refused}"
    );
    relay.send(Message::text(json!({ "op": "grab", "id": 21, "packet": 1 }).to_string())).await.unwrap();
    assert_eq!(next(&mut relay).await["error"]["error"].as_str(), Some("invalid_request"));

    // A member's own socket grabs only for its member.
    let (mut own, _) = open(&h, &bo, &[7], None).await;
    let chen = h.member(3);
    let other = json!({ "op": "grab", "id": 1, "packet": 1, "token": chen.token, "device": chen.device });
    own.send(Message::text(other.to_string())).await.unwrap();
    let reply = loop {
        let message = next(&mut own).await;
        if message["type"] == "reply" {
            break message;
        }
    };
    assert_eq!(reply["error"]["error"].as_str(), Some("invalid_request"), "{reply}");
    drop(own);

    // A graceful stop closes relays too.
    let stopping = tokio::spawn(async move {
        h.stop().await;
        h
    });
    let (_, closed) = until_closed(&mut relay).await;
    assert_eq!(closed["reason"].as_str(), Some(hongbao_server::service::SHUTTING_DOWN), "{closed}");
    drop(stopping.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_socket_closes_when_its_token_expires() {
    let mut strict = settings();
    strict.token_leeway_secs = 0;
    let mut h = Harness::start("socket-expiry", strict);
    h.group_with_funds(7, &[2], 10).await;
    let mut claims = hongbao_server::auth::Claims::member(UserId(2), "d2", &["pwd"], 1);
    claims.exp = hongbao_server::auth::unix_now() + 1;
    let who = common::Who { token: h.mint(&claims), device: Some("d2".into()) };
    let (mut socket, hello) = open(&h, &who, &[7], None).await;
    assert_eq!(hello["type"].as_str(), Some("hello"), "{hello}");
    let (_, closed) = until_closed(&mut socket).await;
    assert_eq!(closed["reason"].as_str(), Some("the token expired"), "{closed}");
    h.stop().await;
}
