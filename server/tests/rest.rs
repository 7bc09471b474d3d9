//! Every REST route through a real HTTP client, with the status each refusal deserves, and
//! tokens: forged, expired, wrong-device, wrong-role, step-up, admin claims.

mod common;

use std::time::Duration;

use common::{lucky, settings, Harness};
use hongbao_server::auth::Claims;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_grabs_and_their_refusals() {
    let mut h = Harness::start("packets", settings());
    h.group_with_funds(7, &[1, 2, 3], 100).await;
    let (ada, bo, chen) = (h.member(1), h.member(2), h.member(3));

    let (s, sent) = h.post(&ada, "/v1/packets", lucky(1001, 7, "10.00", 2)).await;
    assert_eq!(s, StatusCode::OK, "{sent}");
    // The seed of the draw tells every share before anyone grabs: members never see it.
    assert!(sent.get("seed").is_none(), "{sent}");
    let (_, seen) = h.get(&bo, "/v1/packets/1001").await;
    assert!(seen.get("seed").is_none() && seen["total"] == "10.00", "{seen}");
    let (_, host_view) = h.get(&h.host(), "/v1/packets/1001").await;
    assert!(host_view["seed"].is_u64(), "the host (audits) sees it: {host_view}");
    assert_eq!((sent["status"]["kind"].as_str(), sent["total"].as_str()), (Some("open"), Some("10.00")));
    let (s, again) = h.post(&ada, "/v1/packets", lucky(1001, 7, "10.00", 2)).await;
    assert_eq!((s, &again["id"]), (StatusCode::OK, &json!(1001)), "a retried send is the same send");
    let (s, conflict) = h.post(&ada, "/v1/packets", lucky(1001, 7, "11.00", 2)).await;
    assert_eq!((s, conflict["error"].as_str()), (StatusCode::CONFLICT, Some("id_conflict")), "{conflict}");

    let (s, won) = h.post(&bo, "/v1/packets/1001/grab", json!({})).await;
    assert_eq!(
        (s, won["already"].as_bool(), won["position"].as_u64()),
        (StatusCode::OK, Some(false), Some(1)),
        "{won}"
    );
    let (s, repeat) = h.post(&bo, "/v1/packets/1001/grab", json!({})).await;
    assert_eq!((s, repeat["already"].as_bool()), (StatusCode::OK, Some(true)), "{repeat}");
    assert_eq!(repeat["amount"], won["amount"], "a repeat grab returns the first share");
    let (s, _) = h.post(&chen, "/v1/packets/1001/grab", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, sold) = h.post(&ada, "/v1/packets/1001/grab", json!({})).await;
    assert_eq!((s, sold["error"].as_str()), (StatusCode::GONE, Some("sold_out")), "{sold}");

    let outsider = h.member(9);
    let (s, body) = h.post(&outsider, "/v1/packets/1001/grab", json!({})).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("not_eligible")), "{body}");
    let (s, body) = h.get(&outsider, "/v1/packets/1001").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only the group sees a packet: {body}");
    let (s, body) = h.post(&bo, "/v1/packets/4242/grab", json!({})).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_packet")));

    // Claims are paged.
    let (s, page) = h.get(&bo, "/v1/packets/1001?limit=1").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!((page["claims"].as_array().unwrap().len(), page["claims_next"].as_u64()), (1, Some(1)), "{page}");
    let (_, page2) = h.get(&bo, "/v1/packets/1001?limit=1&after=1").await;
    assert_eq!((page2["claims"][0]["position"].as_u64(), page2["claims_next"].as_u64()), (Some(2), None), "{page2}");
    assert!(page2["best_luck"]["user"].as_u64().is_some(), "sold out: best luck is known");

    // Validation and money.
    let (s, body) = h.post(&ada, "/v1/packets", lucky(1002, 7, "0.01", 5)).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_split")), "{body}");
    let (s, body) = h.post(&ada, "/v1/packets", lucky(1003, 7, "250.00", 3)).await;
    // 250 yuan is above the step-up threshold: a password is not enough.
    assert_eq!((s, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("step_up_required")), "{body}");
    let strong = h.member_with(1, &["pwd", "bio"], &[]);
    let (s, body) = h.post(&strong, "/v1/packets", lucky(1003, 7, "250.00", 3)).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::CONFLICT, Some("insufficient_funds")), "{body}");
    assert_eq!(body["needed"].as_str(), Some("250.00"), "the engine's fields travel with the error: {body}");
    let (s, body) = h.post(&ada, "/v1/packets", lucky(1004, 8, "1.00", 1)).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("not_member")), "{body}");

    let (s, me) = h.get(&bo, "/v1/me").await;
    assert_eq!(s, StatusCode::OK);
    let expected = 100 * 100 + amount_fen(&won["amount"]);
    assert_eq!(amount_fen(&me["balance"]), expected, "{me}");
    h.stop().await;
}

fn amount_fen(v: &serde_json::Value) -> u64 {
    v.as_str().unwrap().parse::<hongbao::Amount>().unwrap().as_fen()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_change_nothing_when_refused() {
    let mut h = Harness::start("tokens", settings());
    h.group_with_funds(7, &[1, 2], 100).await;
    h.post(&h.member(1), "/v1/packets", lucky(1, 7, "5.00", 2)).await;
    let path = "/v1/packets/1/grab";

    let send = |token: Option<String>, device: Option<&str>| {
        let mut req = h.http.post(format!("{}{path}", h.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(device) = device {
            req = req.header("X-Device-Id", device);
        }
        req.send()
    };
    let reason = |res: reqwest::Response| async move {
        let status = res.status();
        let www = res.headers().get("www-authenticate").is_some();
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(www, "401 says how to authenticate");
        (status, body["reason"].as_str().unwrap().to_owned())
    };
    let bo = h.member(2);
    let expect = |r: (StatusCode, String), want: &str| assert_eq!(r, (StatusCode::UNAUTHORIZED, want.to_owned()));
    expect(reason(send(None, Some("d2")).await.unwrap()).await, "missing_token");
    expect(reason(send(Some("garbage".into()), Some("d2")).await.unwrap()).await, "malformed_token");
    expect(reason(send(Some(bo.token.clone()), Some("d9")).await.unwrap()).await, "wrong_device");
    expect(reason(send(Some(bo.token.clone()), None).await.unwrap()).await, "missing_device");
    let mut old = Claims::member(hongbao::UserId(2), "d2", &["pwd"], 0);
    old.exp -= 3600;
    expect(reason(send(Some(h.mint(&old)), Some("d2")).await.unwrap()).await, "expired");
    let (other_private, _) = hongbao_server::auth::keygen();
    let forged =
        hongbao_server::auth::mint(other_private.as_bytes(), &Claims::member(hongbao::UserId(2), "d2", &["bio"], 60))
            .unwrap();
    expect(reason(send(Some(forged), Some("d2")).await.unwrap()).await, "bad_signature");
    // A genuine token with its payload edited keeps the old signature.
    let mut parts: Vec<String> = bo.token.split('.').map(str::to_owned).collect();
    let mut claims = Claims::member(hongbao::UserId(1), "d2", &["pwd"], 600);
    claims.iat = 0;
    use base64_free::encode;
    parts[1] = encode(&serde_json::to_vec(&claims).unwrap());
    expect(reason(send(Some(parts.join(".")), Some("d2")).await.unwrap()).await, "bad_signature");
    let mut wrong_aud = Claims::member(hongbao::UserId(2), "d2", &["pwd"], 60);
    wrong_aud.aud = "another-service".into();
    expect(reason(send(Some(h.mint(&wrong_aud)), Some("d2")).await.unwrap()).await, "wrong_audience");

    // Nothing changed: the packet has no claims.
    let (_, view) = h.get(&bo, "/v1/packets/1").await;
    assert_eq!(view["claims"].as_array().map(Vec::len), Some(0), "{view}");

    // Roles: members cannot move money in, the host does not grab.
    let (s, body) = h.post(&bo, "/v1/wallets/2/deposit", json!({ "op": 9, "amount": "1000" })).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{body}");
    let (s, _) = h.post(&h.host(), path, json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, me) = h.get(&bo, "/v1/me").await;
    assert_eq!(me["balance"].as_str(), Some("100.00"));
    h.stop().await;
}

/// Base64url without padding, as JWT segments are (written here so the test needs no crate).
mod base64_free {
    pub fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_cooling_off_and_their_retries() {
    let mut h = Harness::start("transfers", settings());
    h.group_with_funds(7, &[1, 2], 100).await;
    let (ada, bo) = (h.member(1), h.member(2));

    // A delayed transfer, recalled before it arrives; the retry returns the first outcome.
    let body =
        json!({ "id": 1, "to": 2, "amount": "30.00", "arrival": { "kind": "delayed", "secs": 7200 }, "note": "房租" });
    let (s, t) = h.post(&ada, "/v1/transfers", body).await;
    assert_eq!((s, t["status"]["kind"].as_str()), (StatusCode::OK, Some("in_transit")), "{t}");
    let (s, body) = h.post(&bo, "/v1/transfers/1/recall", json!({})).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("not_sender")), "{body}");
    let (s, t) = h.post(&ada, "/v1/transfers/1/recall", json!({})).await;
    assert_eq!((s, t["already"].as_bool()), (StatusCode::OK, Some(false)), "{t}");
    let (s, t) = h.post(&ada, "/v1/transfers/1/recall", json!({})).await;
    assert_eq!(
        (s, t["already"].as_bool(), t["status"]["kind"].as_str()),
        (StatusCode::OK, Some(true), Some("recalled")),
        "{t}"
    );

    // An instant transfer: accept, and accept again.
    let (s, t) = h.post(&ada, "/v1/transfers", json!({ "id": 2, "to": 2, "amount": "10" })).await;
    assert_eq!((s, t["status"]["kind"].as_str()), (StatusCode::OK, Some("awaiting_acceptance")), "{t}");
    let (s, body) = h.post(&bo, "/v1/transfers/2/recall", json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, t) = h.post(&bo, "/v1/transfers/2/accept", json!({})).await;
    assert_eq!((s, t["status"]["kind"].as_str()), (StatusCode::OK, Some("accepted")), "{t}");
    let (s, t) = h.post(&bo, "/v1/transfers/2/accept", json!({})).await;
    assert_eq!((s, t["already"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, body) = h.post(&bo, "/v1/transfers/2/decline", json!({})).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::CONFLICT, Some("too_late")), "{body}");
    let (s, _) = h.get(&h.member(3), "/v1/transfers/2").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only the parties see a transfer");
    let (s, body) = h.get(&bo, "/v1/transfers/99").await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_transfer")));
    let (s, body) = h.post(&ada, "/v1/transfers", json!({ "id": 3, "to": 1, "amount": "1" })).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("to_self")));
    let (s, body) = h.post(&ada, "/v1/transfers", json!({ "id": 4, "to": 2, "amount": "250" })).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("step_up_required")), "{body}");

    // Cooling-off: a send above the threshold is held; the sender forbids claiming.
    let (s, body) = h.put(&ada, "/v1/me/cooling-off", json!({ "threshold": "5.00", "secs": 0 })).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("step_up_required")),
        "protection changes need step-up: {body}"
    );
    let strong_ada = h.member_with(1, &["pwd", "pin"], &[]);
    let (s, me) = h.put(&strong_ada, "/v1/me/cooling-off", json!({ "threshold": "5.00", "secs": 600 })).await;
    assert_eq!((s, me["cooling_off"]["secs"].as_u64()), (StatusCode::OK, Some(600)), "{me}");
    let (s, p) = h.post(&ada, "/v1/packets", lucky(50, 7, "8.00", 2)).await;
    assert_eq!((s, p["status"]["kind"].as_str()), (StatusCode::OK, Some("cooling_off")), "{p}");
    let (s, body) = h.post(&bo, "/v1/packets/50/grab", json!({})).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::CONFLICT, Some("not_open_yet")), "{body}");
    let (s, c) = h.post(&ada, "/v1/packets/50/cancel", json!({})).await;
    assert_eq!((s, c["refunded"].as_str(), c["already"].as_bool()), (StatusCode::OK, Some("8.00"), Some(false)), "{c}");
    let (s, c) = h.post(&ada, "/v1/packets/50/cancel", json!({})).await;
    assert_eq!((s, c["already"].as_bool()), (StatusCode::OK, Some(true)), "{c}");
    let (s, body) = h.put(&strong_ada, "/v1/me/cooling-off", json!({ "threshold": "5.00", "secs": 99_999_999 })).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("cooling_off_too_long")), "{body}");

    let (_, me) = h.get(&ada, "/v1/me").await;
    assert_eq!(me["balance"].as_str(), Some("90.00"), "only the accepted transfer left: {me}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_policies_recall_approvals_and_the_log() {
    let mut h = Harness::start("orgs", settings());
    h.group_with_funds(70, &[1, 2, 3], 500).await;
    let host = h.host();
    let (s, org) = h.post(&host, "/v1/orgs", json!({ "id": 5, "admins": [1], "name": "Acme 公司" })).await;
    assert_eq!((s, org["name"].as_str()), (StatusCode::OK, Some("Acme 公司")), "{org}");
    let plain = h.member(1);
    let admin = h.member_with(1, &["pwd"], &[5]);
    let (s, body) = h.put(&plain, "/v1/orgs/5/policy", json!({ "recall": { "kind": "off" } })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no admin claim: {body}");
    let pretender = h.member_with(2, &["pwd"], &[5]);
    let (s, body) = h.put(&pretender, "/v1/orgs/5/policy", json!({ "recall": { "kind": "off" } })).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_admin")),
        "a claim the engine's list does not back: {body}"
    );
    let (s, body) = h.post(&admin, "/v1/orgs/5/groups", json!({ "group": 70 })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let policy = json!({ "recall": { "kind": "whitelist", "senders": [2] }, "approval_above": "50.00" });
    let (s, body) = h.put(&admin, "/v1/orgs/5/policy", policy).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // Recall: a whitelisted sender's packet, by the admin with the claim.
    let bo = h.member(2);
    h.post(&bo, "/v1/packets", lucky(9, 70, "20.00", 4)).await;
    h.post(&h.member(3), "/v1/packets/9/grab", json!({})).await;
    let (s, body) = h.post(&plain, "/v1/packets/9/recall", json!({ "org": 5, "reason": "wrong group" })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, r) = h.post(&admin, "/v1/packets/9/recall", json!({ "org": 5, "reason": "wrong group" })).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (s, again) = h.post(&admin, "/v1/packets/9/recall", json!({ "org": 5, "reason": "wrong group" })).await;
    assert_eq!(
        (s, again["already"].as_bool(), &again["refunded"]),
        (StatusCode::OK, Some(true), &r["refunded"]),
        "a retry: {again}"
    );
    let (s, body) = h.post(&h.member(3), "/v1/packets/9/grab", json!({})).await;
    assert_eq!(s, StatusCode::OK, "a claim before the recall stands: {body}");
    let (s, body) = h.post(&h.member(1), "/v1/packets/9/grab", json!({})).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::GONE, Some("recalled")), "{body}");

    // Approval: above 50 yuan the packet waits for an admin.
    let strong_bo = h.member_with(2, &["bio"], &[]);
    let (s, p) = h.post(&strong_bo, "/v1/packets", lucky(10, 70, "60.00", 2)).await;
    assert_eq!((s, p["status"]["kind"].as_str()), (StatusCode::OK, Some("awaiting_approval")), "{p}");
    let (s, body) = h.post(&bo, "/v1/packets/10/approve", json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the sender has no claim: {body}");
    let (s, a) = h.post(&admin, "/v1/packets/10/approve", json!({})).await;
    assert_eq!((s, a["already"].as_bool()), (StatusCode::OK, Some(false)), "{a}");
    let (s, a) = h.post(&admin, "/v1/packets/10/approve", json!({})).await;
    assert_eq!((s, a["already"].as_bool()), (StatusCode::OK, Some(true)), "{a}");

    // The log, paged.
    let (s, page) = h.get(&admin, "/v1/orgs/5/log?limit=2").await;
    assert_eq!((s, page["entries"].as_array().map(Vec::len)), (StatusCode::OK, Some(2)), "{page}");
    let next = page["next"].as_u64().expect("more pages");
    let (_, rest) = h.get(&admin, &format!("/v1/orgs/5/log?after={next}&limit=100")).await;
    let kinds: Vec<&str> = rest["entries"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"packet_recalled"), "{kinds:?}");
    let (s, body) = h.get(&admin, "/v1/orgs/5/log?kind=nonsense").await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")), "{body}");
    let (s, body) = h.get(&plain, "/v1/orgs/5/log").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_rate_limits_and_operations_routes() {
    let mut limited = settings();
    limited.grabs_per_user = 2;
    limited.body_bytes_max = 1024;
    let mut h = Harness::start("bounds", limited);
    h.group_with_funds(7, &[1, 2], 100).await;
    let (ada, bo) = (h.member(1), h.member(2));
    for id in 1..=3 {
        h.post(&ada, "/v1/packets", lucky(id, 7, "1.00", 1)).await;
    }
    let (s1, _) = h.post(&bo, "/v1/packets/1/grab", json!({})).await;
    let (s2, _) = h.post(&bo, "/v1/packets/2/grab", json!({})).await;
    let (s3, body, headers) = h.call(Method::POST, Some(&bo), "/v1/packets/3/grab", None).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!((s3, body["error"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")), "{body}");
    assert!(headers.get("retry-after").is_some(), "429 says when to come back");
    let (_, view) = h.get(&bo, "/v1/packets/3").await;
    assert_eq!(view["shares_left"].as_u64(), Some(1), "a limited grab changed nothing");

    // Bodies: too large, not JSON, not the shape.
    let big = json!({ "id": 4, "group": 7, "split": { "kind": "lucky", "total": "1", "shares": 1 }, "greeting": "x".repeat(2000) });
    let (s, body) = h.post(&ada, "/v1/packets", big).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")), "{body}");
    let res = h
        .http
        .post(format!("{}/v1/packets", h.base))
        .bearer_auth(&ada.token)
        .header("X-Device-Id", "d1")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, body) = h.post(&ada, "/v1/packets", json!({ "id": 4, "group": 7 })).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")), "{body}");
    let (s, body) = h.post(&ada, "/v1/transfers", json!({ "id": 4, "to": 2, "amount": "-1" })).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (s, body) = h.get(&ada, "/v1/packets/not-a-number").await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{body}");

    let health = h.http.get(format!("{}/healthz", h.base)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = h.http.get(format!("{}/readyz", h.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let metrics = h.http.get(format!("{}/metrics", h.base)).send().await.unwrap().text().await.unwrap();
    for name in [
        "hongbao_requests_total{route=\"/v1/packets/{packet}/grab\",reply=\"rate_limited\"}",
        "hongbao_grab_seconds_bucket",
        "hongbao_journal_sync_seconds_bucket",
        "hongbao_journal_batch_records_bucket",
        "hongbao_open_packets",
        "hongbao_pending_transfers",
    ] {
        assert!(metrics.contains(name), "/metrics has {name}:\n{metrics}");
    }
    h.stop().await;
}

/// A journal that holds every record while closed, blocking the actor that appends it.
struct HeldJournal {
    inner: hongbao::MemoryJournal,
    closed: parking_lot::Mutex<bool>,
    opened: parking_lot::Condvar,
    failed: std::sync::atomic::AtomicBool,
}

impl hongbao::Journal for HeldJournal {
    fn append(&self, record: hongbao::Record, then: hongbao::journal::Completion) {
        let mut closed = self.closed.lock();
        while *closed && matches!(record, hongbao::Record::Claim { .. }) {
            self.opened.wait(&mut closed);
        }
        drop(closed);
        self.inner.append(record, then);
    }

    fn barrier(&self, then: hongbao::journal::Completion) {
        self.inner.barrier(then);
    }

    fn flush(&self) {}

    fn failure(&self) -> Option<hongbao::StorageFailure> {
        self.failed.load(std::sync::atomic::Ordering::Acquire).then_some(hongbao::StorageFailure::OutcomeUnknown)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_503_with_retry_after_and_a_failed_journal_is_not_ready() {
    let journal = std::sync::Arc::new(HeldJournal {
        inner: hongbao::MemoryJournal::new(),
        closed: parking_lot::Mutex::new(false),
        opened: parking_lot::Condvar::new(),
        failed: std::sync::atomic::AtomicBool::new(false),
    });
    let limits = hongbao::Limits { packet_mailbox_capacity: 2, ..hongbao::Limits::default() };
    let mut h = Harness::start_with("busy", settings(), limits, Some(journal.clone()));
    let members: Vec<u64> = (1..=12).collect();
    h.group_with_funds(7, &members, 10).await;
    h.post(&h.member(1), "/v1/packets", lucky(1, 7, "5.00", 10)).await;
    *journal.closed.lock() = true;
    let grabs: Vec<_> = (2..=12)
        .map(|m| {
            let (h2, who) = (h.http.clone(), h.member(m));
            let url = format!("{}/v1/packets/1/grab", h.base);
            tokio::spawn(async move {
                let res = h2
                    .post(url)
                    .bearer_auth(&who.token)
                    .header("X-Device-Id", who.device.unwrap())
                    .send()
                    .await
                    .unwrap();
                let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                (res.status(), retry, res.json::<serde_json::Value>().await.unwrap())
            })
        })
        .collect();
    // The actor is held on the first claim; its mailbox of two fills; the rest are Busy.
    let mut busy = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let metrics_url = format!("{}/metrics", h.base);
    while busy < 8 && tokio::time::Instant::now() < deadline {
        let text = h.http.get(&metrics_url).send().await.unwrap().text().await.unwrap();
        busy = text
            .lines()
            .find(|l| l.starts_with("hongbao_requests_total{route=\"/v1/packets/{packet}/grab\",reply=\"busy\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    *journal.closed.lock() = false;
    journal.opened.notify_all();
    let mut statuses = std::collections::BTreeMap::new();
    for grab in grabs {
        let (status, retry, body) = grab.await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!((body["error"].as_str(), retry.as_deref()), (Some("busy"), Some("1")), "{body}");
        }
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    assert!(statuses.get(&503).copied().unwrap_or(0) >= 8, "most grabs are refused Busy: {statuses:?}");
    assert!(statuses.get(&200).copied().unwrap_or(0) >= 1, "{statuses:?}");

    // A journal that failed: not ready, and every request is refused as unavailable.
    journal.failed.store(true, std::sync::atomic::Ordering::Release);
    let ready = h.http.get(format!("{}/readyz", h.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let alive = h.http.get(format!("{}/healthz", h.base)).send().await.unwrap();
    assert_eq!(alive.status(), StatusCode::OK, "the process is alive");
    let (s, body) = h.post(&h.member(2), "/v1/packets/1/grab", json!({})).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")), "{body}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardians_approvals_rosters_and_the_hosts_routes() {
    let mut h = Harness::start("guardians", settings());
    h.group_with_funds(7, &[1, 2], 100).await;
    let host = h.host();
    let (ada, bo, chen) = (h.member(1), h.member(2), h.member(3));

    // Rosters: add, read (host or member), remove.
    let (s, roster) = h.post(&host, "/v1/groups/7/members/add", json!({ "members": [3] })).await;
    assert_eq!((s, roster["count"].as_u64()), (StatusCode::OK, Some(3)), "{roster}");
    let (s, roster) = h.get(&chen, "/v1/groups/7/members").await;
    assert_eq!((s, roster["members"].clone()), (StatusCode::OK, json!([1, 2, 3])));
    let (s, _) = h.get(&h.member(9), "/v1/groups/7/members").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "outsiders do not see a roster");
    let (s, body) =
        h.put(&host, "/v1/groups/8/members", json!({ "members": (1..=100_001).collect::<Vec<u64>>() })).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")),
        "bounded before the engine"
    );

    // Money out, and a wallet as the host sees it; an op id is applied once.
    let (s, w) = h.post(&host, "/v1/wallets/2/withdraw", json!({ "op": 77, "amount": "10.00" })).await;
    assert_eq!((s, w["balance"].as_str()), (StatusCode::OK, Some("90.00")), "{w}");
    let (s, w) = h.post(&host, "/v1/wallets/2/withdraw", json!({ "op": 77, "amount": "10.00" })).await;
    assert_eq!(
        (s, w["balance"].as_str()),
        (StatusCode::OK, Some("90.00")),
        "a retried withdrawal is applied once: {w}"
    );
    let (s, body) = h.post(&host, "/v1/wallets/2/withdraw", json!({ "op": 78, "amount": "1000.00" })).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::CONFLICT, Some("insufficient_funds")), "{body}");
    let (s, w) = h.get(&host, "/v1/wallets/2").await;
    assert_eq!((s, w["balance"].as_str()), (StatusCode::OK, Some("90.00")));

    // A guardian: Ada's transfers above 20 yuan wait for Bo. Choosing one needs step-up, or a
    // lifted password token could lock Ada behind the thief's guardian.
    let (s, body) = h.put(&ada, "/v1/me/guardian", json!({ "guardian": 2, "above": "20.00" })).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("step_up_required")), "{body}");
    let ada_pin = h.member_with(1, &["pin"], &[]);
    let (s, body) = h.put(&ada_pin, "/v1/me/guardian", json!({ "guardian": 1, "above": "20.00" })).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_guardian")), "{body}");
    let (s, body) = h.put(&ada_pin, "/v1/me/guardian", json!({ "guardian": 2, "above": "20.00" })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = h.put(&ada_pin, "/v1/me/guardian", json!({ "guardian": 3, "above": "20.00" })).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::CONFLICT, Some("guardian_already_set")), "{body}");
    let (s, t) = h.post(&ada, "/v1/transfers", json!({ "id": 1, "to": 3, "amount": "30.00" })).await;
    assert_eq!((s, t["status"]["kind"].as_str()), (StatusCode::OK, Some("awaiting_approval")), "{t}");
    let (s, body) = h.post(&chen, "/v1/transfers/1/approve", json!({})).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("not_approver")), "{body}");
    // The guardian sees what they are asked to approve.
    let (s, t) = h.get(&bo, "/v1/transfers/1").await;
    assert_eq!((s, t["amount"].as_str()), (StatusCode::OK, Some("30.00")), "{t}");
    let (s, body) = h.post(&bo, "/v1/transfers/1/reject", json!({ "reasn": "typo" })).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "a malformed reason is refused, not dropped: {body}");
    let (s, r) = h.post(&bo, "/v1/transfers/1/reject", json!({ "reason": "ask me first" })).await;
    assert_eq!(
        (s, r["refunded"].as_str(), r["already"].as_bool()),
        (StatusCode::OK, Some("30.00"), Some(false)),
        "{r}"
    );
    let (s, r) = h.post(&bo, "/v1/transfers/1/reject", json!({ "reason": "ask me first" })).await;
    assert_eq!((s, r["already"].as_bool()), (StatusCode::OK, Some(true)), "{r}");
    let (s, t) = h.post(&ada, "/v1/transfers", json!({ "id": 2, "to": 3, "amount": "25.00" })).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    let (s, a) = h.post(&bo, "/v1/transfers/2/approve", json!({})).await;
    assert_eq!((s, a["approved"].as_bool()), (StatusCode::OK, Some(true)), "{a}");
    let (s, t) = h.post(&chen, "/v1/transfers/2/accept", json!({})).await;
    assert_eq!((s, t["status"]["kind"].as_str()), (StatusCode::OK, Some("accepted")), "{t}");

    // A packet above it waits too; Bo rejects it; then Bo releases Ada (only he may).
    let (s, p) = h.post(&ada, "/v1/packets", lucky(5, 7, "21.00", 2)).await;
    assert_eq!((s, p["status"]["kind"].as_str()), (StatusCode::OK, Some("awaiting_approval")), "{p}");
    let (s, r) = h.post(&bo, "/v1/packets/5/reject", json!({ "reason": "too much" })).await;
    assert_eq!((s, r["refunded"].as_str()), (StatusCode::OK, Some("21.00")), "{r}");
    let (s, body) = h.post(&h.member_with(3, &["bio"], &[]), "/v1/wallets/1/guardian/remove", json!({})).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("not_guardian")), "{body}");
    let bo_bio = h.member_with(2, &["bio"], &[]);
    let (s, _) = h.post(&bo_bio, "/v1/wallets/1/guardian/remove", json!({})).await;
    assert_eq!(s, StatusCode::OK);

    // The org as its admin reads it, and the audit as the host reads it.
    h.post(&host, "/v1/orgs", json!({ "id": 3, "admins": [1], "name": "Acme" })).await;
    let (s, org) = h.get(&h.member_with(1, &["pwd"], &[3]), "/v1/orgs/3").await;
    assert_eq!((s, org["admins"].clone()), (StatusCode::OK, json!([1])), "{org}");
    let (s, body) = h.get(&h.member_with(1, &["pwd"], &[4]), "/v1/orgs/3").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another org's claim: {body}");
    let (s, body) = h.get(&h.member_with(1, &["pwd"], &[4]), "/v1/orgs/4").await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_org")), "{body}");
    let (s, body) = h.get(&h.member_with(2, &["pwd"], &[3]), "/v1/orgs/3/log").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_admin")),
        "a claim the engine's list does not back: {body}"
    );
    let (s, audit) = h.get(&host, "/v1/audit").await;
    assert_eq!((s, audit["balanced"].as_bool()), (StatusCode::OK, Some(true)), "{audit}");
    let (s, _) = h.get(&ada, "/v1/audit").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the audit is the host's");
    let (_, me) = h.get(&ada, "/v1/me").await;
    assert_eq!(me["balance"].as_str(), Some("75.00"), "only the approved transfer left: {me}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_moves_at_most_the_step_up_threshold_per_window() {
    let mut h = Harness::start("step-up", settings());
    h.group_with_funds(7, &[1, 2], 500).await;
    let ada = h.member(1);
    let (s, t) = h.post(&ada, "/v1/transfers", json!({ "id": 1, "to": 2, "amount": "150.00" })).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    let (s, body) = h.post(&ada, "/v1/transfers", json!({ "id": 2, "to": 2, "amount": "150.00" })).await;
    assert_eq!((s, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("step_up_required")), "{body}");
    assert_eq!(body["sent_without_step_up"].as_str(), Some("150.00"), "{body}");
    let (s, body) = h.post(&ada, "/v1/packets", lucky(3, 7, "60.00", 2)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "packets and transfers share the window: {body}");
    let (s, _) = h.post(&ada, "/v1/transfers", json!({ "id": 4, "to": 2, "amount": "50.00" })).await;
    assert_eq!(s, StatusCode::OK, "up to the threshold in all");
    let strong = h.member_with(1, &["pwd", "bio"], &[]);
    let (s, _) = h.post(&strong, "/v1/transfers", json!({ "id": 2, "to": 2, "amount": "150.00" })).await;
    assert_eq!(s, StatusCode::OK, "a fresh strong authentication is not limited by the window");

    // Refused sends give their share of the window back, and a retry is not counted twice.
    let bo = h.member(2);
    for id in 30..35 {
        let (s, body) = h.post(&bo, "/v1/transfers", json!({ "id": id, "to": 2, "amount": "100.00" })).await;
        assert_eq!((s, body["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("to_self")), "{body}");
    }
    for _ in 0..3 {
        let (s, body) = h.post(&bo, "/v1/transfers", json!({ "id": 40, "to": 1, "amount": "150.00" })).await;
        assert_eq!(s, StatusCode::OK, "the same transfer, retried: {body}");
    }
    let (s, body) = h.post(&bo, "/v1/transfers", json!({ "id": 41, "to": 1, "amount": "50.00" })).await;
    assert_eq!(s, StatusCode::OK, "150 + 50 fit the window: {body}");

    // The scheme is case-insensitive; a GET on /ws without an upgrade is a JSON error; a path
    // that spells an id oddly is still counted under its route.
    let res = h
        .http
        .get(format!("{}/v1/me", h.base))
        .header("Authorization", format!("bearer {}", ada.token))
        .header("X-Device-Id", "d1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = h.http.get(format!("{}/ws", h.base)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"].as_str(), Some("not_websocket"), "{body}");
    for odd in ["+5", "%35", "0005"] {
        h.call(Method::POST, None, &format!("/v1/packets/{odd}/grab"), None).await;
    }
    let metrics = h.http.get(format!("{}/metrics", h.base)).send().await.unwrap().text().await.unwrap();
    let labels: Vec<&str> = metrics.lines().filter(|l| l.starts_with("hongbao_requests_total")).collect();
    assert!(labels.iter().all(|l| !l.contains("+5") && !l.contains("%35") && !l.contains("0005")), "{labels:#?}");
    h.stop().await;
}
