//! The handle from every kind of caller: a multi-thread tokio runtime (an axum-style server),
//! a current-thread `#[tokio::test]`, and an actix-rt system (an actix-web server).

mod common;

use common::*;
use hongbao::{Amount, Engine, GroupId, PacketId};

fn assert_handle<T: Clone + Send + Sync + 'static>() {}
fn assert_send<F: std::future::Future + Send>(f: F) -> F {
    f
}

async fn scenario(engine: Engine, group: GroupId, id: u64) {
    group_with_funds(&engine, group, 4, Amount::yuan(4)).await;
    assert_send(engine.send_packet(lucky(id, group, Amount::yuan(4), 4))).await.unwrap();
    let mut total = 0;
    for user in members(4) {
        total += assert_send(engine.grab(PacketId(id), user)).await.unwrap().amount.as_fen();
    }
    assert_eq!(total, 400);
}

/// The audit is only exact at a quiescent point, so it runs after every scenario finished.
async fn audit_and_stop(engine: Engine) {
    assert!(assert_send(engine.audit()).await.unwrap().is_balanced());
    engine.shutdown().await;
}

#[test]
fn handle_is_clone_send_sync() {
    assert_handle::<Engine>();
}

#[test]
fn from_a_multi_thread_tokio_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let Setup { engine, .. } = start(51);
    runtime.block_on(async {
        // Spawned tasks move between worker threads: this only compiles with Send futures.
        let tasks: Vec<_> = (0..4).map(|g| tokio::spawn(scenario(engine.clone(), GroupId(g), 10 + g))).collect();
        for t in tasks {
            t.await.unwrap();
        }
        audit_and_stop(engine).await;
    });
}

#[tokio::test]
async fn from_a_current_thread_tokio_test() {
    let Setup { engine, .. } = start(52);
    scenario(engine.clone(), GroupId(1), 1).await;
    audit_and_stop(engine).await;
}

#[test]
fn from_an_actix_rt_system() {
    actix_rt::System::new().block_on(async {
        // Started from inside another actix system: the engine's own system lives on its own
        // threads.
        let Setup { engine, .. } = start(53);
        let spawned = actix_rt::spawn(scenario(engine.clone(), GroupId(2), 2));
        scenario(engine.clone(), GroupId(1), 1).await;
        spawned.await.unwrap();
        audit_and_stop(engine).await;
    });
}
