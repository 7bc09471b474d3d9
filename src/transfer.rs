//! A transfer's state and its rules, as plain data (rules 13, 14 and 17 of the design). The
//! transfer shard (`transfer_shard.rs`) owns one of these per transfer and replay owns one for
//! every transfer; both change it only through [`TransferState::apply`].
//!
//! ```text
//!            send (debit)
//!                 │
//!        ┌────────┴──────────┐ arrives_at > sent_at (a delay, or the sender's cooling-off)
//!        ▼                   ▼
//!  AwaitingAcceptance ◀── Held (CoolingOff, then InTransit) ──recall──▶ Recalled
//!        │      arrived at arrives_at
//!        ├─accept──▶ Accepted      (credits the receiver)
//!        ├─decline─▶ Declined      (credits the sender)
//!        └─accept_until passes──▶ Returned (credits the sender)
//! ```
//!
//! Every deadline is fixed when the transfer is sent ([`TransferSent`]), and every move is a
//! record: arrival is recorded, not read off the clock, so that a clock stepping back can
//! never let a recall follow an arrival the receiver was told of.
//!
//! Decide → record → apply: [`TransferState::decide_due`] says what a passed deadline does,
//! [`TransferState::decide`] what a request does (the caller applies due deadlines first, so a
//! request racing a deadline meets the deadline's outcome), and [`TransferState::apply`]
//! applies a record, refusing one that cannot happen, and says which wallet it credits.

use crate::clock::Timestamp;
use crate::error::{ApprovalError, TransferError};
use crate::ledger::Credit;
use crate::limits::Limits;
use crate::money::{Amount, TransferId, UserId};
use crate::record::{ApprovalId, Arrival, NewTransfer, Record, TransferOutcome, TransferSent, TransferStatus};

/// A transfer as callers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TransferView {
    /// The transfer.
    pub id: TransferId,
    /// Who sent it.
    pub from: UserId,
    /// Who receives it.
    pub to: UserId,
    /// How much.
    pub amount: Amount,
    /// At once or delayed, as the sender asked.
    pub arrival: Arrival,
    /// The sender's note.
    pub note: String,
    /// Where it stands.
    pub status: TransferStatus,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// The end of the sender's cooling-off (`sent_at` when none applied).
    pub cooling_until: Timestamp,
    /// When it arrives (arrived).
    pub arrives_at: Timestamp,
    /// When it returns to the sender unless accepted.
    pub accept_until: Timestamp,
    /// If it waits (waited) for the sender's guardian: who, and until when.
    pub approval: Option<crate::record::Approval>,
    /// When it settled; it is kept (answering repeats and queries) for
    /// `settled_transfer_retention_secs` from then.
    pub settled_at: Option<Timestamp>,
    /// On the answer to an accept, recall or decline whose wallet to credit (the receiver's,
    /// or the sender's) is in another partition: the remittance carrying the amount there.
    /// Await it in that partition ([`crate::Engine::await_remittance`]) before reading that
    /// balance.
    #[cfg_attr(feature = "serde", serde(default))]
    pub remitted: Option<crate::record::Remittance>,
}

/// What a party asks of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// The sender takes it back before it arrives.
    Recall,
    /// The receiver takes it.
    Accept,
    /// The receiver sends it back.
    Decline,
}

impl Action {
    fn outcome(self) -> TransferOutcome {
        match self {
            Action::Recall => TransferOutcome::Recalled,
            Action::Accept => TransferOutcome::Accepted,
            Action::Decline => TransferOutcome::Declined,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for the sender's guardian: the sender may recall it.
    AwaitingApproval,
    /// Cooling off or in transit: the sender may recall it.
    Held,
    /// Arrived: the receiver may accept or decline it.
    Awaiting,
    Settled(TransferOutcome),
}

/// A transfer's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TransferState {
    sent: TransferSent,
    stage: Stage,
    /// When it arrives and when it returns: as sent, or shifted by the wait for approval.
    arrives_at: Timestamp,
    accept_until: Timestamp,
    approved_at: Option<Timestamp>,
    arrived_at: Option<Timestamp>,
    settled_at: Option<Timestamp>,
}

impl TransferState {
    /// The state of a transfer just sent (and debited).
    pub(crate) fn open(sent: TransferSent) -> TransferState {
        let stage = match sent.approval {
            Some(_) => Stage::AwaitingApproval,
            None if sent.arrives_at > sent.sent_at => Stage::Held,
            None => Stage::Awaiting,
        };
        let (arrives_at, accept_until) = (sent.arrives_at, sent.accept_until);
        TransferState { sent, stage, arrives_at, accept_until, approved_at: None, arrived_at: None, settled_at: None }
    }

    /// When its guardian approved it, if it waited for approval.
    pub(crate) fn approved_at(&self) -> Option<Timestamp> {
        self.approved_at
    }

    /// The transfer's id.
    pub(crate) fn id(&self) -> TransferId {
        self.sent.spec.id
    }

    /// The send, as recorded.
    pub(crate) fn sent(&self) -> &TransferSent {
        &self.sent
    }

    /// What the sender asked for.
    pub(crate) fn spec(&self) -> &NewTransfer {
        &self.sent.spec
    }

    /// The money it holds until it settles; zero once settled.
    pub(crate) fn pending(&self) -> Amount {
        match self.stage {
            Stage::Settled(_) => Amount::ZERO,
            _ => self.sent.spec.amount,
        }
    }

    /// When it arrived, if it waited to (what a restart needs besides the send).
    pub(crate) fn arrived_at(&self) -> Option<Timestamp> {
        self.arrived_at
    }

    /// How and when it settled.
    pub(crate) fn settled(&self) -> Option<(TransferOutcome, Timestamp)> {
        match self.stage {
            Stage::Settled(outcome) => Some((outcome, self.settled_at.expect("a settled transfer has a time"))),
            _ => None,
        }
    }

    /// Where it stands at `now` (a held transfer is cooling off, then in transit).
    pub(crate) fn status(&self, now: Timestamp) -> TransferStatus {
        match self.stage {
            Stage::AwaitingApproval => {
                TransferStatus::AwaitingApproval { until: self.sent.approval.expect("it waits for approval").until }
            }
            Stage::Held if now < self.sent.cooling_until => {
                TransferStatus::CoolingOff { until: self.sent.cooling_until }
            }
            Stage::Held => TransferStatus::InTransit { arrives_at: self.arrives_at },
            Stage::Awaiting => TransferStatus::AwaitingAcceptance { until: self.accept_until },
            Stage::Settled(outcome) => outcome.into(),
        }
    }

    /// Its next deadline: arrival, then the end of acceptance; none once settled.
    pub(crate) fn next_deadline(&self) -> Option<Timestamp> {
        match self.stage {
            Stage::AwaitingApproval => self.sent.approval.map(|a| a.until),
            Stage::Held => Some(self.arrives_at),
            Stage::Awaiting => Some(self.accept_until),
            Stage::Settled(_) => None,
        }
    }

    /// Decides what a passed deadline does at `now`: it arrives, or it returns to the sender.
    /// Changes nothing; `None` when no deadline has passed.
    pub(crate) fn decide_due(&self, now: Timestamp) -> Option<Record> {
        let transfer = self.id();
        match self.stage {
            Stage::AwaitingApproval if self.sent.approval.is_some_and(|a| now >= a.until) => Some(Record::Rejected {
                subject: ApprovalId::Transfer(transfer),
                by: None,
                reason: String::new(),
                at: now,
            }),
            Stage::Held if now >= self.arrives_at => Some(Record::TransferArrived { transfer, at: now }),
            Stage::Awaiting if now >= self.accept_until => {
                Some(Record::TransferSettled { transfer, outcome: TransferOutcome::Returned, at: now })
            }
            _ => None,
        }
    }

    /// Decides what `action` by `by` does at `now`, once every passed deadline has been
    /// applied; changes nothing.
    ///
    /// # Errors
    ///
    /// `NotSender` / `NotReceiver`; `NotArrived` (accept or decline before arrival);
    /// `AlreadySettled` when this very outcome happened before; `TooLate` when the transfer
    /// moved on otherwise (arrived before a recall, settled before an accept).
    pub(crate) fn decide(&self, action: Action, by: UserId, now: Timestamp) -> Result<Record, TransferError> {
        let spec = &self.sent.spec;
        match action {
            Action::Recall if by != spec.from => return Err(TransferError::NotSender),
            Action::Accept | Action::Decline if by != spec.to => return Err(TransferError::NotReceiver),
            _ => {}
        }
        let fresh = match (self.stage, action) {
            (Stage::Settled(outcome), _) if outcome == action.outcome() => {
                return Err(TransferError::AlreadySettled { status: outcome.into() })
            }
            (Stage::Held | Stage::AwaitingApproval, Action::Recall)
            | (Stage::Awaiting, Action::Accept | Action::Decline) => true,
            (Stage::Held | Stage::AwaitingApproval, _) => {
                return Err(TransferError::NotArrived { arrives_at: self.arrives_at })
            }
            _ => false,
        };
        if !fresh {
            return Err(TransferError::TooLate { status: self.status(now) });
        }
        Ok(Record::TransferSettled { transfer: self.id(), outcome: action.outcome(), at: now })
    }

    /// Applies a record about this transfer: its arrival or its settlement. Returns the
    /// credit a settlement implies: the amount to the receiver if accepted, else back to the
    /// sender.
    ///
    /// # Errors
    ///
    /// A description of why the record cannot happen to this state; nothing changes then.
    pub(crate) fn apply(&mut self, record: &Record) -> Result<Option<Credit>, String> {
        let id = self.id();
        match *record {
            Record::TransferArrived { transfer, at } if transfer == id => {
                if self.stage != Stage::Held {
                    return Err(format!("transfer {id} arrived while {:?}", self.stage));
                }
                self.stage = Stage::Awaiting;
                self.arrived_at = Some(at);
                Ok(None)
            }
            Record::Approved { subject: ApprovalId::Transfer(transfer), at, .. } if transfer == id => {
                if self.stage != Stage::AwaitingApproval {
                    return Err(format!("transfer {id} approved while {:?}", self.stage));
                }
                // Its arrival and acceptance count from the approval: shifted by the wait.
                let at = at.max(self.sent.sent_at);
                let sent_ms = self.sent.sent_at.as_millis();
                let shift =
                    |t: Timestamp| Timestamp(at.as_millis().saturating_add(t.as_millis().saturating_sub(sent_ms)));
                (self.arrives_at, self.accept_until) = (shift(self.sent.arrives_at), shift(self.sent.accept_until));
                self.stage = if self.arrives_at > at { Stage::Held } else { Stage::Awaiting };
                self.approved_at = Some(at);
                Ok(None)
            }
            Record::Rejected { subject: ApprovalId::Transfer(transfer), at, .. } if transfer == id => {
                if self.stage != Stage::AwaitingApproval {
                    return Err(format!("transfer {id} rejected while {:?}", self.stage));
                }
                Ok(Some(self.settle(TransferOutcome::Rejected, at)))
            }
            Record::TransferSettled { transfer, outcome, at } if transfer == id => {
                let allowed = match outcome {
                    TransferOutcome::Recalled => matches!(self.stage, Stage::Held | Stage::AwaitingApproval),
                    TransferOutcome::Rejected => false,
                    _ => self.stage == Stage::Awaiting,
                };
                if !allowed {
                    return Err(format!("transfer {id} {outcome:?} while {:?}", self.stage));
                }
                Ok(Some(self.settle(outcome, at)))
            }
            _ => Err(format!("transfer {id}: {record:?} is not about this transfer")),
        }
    }

    /// Settles it: the amount to the receiver if accepted, else back to the sender.
    fn settle(&mut self, outcome: TransferOutcome, at: Timestamp) -> Credit {
        self.stage = Stage::Settled(outcome);
        // Never before it was sent, even if the clock stepped back in between: its retention
        // counts from then at the earliest.
        self.settled_at = Some(at.max(self.sent.sent_at));
        let spec = &self.sent.spec;
        let user = if outcome == TransferOutcome::Accepted { spec.to } else { spec.from };
        Credit { user, amount: spec.amount }
    }

    /// Decides an approval (`reject` none) or rejection by `by` at `now`, once a passed
    /// deadline has been applied; changes nothing.
    ///
    /// # Errors
    ///
    /// `NotAwaitingApproval`, `OwnSend`, `NotApprover`, `AlreadyApproved`, `AlreadyRejected`.
    pub(crate) fn decide_approval(
        &self,
        by: UserId,
        reject: Option<&str>,
        now: Timestamp,
        is_admin: impl Fn(crate::money::OrgId, UserId) -> bool,
    ) -> Result<Record, ApprovalError> {
        let Some(approval) = self.sent.approval else { return Err(ApprovalError::NotAwaitingApproval) };
        if by == self.sent.spec.from {
            return Err(ApprovalError::OwnSend);
        }
        if !approval.approver.admits(by, is_admin) {
            return Err(ApprovalError::NotApprover { user: by });
        }
        let subject = ApprovalId::Transfer(self.id());
        match (self.stage, reject) {
            (Stage::AwaitingApproval, None) => Ok(Record::Approved { subject, by, at: now }),
            (Stage::AwaitingApproval, Some(reason)) => {
                Ok(Record::Rejected { subject, by: Some(by), reason: reason.to_owned(), at: now })
            }
            (Stage::Settled(TransferOutcome::Rejected), _) => Err(ApprovalError::AlreadyRejected),
            // Recalled by its sender while it waited: there is nothing left to decide.
            (Stage::Settled(TransferOutcome::Recalled), _) if self.approved_at.is_none() => Err(ApprovalError::Closed),
            _ => Err(ApprovalError::AlreadyApproved),
        }
    }

    /// The transfer as callers see it at `now`.
    pub(crate) fn view(&self, now: Timestamp) -> TransferView {
        let TransferSent { spec, sent_at, cooling_until, .. } = &self.sent;
        let (arrives_at, accept_until) = (&self.arrives_at, &self.accept_until);
        TransferView {
            id: spec.id,
            from: spec.from,
            to: spec.to,
            amount: spec.amount,
            arrival: spec.arrival,
            note: spec.note.clone(),
            status: self.status(now),
            sent_at: *sent_at,
            cooling_until: *cooling_until,
            arrives_at: *arrives_at,
            accept_until: *accept_until,
            approval: self.sent.approval,
            settled_at: self.settled_at,
            remitted: None,
        }
    }

    /// A transfer rebuilt from its send, its arrival and its settlement.
    ///
    /// # Errors
    ///
    /// As [`TransferState::apply`].
    pub(crate) fn restore(
        sent: TransferSent,
        approved_at: Option<Timestamp>,
        arrived_at: Option<Timestamp>,
        settled: Option<(TransferOutcome, Timestamp)>,
    ) -> Result<TransferState, String> {
        let mut state = TransferState::open(sent);
        let transfer = state.id();
        if let Some(at) = approved_at {
            // Who approved is in the journal, not the state.
            state.apply(&Record::Approved { subject: ApprovalId::Transfer(transfer), by: UserId(0), at })?;
        }
        if let Some((TransferOutcome::Rejected, at)) = settled {
            let rejected =
                Record::Rejected { subject: ApprovalId::Transfer(transfer), by: None, reason: String::new(), at };
            state.apply(&rejected)?;
            return Ok(state);
        }
        if let Some(at) = arrived_at {
            state.apply(&Record::TransferArrived { transfer, at })?;
        }
        if let Some((outcome, at)) = settled {
            state.apply(&Record::TransferSettled { transfer, outcome, at })?;
        }
        Ok(state)
    }
}

/// Checks a new transfer against the limits; changes nothing.
///
/// # Errors
///
/// `ZeroAmount`, `OverLimit`, `ToSelf`, `InvalidDelay`, `NoteTooLong`.
pub(crate) fn validate(spec: &NewTransfer, limits: &Limits) -> Result<(), TransferError> {
    if spec.amount.is_zero() {
        return Err(TransferError::ZeroAmount);
    }
    if spec.amount.as_fen() > limits.transfer_fen_max {
        return Err(TransferError::OverLimit { max: Amount::fen(limits.transfer_fen_max) });
    }
    if spec.from == spec.to {
        return Err(TransferError::ToSelf);
    }
    if let Arrival::Delayed { secs } = spec.arrival {
        if secs == 0 || secs > limits.transfer_delay_secs_max {
            return Err(TransferError::InvalidDelay { secs, max_secs: limits.transfer_delay_secs_max });
        }
    }
    if spec.note.len() > limits.transfer_note_bytes_max {
        return Err(TransferError::NoteTooLong { bytes: spec.note.len(), max: limits.transfer_note_bytes_max });
    }
    Ok(())
}

/// The deadlines of a transfer sent at `now` with `arrival`, after a cooling-off ending at
/// `cooling_until` (`now` when none applies): `(arrives_at, accept_until)`. The delay counts
/// from the end of the cooling-off, as a packet's expiry counts from its opening.
pub(crate) fn deadlines(arrival: Arrival, cooling_until: Timestamp, accept_secs: u64) -> (Timestamp, Timestamp) {
    let arrives_at = match arrival {
        Arrival::Instant => cooling_until,
        Arrival::Delayed { secs } => cooling_until.plus_secs(secs),
    };
    (arrives_at, arrives_at.plus_secs(accept_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp(1_000_000);
    const HOUR: u64 = 3_600;
    const DAY: u64 = 86_400;

    fn transfer(arrival: Arrival, cooling_secs: u64) -> TransferState {
        let cooling_until = T0.plus_secs(cooling_secs);
        let (arrives_at, accept_until) = deadlines(arrival, cooling_until, DAY);
        let spec = NewTransfer {
            org: None,
            id: TransferId(9),
            from: UserId(1),
            to: UserId(2),
            amount: Amount::yuan(300),
            arrival,
            note: "房租".into(),
        };
        let approval = None;
        TransferState::open(TransferSent {
            spec,
            sent_at: T0,
            day: 0,
            cooling_until,
            arrives_at,
            accept_until,
            approval,
        })
    }

    /// Applies what is due, then decides and applies `action`, as the shard does.
    fn act(t: &mut TransferState, action: Action, by: u64, now: Timestamp) -> Result<Credit, TransferError> {
        while let Some(due) = t.decide_due(now) {
            t.apply(&due).unwrap();
        }
        let record = t.decide(action, UserId(by), now)?;
        Ok(t.apply(&record).unwrap().expect("a settlement credits"))
    }

    #[test]
    fn an_instant_transfer_awaits_its_receiver_and_is_accepted_once() {
        let mut t = transfer(Arrival::Instant, 0);
        assert_eq!(t.status(T0), TransferStatus::AwaitingAcceptance { until: T0.plus_secs(DAY) });
        assert_eq!(act(&mut t, Action::Recall, 1, T0), Err(TransferError::TooLate { status: t.status(T0) }));
        assert_eq!(act(&mut t, Action::Accept, 1, T0), Err(TransferError::NotReceiver));
        assert_eq!(act(&mut t, Action::Accept, 2, T0), Ok(Credit { user: UserId(2), amount: Amount::yuan(300) }));
        let settled = TransferStatus::Accepted;
        assert_eq!(act(&mut t, Action::Accept, 2, T0), Err(TransferError::AlreadySettled { status: settled }));
        assert_eq!(act(&mut t, Action::Decline, 2, T0), Err(TransferError::TooLate { status: settled }));
        assert_eq!(t.pending(), Amount::ZERO);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_delayed_transfer_can_be_recalled_until_it_arrives() {
        let mut t = transfer(Arrival::Delayed { secs: 2 * HOUR }, 0);
        let arrives_at = T0.plus_secs(2 * HOUR);
        assert_eq!(t.status(T0), TransferStatus::InTransit { arrives_at });
        assert_eq!(act(&mut t, Action::Accept, 2, T0), Err(TransferError::NotArrived { arrives_at }));
        assert_eq!(act(&mut t, Action::Recall, 2, T0), Err(TransferError::NotSender));
        let mut late = t.clone();
        assert_eq!(act(&mut t, Action::Recall, 1, T0), Ok(Credit { user: UserId(1), amount: Amount::yuan(300) }));
        let recalled = TransferError::AlreadySettled { status: TransferStatus::Recalled };
        assert_eq!(act(&mut t, Action::Recall, 1, T0), Err(recalled));
        // At the instant it arrives, the arrival wins the race with the recall.
        let awaiting = TransferStatus::AwaitingAcceptance { until: arrives_at.plus_secs(DAY) };
        assert_eq!(act(&mut late, Action::Recall, 1, arrives_at), Err(TransferError::TooLate { status: awaiting }));
        assert_eq!(late.arrived_at(), Some(arrives_at));
    }

    #[test]
    fn an_unaccepted_transfer_returns_once_and_a_late_accept_hears_it() {
        let mut t = transfer(Arrival::Delayed { secs: DAY }, 300);
        assert_eq!(t.status(T0), TransferStatus::CoolingOff { until: T0.plus_secs(300) });
        let arrives_at = T0.plus_secs(300 + DAY);
        assert_eq!(t.status(T0.plus_secs(300)), TransferStatus::InTransit { arrives_at });
        assert_eq!(
            t.decide_due(arrives_at.plus_secs(DAY - 1)).unwrap(),
            Record::TransferArrived { transfer: TransferId(9), at: arrives_at.plus_secs(DAY - 1) }
        );
        let end = arrives_at.plus_secs(DAY);
        let returned = TransferError::TooLate { status: TransferStatus::Returned };
        assert_eq!(act(&mut t, Action::Accept, 2, end), Err(returned));
        assert_eq!(t.settled(), Some((TransferOutcome::Returned, end)));
        assert_eq!(t.decide_due(end.plus_secs(DAY)), None);
        // Restored from its records, it is the same transfer.
        let back = TransferState::restore(t.sent().clone(), t.approved_at(), t.arrived_at(), t.settled()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn apply_refuses_what_cannot_happen_and_changes_nothing() {
        let mut t = transfer(Arrival::Instant, 0);
        let before = t.clone();
        let transfer = TransferId(9);
        assert!(t.apply(&Record::TransferArrived { transfer, at: T0 }).unwrap_err().contains("arrived while"));
        let recall = Record::TransferSettled { transfer, outcome: TransferOutcome::Recalled, at: T0 };
        assert!(t.apply(&recall).unwrap_err().contains("Recalled while"));
        let other = Record::TransferArrived { transfer: TransferId(8), at: T0 };
        assert!(t.apply(&other).unwrap_err().contains("not about this transfer"));
        assert_eq!(t, before);
    }
}
