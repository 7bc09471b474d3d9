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
        split: Split::Lucky { total, shares },
        greeting: "恭喜发财".into(),
    }
}

pub async fn assert_balanced(engine: &Engine) {
    let audit = engine.audit().await.unwrap();
    assert!(audit.is_balanced(), "audit not balanced: {audit:?}");
}
