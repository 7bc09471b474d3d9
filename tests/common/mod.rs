//! Helpers shared by the integration tests: an engine on a manual clock with a fixed seed, a
//! funded sender and a group roster.
#![allow(dead_code)]

use std::sync::Arc;

use hongbao::{Amount, Config, Engine, GroupId, Limits, ManualClock, NewPacket, OpId, PacketId, Split, UserId};

/// The sender in every scenario.
pub const SENDER: UserId = UserId(1);

/// Members are `UserId(FIRST_MEMBER..FIRST_MEMBER + n)`, plus the sender.
pub const FIRST_MEMBER: u64 = 1_000;

pub struct Setup {
    pub engine: Engine,
    pub clock: ManualClock,
}

pub fn start_with(limits: Limits, seed: u64) -> Setup {
    let clock = ManualClock::default();
    let config = Config { arbiters: 2, wallet_shards: 4, ..Config::default() }
        .with_clock(Arc::new(clock.clone()))
        .with_limits(limits)
        .with_seed(seed);
    Setup { engine: Engine::start(config).expect("engine starts"), clock }
}

pub fn start(seed: u64) -> Setup {
    start_with(Limits::default(), seed)
}

pub fn members(n: u64) -> Vec<UserId> {
    (FIRST_MEMBER..FIRST_MEMBER + n).map(UserId).collect()
}

/// Puts the sender and `n` members in `group` and deposits `fund` for the sender.
pub async fn group_with_funds(engine: &Engine, group: GroupId, n: u64, fund: Amount) {
    let mut roster = members(n);
    roster.push(SENDER);
    engine.set_members(group, roster).await.unwrap();
    engine.deposit(OpId(group.0 * 1_000_000 + 1), SENDER, fund).await.unwrap();
}

pub fn lucky(id: u64, group: GroupId, total: Amount, shares: u32) -> NewPacket {
    NewPacket {
        id: PacketId(id),
        sender: SENDER,
        group,
        split: Split::lucky(total, shares),
        greeting: "恭喜发财".into(),
    }
}

pub async fn assert_balanced(engine: &Engine) {
    let audit = engine.audit().await.unwrap();
    assert!(audit.is_balanced(), "audit not balanced: {audit:?}");
}

/// A journal that holds the first append of a chosen kind of record, once armed, until it is
/// released: it stops the actor that appends it inside its handler, so a test can queue work
/// behind it deterministically.
pub struct GatedJournal {
    inner: hongbao::MemoryJournal,
    gate: fn(&hongbao::Record) -> bool,
    armed: std::sync::atomic::AtomicBool,
    entered: parking_lot::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    open: parking_lot::Mutex<bool>,
    opened: parking_lot::Condvar,
}

impl GatedJournal {
    /// A gate on records for which `gate` holds, armed or not; the receiver hears when an
    /// append is held.
    pub fn new(gate: fn(&hongbao::Record) -> bool, armed: bool) -> (Arc<GatedJournal>, std::sync::mpsc::Receiver<()>) {
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let journal = GatedJournal {
            inner: hongbao::MemoryJournal::new(),
            gate,
            armed: std::sync::atomic::AtomicBool::new(armed),
            entered: parking_lot::Mutex::new(Some(entered_tx)),
            open: parking_lot::Mutex::new(false),
            opened: parking_lot::Condvar::new(),
        };
        (Arc::new(journal), entered_rx)
    }

    /// Holds the next matching append.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Lets the held append (and every later one) through.
    pub fn release(&self) {
        *self.open.lock() = true;
        self.opened.notify_all();
    }
}

impl hongbao::Journal for GatedJournal {
    fn append(&self, record: hongbao::Record, then: hongbao::journal::Completion) {
        if (self.gate)(&record) && self.armed.swap(false, std::sync::atomic::Ordering::AcqRel) {
            if let Some(entered) = self.entered.lock().take() {
                let _ = entered.send(());
            }
            let mut open = self.open.lock();
            while !*open {
                self.opened.wait(&mut open);
            }
        }
        self.inner.append(record, then);
    }

    fn barrier(&self, then: hongbao::journal::Completion) {
        self.inner.barrier(then);
    }

    fn flush(&self) {}
}

/// An engine on a file journal in `dir` (synced, snapshotting every `snapshot_every_records`)
/// with these limits, on `clock`.
pub fn start_on_journal(
    dir: &std::path::Path,
    clock: &ManualClock,
    limits: Limits,
    snapshot_every_records: Option<u64>,
) -> Engine {
    let mut config = Config { arbiters: 2, wallet_shards: 3, ..Config::default() }
        .with_clock(Arc::new(clock.clone()))
        .with_limits(limits)
        .with_seed(5);
    let mut journal = hongbao::FileJournalConfig::new(dir, hongbao::Durability::Sync);
    journal.snapshot_every_records = snapshot_every_records;
    config.journal_dir = Some(journal);
    // A child process forked (by any test of this process) while an engine here closes its
    // journal shares the lock until it execs, so a restart may briefly find the directory
    // locked. Only that is retried.
    for _ in 0..200 {
        match Engine::start(config.clone()) {
            Err(hongbao::StartError::Journal(hongbao::JournalError::Locked(_))) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other.expect("engine starts on its journal"),
        }
    }
    Engine::start(config).expect("engine starts on its journal")
}

/// A fresh scratch directory for a test.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
