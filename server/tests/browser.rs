//! The live page in a real browser: headless Chromium through ChromeDriver (WebDriver). Two
//! members in two sessions: one sends a packet, the other sees it appear and grabs it, and
//! both pages show the claim and the new balances. A screenshot of each page is saved under
//! `target/screenshots/`.
//!
//! Skipped, saying so, only when `chromedriver` and `chromium` are not installed (`.ci/run`
//! installs Debian's `chromium` and `chromium-driver`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{settings, Harness};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver(binary: &Path) -> Driver {
    // ChromeDriver takes no port 0: take a free one from the kernel, then hand it over.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(binary)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--window-size=900,1100",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain(std::iter::once(format!("--user-data-dir={}", profile.display())))
    .collect::<Vec<_>>();
    caps.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": chromium, "args": args }));
    ClientBuilder::new(HttpConnector::new()).capabilities(caps).connect(&driver.url).await.expect("a browser session")
}

/// The text of the first element matching `css` once `done` holds for it, within `within`.
async fn wait_text(client: &Client, css: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(el) = client.find(Locator::Css(css)).await {
            if let Ok(text) = el.text().await {
                if done(&text) {
                    return text;
                }
            }
        }
        assert!(Instant::now() < deadline, "no `{css}` as expected within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_see_a_packet_and_its_claim_live() {
    let (Some(driver_bin), Some(chromium)) =
        (find(&["/usr/bin/chromedriver"]), find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]))
    else {
        eprintln!("SKIPPED: no chromedriver/chromium (install Debian's chromium and chromium-driver)");
        return;
    };
    let mut h = Harness::start("browser", settings());
    let invites = hongbao_server::demo::setup(&h.engine, &h.private, &h.base).await.expect("the demo sets up");
    let driver = start_driver(&driver_bin);
    let (ada_profile, bo_profile) = (h.dir.join("profile-ada"), h.dir.join("profile-bo"));
    let ada = browser(&driver, &chromium, &ada_profile).await;
    let bo = browser(&driver, &chromium, &bo_profile).await;
    ada.goto(&invites[0].link).await.unwrap();
    bo.goto(&invites[1].link).await.unwrap();
    for page in [&ada, &bo] {
        wait_text(page, "#link", Duration::from_secs(10), |t| t.contains("live")).await;
        wait_text(page, "#balance", Duration::from_secs(10), |t| t == "¥1000.00").await;
    }

    // Ada sends a packet of two shares.
    let total = ada.find(Locator::Css("#send-total")).await.unwrap();
    total.clear().await.unwrap();
    total.send_keys("6.00").await.unwrap();
    let shares = ada.find(Locator::Css("#send-shares")).await.unwrap();
    shares.clear().await.unwrap();
    shares.send_keys("2").await.unwrap();
    ada.find(Locator::Css("#send-button")).await.unwrap().click().await.unwrap();
    let sent = Instant::now();
    wait_text(&ada, "#balance", Duration::from_secs(5), |t| t == "¥994.00").await;

    // Bo sees it within a second of the send, and grabs it with one click.
    let grab = loop {
        if let Ok(button) = bo.find(Locator::Css(".packet button.grab")).await {
            break button;
        }
        assert!(sent.elapsed() < Duration::from_secs(1), "the packet did not appear on the other page within a second");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("the packet appeared on the other page {:?} after the send was clicked", sent.elapsed());
    grab.click().await.unwrap();
    let mine = wait_text(&bo, ".packet .mine", Duration::from_secs(5), |t| t.contains('¥')).await;
    let share: hongbao::Amount = mine.rsplit('¥').next().unwrap().parse().unwrap();
    let expected = hongbao::Amount::yuan(1000).checked_add(share).unwrap();
    wait_text(&bo, "#balance", Duration::from_secs(5), |t| t == format!("¥{expected}")).await;
    // Both pages show the claim.
    for page in [&ada, &bo] {
        let claim = wait_text(page, ".packet .claims li", Duration::from_secs(5), |t| t.contains("member 2")).await;
        assert!(claim.contains(&format!("¥{share}")), "the claim shows the share: {claim}");
    }
    assert_eq!(h.engine.balance(hongbao::UserId(2)).await.unwrap(), expected, "the page shows what the engine holds");

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    for (page, name) in [(&ada, "member-1-sender.png"), (&bo, "member-2-grabber.png")] {
        let png = page.screenshot().await.unwrap();
        std::fs::write(shots.join(name), png).unwrap();
    }
    eprintln!("screenshots in {}", shots.canonicalize().unwrap().display());
    ada.close().await.unwrap();
    bo.close().await.unwrap();
    h.stop().await;
}
