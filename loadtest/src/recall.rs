//! The recall scenario: the storm's rounds, in groups attached to an org (企业) whose admin
//! recalls every packet while its members are grabbing it, as an enterprise takes back a
//! packet sent by mistake. Each packet's recall goes out right after one of its grabs, at a
//! seeded position (anywhere from the first grab to a little past its shares), by the worker
//! sending that grab, in burst and open loop alike; the packet's actor serializes it among the
//! grabs: a packet recalled early refunds most of its total, one recalled after it sold out
//! refunds nothing (`AlreadyClosed`).
//!
//! Checked after the run, besides the storm's own checks: every recalled packet's refund plus
//! its claims is its total, so the remainder went back exactly once; a packet the recall found
//! closed was sold out; each sender's balance is exactly the refunds of their packets. The
//! recalls are timed and reported apart from the grabs.
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

/// What a packet's recall came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recalled {
    /// The remainder went back to the sender: this many fen.
    Refunded(u64),
    /// The packet had closed (sold out) before the recall.
    Closed,
    /// The engine still answered `Busy` after every retry, or refused: nothing was recalled.
    GaveUp,
}

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

    /// Where each of a round's `groups` packets is recalled: right after the grab at this
    /// seeded position of its `members` grabs, from the first to a fifth past its `shares`.
    pub fn positions(&self, round: u64, groups: u64, members: u64, shares: u32) -> Vec<u64> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ round.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let last = (u64::from(shares) + u64::from(shares) / 5).min(members - 1);
        (0..groups).map(|_| rng.random_range(0..=last)).collect()
    }

    /// Recalls `packet`, sending it again after `Busy`.
    pub async fn recall(&self, packet: PacketId) -> RecallDone {
        let sent = Instant::now();
        let mut answer = self.engine.admin_recall(packet, ADMIN, "loadtest".into()).await;
        for _ in 0..BUSY_RETRIES_MAX {
            if !matches!(answer, Err(RecallError::Busy)) {
                break;
            }
            // The packet's mailbox is full of grabs: the admin tries again shortly.
            tokio::time::sleep(Duration::from_millis(1)).await;
            answer = self.engine.admin_recall(packet, ADMIN, "loadtest".into()).await;
        }
        let us = sent.elapsed().as_micros() as u64;
        let (outcome, kind, message) = match answer {
            Ok(fen) => (Recalled::Refunded(fen.as_fen()), "recalled", None),
            Err(RecallError::AlreadyClosed) => (Recalled::Closed, "already_closed", None),
            Err(e @ RecallError::Busy) => (Recalled::GaveUp, "busy", Some(e.to_string())),
            Err(e) => (Recalled::GaveUp, "recall_refused", Some(e.to_string())),
        };
        RecallDone { packet, outcome, kind, us, message }
    }
}

/// A recall done: what it came to, its reply kind, its latency and the engine's message for a
/// refusal.
#[derive(Debug)]
pub struct RecallDone {
    pub packet: PacketId,
    pub outcome: Recalled,
    kind: &'static str,
    us: u64,
    message: Option<String>,
}

impl RecallDone {
    /// Counts the recall in `figures`.
    pub fn record(&self, figures: &mut Figures) {
        figures.record(self.kind, self.us, self.us);
        if let Some(message) = &self.message {
            figures.note(self.kind, message);
        }
    }
}

/// What the recalls must have done, for each packet `(id, total, shares)` given its claims
/// `(count, fen)` as the storm checked them against the target: the refund and the claims
/// make the total, and a packet found closed was sold out. Returns the broken rules and what
/// each sender is owed.
pub fn check_refunds(
    packets: &[(PacketId, u64, u32)],
    claimed: &HashMap<PacketId, (usize, u64)>,
    outcomes: &[(PacketId, Recalled)],
    sender_of: impl Fn(PacketId) -> UserId,
) -> (Vec<String>, HashMap<UserId, u64>) {
    let mut violations = Vec::new();
    let outcomes: HashMap<PacketId, Recalled> = outcomes.iter().copied().collect();
    let mut owed: HashMap<UserId, u64> = HashMap::new();
    for &(packet, total, shares) in packets {
        let (count, sum) = claimed.get(&packet).copied().unwrap_or((0, 0));
        let sender = owed.entry(sender_of(packet)).or_default();
        match outcomes.get(&packet) {
            Some(Recalled::Refunded(refund)) => {
                *sender += refund;
                if refund + sum != total {
                    violations.push(format!("packet {packet}: refund {refund} + claims {sum} fen is not its {total}"));
                }
            }
            Some(Recalled::Closed) if count != shares as usize => {
                violations.push(format!("packet {packet}: found closed with {count} of {shares} shares claimed"));
            }
            Some(Recalled::Closed | Recalled::GaveUp) => {}
            None => violations.push(format!("packet {packet}: was never recalled")),
        }
    }
    (violations, owed)
}

/// Each sender holds exactly what they are owed.
pub async fn check_senders(target: &Target, owed: HashMap<UserId, u64>) -> Result<Vec<String>, String> {
    let mut violations = Vec::new();
    for (sender, refunded) in owed {
        let balance = target.balance(sender).await?;
        if balance != refunded {
            violations.push(format!("sender {sender} holds {balance} fen, not the {refunded} refunded"));
        }
    }
    Ok(violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refunds_are_checked_against_claims_and_totals() {
        let packets = [(PacketId(1), 1_000, 10), (PacketId(2), 1_000, 10), (PacketId(3), 500, 5)];
        let claimed = HashMap::from([(PacketId(1), (4, 400)), (PacketId(2), (10, 1_000)), (PacketId(3), (2, 200))]);
        let sender = |p: PacketId| UserId(p.0 % 2);
        let good = [
            (PacketId(1), Recalled::Refunded(600)),
            (PacketId(2), Recalled::Closed),
            (PacketId(3), Recalled::Refunded(300)),
        ];
        let (violations, owed) = check_refunds(&packets, &claimed, &good, sender);
        assert!(violations.is_empty(), "{violations:?}");
        assert_eq!(owed, HashMap::from([(UserId(1), 900), (UserId(0), 0)]));
        // A refund that is one fen off, a packet closed before it sold out, a packet never
        // recalled: each is named.
        let bad = [(PacketId(1), Recalled::Refunded(599)), (PacketId(3), Recalled::Closed)];
        let (violations, _) = check_refunds(&packets, &claimed, &bad, sender);
        assert_eq!(violations.len(), 3, "{violations:?}");
        assert!(violations[0].contains("refund 599 + claims 400"), "{violations:?}");
        assert!(violations[1].contains("never recalled") && violations[2].contains("2 of 5"), "{violations:?}");
    }
}
