//! The recall scenario: the storm's rounds, in groups attached to an org (企业) whose admin
//! recalls every packet at a seeded moment while its members are grabbing it, as an
//! enterprise takes back a packet sent by mistake. The admin's recalls race the grabs inside
//! each packet's actor: a packet recalled early refunds most of its total, one recalled after
//! it sold out refunds nothing (`AlreadyClosed`).
//!
//! Checked after the run, besides the storm's own checks: every recalled packet's refund plus
//! its claims is its total, so the remainder went back exactly once; a packet the recall found
//! closed was sold out; each sender's balance is exactly the refunds of their packets.
//!
//! The engine's own org API is used, so the scenario runs on the embedded engine only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hongbao::{Engine, GroupId, NewOrg, OrgId, PacketId, Policy, RecallError, RecallPolicy, UserId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::report::Figures;
use crate::target::Target;

/// The org's one admin: a user no group has.
const ADMIN: UserId = UserId(1 << 42);

/// The org every storm group is attached to.
const ORG: OrgId = OrgId(1);

/// Times a recall answered `Busy` is tried again, a millisecond apart.
const BUSY_RETRIES_MAX: u32 = 1_000;

/// A packet's refund, as the recall acknowledged it (none: the packet was closed already).
pub type Refund = (PacketId, Option<u64>);

/// The org's admin, recalling the storm's packets.
pub struct Admin {
    engine: Engine,
    seed: u64,
}

impl Admin {
    /// Creates the org with the admin, its recall whitelist holding every group's sender, and
    /// attaches the groups.
    ///
    /// # Errors
    ///
    /// When the target is not the embedded engine, or the engine refuses the org.
    pub async fn set_up(target: &Target, senders: &[(GroupId, UserId)], seed: u64) -> Result<Admin, String> {
        let Target::Embedded(engine) = target else {
            return Err("the recall scenario runs on the embedded engine only".into());
        };
        let refused = |e: hongbao::OrgError| format!("setting up the org: {e}");
        engine.create_org(ORG, NewOrg { admins: vec![ADMIN], name: "loadtest".into() }).await.map_err(refused)?;
        let whitelist = senders.iter().map(|(_, sender)| *sender).collect();
        let policy = Policy { recall: RecallPolicy::Whitelist(whitelist), ..Policy::default() };
        engine.set_policy(ORG, ADMIN, policy).await.map_err(refused)?;
        for (group, _) in senders {
            engine.attach_group(ORG, *group, ADMIN).await.map_err(refused)?;
        }
        Ok(Admin { engine: engine.clone(), seed })
    }

    /// Recalls each of a round's packets once, each after a seeded delay within `window` of
    /// now (the length of the round before), timing every recall.
    pub fn recall_during(
        &self,
        round: u64,
        packets: Vec<PacketId>,
        window: Duration,
    ) -> tokio::task::JoinHandle<(Figures, Vec<Refund>)> {
        let engine = self.engine.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ round.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let start = Instant::now();
        let mut at: Vec<(Duration, PacketId)> =
            packets.into_iter().map(|p| (window.mul_f64(rng.random_range(0.0..1.0)), p)).collect();
        at.sort_unstable();
        tokio::spawn(async move {
            let mut figures = Figures::default();
            let mut refunds = Vec::with_capacity(at.len());
            for (delay, packet) in at {
                tokio::time::sleep_until((start + delay).into()).await;
                let sent = Instant::now();
                let mut answer = engine.admin_recall(packet, ADMIN, "loadtest".into()).await;
                for _ in 0..BUSY_RETRIES_MAX {
                    if !matches!(answer, Err(RecallError::Busy)) {
                        break;
                    }
                    // The packet's mailbox is full of grabs: the admin tries again shortly.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    answer = engine.admin_recall(packet, ADMIN, "loadtest".into()).await;
                }
                let us = sent.elapsed().as_micros() as u64;
                let kind = match &answer {
                    Ok(fen) => {
                        refunds.push((packet, Some(fen.as_fen())));
                        "recalled"
                    }
                    Err(RecallError::AlreadyClosed) => {
                        refunds.push((packet, None));
                        "already_closed"
                    }
                    Err(RecallError::Busy) => "busy",
                    Err(_) => "recall_refused",
                };
                figures.record(kind, us, us);
                if let Err(e) = answer {
                    figures.note(kind, &e.to_string());
                }
            }
            (figures, refunds)
        })
    }
}

/// What the recalls must have done: for each packet `(id, total, shares)` and the claims the
/// storm checked against the target, the refund and the claims make the total, a packet found
/// closed was sold out, and each sender holds exactly their refunds.
pub async fn check(
    target: &Target,
    packets: &[(PacketId, u64, u32)],
    claimed: &HashMap<PacketId, (usize, u64)>,
    refunds: &[Refund],
    sender_of: impl Fn(PacketId) -> UserId,
) -> Result<Vec<String>, String> {
    let mut violations = Vec::new();
    let refunds: HashMap<PacketId, Option<u64>> = refunds.iter().copied().collect();
    let mut owed: HashMap<UserId, u64> = HashMap::new();
    for &(packet, total, shares) in packets {
        let (count, sum) = claimed.get(&packet).copied().unwrap_or((0, 0));
        let sender = owed.entry(sender_of(packet)).or_default();
        match refunds.get(&packet) {
            Some(Some(refund)) => {
                *sender += refund;
                if refund + sum != total {
                    violations.push(format!("packet {packet}: refund {refund} + claims {sum} fen is not its {total}"));
                }
            }
            Some(None) if count != shares as usize => {
                violations.push(format!("packet {packet}: found closed with {count} of {shares} shares claimed"));
            }
            Some(None) => {}
            None => violations.push(format!("packet {packet}: its recall got no answer")),
        }
    }
    for (sender, refunded) in owed {
        let balance = target.balance(sender).await?;
        if balance != refunded {
            violations.push(format!("sender {sender} holds {balance} fen, not the {refunded} refunded"));
        }
    }
    Ok(violations)
}
