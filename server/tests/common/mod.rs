//! A server on an ephemeral loopback port over a temporary journal, with a manual clock, a
//! signing key, and clients that carry a member's token and device or the host's token.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hongbao::{Config, Engine, Limits, ManualClock, Timestamp};
use hongbao_server::auth::{self, Claims};
use hongbao_server::{Running, Settings};
use reqwest::StatusCode;
use serde_json::Value;

/// Settings for tests: loopback, port 0, rate limits off unless a test sets them.
pub fn settings() -> Settings {
    Settings { listen: "127.0.0.1:0".parse().unwrap(), workers: 2, ..Settings::default() }.without_rate_limits()
}

/// A fresh directory under the system's temporary directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-server-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Harness {
    pub running: Option<Running>,
    pub engine: Engine,
    pub clock: Arc<ManualClock>,
    pub base: String,
    pub ws: String,
    pub private: String,
    pub public: String,
    pub http: reqwest::Client,
    pub dir: PathBuf,
}

/// Who a request comes from.
#[derive(Clone)]
pub struct Who {
    pub token: String,
    pub device: Option<String>,
}

impl Harness {
    pub fn start(name: &str, settings: Settings) -> Harness {
        Harness::start_with(name, settings, Limits::default(), None)
    }

    /// With these engine limits, and a journal of the test's own (else a synced file journal
    /// in the scratch directory).
    pub fn start_with(
        name: &str,
        settings: Settings,
        limits: Limits,
        journal: Option<Arc<dyn hongbao::Journal>>,
    ) -> Harness {
        let dir = scratch_dir(name);
        let clock = Arc::new(ManualClock::new(Timestamp(1_800_000_000_000)));
        let mut config = Config::default().with_clock(clock.clone()).with_limits(limits).with_seed(7);
        config = match journal {
            Some(journal) => config.with_journal(journal),
            None => {
                Config { journal_dir: Some(hongbao_server::service::journal_config(&dir.join("journal"))), ..config }
            }
        };
        let engine = Engine::start(config).expect("the engine starts");
        let (private, public) = auth::keygen();
        let running = hongbao_server::start(settings, engine.clone(), public.as_bytes()).expect("the server starts");
        let base = format!("http://{}", running.addr);
        let ws = format!("ws://{}/ws", running.addr);
        Harness {
            running: Some(running),
            engine,
            clock,
            base,
            ws,
            private,
            public,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            dir,
        }
    }

    pub fn host(&self) -> Who {
        Who { token: auth::mint(self.private.as_bytes(), &Claims::host(600)).unwrap(), device: None }
    }

    /// Member `user` on device `d<user>`, signed in with a password.
    pub fn member(&self, user: u64) -> Who {
        self.member_with(user, &["pwd"], &[])
    }

    pub fn member_with(&self, user: u64, amr: &[&str], admin_of: &[u64]) -> Who {
        let device = format!("d{user}");
        let mut claims = Claims::member(hongbao::UserId(user), &device, amr, 600);
        claims.adm = admin_of.to_vec();
        Who { token: auth::mint(self.private.as_bytes(), &claims).unwrap(), device: Some(device) }
    }

    pub fn mint(&self, claims: &Claims) -> String {
        auth::mint(self.private.as_bytes(), claims).unwrap()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        who: Option<&Who>,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(who) = who {
            req = req.bearer_auth(&who.token);
            if let Some(device) = &who.device {
                req = req.header("X-Device-Id", device);
            }
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("the server answers");
        let (status, headers) = (res.status(), res.headers().clone());
        let text = res.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json, headers)
    }

    pub async fn get(&self, who: &Who, path: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.call(reqwest::Method::GET, Some(who), path, None).await;
        (s, v)
    }

    pub async fn post(&self, who: &Who, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.call(reqwest::Method::POST, Some(who), path, Some(body)).await;
        (s, v)
    }

    pub async fn put(&self, who: &Who, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.call(reqwest::Method::PUT, Some(who), path, Some(body)).await;
        (s, v)
    }

    /// Group `group` of `members`, each with `yuan` deposited, through the host's routes.
    pub async fn group_with_funds(&self, group: u64, members: &[u64], yuan: u64) {
        let host = self.host();
        let (s, body) =
            self.put(&host, &format!("/v1/groups/{group}/members"), serde_json::json!({ "members": members })).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        for &m in members {
            let op = group * 1_000_000 + m;
            let (s, body) = self
                .post(
                    &host,
                    &format!("/v1/wallets/{m}/deposit"),
                    serde_json::json!({ "op": op, "amount": yuan.to_string() }),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{body}");
        }
    }

    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("a clean stop");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A lucky packet's body.
pub fn lucky(id: u64, group: u64, total: &str, shares: u32) -> Value {
    serde_json::json!({ "id": id, "group": group, "split": { "kind": "lucky", "total": total, "shares": shares }, "greeting": "恭喜发财" })
}
