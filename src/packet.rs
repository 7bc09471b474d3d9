//! A packet's state and its rules, as plain data: who may win what, when a packet sells out,
//! what expiry refunds. The packet actor (`packet_actor.rs`) owns one of these for a live
//! packet and replay owns one for every packet; both change it only through
//! [`PacketState::apply`], so every rule below has one implementation.
//!
//! Decide → record → apply: [`PacketState::decide_grab`] and [`PacketState::decide_expiry`]
//! look at the state and say what happens (a [`Record`] to write, or a refusal) without
//! changing it; [`PacketState::apply`] applies a record, checking it against the state, and
//! says which wallet it credits.
//!
//! The lucky draw is kept one step ahead: the state holds the share the next claim takes, so
//! deciding a grab only reads it, and applying a claim checks the claim against it before
//! drawing the one after. A claim that is not what the seeded draw gives is refused.
//!
//! # Invariants (checked by [`check_view`], asserted after every change in debug builds, and
//! by `Engine::audit`)
//!
//! - `sum(claims) + remaining + refunded == total`;
//! - `claims ≤ shares`, each claim in `[1 fen, cap]`, one claim per member;
//! - a lucky packet keeps `shares_left ≤ remaining ≤ shares_left · cap` while open;
//! - status moves only `CoolingOff → Open`, `CoolingOff → Cancelled`, `Open → SoldOut` or
//!   `Open → Expired`, each once; a packet cooling off has no claims.
//!
//! # Cooling-off (rule 16)
//!
//! A send above the sender's cooling-off threshold starts `CoolingOff` until its `opens_at`:
//! nobody may grab it, and the sender may cancel it (`Record::PacketCancelled` refunds the
//! whole total). At `opens_at` it opens (`Record::PacketOpened`), once; its expiry was set
//! `expiry_secs` after `opens_at` when it was sent. Opening is a record, not a reading of the
//! clock, so that a clock that steps back can never let a cancel follow a grab.

use rand_chacha::ChaCha8Rng;

use crate::clock::Timestamp;
use crate::error::{ApprovalError, CancelError, GrabError, RecallError};
use crate::ledger::Credit;
use crate::money::{Amount, GroupId, IdMap, PacketId, UserId};
use crate::record::{Approval, ApprovalId, NewPacket, PacketSent, Record};
use crate::split::{self, Draw, Split};

/// Where a packet stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum PacketStatus {
    /// Waiting for a second person's approval until `until` (rule 23): nobody may grab it yet.
    AwaitingApproval {
        /// Rejected, refunding the sender, if not approved by then.
        until: Timestamp,
    },
    /// Held by the sender's cooling-off: nobody may grab it yet, and the sender may cancel it.
    CoolingOff {
        /// When it opens.
        until: Timestamp,
    },
    /// Shares are left and it has not expired.
    Open,
    /// Every share was taken.
    SoldOut,
    /// It expired with shares left, and `refunded` went back to the sender.
    Expired {
        /// The refund.
        refunded: Amount,
    },
    /// The sender cancelled it during its cooling-off; its whole total went back.
    Cancelled {
        /// The refund.
        refunded: Amount,
    },
    /// An admin of its org recalled its unclaimed remainder, which went back to the sender;
    /// the shares claimed before stand.
    Recalled {
        /// The refund.
        refunded: Amount,
    },
    /// Its approval was refused, or never came; its total went back to the sender.
    Rejected {
        /// The refund.
        refunded: Amount,
    },
}

impl PacketStatus {
    /// Whether it is closed: sold out, expired or cancelled.
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            PacketStatus::SoldOut
                | PacketStatus::Expired { .. }
                | PacketStatus::Cancelled { .. }
                | PacketStatus::Recalled { .. }
                | PacketStatus::Rejected { .. }
        )
    }

    /// What went back to the sender when it closed.
    pub fn refunded(self) -> Amount {
        match self {
            PacketStatus::Expired { refunded }
            | PacketStatus::Cancelled { refunded }
            | PacketStatus::Recalled { refunded }
            | PacketStatus::Rejected { refunded } => refunded,
            _ => Amount::ZERO,
        }
    }
}

/// One share taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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
    /// When it opens (opened) for grabs: `sent_at`, or the end of the sender's cooling-off.
    pub opens_at: Timestamp,
    /// If it waits (waited) for a second person's approval: who, and until when.
    pub approval: Option<Approval>,
    /// When it opened after a cooling-off or an approval, if it did.
    pub opened_at: Option<Timestamp>,
    /// When its remainder is refunded.
    pub expires_at: Timestamp,
    /// When it sold out or expired; it is kept (answering repeat grabs and queries) for
    /// `closed_retention_secs` from then.
    pub closed_at: Option<Timestamp>,
    /// The seed of its lucky draw (re-derives every share with `split::lucky_shares`).
    pub seed: u64,
}

impl PacketView {
    /// What the sender asked for.
    pub fn spec(&self) -> NewPacket {
        NewPacket {
            id: self.id,
            sender: self.sender,
            group: self.group,
            split: self.split.clone(),
            greeting: self.greeting.clone(),
        }
    }
}

/// What expiring a packet would do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The remainder goes back to the sender: write `Record::Expired`.
    Refund(Amount),
    /// Sold out before its deadline: nothing to refund, nothing to record; it closes.
    NothingLeft,
    /// It had expired already: nothing happens a second time.
    AlreadyExpired,
    /// Its deadline has not passed (a stale or early request): nothing happens.
    NotDue,
}

/// A packet's state.
#[derive(Clone, Debug)]
pub(crate) struct PacketState {
    sent: PacketSent,
    total: Amount,
    shares: u32,
    share_fen_max: u64,
    /// The double-mean draw's stream, positioned after `next_fen`; dropped once the packet
    /// closes.
    rng: Option<Box<ChaCha8Rng>>,
    /// A shuffled packet's shares in grab order, cut when it was sent; dropped once it closes.
    cut: Option<Box<[u64]>>,
    /// The share the next claim takes; zero once no share is left.
    next_fen: u64,
    /// When its cooling-off ended or it was approved (`None` if it had neither, or it has
    /// not opened yet).
    opened_at: Option<Timestamp>,
    /// When its remainder is refunded: as sent, or as shifted by a late approval.
    expires_at: Timestamp,
    remaining_fen: u64,
    claims: Vec<ClaimView>,
    claimed_by: IdMap<UserId, u32>,
    status: PacketStatus,
    /// When it sold out, expired or was cancelled.
    closed_at: Option<Timestamp>,
}

/// What the end of a packet's cooling-off does now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Opening {
    /// It opens: write `Record::PacketOpened`.
    Open(Record),
    /// It is not cooling off, or its cooling-off has not ended.
    Nothing,
}

impl PacketState {
    /// The state of a packet just sent. `sent.spec` must have passed [`split::validate`] with
    /// the cap it records (or, on replay, [`split::check_servable`]).
    pub(crate) fn open(sent: PacketSent) -> PacketState {
        let share_fen_max = sent.share_fen_max;
        let total = sent.spec.split.total().expect("a validated split has a total");
        let shares = sent.spec.split.shares();
        let (rng, cut) = match sent.spec.split {
            Split::Lucky { total, shares, draw: Draw::Shuffled } => {
                (None, Some(split::shuffled_shares(total.as_fen(), shares, share_fen_max, sent.seed).into()))
            }
            Split::Lucky { .. } => (Some(Box::new(split::rng(sent.seed))), None),
            _ => (None, None),
        };
        let mut state = PacketState {
            total,
            shares,
            share_fen_max,
            rng,
            cut,
            next_fen: 0,
            opened_at: None,
            expires_at: sent.expires_at,
            remaining_fen: total.as_fen(),
            claims: Vec::new(),
            claimed_by: IdMap::default(),
            status: match sent.approval {
                Some(approval) => PacketStatus::AwaitingApproval { until: approval.until },
                None if sent.opens_at > sent.sent_at => PacketStatus::CoolingOff { until: sent.opens_at },
                None => PacketStatus::Open,
            },
            closed_at: None,
            sent,
        };
        state.next_fen = state.draw_next();
        state
    }

    /// A packet rebuilt from its send, its opening (if its cooling-off ended) and its claims,
    /// each applied (and so checked against the draw) in order.
    ///
    /// # Errors
    ///
    /// As [`PacketState::apply`], for the first record that cannot happen.
    pub(crate) fn restore(
        sent: PacketSent,
        opened_at: Option<Timestamp>,
        claims: &[ClaimView],
    ) -> Result<PacketState, String> {
        let mut state = PacketState::open(sent);
        if let Some(at) = opened_at {
            let (packet, subject) = (state.id(), ApprovalId::Packet(state.id()));
            let opened = match state.sent.approval {
                // Who approved is in the journal (and the operation log), not the state.
                Some(_) => Record::Approved { subject, by: UserId(0), at },
                None => Record::PacketOpened { packet, at },
            };
            state.apply(&opened)?;
        }
        for c in claims {
            let record =
                Record::Claim { packet: state.id(), user: c.user, amount: c.amount, position: c.position, at: c.at };
            state.apply(&record)?;
        }
        Ok(state)
    }

    /// The packet's id.
    pub(crate) fn id(&self) -> PacketId {
        self.sent.spec.id
    }

    /// The send, as recorded.
    pub(crate) fn sent(&self) -> &PacketSent {
        &self.sent
    }

    /// Where it stands.
    pub(crate) fn status(&self) -> PacketStatus {
        self.status
    }

    /// Money in escrow.
    pub(crate) fn escrow(&self) -> Amount {
        Amount::fen(self.remaining_fen)
    }

    /// Claims in grab order.
    pub(crate) fn claims(&self) -> &[ClaimView] {
        &self.claims
    }

    /// When it sold out or expired.
    pub(crate) fn closed_at(&self) -> Option<Timestamp> {
        self.closed_at
    }

    /// Shares not yet taken.
    pub(crate) fn shares_left(&self) -> u32 {
        self.shares - self.claims.len() as u32
    }

    /// Whether it is open and its deadline has passed at `now`.
    pub(crate) fn is_due(&self, now: Timestamp) -> bool {
        self.status == PacketStatus::Open && now >= self.expires_at
    }

    /// When it opened, if it was held by a cooling-off that has ended (what a restart needs
    /// besides the send and the claims).
    pub(crate) fn opened_at(&self) -> Option<Timestamp> {
        self.opened_at
    }

    /// Its next deadline: the end of its cooling-off, or its expiry; none once closed.
    pub(crate) fn next_deadline(&self) -> Option<Timestamp> {
        match self.status {
            PacketStatus::CoolingOff { until } | PacketStatus::AwaitingApproval { until } => Some(until),
            PacketStatus::Open => Some(self.expires_at),
            _ => None,
        }
    }

    /// Decides whether its cooling-off ends at `now`; changes nothing.
    pub(crate) fn decide_open(&self, now: Timestamp) -> Opening {
        match self.status {
            PacketStatus::CoolingOff { until } if now >= until => {
                Opening::Open(Record::PacketOpened { packet: self.id(), at: now })
            }
            _ => Opening::Nothing,
        }
    }

    /// Decides a cancellation by `by` at `now` (after any due opening was applied); changes
    /// nothing.
    ///
    /// # Errors
    ///
    /// `NotSender`, `AlreadyCancelled` with the first refund, `TooLate` once it is open.
    pub(crate) fn decide_cancel(&self, by: UserId, now: Timestamp) -> Result<Record, CancelError> {
        if by != self.sent.spec.sender {
            return Err(CancelError::NotSender);
        }
        match self.status {
            PacketStatus::Cancelled { refunded } => Err(CancelError::AlreadyCancelled { refunded }),
            PacketStatus::CoolingOff { until } if now < until => {
                Ok(Record::PacketCancelled { packet: self.id(), refund: self.escrow(), at: now })
            }
            _ => Err(CancelError::TooLate),
        }
    }

    /// Decides a grab by `user`; changes nothing. `eligible` says whether the user may grab
    /// (see `roster::eligible`). A repeat grab is answered with the first result even if the
    /// member has left the group or the packet has closed since.
    ///
    /// # Errors
    ///
    /// In this order: `AlreadyGrabbed`, `NotEligible`, `Expired`, `SoldOut`.
    pub(crate) fn decide_grab(&self, user: UserId, eligible: bool, now: Timestamp) -> Result<Record, GrabError> {
        let first = self.claimed_by.get(&user).map(|&index| &self.claims[index as usize]);
        if let Some(refusal) = grab_refusal(first, eligible, self.status) {
            return Err(refusal);
        }
        debug_assert!(now < self.expires_at, "the actor expires a due packet before grabbing");
        let position = self.claims.len() as u32 + 1;
        Ok(Record::Claim { packet: self.id(), user, amount: Amount::fen(self.next_fen), position, at: now })
    }

    /// Decides what expiring at `now` does; changes nothing.
    /// Decides the rejection its deadline makes at `now`, if it is still waiting for approval
    /// and the deadline has passed; changes nothing.
    pub(crate) fn decide_approval_deadline(&self, now: Timestamp) -> Option<Record> {
        match self.status {
            PacketStatus::AwaitingApproval { until } if now >= until => Some(Record::Rejected {
                subject: ApprovalId::Packet(self.id()),
                by: None,
                reason: String::new(),
                at: now,
            }),
            _ => None,
        }
    }

    /// Decides an approval (`reject` false) or rejection by `by` at `now`, once a passed
    /// deadline has been applied; changes nothing. `is_admin` says whether a user is an admin
    /// of an org.
    ///
    /// # Errors
    ///
    /// `NotAwaitingApproval` (it never waited), `OwnSend` (the sender), `NotApprover`,
    /// `AlreadyApproved`, `AlreadyRejected`.
    pub(crate) fn decide_approval(
        &self,
        by: UserId,
        reject: Option<&str>,
        now: Timestamp,
        is_admin: impl Fn(crate::money::OrgId, UserId) -> bool,
    ) -> Result<Record, ApprovalError> {
        if let Some(refusal) = approval_refusal(&self.view(), by, is_admin) {
            return Err(refusal);
        }
        let subject = ApprovalId::Packet(self.id());
        Ok(match reject {
            None => Record::Approved { subject, by, at: now },
            Some(reason) => Record::Rejected { subject, by: Some(by), reason: reason.to_owned(), at: now },
        })
    }

    /// Decides an admin recall at `now` (the org's conditions were checked by the caller,
    /// `OrgBook::check_recall`); changes nothing. What is left in escrow goes back; a packet
    /// cooling off gives back its whole total.
    ///
    /// # Errors
    ///
    /// `AlreadyClosed` once it sold out, expired or was cancelled or recalled.
    pub(crate) fn decide_recall(
        &self,
        org: crate::money::OrgId,
        by: UserId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Record, RecallError> {
        if self.status.is_closed() {
            return Err(RecallError::AlreadyClosed);
        }
        let (packet, refund, reason) = (self.id(), self.escrow(), reason.to_owned());
        Ok(Record::PacketRecalled { packet, org, by, refund, reason, at: now })
    }

    pub(crate) fn decide_expiry(&self, now: Timestamp) -> Expiry {
        match self.status {
            PacketStatus::Expired { .. }
            | PacketStatus::Cancelled { .. }
            | PacketStatus::Recalled { .. }
            | PacketStatus::Rejected { .. } => Expiry::AlreadyExpired,
            // A packet still held opens (or is rejected) first; its expiry is later still.
            PacketStatus::CoolingOff { .. } | PacketStatus::AwaitingApproval { .. } => Expiry::NotDue,
            _ if now < self.expires_at => Expiry::NotDue,
            PacketStatus::SoldOut => Expiry::NothingLeft,
            PacketStatus::Open => Expiry::Refund(self.escrow()),
        }
    }

    /// Applies a record about this packet: a claim (the next share, to a member who has not
    /// claimed), its sold-out mark, or its expiry refund. Returns the credit the record
    /// implies: the share to the winner, or the refund to the sender.
    ///
    /// # Errors
    ///
    /// A description of why the record cannot happen to this state; nothing changes then.
    pub(crate) fn apply(&mut self, record: &Record) -> Result<Option<Credit>, String> {
        let id = self.id();
        let credit = match *record {
            Record::Claim { packet, user, amount, position, at } if packet == id => {
                self.check_claim(user, amount, position)?;
                self.take(ClaimView { user, amount, position, at });
                Some(Credit { user, amount })
            }
            Record::SoldOut { packet } if packet == id => {
                if self.status != PacketStatus::SoldOut {
                    return Err(format!("packet {id} recorded sold out with shares left"));
                }
                None
            }
            Record::Expired { packet, refund, at } if packet == id => {
                if self.status != PacketStatus::Open || refund != self.escrow() {
                    return Err(format!("packet {id}: refund {refund} with {} in escrow", self.escrow()));
                }
                Some(self.refund(PacketStatus::Expired { refunded: refund }, at))
            }
            Record::PacketOpened { packet, at } if packet == id => {
                if !matches!(self.status, PacketStatus::CoolingOff { .. }) {
                    return Err(format!("packet {id} opened while {:?}", self.status));
                }
                self.status = PacketStatus::Open;
                self.opened_at = Some(at);
                None
            }
            Record::Approved { subject: ApprovalId::Packet(packet), at, .. } if packet == id => {
                if !matches!(self.status, PacketStatus::AwaitingApproval { .. }) {
                    return Err(format!("packet {id} approved while {:?}", self.status));
                }
                self.expires_at = expiry_after_approval(&self.sent, at);
                self.status = PacketStatus::Open;
                self.opened_at = Some(at);
                None
            }
            Record::Rejected { subject: ApprovalId::Packet(packet), at, .. } if packet == id => {
                if !matches!(self.status, PacketStatus::AwaitingApproval { .. }) {
                    return Err(format!("packet {id} rejected while {:?}", self.status));
                }
                let refunded = self.escrow();
                Some(self.refund(PacketStatus::Rejected { refunded }, at))
            }
            Record::PacketRecalled { packet, refund, at, .. } if packet == id => {
                if self.status.is_closed() || refund != self.escrow() {
                    return Err(format!("packet {id}: recalled for {refund} while {:?}", self.status));
                }
                Some(self.refund(PacketStatus::Recalled { refunded: refund }, at))
            }
            Record::PacketCancelled { packet, refund, at } if packet == id => {
                if !matches!(self.status, PacketStatus::CoolingOff { .. }) || refund != self.escrow() {
                    return Err(format!("packet {id}: cancelled for {refund} while {:?}", self.status));
                }
                Some(self.refund(PacketStatus::Cancelled { refunded: refund }, at))
            }
            _ => return Err(format!("packet {id}: {record:?} is not about this packet")),
        };
        debug_assert_eq!(self.check(), Ok(()));
        Ok(credit)
    }

    /// Closes the packet with its escrow going back to the sender.
    fn refund(&mut self, status: PacketStatus, at: Timestamp) -> Credit {
        let refund = self.escrow();
        self.remaining_fen = 0;
        self.status = status;
        // Never before it was sent, even if the clock stepped back in between.
        self.closed_at = Some(at.max(self.sent.sent_at));
        self.rng = None;
        self.cut = None;
        Credit { user: self.sent.spec.sender, amount: refund }
    }

    fn check_claim(&self, user: UserId, amount: Amount, position: u32) -> Result<(), String> {
        let id = self.id();
        if self.status != PacketStatus::Open || self.claimed_by.contains_key(&user) {
            return Err(format!("packet {id}: claim {position} by {user} cannot happen"));
        }
        if position as usize != self.claims.len() + 1 {
            return Err(format!("packet {id}: claim at position {position} with {} claims", self.claims.len()));
        }
        if amount.as_fen() != self.next_fen {
            return Err(format!("packet {id}: claim {position} is {amount} but the draw gives {}", self.next()));
        }
        Ok(())
    }

    fn next(&self) -> Amount {
        Amount::fen(self.next_fen)
    }

    fn take(&mut self, claim: ClaimView) {
        self.remaining_fen -= claim.amount.as_fen();
        self.claimed_by.insert(claim.user, self.claims.len() as u32);
        self.claims.push(claim);
        if self.claims.len() as u32 == self.shares {
            assert_eq!(self.remaining_fen, 0, "the last share takes the rest");
            self.status = PacketStatus::SoldOut;
            // Never before it was sent, even if the clock stepped back in between: its
            // retention counts from then at the earliest.
            self.closed_at = Some(claim.at.max(self.sent.sent_at));
            self.rng = None;
            self.cut = None;
        }
        self.next_fen = self.draw_next();
    }

    /// The share the next claim takes (advancing a lucky packet's stream), zero when none is
    /// left.
    fn draw_next(&mut self) -> u64 {
        let left = self.shares_left();
        if left == 0 {
            return 0;
        }
        let position = self.claims.len();
        let amount = match (&self.sent.spec.split, self.rng.as_deref_mut()) {
            (Split::Lucky { draw: Draw::Shuffled, .. }, _) => {
                self.cut.as_ref().expect("an open shuffled packet keeps its shares")[position]
            }
            (Split::Lucky { .. }, Some(rng)) => split::draw(rng, self.remaining_fen, left, self.share_fen_max),
            (Split::Fixed { each, .. }, _) => each.as_fen(),
            (Split::Exclusive { amount, .. }, _) => amount.as_fen(),
            (Split::Lucky { .. }, None) => unreachable!("an open lucky packet keeps its stream"),
        };
        assert!(amount >= 1 && amount <= self.remaining_fen, "share {amount} outside escrow {}", self.remaining_fen);
        amount
    }

    /// The largest share, the earlier grab on a tie; only once sold out.
    pub(crate) fn best_luck(&self) -> Option<ClaimView> {
        if self.status != PacketStatus::SoldOut {
            return None;
        }
        // A strict `>` keeps the earlier claim on a tie.
        self.claims.iter().copied().reduce(|best, c| if c.amount > best.amount { c } else { best })
    }

    /// The packet as callers see it.
    pub(crate) fn view(&self) -> PacketView {
        let PacketSent { spec, seed, sent_at, opens_at, .. } = &self.sent;
        let expires_at = &self.expires_at;
        PacketView {
            id: spec.id,
            sender: spec.sender,
            group: spec.group,
            split: spec.split.clone(),
            greeting: spec.greeting.clone(),
            total: self.total,
            shares: self.shares,
            status: self.status,
            remaining: self.escrow(),
            shares_left: self.shares_left(),
            claims: self.claims.clone(),
            best_luck: self.best_luck(),
            sent_at: *sent_at,
            opens_at: *opens_at,
            approval: self.sent.approval,
            opened_at: self.opened_at,
            expires_at: *expires_at,
            closed_at: self.closed_at,
            seed: *seed,
        }
    }

    /// Checks the packet's invariants.
    ///
    /// # Errors
    ///
    /// A description of the first invariant that does not hold.
    pub(crate) fn check(&self) -> Result<(), String> {
        check_view(&self.view())
    }
}

/// Why a grab wins nothing, if it does not: the rule every grab answer follows, for a live
/// packet and a closed one alike. `first` is the member's earlier claim on the packet.
/// In this order: `AlreadyGrabbed` (a repeat gets the first result, even after the member
/// left the group or the packet closed), `NotEligible`, `Expired`, `SoldOut`.
pub(crate) fn grab_refusal(first: Option<&ClaimView>, eligible: bool, status: PacketStatus) -> Option<GrabError> {
    if let Some(first) = first {
        return Some(GrabError::AlreadyGrabbed { amount: first.amount, position: first.position });
    }
    if !eligible {
        return Some(GrabError::NotEligible);
    }
    match status {
        PacketStatus::CoolingOff { until } => Some(GrabError::NotOpenYet { opens_at: until }),
        PacketStatus::Expired { .. } => Some(GrabError::Expired),
        PacketStatus::SoldOut => Some(GrabError::SoldOut),
        PacketStatus::Cancelled { .. } => Some(GrabError::Cancelled),
        PacketStatus::Recalled { .. } => Some(GrabError::Recalled),
        PacketStatus::AwaitingApproval { until } => Some(GrabError::NotOpenYet { opens_at: until }),
        PacketStatus::Rejected { .. } => Some(GrabError::Rejected),
        PacketStatus::Open => None,
    }
}

/// When a packet approved at `at` expires: its expiry counts from the approval, shifted by the
/// wait (its send recorded the window as `expires_at - opens_at`).
pub(crate) fn expiry_after_approval(sent: &PacketSent, at: Timestamp) -> Timestamp {
    let window_ms = sent.expires_at.as_millis().saturating_sub(sent.opens_at.as_millis());
    Timestamp(at.max(sent.sent_at).as_millis().saturating_add(window_ms))
}

/// Why `by` cannot approve or reject the packet `view` describes, if they cannot: the rule
/// every answer follows, for a live packet and a closed one alike. In this order:
/// `NotAwaitingApproval`, `OwnSend`, `NotApprover`, then by what happened: `AlreadyRejected`,
/// `AlreadyApproved`, `Closed` (recalled while it waited).
pub(crate) fn approval_refusal(
    view: &PacketView,
    by: UserId,
    is_admin: impl Fn(crate::money::OrgId, UserId) -> bool,
) -> Option<ApprovalError> {
    let Some(approval) = view.approval else { return Some(ApprovalError::NotAwaitingApproval) };
    if by == view.sender {
        return Some(ApprovalError::OwnSend);
    }
    if !approval.approver.admits(by, is_admin) {
        return Some(ApprovalError::NotApprover { user: by });
    }
    match view.status {
        PacketStatus::AwaitingApproval { .. } => None,
        PacketStatus::Rejected { .. } => Some(ApprovalError::AlreadyRejected),
        _ if view.opened_at.is_some() => Some(ApprovalError::AlreadyApproved),
        _ => Some(ApprovalError::Closed),
    }
}

/// Checks a packet's invariants on its view (used for open and closed packets alike).
///
/// # Errors
///
/// A description of the first invariant that does not hold.
pub(crate) fn check_view(v: &PacketView) -> Result<(), String> {
    let id = v.id;
    let claimed: u64 = v.claims.iter().map(|c| c.amount.as_fen()).sum();
    let refunded = v.status.refunded().as_fen();
    let held = matches!(
        v.status,
        PacketStatus::CoolingOff { .. }
            | PacketStatus::Cancelled { .. }
            | PacketStatus::AwaitingApproval { .. }
            | PacketStatus::Rejected { .. }
    );
    if held && !v.claims.is_empty() {
        return Err(format!("packet {id}: claims while {:?}", v.status));
    }
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
    const DAY: u64 = 86_400;

    fn sent(split: Split, seed: u64) -> PacketSent {
        let spec =
            NewPacket { id: PacketId(1), sender: UserId(1), group: GroupId(1), split, greeting: "恭喜发财".into() };
        let expires_at = T0.plus_secs(DAY);
        PacketSent { spec, seed, sent_at: T0, expires_at, share_fen_max: CAP, opens_at: T0, day: 0, approval: None }
    }

    fn packet(split: Split) -> PacketState {
        PacketState::open(sent(split, 99))
    }

    /// Decides and applies a grab, as the packet actor does.
    fn grab(p: &mut PacketState, user: u64, eligible: bool) -> Result<ClaimView, GrabError> {
        let record = p.decide_grab(UserId(user), eligible, T0)?;
        let credit = p.apply(&record).unwrap().unwrap();
        let claim = *p.claims().last().unwrap();
        assert_eq!(credit, Credit { user: claim.user, amount: claim.amount });
        Ok(claim)
    }

    /// Decides and applies an expiry, as the packet actor does.
    fn expire(p: &mut PacketState, now: Timestamp) -> Expiry {
        let expiry = p.decide_expiry(now);
        if let Expiry::Refund(refund) = expiry {
            let credit = p.apply(&Record::Expired { packet: p.id(), refund, at: now }).unwrap();
            assert_eq!(credit, Some(Credit { user: UserId(1), amount: refund }));
        }
        expiry
    }

    #[test]
    fn lucky_packet_pays_its_seeded_shares_and_sells_out() {
        let mut p = packet(Split::lucky(Amount::yuan(10), 5));
        let expected = split::lucky_shares(1_000, 5, CAP, 99);
        for (i, want) in expected.iter().enumerate() {
            let claim = grab(&mut p, 10 + i as u64, true).unwrap();
            assert_eq!(claim.amount.as_fen(), *want);
            assert_eq!(claim.position, i as u32 + 1);
            assert_eq!(p.status() == PacketStatus::SoldOut, i == 4);
        }
        assert_eq!(grab(&mut p, 99, true), Err(GrabError::SoldOut));
        let best = p.best_luck().unwrap();
        assert_eq!(best.amount.as_fen(), *expected.iter().max().unwrap());
        p.apply(&Record::SoldOut { packet: p.id() }).unwrap();
        assert_eq!(expire(&mut p, T0.plus_secs(DAY)), Expiry::NothingLeft);
        p.check().unwrap();
    }

    #[test]
    fn repeat_grab_returns_first_result_even_when_ineligible_or_closed() {
        let mut p = packet(Split::Fixed { each: Amount::fen(7), shares: 2 });
        grab(&mut p, 5, true).unwrap();
        let again = Err(GrabError::AlreadyGrabbed { amount: Amount::fen(7), position: 1 });
        assert_eq!(grab(&mut p, 5, true), again);
        assert_eq!(grab(&mut p, 5, false), again);
        assert_eq!(expire(&mut p, T0.plus_secs(DAY)), Expiry::Refund(Amount::fen(7)));
        assert_eq!(grab(&mut p, 5, true), again);
        assert_eq!(p.shares_left(), 1);
    }

    #[test]
    fn ineligible_and_expired_grabs_change_nothing() {
        let mut p = packet(Split::Exclusive { to: UserId(3), amount: Amount::fen(500) });
        assert_eq!(grab(&mut p, 4, false), Err(GrabError::NotEligible));
        assert_eq!(p.escrow(), Amount::fen(500));
        assert!(p.view().claims.is_empty());
        assert_eq!(expire(&mut p, T0.plus_secs(DAY)), Expiry::Refund(Amount::fen(500)));
        assert_eq!(expire(&mut p, T0.plus_secs(DAY)), Expiry::AlreadyExpired);
        assert_eq!(grab(&mut p, 3, true), Err(GrabError::Expired));
        assert_eq!(p.status(), PacketStatus::Expired { refunded: Amount::fen(500) });
        p.check().unwrap();
    }

    #[test]
    fn best_luck_tie_goes_to_earlier_grab() {
        let mut p = packet(Split::Fixed { each: Amount::fen(3), shares: 3 });
        for u in [7, 8, 9] {
            grab(&mut p, u, true).unwrap();
        }
        assert_eq!(p.best_luck().unwrap().user, UserId(7));
    }

    #[test]
    fn restore_continues_the_draw_and_checks_claims() {
        let mut live = packet(Split::lucky(Amount::yuan(10), 5));
        let claims: Vec<ClaimView> = (0..3).map(|u| grab(&mut live, 10 + u, true).unwrap()).collect();
        let mut restored = PacketState::restore(live.sent().clone(), None, &claims).unwrap();
        assert_eq!(restored.view(), live.view());
        // The next draws match the packet that never stopped.
        assert_eq!(grab(&mut restored, 50, true), grab(&mut live, 50, true));
        let mut forged = claims.clone();
        forged[1].amount = Amount::fen(forged[1].amount.as_fen() + 1);
        let refused = PacketState::restore(live.sent().clone(), None, &forged).unwrap_err();
        assert!(refused.contains("draw gives"), "{refused}");
    }

    #[test]
    fn apply_refuses_what_cannot_happen_and_changes_nothing() {
        let mut p = packet(Split::Fixed { each: Amount::fen(3), shares: 2 });
        grab(&mut p, 7, true).unwrap();
        let before = p.view();
        let claim = |user, position, fen| Record::Claim {
            packet: PacketId(1),
            user: UserId(user),
            amount: Amount::fen(fen),
            position,
            at: T0,
        };
        assert!(p.apply(&claim(7, 2, 3)).unwrap_err().contains("cannot happen"));
        assert!(p.apply(&claim(8, 3, 3)).unwrap_err().contains("position"));
        assert!(p.apply(&claim(8, 2, 4)).unwrap_err().contains("draw gives"));
        assert!(p.apply(&Record::SoldOut { packet: PacketId(1) }).unwrap_err().contains("shares left"));
        let wrong_refund = Record::Expired { packet: PacketId(1), refund: Amount::fen(6), at: T0 };
        assert!(p.apply(&wrong_refund).unwrap_err().contains("refund"));
        let other = Record::SoldOut { packet: PacketId(2) };
        assert!(p.apply(&other).unwrap_err().contains("not about this packet"));
        assert_eq!(p.view(), before);
    }

    #[test]
    fn expiry_waits_for_the_deadline() {
        let mut p = packet(Split::Fixed { each: Amount::fen(3), shares: 2 });
        assert_eq!(expire(&mut p, T0), Expiry::NotDue);
        assert_eq!(p.status(), PacketStatus::Open);
        assert_eq!(expire(&mut p, T0.plus_secs(DAY)), Expiry::Refund(Amount::fen(6)));
    }

    #[test]
    fn due_only_when_open_and_past_deadline() {
        let mut p = packet(Split::Fixed { each: Amount::fen(3), shares: 1 });
        assert!(!p.is_due(T0));
        assert!(p.is_due(T0.plus_secs(DAY)));
        grab(&mut p, 1, true).unwrap();
        assert!(!p.is_due(T0.plus_secs(DAY)));
    }

    #[test]
    fn check_catches_broken_views() {
        let mut p = packet(Split::Fixed { each: Amount::fen(3), shares: 2 });
        grab(&mut p, 1, true).unwrap();
        let mut v = p.view();
        v.remaining = Amount::fen(4);
        assert!(check_view(&v).is_err());
        let mut v = p.view();
        v.claims.push(v.claims[0]);
        v.shares_left = 0;
        v.remaining = Amount::ZERO;
        assert!(check_view(&v).unwrap_err().contains("paid twice"));
    }

    #[test]
    fn cooling_off_holds_then_opens_once_or_is_cancelled_by_its_sender() {
        let held = |opens_in_secs| {
            let mut sent = sent(Split::Fixed { each: Amount::fen(3), shares: 2 }, 1);
            sent.opens_at = T0.plus_secs(opens_in_secs);
            sent.expires_at = sent.opens_at.plus_secs(DAY);
            PacketState::open(sent)
        };
        let mut p = held(300);
        let until = T0.plus_secs(300);
        assert_eq!(p.status(), PacketStatus::CoolingOff { until });
        assert_eq!(grab(&mut p, 5, true), Err(GrabError::NotOpenYet { opens_at: until }));
        assert_eq!(p.decide_open(T0.plus_secs(299)), Opening::Nothing);
        assert_eq!(p.decide_cancel(UserId(2), T0), Err(CancelError::NotSender));
        assert_eq!(p.next_deadline(), Some(until));
        assert_eq!(expire(&mut p, T0.plus_secs(2 * DAY)), Expiry::NotDue);
        let Opening::Open(opened) = p.decide_open(until) else { panic!("due") };
        assert_eq!(p.apply(&opened), Ok(None));
        assert!(p.apply(&opened).unwrap_err().contains("opened while"));
        assert_eq!(p.decide_cancel(UserId(1), until), Err(CancelError::TooLate));
        assert_eq!(grab(&mut p, 5, true).unwrap().amount, Amount::fen(3));
        assert_eq!(p.next_deadline(), Some(until.plus_secs(DAY)));

        let mut q = held(300);
        let cancel = q.decide_cancel(UserId(1), T0.plus_secs(10)).unwrap();
        let credit = q.apply(&cancel).unwrap();
        assert_eq!(credit, Some(Credit { user: UserId(1), amount: Amount::fen(6) }));
        assert_eq!(q.status(), PacketStatus::Cancelled { refunded: Amount::fen(6) });
        assert_eq!(q.decide_cancel(UserId(1), T0), Err(CancelError::AlreadyCancelled { refunded: Amount::fen(6) }));
        assert_eq!(grab(&mut q, 5, true), Err(GrabError::Cancelled));
        assert_eq!(q.decide_open(until), Opening::Nothing);
        assert!(q.status().is_closed());
        q.check().unwrap();
        // Restored with its opening, a packet continues as the live one.
        let r = PacketState::restore(p.sent().clone(), p.opened_at(), p.claims()).unwrap();
        assert_eq!(r.view(), p.view());
    }
}
