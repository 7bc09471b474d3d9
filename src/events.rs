//! Events: what happened, for subscribers (a chat server pushes them to members).
//!
//! Events are published after the journal made their change durable, from the completion of
//! that change, so a subscriber never hears of something a crash could undo. Completions run
//! in journal order, so the events of one packet arrive in the order they happened: sent, then
//! each grab by position, then sold out or expired. An event is published before the reply to
//! the request that caused it, so whatever a caller does after hearing back comes later in the
//! stream.
//!
//! Events that concern a packet carry its group, so a chat server can fan each out to one
//! group's members without a second lookup; [`Event::group`] reads it.
//!
//! Limits: at most `subscribers_max` subscribers; each buffers `event_buffer_len` events, and
//! one that falls further behind is told how many it missed ([`EventsError::Lagged`]) rather
//! than holding the engine back or growing without bound. While nobody subscribes, publishing
//! costs one atomic load: the grab path takes no shared lock for events nobody reads.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use thiserror::Error;
use tokio::sync::{broadcast, watch};

use crate::clock::Timestamp;
use crate::money::{Amount, GroupId, OpId, PacketId, TransferId, UserId};
use crate::packet::PacketView;
use crate::record::{ApprovalId, Approver, Arrival, TransferOutcome, TransferStatus};
use crate::split::Split;

/// Something that happened in the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Event {
    /// A packet was sent and can be grabbed.
    PacketSent {
        /// The packet.
        packet: PacketId,
        /// Who sent it.
        sender: UserId,
        /// Its group.
        group: GroupId,
        /// How it divides: lucky, fixed or exclusive, with its amounts.
        split: Split,
        /// The greeting shown with it.
        greeting: String,
        /// Its total.
        total: Amount,
        /// Its shares.
        shares: u32,
        /// When it expires.
        expires_at: Timestamp,
    },
    /// A member won a share.
    Grabbed {
        /// The packet.
        packet: PacketId,
        /// Its group.
        group: GroupId,
        /// The winner.
        user: UserId,
        /// The share.
        amount: Amount,
        /// 1 for the first share.
        position: u32,
        /// Shares still in the packet.
        shares_left: u32,
    },
    /// The last share was taken.
    SoldOut {
        /// The packet.
        packet: PacketId,
        /// Its group.
        group: GroupId,
        /// The member with the largest share (the earlier grab on a tie).
        best_luck: UserId,
        /// That share.
        best_amount: Amount,
    },
    /// The packet expired and its remainder went back to the sender.
    Expired {
        /// The packet.
        packet: PacketId,
        /// Its group.
        group: GroupId,
        /// Who was refunded.
        sender: UserId,
        /// How much.
        refunded: Amount,
    },
    /// A packet was sent above its sender's cooling-off threshold: it is held until `until`
    /// (only the sender needs to know; the group hears `PacketOpened` when it opens).
    PacketCooling {
        /// The packet.
        packet: PacketId,
        /// Who sent it (and may cancel it until `until`).
        sender: UserId,
        /// Its group.
        group: GroupId,
        /// Its total.
        total: Amount,
        /// When it opens.
        until: Timestamp,
    },
    /// A packet's cooling-off ended: it can be grabbed now. Carries what the group needs to
    /// show it, as `PacketSent` does for a packet that opened at once.
    PacketOpened {
        /// The packet.
        packet: PacketId,
        /// Who sent it.
        sender: UserId,
        /// Its group.
        group: GroupId,
        /// How it divides.
        split: Split,
        /// The greeting shown with it.
        greeting: String,
        /// Its total.
        total: Amount,
        /// Its shares.
        shares: u32,
        /// When it expires.
        expires_at: Timestamp,
    },
    /// The sender cancelled a packet during its cooling-off (禁止领取); its total went back.
    PacketCancelled {
        /// The packet.
        packet: PacketId,
        /// Its group.
        group: GroupId,
        /// Who was refunded.
        sender: UserId,
        /// How much.
        refunded: Amount,
    },
    /// An admin of the packet's org recalled its unclaimed remainder; it went back to the
    /// sender (claimed shares stand).
    PacketRecalled {
        /// The packet.
        packet: PacketId,
        /// Its group.
        group: GroupId,
        /// Who was refunded.
        sender: UserId,
        /// The admin.
        by: UserId,
        /// How much.
        refunded: Amount,
        /// Why, as the admin said.
        reason: String,
    },
    /// A send waits for a second person's approval (the approver is in its view); nobody may
    /// grab it, or receive it, until then.
    AwaitingApproval {
        /// The send.
        subject: ApprovalId,
        /// Who sent it.
        sender: UserId,
        /// Who may approve it.
        approver: Approver,
        /// How much.
        amount: Amount,
        /// Rejected, refunding the sender, if not approved by then.
        until: Timestamp,
    },
    /// A send waiting for approval was approved.
    Approved {
        /// The send.
        subject: ApprovalId,
        /// Who sent it.
        sender: UserId,
        /// Who approved it.
        by: UserId,
    },
    /// A send waiting for approval was rejected (by its approver, or at the deadline when `by`
    /// is `None`); its money went back to the sender.
    Rejected {
        /// The send.
        subject: ApprovalId,
        /// Who sent it (and was refunded).
        sender: UserId,
        /// Who rejected it.
        by: Option<UserId>,
        /// Why, as the approver said.
        reason: String,
        /// The refund.
        refunded: Amount,
    },
    /// A transfer was sent: the sender was debited.
    TransferSent {
        /// The transfer.
        transfer: TransferId,
        /// The sender.
        from: UserId,
        /// The receiver.
        to: UserId,
        /// How much.
        amount: Amount,
        /// At once or delayed.
        arrival: Arrival,
        /// The sender's note.
        note: String,
        /// Where it stands: cooling off, in transit, or awaiting acceptance.
        status: TransferStatus,
    },
    /// A transfer reached its receiver, who may accept or decline it until `accept_until`.
    TransferArrived {
        /// The transfer.
        transfer: TransferId,
        /// The sender.
        from: UserId,
        /// The receiver.
        to: UserId,
        /// How much.
        amount: Amount,
        /// When it returns to the sender unless accepted.
        accept_until: Timestamp,
    },
    /// A transfer settled: accepted (the receiver was credited) or declined, recalled or
    /// returned (the sender was credited).
    TransferSettled {
        /// The transfer.
        transfer: TransferId,
        /// The sender.
        from: UserId,
        /// The receiver.
        to: UserId,
        /// How much.
        amount: Amount,
        /// How it settled.
        outcome: TransferOutcome,
    },
    /// Money was deposited.
    Deposited {
        /// The operation.
        op: OpId,
        /// The wallet.
        user: UserId,
        /// How much.
        amount: Amount,
        /// The balance after it.
        balance: Amount,
    },
    /// Money was withdrawn.
    Withdrawn {
        /// The operation.
        op: OpId,
        /// The wallet.
        user: UserId,
        /// How much.
        amount: Amount,
        /// The balance after it.
        balance: Amount,
    },
}

impl Event {
    /// `PacketSent` of a packet that opened at once: what the group needs to show it.
    pub(crate) fn sent(view: &PacketView) -> Event {
        let (packet, sender, group, split, greeting) =
            (view.id, view.sender, view.group, view.split.clone(), view.greeting.clone());
        let (total, shares, expires_at) = (view.total, view.shares, view.expires_at);
        Event::PacketSent { packet, sender, group, split, greeting, total, shares, expires_at }
    }

    /// `PacketOpened` of a packet whose cooling-off ended or that was approved: the same.
    pub(crate) fn opened(view: &PacketView) -> Event {
        let Event::PacketSent { packet, sender, group, split, greeting, total, shares, expires_at } = Event::sent(view)
        else {
            unreachable!("`sent` makes a `PacketSent`")
        };
        Event::PacketOpened { packet, sender, group, split, greeting, total, shares, expires_at }
    }

    /// The packet this event is about, if any.
    pub fn packet(&self) -> Option<PacketId> {
        match *self {
            Event::PacketSent { packet, .. }
            | Event::Grabbed { packet, .. }
            | Event::SoldOut { packet, .. }
            | Event::Expired { packet, .. }
            | Event::PacketCooling { packet, .. }
            | Event::PacketOpened { packet, .. }
            | Event::PacketCancelled { packet, .. }
            | Event::PacketRecalled { packet, .. } => Some(packet),
            Event::AwaitingApproval { subject: ApprovalId::Packet(packet), .. }
            | Event::Approved { subject: ApprovalId::Packet(packet), .. }
            | Event::Rejected { subject: ApprovalId::Packet(packet), .. } => Some(packet),
            _ => None,
        }
    }

    /// The transfer this event is about, if any.
    pub fn transfer(&self) -> Option<TransferId> {
        match *self {
            Event::TransferSent { transfer, .. }
            | Event::TransferArrived { transfer, .. }
            | Event::TransferSettled { transfer, .. } => Some(transfer),
            Event::AwaitingApproval { subject: ApprovalId::Transfer(transfer), .. }
            | Event::Approved { subject: ApprovalId::Transfer(transfer), .. }
            | Event::Rejected { subject: ApprovalId::Transfer(transfer), .. } => Some(transfer),
            _ => None,
        }
    }

    /// The users this event concerns directly, besides a group's members: both parties of a
    /// transfer, the wallet of a deposit or withdrawal, the sender of a packet held or
    /// cancelled in cooling-off.
    pub fn parties(&self) -> Vec<UserId> {
        match *self {
            Event::TransferSent { from, to, .. }
            | Event::TransferArrived { from, to, .. }
            | Event::TransferSettled { from, to, .. } => vec![from, to],
            Event::Deposited { user, .. } | Event::Withdrawn { user, .. } => vec![user],
            Event::PacketCooling { sender, .. } | Event::PacketCancelled { sender, .. } => vec![sender],
            Event::PacketRecalled { sender, by, .. } | Event::Approved { sender, by, .. } => vec![sender, by],
            Event::AwaitingApproval { sender, approver, .. } => match approver {
                Approver::Guardian(guardian) => vec![sender, guardian],
                Approver::OrgAdmins(_) => vec![sender],
            },
            Event::Rejected { sender, by, .. } => std::iter::once(sender).chain(by).collect(),
            _ => Vec::new(),
        }
    }

    /// The group whose members this event concerns, if any.
    pub fn group(&self) -> Option<GroupId> {
        match *self {
            Event::PacketSent { group, .. }
            | Event::Grabbed { group, .. }
            | Event::SoldOut { group, .. }
            | Event::Expired { group, .. }
            | Event::PacketOpened { group, .. }
            | Event::PacketCancelled { group, .. }
            | Event::PacketRecalled { group, .. } => Some(group),
            // A packet cooling off concerns its sender alone until it opens.
            _ => None,
        }
    }
}

/// Why a subscription yielded no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum EventsError {
    /// The subscriber fell behind and `skipped` events were skipped; the next `recv`
    /// continues with the oldest event still buffered.
    #[error("subscriber lagged: {skipped} events skipped")]
    Lagged {
        /// How many events it missed.
        skipped: u64,
    },
    /// The engine shut down.
    #[error("the engine has shut down")]
    Closed,
}

/// The publishing side, shared by every actor.
#[derive(Debug)]
pub(crate) struct EventHub {
    tx: broadcast::Sender<Event>,
    subscribers: Arc<AtomicUsize>,
    subscribers_max: usize,
    // Set at shutdown so that subscribers end even while some engine handle is still alive.
    closed: watch::Sender<bool>,
}

impl EventHub {
    pub(crate) fn new(buffer_len: usize, subscribers_max: usize) -> EventHub {
        let (tx, _) = broadcast::channel(buffer_len);
        EventHub { tx, subscribers: Arc::new(AtomicUsize::new(0)), subscribers_max, closed: watch::Sender::new(false) }
    }

    /// Publishes to current subscribers; free when there are none.
    pub(crate) fn publish(&self, event: impl FnOnce() -> Event) {
        if self.subscribers.load(Ordering::Acquire) > 0 {
            // An error here only means the last subscriber left meanwhile.
            let _ = self.tx.send(event());
        }
    }

    /// A new subscription, or `None` when `subscribers_max` are already subscribed.
    pub(crate) fn subscribe(&self) -> Option<Subscription> {
        let taken = self
            .subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.subscribers_max).then_some(n + 1));
        taken.ok()?;
        let receiver = Receiver {
            rx: self.tx.subscribe(),
            closed: self.closed.subscribe(),
            _seat: Seat(Arc::clone(&self.subscribers)),
        };
        Some(Subscription { receiver: Some(receiver), pending: None, ended: false })
    }

    /// Ends every subscription once it has read what was already published.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// A subscriber's place among `subscribers_max`, given back when the subscription goes.
#[derive(Debug)]
struct Seat(Arc<AtomicUsize>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The receiving end of a subscription.
#[derive(Debug)]
struct Receiver {
    rx: broadcast::Receiver<Event>,
    closed: watch::Receiver<bool>,
    _seat: Seat,
}

impl Receiver {
    async fn recv(&mut self) -> Result<Event, EventsError> {
        let received = tokio::select! {
            // Buffered events first: a subscriber reads everything published before shutdown.
            biased;
            r = self.rx.recv() => Some(r),
            _ = self.closed.wait_for(|closed| *closed) => None,
        };
        let Some(received) = received else {
            return self.try_recv()?.ok_or(EventsError::Closed);
        };
        received.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(skipped) => EventsError::Lagged { skipped },
            broadcast::error::RecvError::Closed => EventsError::Closed,
        })
    }

    fn try_recv(&mut self) -> Result<Option<Event>, EventsError> {
        match self.rx.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(skipped)) => Err(EventsError::Lagged { skipped }),
            Err(broadcast::error::TryRecvError::Closed) => Err(EventsError::Closed),
        }
    }
}

/// A receive started by [`Stream::poll_next`], holding the receiver until it completes.
type Pending = Pin<Box<dyn Future<Output = (Receiver, Result<Event, EventsError>)> + Send + Sync>>;

/// A stream of [`Event`]s, from the moment of subscribing on.
///
/// Read it with [`Subscription::recv`], or as a [`futures::Stream`] of
/// `Result<Event, EventsError>` that yields `Err(Lagged)` when events were skipped and ends
/// once the engine has shut down and every event was read.
pub struct Subscription {
    /// `None` while a receive started by `poll_next` holds it.
    receiver: Option<Receiver>,
    pending: Option<Pending>,
    ended: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("pending", &self.pending.is_some()).finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next event.
    ///
    /// # Errors
    ///
    /// [`EventsError::Lagged`] if events were skipped because this subscriber fell behind;
    /// [`EventsError::Closed`] once the engine has shut down and every event was read.
    pub async fn recv(&mut self) -> Result<Event, EventsError> {
        if let Some(pending) = &mut self.pending {
            // Awaited in place: if this call is cancelled, the receive stays where it was.
            let (receiver, result) = pending.as_mut().await;
            self.pending = None;
            self.receiver = Some(receiver);
            return result;
        }
        match &mut self.receiver {
            Some(receiver) => receiver.recv().await,
            None => Err(EventsError::Closed),
        }
    }

    /// The next event if one is buffered, without waiting.
    ///
    /// # Errors
    ///
    /// As [`Subscription::recv`]; `Ok(None)` when nothing is buffered.
    pub fn try_recv(&mut self) -> Result<Option<Event>, EventsError> {
        if let Some(pending) = &mut self.pending {
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            let Poll::Ready((receiver, result)) = pending.as_mut().poll(&mut cx) else { return Ok(None) };
            self.pending = None;
            self.receiver = Some(receiver);
            return result.map(Some);
        }
        self.receiver.as_mut().map_or(Err(EventsError::Closed), Receiver::try_recv)
    }
}

impl Stream for Subscription {
    type Item = Result<Event, EventsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.pending.is_none() {
            let Some(mut receiver) = self.receiver.take() else { return Poll::Ready(None) };
            self.pending = Some(Box::pin(async move {
                let result = receiver.recv().await;
                (receiver, result)
            }));
        }
        let pending = self.pending.as_mut().expect("set above");
        let (receiver, result) = std::task::ready!(pending.as_mut().poll(cx));
        self.pending = None;
        self.receiver = Some(receiver);
        match result {
            Err(EventsError::Closed) => {
                self.ended = true;
                Poll::Ready(None)
            }
            other => Poll::Ready(Some(other)),
        }
    }
}
