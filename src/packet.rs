//! A packet's state and its rules, as plain data: what a grab wins, when a packet sells out,
//! what expiry refunds. The packet actor (`packet_actor.rs`) owns one of these and adds the
//! journal, the wallets and the replies; everything decided about money is decided here.
//!
//! # Invariants (checked by [`PacketState::check`], asserted after every change in debug
//! builds, and by `Engine::audit`)
//!
//! - `sum(claims) + remaining + refunded == total`;
//! - `claims ≤ shares`, each claim in `[1 fen, cap]`, one claim per member;
//! - a lucky packet keeps `shares_left ≤ remaining ≤ shares_left · cap` while open;
//! - status moves only `Open → SoldOut` or `Open → Expired`, once.

use rand_chacha::ChaCha8Rng;

use crate::clock::Timestamp;
use crate::error::GrabError;
use crate::money::{Amount, GroupId, IdMap, PacketId, UserId};
use crate::split::{self, Split};

/// What a sender asks for. The same id with the same fields is the same send (a retry).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NewPacket {
    /// Chosen by the caller, so that a retried send is applied once.
    pub id: PacketId,
    /// Who pays; must be a member of `group`.
    pub sender: UserId,
    /// Whose members may grab it.
    pub group: GroupId,
    /// How the total divides.
    pub split: Split,
    /// Shown with the packet (恭喜发财).
    pub greeting: String,
}

/// Where a packet stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketStatus {
    /// Shares are left and it has not expired.
    Open,
    /// Every share was taken.
    SoldOut,
    /// It expired with shares left, and `refunded` went back to the sender.
    Expired {
        /// The refund.
        refunded: Amount,
    },
}

/// One share taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimView {
    /// The winner.
    pub user: UserId,
    /// The share.
    pub amount: Amount,
    /// 1 for the first share taken.
    pub position: u32,
    /// When.
    pub at: Timestamp,
}

/// A packet as callers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketView {
    /// The packet.
    pub id: PacketId,
    /// Who sent it.
    pub sender: UserId,
    /// Its group.
    pub group: GroupId,
    /// How it divides.
    pub split: Split,
    /// Its greeting.
    pub greeting: String,
    /// Its total.
    pub total: Amount,
    /// Its share count.
    pub shares: u32,
    /// Where it stands.
    pub status: PacketStatus,
    /// Money still in escrow.
    pub remaining: Amount,
    /// Shares not yet taken.
    pub shares_left: u32,
    /// Every share taken, in grab order.
    pub claims: Vec<ClaimView>,
    /// Once sold out: the largest share, the earlier grab on a tie.
    pub best_luck: Option<ClaimView>,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// When its remainder is refunded.
    pub expires_at: Timestamp,
    /// The seed of its lucky draw (re-derives every share with `split::lucky_shares`).
    pub seed: u64,
}

/// What a successful grab decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Won {
    /// The claim.
    pub claim: ClaimView,
    /// Shares left after it.
    pub shares_left: u32,
    /// Escrow left after it.
    pub remaining: Amount,
    /// Whether it took the last share.
    pub sold_out: bool,
}

/// What expiring a packet did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// The remainder goes back to the sender.
    Refund(Amount),
    /// Sold out before expiry: nothing to refund.
    NothingLeft,
    /// It had expired already: nothing happens a second time.
    AlreadyExpired,
    /// Its deadline has not passed (a stale or early request): nothing happens.
    NotDue,
}

/// A packet's state.
#[derive(Debug)]
pub struct PacketState {
    spec: NewPacket,
    total: Amount,
    shares: u32,
    share_fen_max: u64,
    seed: u64,
    rng: ChaCha8Rng,
    remaining_fen: u64,
    claims: Vec<ClaimView>,
    claimed_by: IdMap<UserId, u32>,
    status: PacketStatus,
    sent_at: Timestamp,
    expires_at: Timestamp,
}

impl PacketState {
    /// A freshly sent packet. `spec` must have passed [`split::validate`] with the same cap.
    pub fn new(
        spec: NewPacket,
        share_fen_max: u64,
        seed: u64,
        sent_at: Timestamp,
        expires_at: Timestamp,
    ) -> PacketState {
        let total = spec.split.total().expect("validated split has a total");
        let shares = spec.split.shares();
        PacketState {
            total,
            shares,
            share_fen_max,
            seed,
            rng: split::rng(seed),
            remaining_fen: total.as_fen(),
            claims: Vec::new(),
            claimed_by: IdMap::default(),
            status: PacketStatus::Open,
            sent_at,
            expires_at,
            spec,
        }
    }

    /// What the sender asked for.
    pub fn spec(&self) -> &NewPacket {
        &self.spec
    }

    /// Where it stands.
    pub fn status(&self) -> PacketStatus {
        self.status
    }

    /// Money in escrow.
    pub fn escrow(&self) -> Amount {
        Amount::fen(self.remaining_fen)
    }

    /// When it expires.
    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    /// Whether it is open and its deadline has passed at `now`.
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.status == PacketStatus::Open && now >= self.expires_at
    }

    /// A grab by `user`. `eligible` says whether the user is a member of the group (or the
    /// recipient of an exclusive packet). A repeat grab returns the first result even if the
    /// member has left the group or the packet has closed since.
    ///
    /// # Errors
    ///
    /// In this order: `AlreadyGrabbed`, `NotEligible`, `Expired`, `SoldOut`.
    pub fn grab(&mut self, user: UserId, eligible: bool, now: Timestamp) -> Result<Won, GrabError> {
        if let Some(&index) = self.claimed_by.get(&user) {
            let first = self.claims[index as usize];
            return Err(GrabError::AlreadyGrabbed { amount: first.amount, position: first.position });
        }
        if !eligible {
            return Err(GrabError::NotEligible);
        }
        match self.status {
            PacketStatus::Expired { .. } => return Err(GrabError::Expired),
            PacketStatus::SoldOut => return Err(GrabError::SoldOut),
            PacketStatus::Open => {}
        }
        debug_assert!(now < self.expires_at, "the actor expires a due packet before grabbing");
        let amount = self.next_share();
        let claim = ClaimView { user, amount: Amount::fen(amount), position: self.claims.len() as u32 + 1, at: now };
        self.take(claim);
        debug_assert_eq!(self.check(), Ok(()));
        let shares_left = self.shares - self.claims.len() as u32;
        Ok(Won { claim, shares_left, remaining: self.escrow(), sold_out: shares_left == 0 })
    }

    /// The amount of the next share (advancing the draw of a lucky packet).
    fn next_share(&mut self) -> u64 {
        let left = self.shares - self.claims.len() as u32;
        let amount = match self.spec.split {
            Split::Lucky { .. } => split::draw(&mut self.rng, self.remaining_fen, left, self.share_fen_max),
            Split::Fixed { each, .. } => each.as_fen(),
            Split::Exclusive { amount, .. } => amount.as_fen(),
        };
        assert!(amount >= 1 && amount <= self.remaining_fen, "share {amount} outside escrow {}", self.remaining_fen);
        amount
    }

    fn take(&mut self, claim: ClaimView) {
        self.remaining_fen -= claim.amount.as_fen();
        self.claimed_by.insert(claim.user, self.claims.len() as u32);
        self.claims.push(claim);
        if self.claims.len() as u32 == self.shares {
            assert_eq!(self.remaining_fen, 0, "the last share takes the rest");
            self.status = PacketStatus::SoldOut;
        }
    }

    /// A packet rebuilt from its journal: its draw is replayed claim by claim, so it continues
    /// exactly where it stopped, and each recorded claim is checked against the draw.
    ///
    /// # Errors
    ///
    /// A description of the first claim that is not the share the packet would have drawn,
    /// goes to a member twice, or a refund that is not what was left.
    pub fn restore(
        spec: NewPacket,
        share_fen_max: u64,
        seed: u64,
        sent_at: Timestamp,
        expires_at: Timestamp,
        claims: &[ClaimView],
        refunded: Option<Amount>,
    ) -> Result<PacketState, String> {
        let mut state = PacketState::new(spec, share_fen_max, seed, sent_at, expires_at);
        let id = state.spec.id;
        for claim in claims {
            if state.status != PacketStatus::Open || state.claimed_by.contains_key(&claim.user) {
                return Err(format!("packet {id}: claim {} by {} cannot happen", claim.position, claim.user));
            }
            let expected = state.next_share();
            if claim.amount.as_fen() != expected || claim.position as usize != state.claims.len() + 1 {
                return Err(format!(
                    "packet {id}: claim {} is {} but the draw gives {}",
                    claim.position,
                    claim.amount,
                    Amount::fen(expected)
                ));
            }
            state.take(*claim);
        }
        if let Some(refund) = refunded {
            if refund != state.escrow() || state.status != PacketStatus::Open {
                return Err(format!("packet {id}: refund {refund} with {} in escrow", state.escrow()));
            }
            state.remaining_fen = 0;
            state.status = PacketStatus::Expired { refunded: refund };
        }
        Ok(state)
    }

    /// Expires the packet once its deadline has passed at `now`: an open packet refunds its
    /// remainder, once.
    pub fn expire(&mut self, now: Timestamp) -> Expiry {
        match self.status {
            PacketStatus::Expired { .. } => Expiry::AlreadyExpired,
            _ if now < self.expires_at => Expiry::NotDue,
            PacketStatus::SoldOut => Expiry::NothingLeft,
            PacketStatus::Open => {
                let refunded = self.escrow();
                self.remaining_fen = 0;
                self.status = PacketStatus::Expired { refunded };
                debug_assert_eq!(self.check(), Ok(()));
                Expiry::Refund(refunded)
            }
        }
    }

    /// The largest share, the earlier grab on a tie; only once sold out.
    pub fn best_luck(&self) -> Option<ClaimView> {
        if self.status != PacketStatus::SoldOut {
            return None;
        }
        // A strict `>` keeps the earlier claim on a tie.
        self.claims.iter().copied().reduce(|best, c| if c.amount > best.amount { c } else { best })
    }

    /// The packet as callers see it.
    pub fn view(&self) -> PacketView {
        PacketView {
            id: self.spec.id,
            sender: self.spec.sender,
            group: self.spec.group,
            split: self.spec.split.clone(),
            greeting: self.spec.greeting.clone(),
            total: self.total,
            shares: self.shares,
            status: self.status,
            remaining: self.escrow(),
            shares_left: self.shares - self.claims.len() as u32,
            claims: self.claims.clone(),
            best_luck: self.best_luck(),
            sent_at: self.sent_at,
            expires_at: self.expires_at,
            seed: self.seed,
        }
    }

    /// Checks the packet's invariants.
    ///
    /// # Errors
    ///
    /// A description of the first invariant that does not hold.
    pub fn check(&self) -> Result<(), String> {
        check_view(&self.view())
    }
}

/// Checks a packet's invariants on its view (used for open and closed packets alike).
///
/// # Errors
///
/// A description of the first invariant that does not hold.
pub fn check_view(v: &PacketView) -> Result<(), String> {
    let id = v.id;
    let claimed: u64 = v.claims.iter().map(|c| c.amount.as_fen()).sum();
    let refunded = match v.status {
        PacketStatus::Expired { refunded } => refunded.as_fen(),
        _ => 0,
    };
    if claimed + v.remaining.as_fen() + refunded != v.total.as_fen() {
        return Err(format!(
            "packet {id}: claims {claimed} + escrow {} + refund {refunded} != total {}",
            v.remaining.as_fen(),
            v.total.as_fen()
        ));
    }
    if v.claims.len() as u64 > u64::from(v.shares) || v.shares_left as usize + v.claims.len() != v.shares as usize {
        return Err(format!("packet {id}: {} claims for {} shares", v.claims.len(), v.shares));
    }
    if let Some(c) = v.claims.iter().find(|c| c.amount.is_zero()) {
        return Err(format!("packet {id}: zero share for {}", c.user));
    }
    let mut users: Vec<UserId> = v.claims.iter().map(|c| c.user).collect();
    users.sort_unstable();
    if users.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("packet {id}: a member was paid twice"));
    }
    if v.status == PacketStatus::SoldOut && (v.shares_left != 0 || v.remaining.as_fen() != 0) {
        return Err(format!("packet {id}: sold out with shares or escrow left"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: u64 = 20_000;
    const T0: Timestamp = Timestamp(1_000_000);

    fn packet(split: Split) -> PacketState {
        let spec =
            NewPacket { id: PacketId(1), sender: UserId(1), group: GroupId(1), split, greeting: "恭喜发财".into() };
        PacketState::new(spec, CAP, 99, T0, T0.plus_secs(86_400))
    }

    #[test]
    fn lucky_packet_pays_its_seeded_shares_and_sells_out() {
        let mut p = packet(Split::Lucky { total: Amount::yuan(10), shares: 5 });
        let expected = split::lucky_shares(1_000, 5, CAP, 99);
        for (i, want) in expected.iter().enumerate() {
            let won = p.grab(UserId(10 + i as u64), true, T0).unwrap();
            assert_eq!(won.claim.amount.as_fen(), *want);
            assert_eq!(won.claim.position, i as u32 + 1);
            assert_eq!(won.sold_out, i == 4);
        }
        assert_eq!(p.status(), PacketStatus::SoldOut);
        assert_eq!(p.grab(UserId(99), true, T0), Err(GrabError::SoldOut));
        let best = p.best_luck().unwrap();
        assert_eq!(best.amount.as_fen(), *expected.iter().max().unwrap());
        assert_eq!(p.expire(T0.plus_secs(86_400)), Expiry::NothingLeft);
        p.check().unwrap();
    }

    #[test]
    fn repeat_grab_returns_first_result_even_when_ineligible_or_closed() {
        let mut p = packet(Split::Fixed { each: Amount::fen(7), shares: 2 });
        let won = p.grab(UserId(5), true, T0).unwrap();
        let again = Err(GrabError::AlreadyGrabbed { amount: Amount::fen(7), position: 1 });
        assert_eq!(p.grab(UserId(5), true, T0), again);
        assert_eq!(p.grab(UserId(5), false, T0), again);
        assert_eq!(p.expire(T0.plus_secs(86_400)), Expiry::Refund(Amount::fen(7)));
        assert_eq!(p.grab(UserId(5), true, T0), again);
        assert_eq!(won.shares_left, 1);
    }

    #[test]
    fn ineligible_and_expired_grabs_change_nothing() {
        let mut p = packet(Split::Exclusive { to: UserId(3), amount: Amount::fen(500) });
        assert_eq!(p.grab(UserId(4), false, T0), Err(GrabError::NotEligible));
        assert_eq!(p.escrow(), Amount::fen(500));
        assert!(p.view().claims.is_empty());
        assert_eq!(p.expire(T0.plus_secs(86_400)), Expiry::Refund(Amount::fen(500)));
        assert_eq!(p.expire(T0.plus_secs(86_400)), Expiry::AlreadyExpired);
        assert_eq!(p.grab(UserId(3), true, T0), Err(GrabError::Expired));
        assert_eq!(p.status(), PacketStatus::Expired { refunded: Amount::fen(500) });
        p.check().unwrap();
    }

    #[test]
    fn best_luck_tie_goes_to_earlier_grab() {
        let mut p = packet(Split::Fixed { each: Amount::fen(3), shares: 3 });
        for u in [7, 8, 9] {
            p.grab(UserId(u), true, T0).unwrap();
        }
        assert_eq!(p.best_luck().unwrap().user, UserId(7));
    }

    #[test]
    fn restore_continues_the_draw_and_checks_claims() {
        let mut live = packet(Split::Lucky { total: Amount::yuan(10), shares: 5 });
        let claims: Vec<ClaimView> = (0..3).map(|u| live.grab(UserId(10 + u), true, T0).unwrap().claim).collect();
        let spec = live.spec().clone();
        let mut restored =
            PacketState::restore(spec.clone(), CAP, 99, T0, T0.plus_secs(86_400), &claims, None).unwrap();
        assert_eq!(restored.view(), live.view());
        // The next draws match the packet that never stopped.
        assert_eq!(restored.grab(UserId(50), true, T0), live.grab(UserId(50), true, T0));
        let mut forged = claims.clone();
        forged[1].amount = Amount::fen(forged[1].amount.as_fen() + 1);
        assert!(PacketState::restore(spec.clone(), CAP, 99, T0, T0, &forged, None).unwrap_err().contains("draw gives"));
        let expired = PacketState::restore(spec, CAP, 99, T0, T0, &claims, Some(restored.escrow())).unwrap_err();
        assert!(expired.contains("refund"), "{expired}");
    }

    #[test]
    fn expiry_waits_for_the_deadline() {
        let mut p = packet(Split::Fixed { each: Amount::fen(3), shares: 2 });
        assert_eq!(p.expire(T0), Expiry::NotDue);
        assert_eq!(p.status(), PacketStatus::Open);
        assert_eq!(p.expire(T0.plus_secs(86_400)), Expiry::Refund(Amount::fen(6)));
    }

    #[test]
    fn due_only_when_open_and_past_deadline() {
        let mut p = packet(Split::Fixed { each: Amount::fen(3), shares: 1 });
        assert!(!p.is_due(T0));
        assert!(p.is_due(T0.plus_secs(86_400)));
        p.grab(UserId(1), true, T0).unwrap();
        assert!(!p.is_due(T0.plus_secs(86_400)));
    }

    #[test]
    fn check_catches_broken_views() {
        let mut p = packet(Split::Fixed { each: Amount::fen(3), shares: 2 });
        p.grab(UserId(1), true, T0).unwrap();
        let mut v = p.view();
        v.remaining = Amount::fen(4);
        assert!(check_view(&v).is_err());
        let mut v = p.view();
        v.claims.push(v.claims[0]);
        v.shares_left = 0;
        v.remaining = Amount::ZERO;
        assert!(check_view(&v).unwrap_err().contains("paid twice"));
    }
}
