//! The packet actor: one per open packet, serializing every grab of that packet.
//!
//! It owns a [`PacketState`]; for each grab it decides the share (no lock: the actor is the only
//! one touching its state), appends a claim record, and once the record is durable credits the
//! winner's wallet shard and replies — in that order, which is what makes the credit visible to
//! a `balance` issued after the grab returned. It does not wait for the journal before taking
//! the next grab: replies queue behind the journal's commits.
//!
//! # Messages
//!
//! | message   | reply                                              | refused when full |
//! |-----------|----------------------------------------------------|-------------------|
//! | `Grab`    | `Grabbed` or `GrabError`, after the journal        | yes (`Busy`)      |
//! | `Query`   | the packet's view, after a journal barrier         | yes (`Busy`)      |
//! | `Expire`  | what expiry did, after the refund is durable       | never (the timer's) |
//! | `Inspect`, `Flush` | escrow and invariants / after a barrier   | never (audit, shutdown) |
//!
//! # Lifecycle
//!
//! A sent packet starts dormant: a small record in the routing table, with no actor and no
//! mailbox, so that a million packets nobody touches cost a few hundred bytes each. The first
//! grab or expiry wakes it: the handle creates its mailbox and starts this actor. At expiry it
//! refunds what is left (once), replaces its route with a closed view that keeps answering
//! repeat grabs, and stops. Messages still in its mailbox then are dropped; their callers see
//! the closed route and are answered from it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::engine::{Grabbed, PacketMeta, Route, Shared};
use crate::error::GrabError;
use crate::events::Event;
use crate::journal::Record;
use crate::money::{bucket, Amount, IdSet, UserId};
use crate::packet::{Expiry, PacketState, PacketView};
use crate::split::Split;
use crate::wallet::Credit;

/// A grab request.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Grab {
    pub user: UserId,
    pub reply: oneshot::Sender<Result<Grabbed, GrabError>>,
}

/// A read of the packet's view.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Query {
    pub reply: oneshot::Sender<PacketView>,
}

/// Expire now if due (from the timer, or `Engine::expire_due`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Expire {
    pub reply: Option<oneshot::Sender<Expiry>>,
}

/// Escrow and the invariant check, for the audit.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Inspect {
    pub reply: oneshot::Sender<(Amount, Result<(), String>)>,
}

/// Answers once everything the packet did before is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Flush {
    pub reply: oneshot::Sender<()>,
}

pub(crate) struct PacketActor {
    shared: Arc<Shared>,
    state: PacketState,
    /// The group's roster as of a roster epoch; re-read only when the epoch moves.
    roster: (u64, Option<Arc<IdSet<UserId>>>),
}

impl PacketActor {
    /// Starts the actor of a dormant packet on the arbiter its id hashes to and returns its
    /// address at once. The mailbox is created here with its real capacity, so grabs can be
    /// queued (and bounded) before the actor's first turn. Callable from any thread.
    pub(crate) fn spawn(shared: Arc<Shared>, meta: &PacketMeta) -> Addr<PacketActor> {
        let (tx, rx) = actix::dev::channel::channel(shared.limits.packet_mailbox_capacity);
        let state = meta.open_state(shared.limits.share_fen_max);
        let arbiter = shared.arbiters[bucket(meta.spec.id.0, shared.arbiters.len())].clone();
        // If the arbiter has stopped (shutdown), the receiver is dropped with the closure and
        // every send to the address fails as closed.
        arbiter.spawn_fn(move || {
            let roster = (u64::MAX, None); // no epoch yet: read on the first grab
            Context::with_receiver(rx).run(PacketActor { shared, state, roster });
        });
        Addr::new(tx)
    }

    /// Whether `user` may grab: the named recipient of an exclusive packet, or a member of the
    /// group's current roster.
    fn is_eligible(&mut self, user: UserId) -> bool {
        let spec = self.state.spec();
        if let Split::Exclusive { to, .. } = spec.split {
            return to == user;
        }
        let epoch = self.shared.roster_epoch.load(Ordering::Acquire);
        if epoch != self.roster.0 {
            self.roster = self.shared.roster(spec.group);
        }
        self.roster.1.as_ref().is_some_and(|r| r.contains(&user))
    }

    fn id(&self) -> crate::money::PacketId {
        self.state.spec().id
    }

    /// Expires the packet (refunding what is left, once), closes its route and stops.
    fn expire(&mut self, ctx: &mut Context<Self>, reply: Option<oneshot::Sender<Expiry>>) {
        let now = self.shared.clock.now();
        let outcome = self.state.expire(now);
        let answer = move || {
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        };
        match outcome {
            Expiry::Refund(refunded) => {
                let shared = Arc::clone(&self.shared);
                let (packet, sender) = (self.id(), self.state.spec().sender);
                self.shared.journal.append(
                    Record::Expired { packet, refund: refunded, at: now },
                    Box::new(move || {
                        // The credit leaves for the wallet before anyone hears of the refund.
                        shared.wallet(sender).do_send(Credit { user: sender, amount: refunded });
                        shared.events.publish(|| Event::Expired { packet, sender, refunded });
                        answer();
                    }),
                );
            }
            Expiry::NothingLeft | Expiry::AlreadyExpired | Expiry::NotDue => {
                self.shared.journal.barrier(Box::new(answer))
            }
        }
        if matches!(outcome, Expiry::Refund(_) | Expiry::NothingLeft) {
            self.shared.routes.insert(self.id(), Route::Closed(Arc::new(self.state.view())));
            self.shared.open_packets.fetch_sub(1, Ordering::AcqRel);
            ctx.stop();
        }
    }
}

impl Actor for PacketActor {
    type Context = Context<Self>;
}

impl Handler<Grab> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: Grab, ctx: &mut Context<Self>) {
        let now = self.shared.clock.now();
        if self.state.is_due(now) {
            // The timer has not fired yet, but the deadline has passed: expire first, so a
            // grab can never win money that is due back to the sender.
            self.expire(ctx, None);
        }
        let eligible = self.is_eligible(m.user);
        let won = match self.state.grab(m.user, eligible, now) {
            Ok(won) => won,
            Err(e) => {
                let reply = m.reply;
                self.shared.journal.barrier(Box::new(move || {
                    let _ = reply.send(Err(e));
                }));
                return;
            }
        };
        let packet = self.id();
        let claim = won.claim;
        let grabbed = Grabbed {
            packet,
            user: claim.user,
            amount: claim.amount,
            position: claim.position,
            shares_left: won.shares_left,
            remaining: won.remaining,
        };
        // The last grab's reply waits for the sold-out record too, so its caller hears of
        // the grab only after every event it caused is published.
        let sold_out = won.sold_out.then(|| self.state.best_luck().expect("a sold-out packet has claims"));
        let mut reply = Some(m.reply);
        let shared = Arc::clone(&self.shared);
        let claim_reply = if sold_out.is_some() { None } else { reply.take() };
        self.shared.journal.append(
            Record::Claim { packet, user: claim.user, amount: claim.amount, position: claim.position, at: claim.at },
            Box::new(move || {
                // Credit before reply: the wallet's mailbox is FIFO, so a balance read sent
                // after the reply is handled after the credit.
                shared.wallet(claim.user).do_send(Credit { user: claim.user, amount: claim.amount });
                shared.events.publish(|| Event::Grabbed {
                    packet,
                    user: claim.user,
                    amount: claim.amount,
                    position: claim.position,
                    shares_left: won.shares_left,
                });
                if let Some(reply) = claim_reply {
                    let _ = reply.send(Ok(grabbed));
                }
            }),
        );
        if let (Some(best), Some(reply)) = (sold_out, reply) {
            let shared = Arc::clone(&self.shared);
            self.shared.journal.append(
                Record::SoldOut { packet },
                Box::new(move || {
                    shared.events.publish(|| Event::SoldOut { packet, best_luck: best.user, best_amount: best.amount });
                    let _ = reply.send(Ok(grabbed));
                }),
            );
        }
    }
}

impl Handler<Query> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: Query, _: &mut Context<Self>) {
        let view = self.state.view();
        self.shared.journal.barrier(Box::new(move || {
            let _ = m.reply.send(view);
        }));
    }
}

impl Handler<Expire> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: Expire, ctx: &mut Context<Self>) {
        self.expire(ctx, m.reply);
    }
}

impl Handler<Inspect> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: Inspect, _: &mut Context<Self>) {
        let _ = m.reply.send((self.state.escrow(), self.state.check()));
    }
}

impl Handler<Flush> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: Flush, _: &mut Context<Self>) {
        self.shared.journal.barrier(Box::new(move || {
            let _ = m.reply.send(());
        }));
    }
}
