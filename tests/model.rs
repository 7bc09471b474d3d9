//! A seeded simulation against a reference model: random deposits, withdrawals, sends, grabs,
//! roster changes and clock jumps, each reply checked against what the rules of money predict,
//! and the audit checked against the model's totals at the end.
//!
//! `HONGBAO_SIM_SEEDS=N` runs N seeds (default 8); a failure names its seed and step.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use hongbao::Clock;
use hongbao::{
    split, Amount, GrabError, GroupId, Limits, NewPacket, OpId, PacketId, PacketStatus, SendError, Split, Timestamp,
    UserId, WalletError,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const STEPS: usize = 1_500;
const USERS: u64 = 24;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deposit,
    Withdrawal,
}

struct Packet {
    spec: NewPacket,
    total: u64,
    shares: u32,
    seed: u64,
    claims: Vec<(UserId, u64)>,
    expires_at: Timestamp,
    expired: bool,
}

impl Packet {
    fn remaining(&self) -> u64 {
        if self.expired {
            0
        } else {
            self.total - self.claims.iter().map(|c| c.1).sum::<u64>()
        }
    }
}

#[derive(Default)]
struct Model {
    balances: HashMap<UserId, u64>,
    ops: HashMap<OpId, (Kind, UserId, u64, u64)>,
    rosters: HashMap<GroupId, HashSet<UserId>>,
    packets: HashMap<PacketId, Packet>,
    deposited: u64,
    withdrawn: u64,
}

impl Model {
    fn balance(&self, u: UserId) -> u64 {
        self.balances.get(&u).copied().unwrap_or(0)
    }

    fn member(&self, g: GroupId, u: UserId) -> bool {
        self.rosters.get(&g).is_some_and(|r| r.contains(&u))
    }

    fn wallet_op(&mut self, kind: Kind, op: OpId, user: UserId, amount: u64, max: u64) -> Result<Amount, WalletError> {
        // An id belongs to whoever applied it; a refused operation leaves it free.
        if let Some(&(k, u, a, after)) = self.ops.get(&op) {
            return if (k, u, a) == (kind, user, amount) {
                Ok(Amount::fen(after))
            } else {
                Err(WalletError::IdConflict { op })
            };
        }
        if amount == 0 {
            return Err(WalletError::ZeroAmount);
        }
        let balance = self.balance(user);
        let after = match kind {
            Kind::Deposit if balance + amount > max => return Err(WalletError::BalanceLimit { max: Amount::fen(max) }),
            Kind::Deposit => balance + amount,
            Kind::Withdrawal if amount > balance => {
                return Err(WalletError::InsufficientFunds {
                    balance: Amount::fen(balance),
                    needed: Amount::fen(amount),
                })
            }
            Kind::Withdrawal => balance - amount,
        };
        match kind {
            Kind::Deposit => self.deposited += amount,
            Kind::Withdrawal => self.withdrawn += amount,
        }
        self.balances.insert(user, after);
        self.ops.insert(op, (kind, user, amount, after));
        Ok(Amount::fen(after))
    }

    fn expire(&mut self, id: PacketId) {
        let p = self.packets.get_mut(&id).unwrap();
        let refund = p.remaining();
        if !p.expired && refund > 0 {
            p.expired = true;
            *self.balances.entry(p.spec.sender).or_default() += refund;
        }
    }

    fn run_due(&mut self, now: Timestamp) {
        let due: Vec<PacketId> = self.packets.iter().filter(|(_, p)| p.expires_at <= now).map(|(id, _)| *id).collect();
        for id in due {
            self.expire(id);
        }
    }

    fn grab(&mut self, id: PacketId, user: UserId, now: Timestamp, cap: u64) -> Result<Amount, GrabError> {
        let Some(p) = self.packets.get(&id) else { return Err(GrabError::UnknownPacket) };
        if p.expires_at <= now {
            self.expire(id);
        }
        let p = &self.packets[&id];
        if let Some(pos) = p.claims.iter().position(|c| c.0 == user) {
            return Err(GrabError::AlreadyGrabbed { amount: Amount::fen(p.claims[pos].1), position: pos as u32 + 1 });
        }
        let eligible = match p.spec.split {
            Split::Exclusive { to, .. } => to == user,
            _ => self.member(p.spec.group, user),
        };
        if !eligible {
            return Err(GrabError::NotEligible);
        }
        if p.expired {
            return Err(GrabError::Expired);
        }
        if p.claims.len() == p.shares as usize {
            return Err(GrabError::SoldOut);
        }
        let amount = match p.spec.split {
            Split::Lucky { draw, .. } => split::shares_of(p.total, p.shares, cap, p.seed, draw)[p.claims.len()],
            Split::Fixed { each, .. } => each.as_fen(),
            Split::Exclusive { amount, .. } => amount.as_fen(),
            ref other => unreachable!("the model sends no {other:?}"),
        };
        self.packets.get_mut(&id).unwrap().claims.push((user, amount));
        *self.balances.entry(user).or_default() += amount;
        Ok(Amount::fen(amount))
    }
}

fn random_split(rng: &mut ChaCha8Rng) -> Split {
    match rng.random_range(0..10) {
        0..=2 => Split::lucky(Amount::fen(rng.random_range(0..5_000)), rng.random_range(0..12)),
        3..=5 => Split::shuffled(Amount::fen(rng.random_range(0..5_000)), rng.random_range(0..12)),
        6..=8 => Split::Fixed { each: Amount::fen(rng.random_range(0..300)), shares: rng.random_range(0..6) },
        _ => {
            Split::Exclusive { to: UserId(rng.random_range(1..=USERS)), amount: Amount::fen(rng.random_range(0..400)) }
        }
    }
}

async fn simulate(seed: u64) {
    let limits =
        Limits { share_fen_max: 1_000, packet_total_fen_max: 4_000, balance_fen_max: 50_000, ..Limits::default() };
    let (cap, max) = (limits.share_fen_max, limits.balance_fen_max);
    let setup = start_with(limits.clone(), seed);
    let engine = &setup.engine;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model = Model::default();
    for group in [GroupId(1), GroupId(2)] {
        let roster: HashSet<UserId> = (1..=USERS).filter(|_| rng.random_bool(0.8)).map(UserId).collect();
        engine.set_members(group, roster.iter().copied()).await.unwrap();
        model.rosters.insert(group, roster);
    }
    for step in 0..STEPS {
        let at = format!("seed {seed} step {step}");
        let user = UserId(rng.random_range(1..=USERS));
        match rng.random_range(0..100) {
            0..=14 => {
                let (op, amount) = (OpId(rng.random_range(0..400)), rng.random_range(0..8_000));
                let got = engine.deposit(op, user, Amount::fen(amount)).await;
                assert_eq!(got, model.wallet_op(Kind::Deposit, op, user, amount, max), "{at}: deposit");
            }
            15..=19 => {
                let (op, amount) = (OpId(rng.random_range(0..400)), rng.random_range(0..3_000));
                let got = engine.withdraw(op, user, Amount::fen(amount)).await;
                assert_eq!(got, model.wallet_op(Kind::Withdrawal, op, user, amount, max), "{at}: withdraw");
            }
            20..=21 => {
                let group = GroupId(rng.random_range(1..=2));
                let roster: HashSet<UserId> = (1..=USERS).filter(|_| rng.random_bool(0.7)).map(UserId).collect();
                engine.set_members(group, roster.iter().copied()).await.unwrap();
                model.rosters.insert(group, roster);
            }
            22..=36 => {
                let id = PacketId(rng.random_range(0..40));
                let spec = NewPacket {
                    id,
                    sender: user,
                    group: GroupId(rng.random_range(1..=2)),
                    split: random_split(&mut rng),
                    greeting: String::new(),
                };
                let got = engine.send_packet(spec.clone()).await;
                // A taken id answers first: the same send again is a retry, another is a
                // conflict, whatever else is wrong with it.
                let expected = match split::validate(&spec.split, &limits) {
                    _ if model.packets.get(&id).is_some_and(|p| p.spec != spec) => {
                        Err(SendError::IdConflict { packet: id })
                    }
                    _ if model.packets.contains_key(&id) => Ok(()),
                    Err(reason) => Err(SendError::InvalidSplit { reason }),
                    Ok(_) if !model.member(spec.group, spec.sender) => Err(SendError::NotMember { user: spec.sender }),
                    Ok(_) if matches!(spec.split, Split::Exclusive { to, .. } if !model.member(spec.group, to)) => {
                        let Split::Exclusive { to, .. } = spec.split else { unreachable!() };
                        Err(SendError::NotMember { user: to })
                    }
                    Ok((total, _)) if total.as_fen() > model.balance(user) => {
                        Err(SendError::InsufficientFunds { balance: Amount::fen(model.balance(user)), needed: total })
                    }
                    Ok((total, shares)) => {
                        let view = got.as_ref().unwrap_or_else(|e| panic!("{at}: send refused: {e:?}"));
                        *model.balances.get_mut(&user).unwrap() -= total.as_fen();
                        let expires_at = setup.clock.now().plus_secs(limits.expiry_secs);
                        assert_eq!(
                            (view.status, view.remaining, view.expires_at),
                            (PacketStatus::Open, total, expires_at),
                            "{at}"
                        );
                        let packet = Packet {
                            spec: spec.clone(),
                            total: total.as_fen(),
                            shares,
                            seed: view.seed,
                            claims: Vec::new(),
                            expires_at,
                            expired: false,
                        };
                        model.packets.insert(id, packet);
                        Ok(())
                    }
                };
                assert_eq!(got.map(|_| ()), expected, "{at}: send {spec:?}");
            }
            37..=84 => {
                // Mostly packets that exist (sorted: HashMap order is not reproducible).
                let mut known: Vec<PacketId> = model.packets.keys().copied().collect();
                known.sort_unstable();
                let id = if known.is_empty() || rng.random_bool(0.1) {
                    PacketId(rng.random_range(0..40))
                } else {
                    known[rng.random_range(0..known.len())]
                };
                let user = UserId(rng.random_range(1..=USERS + 2));
                let got = engine.grab(id, user).await.map(|g| g.amount);
                assert_eq!(got, model.grab(id, user, setup.clock.now(), cap), "{at}: grab {id:?} by {user:?}");
            }
            85..=88 => {
                setup.clock.advance(Duration::from_secs(rng.random_range(0..6_000)));
                engine.run_due().await.unwrap();
                model.run_due(setup.clock.now());
            }
            89..=95 => {
                assert_eq!(
                    engine.balance(user).await.unwrap().as_fen(),
                    model.balance(user),
                    "{at}: balance of {user:?}"
                );
            }
            _ => {
                let id = PacketId(rng.random_range(0..40));
                match (engine.packet(id).await, model.packets.get(&id)) {
                    (Err(hongbao::EngineError::UnknownPacket), None) => {}
                    (Ok(view), Some(p)) => {
                        let claims: Vec<(UserId, u64)> =
                            view.claims.iter().map(|c| (c.user, c.amount.as_fen())).collect();
                        assert_eq!(claims, p.claims, "{at}: claims of {id:?}");
                        assert_eq!(view.remaining.as_fen(), p.remaining(), "{at}: escrow of {id:?}");
                    }
                    (got, want) => panic!("{at}: packet {id:?}: engine {got:?}, model has it: {}", want.is_some()),
                }
            }
        }
    }
    let audit = engine.audit().await.unwrap();
    assert!(audit.is_balanced(), "seed {seed}: {audit:?}");
    let escrow: u64 = model.packets.values().map(Packet::remaining).sum();
    assert_eq!(audit.wallets.as_fen(), model.balances.values().sum::<u64>(), "seed {seed}: wallets");
    assert_eq!(audit.escrow.as_fen(), escrow, "seed {seed}: escrow");
    assert_eq!(
        (audit.deposits.as_fen(), audit.withdrawals.as_fen()),
        (model.deposited, model.withdrawn),
        "seed {seed}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_matches_the_reference_model() {
    let seeds: u64 = std::env::var("HONGBAO_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    for seed in 0..seeds {
        simulate(seed).await;
    }
}
