//! `hongbao serve` as a process: SIGTERM with grabs in flight stops it gracefully (exit 0),
//! and nothing acknowledged is lost: after a restart every grab that got a `200` is in the
//! journal, and `hongbao audit` finds the journal whole and the money conserved.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use hongbao::{Config, Engine, PacketId, UserId};
use hongbao_server::auth::{mint, Claims};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_hongbao");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_grabs_in_flight_loses_nothing_acknowledged() {
    let dir = common::scratch_dir("sigterm");
    let keygen = Command::new(BIN).args(["keygen", "--dir"]).arg(&dir).output().unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let private = std::fs::read_to_string(dir.join("hongbao-host.key")).unwrap();
    let journal = dir.join("journal");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--public-key"])
        .arg(dir.join("hongbao-host.pub"))
        .arg("--journal")
        .arg(&journal)
        .env("HONGBAO_GRABS_PER_IP", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("the server prints where it listens").unwrap();
        if let Some(base) = line.strip_prefix("listening on ") {
            break base.to_owned();
        }
    };
    let http = reqwest::Client::new();
    let host = mint(private.as_bytes(), &Claims::host(600)).unwrap();
    let members: Vec<u64> = (1..=300).collect();
    let ok = |res: reqwest::Response| {
        assert!(res.status().is_success(), "{res:?}");
    };
    ok(http
        .put(format!("{base}/v1/groups/7/members"))
        .bearer_auth(&host)
        .json(&json!({ "members": members }))
        .send()
        .await
        .unwrap());
    ok(http
        .post(format!("{base}/v1/wallets/1/deposit"))
        .bearer_auth(&host)
        .json(&json!({ "op": 1, "amount": "150" }))
        .send()
        .await
        .unwrap());
    let ada = mint(private.as_bytes(), &Claims::member(UserId(1), "d1", &["pwd"], 600)).unwrap();
    let packet = json!({ "id": 9, "group": 7, "split": { "kind": "lucky", "total": "150.00", "shares": 300 } });
    ok(http
        .post(format!("{base}/v1/packets"))
        .bearer_auth(&ada)
        .header("X-Device-Id", "d1")
        .json(&packet)
        .send()
        .await
        .unwrap());

    // 299 members grab at once; SIGTERM lands while they are in flight.
    let (tx, mut answered) = tokio::sync::mpsc::unbounded_channel();
    for m in 2..=300u64 {
        let (http, url, tx) = (http.clone(), format!("{base}/v1/packets/9/grab"), tx.clone());
        let token = mint(private.as_bytes(), &Claims::member(UserId(m), &format!("d{m}"), &["pwd"], 600)).unwrap();
        tokio::spawn(async move {
            let res = http.post(url).bearer_auth(token).header("X-Device-Id", format!("d{m}")).send().await;
            let outcome = match res {
                Ok(res) if res.status().is_success() => Some(res.json::<serde_json::Value>().await.unwrap()),
                _ => None,
            };
            let _ = tx.send((m, outcome));
        });
    }
    drop(tx);
    let mut acknowledged = Vec::new();
    let mut answers = 0;
    while let Some((m, outcome)) = answered.recv().await {
        answers += 1;
        if answers == 30 {
            let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
            assert!(killed.success());
        }
        if let Some(body) = outcome {
            acknowledged.push((m, body["amount"].as_str().unwrap().to_owned()));
        }
    }
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    assert!(acknowledged.len() >= 30, "{} grabs acknowledged", acknowledged.len());

    // The journal is whole, and every acknowledged grab is in it.
    let audit = Command::new(BIN).arg("audit").arg(&journal).arg("--json").output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let engine = Engine::start(Config::default().with_journal_dir(&journal, hongbao::Durability::Sync)).unwrap();
    let view = engine.packet(PacketId(9)).await.unwrap();
    for (m, amount) in &acknowledged {
        let claim = view.claims.iter().find(|c| c.user == UserId(*m));
        assert_eq!(claim.map(|c| c.amount.to_string()), Some(amount.clone()), "member {m}'s acknowledged grab is kept");
    }
    eprintln!(
        "{} of 299 grabs acknowledged before the stop; {} claims in the journal",
        acknowledged.len(),
        view.claims.len()
    );
    engine.shutdown().await;
    drop(engine);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
