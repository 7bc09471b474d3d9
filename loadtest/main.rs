//! `loadtest`: a grab storm against an embedded engine.
//!
//! G groups of M members each get one packet of S shares; every member of every group grabs
//! at the same instant (released together once every grabbing task is ready). It prints the
//! replies by kind, the elapsed time, the throughput and the audit verdict, and exits non-zero
//! if the audit fails or any invariant breaks (a member paid twice, shares not summing to the
//! total, a winner's balance not matching the share).

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use hongbao::{Amount, Config, Engine, GrabError, GroupId, NewPacket, OpId, PacketId, PacketStatus, Split, UserId};
use tokio::sync::watch;

/// A grab storm against an in-process hongbao engine (in-memory journal).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Groups, each with one packet
    #[arg(long, default_value_t = 100)]
    groups: u64,
    /// Members per group, every one grabbing at once
    #[arg(long, default_value_t = 1_000)]
    members: u64,
    /// Shares per packet
    #[arg(long, default_value_t = 100)]
    shares: u32,
    /// Each packet's total, in yuan
    #[arg(long, default_value_t = 100)]
    yuan: u64,
    /// Seed for every packet's lucky draw
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Client threads (tokio workers)
    #[arg(long)]
    threads: Option<usize>,
}

/// What one grab came back with.
type Reply = (GroupId, UserId, Result<hongbao::Grabbed, GrabError>);

fn main() -> ExitCode {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: cannot start the client runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn member(group: u64, i: u64, members: u64) -> UserId {
    // User 0 of each group is its sender; members follow, distinct across groups.
    UserId(group * (members + 1) + i + 1)
}

async fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let engine = Engine::start(Config::default().with_seed(args.seed))?;
    let total = Amount::yuan(args.yuan);
    println!(
        "hongbao loadtest: storm, {} groups × {} members, one packet of {} shares ({total}) per group, seed {}",
        args.groups, args.members, args.shares, args.seed
    );
    for g in 0..args.groups {
        let sender = member(g, 0, args.members);
        engine.set_members(GroupId(g), (0..=args.members).map(|i| member(g, i, args.members))).await?;
        engine.deposit(OpId(g), sender, total).await?;
        let split = Split::Lucky { total, shares: args.shares };
        engine
            .send_packet(NewPacket {
                id: PacketId(g), sender, group: GroupId(g), split, greeting: "恭喜发财".into()
            })
            .await?;
    }

    let (go_tx, go_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity((args.groups * args.members) as usize);
    for g in 0..args.groups {
        for i in 1..=args.members {
            let (engine, mut go) = (engine.clone(), go_rx.clone());
            let user = member(g, i, args.members);
            tasks.push(tokio::spawn(async move {
                let _ = go.wait_for(|go| *go).await;
                let reply = engine.grab(PacketId(g), user).await;
                (GroupId(g), user, reply)
            }));
        }
    }
    // Let every task reach the start line before the clock starts.
    tokio::task::yield_now().await;
    let started = Instant::now();
    go_tx.send_replace(true);
    let mut replies: Vec<Reply> = Vec::with_capacity(tasks.len());
    for t in tasks {
        replies.push(t.await?);
    }
    let elapsed = started.elapsed();

    let mut ok = true;
    let winners = replies.iter().filter(|r| r.2.is_ok()).count();
    let kinds = |want: fn(&GrabError) -> bool| replies.iter().filter(|r| r.2.as_ref().err().is_some_and(want)).count();
    let sold_out = kinds(|e| *e == GrabError::SoldOut);
    let busy = kinds(|e| *e == GrabError::Busy);
    let other = replies.len() - winners - sold_out - busy;
    let secs = elapsed.as_secs_f64();
    println!("requests      {:>10}", replies.len());
    println!("winners       {winners:>10}");
    println!("sold out      {sold_out:>10}");
    println!("busy          {busy:>10}");
    println!("other errors  {other:>10}");
    println!("elapsed       {:>10.1} ms", secs * 1e3);
    println!(
        "throughput    {:>10.0} grab requests/s, {:.0} winning grabs/s",
        replies.len() as f64 / secs,
        winners as f64 / secs
    );

    // Invariants: per packet, winners are distinct, within the share count, and sum to the
    // total when sold out; each winner's balance is the share.
    for g in 0..args.groups {
        let view = engine.packet(PacketId(g)).await?;
        let mut seen = HashSet::new();
        let won: Vec<_> = replies.iter().filter(|r| r.0 == GroupId(g)).filter_map(|r| r.2.as_ref().ok()).collect();
        if won.iter().any(|w| !seen.insert(w.user)) {
            println!("INVARIANT BROKEN: packet {g} paid a member twice");
            ok = false;
        }
        let sum: u64 = won.iter().map(|w| w.amount.as_fen()).sum();
        if won.len() > args.shares as usize || (view.status == PacketStatus::SoldOut && sum != total.as_fen()) {
            println!("INVARIANT BROKEN: packet {g}: {} winners share {sum} fen of {}", won.len(), total.as_fen());
            ok = false;
        }
        if won.len() != view.claims.len() {
            println!("INVARIANT BROKEN: packet {g}: {} acknowledged wins, {} claims", won.len(), view.claims.len());
            ok = false;
        }
    }
    for (_, user, reply) in replies.iter().filter(|r| r.2.is_ok()) {
        let share = reply.as_ref().map(|g| g.amount).unwrap_or_default();
        if engine.balance(*user).await? != share {
            println!("INVARIANT BROKEN: {user}'s balance is not the share {share}");
            ok = false;
        }
    }
    let audit = engine.audit().await?;
    let verdict = if audit.is_balanced() { "balanced" } else { "NOT BALANCED" };
    println!(
        "audit         {verdict}: wallets {} + escrow {} = deposits {} - withdrawals {}",
        audit.wallets, audit.escrow, audit.deposits, audit.withdrawals
    );
    ok &= audit.is_balanced();
    engine.shutdown().await;
    Ok(ok)
}
