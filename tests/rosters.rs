//! Rosters as a chat server changes them: members added and removed one by one (journaled as
//! deltas, not the whole roster), read back, enforced at once, recovered exactly, and kept in
//! the same order in memory and in the journal when changes of one group race.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use hongbao::{
    Amount, Config, Durability, Engine, EngineError, GrabError, GroupId, Limits, ManualClock, MemoryJournal, PacketId,
    Record, UserId,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ids(v: impl IntoIterator<Item = u64>) -> Vec<UserId> {
    v.into_iter().map(UserId).collect()
}

#[tokio::test]
async fn members_are_added_removed_read_back_and_journaled_as_deltas() {
    let journal = Arc::new(MemoryJournal::recording());
    let config = Config { arbiters: 1, wallet_shards: 2, ..Config::default() }
        .with_journal(journal.clone())
        .with_clock(Arc::new(ManualClock::default()))
        .with_seed(3);
    let engine = Engine::start(config).unwrap();
    let group = GroupId(4);
    assert_eq!(engine.members(group).await.unwrap(), vec![]);
    engine.add_members(group, ids([5, 3, 5])).await.unwrap();
    engine.add_members(group, ids([1])).await.unwrap();
    engine.remove_members(group, ids([3, 99])).await.unwrap();
    assert_eq!(engine.members(group).await.unwrap(), ids([1, 5]));

    let roster_records: Vec<Record> = journal
        .records()
        .into_iter()
        .filter(|r| matches!(r, Record::MembersAdded { .. } | Record::MembersRemoved { .. } | Record::Roster { .. }))
        .collect();
    assert_eq!(
        roster_records,
        vec![
            Record::MembersAdded { group, members: ids([3, 5]) },
            Record::MembersAdded { group, members: ids([1]) },
            Record::MembersRemoved { group, members: ids([3]) },
        ]
    );
    // Changes that change nothing record nothing, and removing from a group the engine never
    // saw does not create it.
    let before = journal.records().len();
    engine.add_members(group, ids([1, 5])).await.unwrap();
    engine.remove_members(group, ids([42])).await.unwrap();
    engine.remove_members(GroupId(99), ids([1])).await.unwrap();
    assert_eq!(journal.records().len(), before);
    assert_eq!(engine.members(GroupId(99)).await.unwrap(), vec![]);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_member_added_may_grab_at_once_and_a_member_removed_may_not() {
    let setup = start(17);
    let engine = &setup.engine;
    let group = GroupId(1);
    group_with_funds(engine, group, 2, Amount::yuan(10)).await;
    engine.send_packet(lucky(1, group, Amount::yuan(1), 3)).await.unwrap();
    let (newcomer, leaver) = (UserId(7_000), UserId(FIRST_MEMBER));
    assert_eq!(engine.grab(PacketId(1), newcomer).await, Err(GrabError::NotEligible));
    engine.add_members(group, [newcomer]).await.unwrap();
    assert!(engine.grab(PacketId(1), newcomer).await.is_ok());
    engine.remove_members(group, [leaver]).await.unwrap();
    assert_eq!(engine.grab(PacketId(1), leaver).await, Err(GrabError::NotEligible));
    assert_balanced(engine).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn additions_past_the_limit_are_refused_and_change_nothing() {
    let limits = Limits { members_per_group_max: 3, groups_max: 1, ..Limits::default() };
    let setup = start_with(limits, 1);
    let engine = &setup.engine;
    engine.add_members(GroupId(1), ids([1, 2])).await.unwrap();
    assert_eq!(
        engine.add_members(GroupId(1), ids([3, 4])).await,
        Err(EngineError::TooManyMembers { members: 4, max: 3 })
    );
    assert_eq!(engine.members(GroupId(1)).await.unwrap(), ids([1, 2]));
    assert_eq!(engine.add_members(GroupId(2), ids([1])).await, Err(EngineError::TooManyGroups { max: 1 }));
    assert_eq!(engine.members(GroupId(2)).await.unwrap(), vec![]);
    engine.shutdown().await;
}

/// The roster the journal's records describe, folded in journal order.
fn journaled_roster(journal: &MemoryJournal, group: GroupId) -> Vec<UserId> {
    let mut roster = std::collections::BTreeSet::new();
    for record in journal.records() {
        match record {
            Record::Roster { group: g, members } if g == group => roster = members.into_iter().collect(),
            Record::MembersAdded { group: g, members } if g == group => roster.extend(members),
            Record::MembersRemoved { group: g, members } if g == group => members.iter().for_each(|m| {
                roster.remove(m);
            }),
            _ => {}
        }
    }
    roster.into_iter().collect()
}

/// Many callers change one group's roster at once; whatever order they land in, the roster the
/// running engine enforces is the one its journal describes (so a restart rebuilds it), after
/// every round of racing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_changes_land_in_the_same_order_in_memory_and_journal() {
    let seed: u64 = std::env::var("HONGBAO_ROSTER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let journal = Arc::new(MemoryJournal::recording());
    let config = Config { arbiters: 2, wallet_shards: 2, ..Config::default() }.with_journal(journal.clone());
    let engine = Engine::start(config).unwrap();
    let group = GroupId(1);
    for round in 0..200 {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let members = ids((0..rng.random_range(1..6)).map(|_| rng.random_range(1..40)));
                let (engine, kind) = (engine.clone(), rng.random_range(0..3));
                tokio::spawn(async move {
                    match kind {
                        0 => engine.set_members(group, members).await,
                        1 => engine.add_members(group, members).await,
                        _ => engine.remove_members(group, members).await,
                    }
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
        }
        let enforced = engine.members(group).await.unwrap();
        assert_eq!(enforced, journaled_roster(&journal, group), "seed {seed} round {round}: memory and journal differ");
    }
    engine.shutdown().await;
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-rosters-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Roster changes survive a restart exactly (replayed from the records, and from a snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_rebuilds_every_roster() {
    let dir = scratch("restart");
    let config =
        || Config { arbiters: 2, wallet_shards: 2, ..Config::default() }.with_journal_dir(&dir, Durability::Sync);
    let engine = Engine::start(config()).unwrap();
    engine.set_members(GroupId(1), ids(1..=5)).await.unwrap();
    engine.add_members(GroupId(1), ids([9])).await.unwrap();
    engine.remove_members(GroupId(1), ids([2, 3])).await.unwrap();
    engine.add_members(GroupId(2), ids([4])).await.unwrap();
    engine.shutdown().await;
    drop(engine);
    for _ in 0..2 {
        let engine = Engine::start(config()).unwrap();
        assert_eq!(engine.members(GroupId(1)).await.unwrap(), ids([1, 4, 5, 9]));
        assert_eq!(engine.members(GroupId(2)).await.unwrap(), ids([4]));
        engine.shutdown().await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
