//! The shuffled draw through the engine: every share is the one its seed cuts, in the order
//! the seed shuffles, live and after a restart, and `hongbao audit`'s replay agrees.

mod common;

use common::*;
use hongbao::{audit_journal, split, Amount, Draw, GroupId, Limits, ManualClock, NewPacket, PacketId, Split};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_shares_follow_the_seed_across_a_restart() {
    let dir = scratch_dir("shuffled");
    let clock = ManualClock::default();
    let engine = start_on_journal(&dir, &clock, Limits::default(), None);
    group_with_funds(&engine, GroupId(1), 20, Amount::yuan(100)).await;
    let spec = NewPacket {
        id: PacketId(1),
        sender: SENDER,
        group: GroupId(1),
        split: Split::shuffled(Amount::yuan(10), 20),
        greeting: String::new(),
    };
    let view = engine.send_packet(spec).await.unwrap();
    let cap = engine.limits().share_fen_max;
    let expected = split::shares_of(1_000, 20, cap, view.seed, Draw::Shuffled);
    let grabbers = members(20);
    for (i, &user) in grabbers[..8].iter().enumerate() {
        assert_eq!(engine.grab(PacketId(1), user).await.unwrap().amount.as_fen(), expected[i]);
    }
    engine.shutdown().await;
    drop(engine);

    let engine = start_on_journal(&dir, &clock, Limits::default(), None);
    for (i, &user) in grabbers.iter().enumerate().skip(8) {
        assert_eq!(engine.grab(PacketId(1), user).await.unwrap().amount.as_fen(), expected[i]);
    }
    let view = engine.packet(PacketId(1)).await.unwrap();
    assert_eq!(view.split, Split::shuffled(Amount::yuan(10), 20));
    assert_eq!(view.claims.iter().map(|c| c.amount.as_fen()).collect::<Vec<_>>(), expected);
    assert_balanced(&engine).await;
    engine.shutdown().await;
    drop(engine);
    assert!(audit_journal(&dir, cap).unwrap().is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}
