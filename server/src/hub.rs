//! The event fan-out: one stream of events (the engine's, or every partition's on a cluster),
//! pushed to every member's WebSocket.
//!
//! One task owns everything here (the connections, their groups, the recent events), so a
//! member joining sees each event exactly once: the task replays what they missed and adds
//! them to the live list in one step. Each event gets a sequence number; the last
//! `ws_replay_len` are kept, and a member reconnecting with `since` gets the ones that concern
//! them (or a `resync` when the window has passed, or the server restarted: `epoch` differs).
//!
//! Who hears what: a group's events go to the connections watching the group whose member is
//! in its roster at that moment (checked per event, so a member removed hears no more);
//! transfer and wallet events to their parties. Each connection has a bounded queue; one that
//! falls `ws_buffer_len` events behind is dropped and told why, never buffered without bound.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use hongbao::{Event, EventsError, GroupId, UserId};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use crate::cluster::Partitions;

/// The events the hub pushes.
pub type Events = BoxStream<'static, Result<Event, EventsError>>;

/// A connection's id in the hub.
pub type ConnId = u64;

/// A JSON text frame for a connection.
pub type Push = Arc<str>;

/// Where the hub tells a connection to close, and why (a queue full of events cannot carry
/// that message, so it travels apart).
pub type Kick = watch::Sender<Option<&'static str>>;

/// Why the hub dropped a connection.
pub const TOO_SLOW: &str = "too slow: events were not read in time";

/// Why a member's new socket is refused.
pub const TOO_MANY_SOCKETS: &str = "too many sockets for this member";

/// What a member asks of the hub when their socket authenticates.
pub struct Join {
    /// The member.
    pub user: UserId,
    /// The groups they watch (already checked against the rosters).
    pub groups: Vec<GroupId>,
    /// Resume after this event of this epoch.
    pub since: Option<(u64, u64)>,
    /// Where to push.
    pub tx: mpsc::Sender<Push>,
    /// Where to say "close".
    pub kick: Kick,
}

enum Command {
    Join(Join, oneshot::Sender<ConnId>),
    Watch(ConnId, GroupId),
    Leave(ConnId),
    CloseAll(&'static str, oneshot::Sender<()>),
}

/// The handle every worker shares.
#[derive(Clone)]
pub struct Hub {
    tx: mpsc::UnboundedSender<Command>,
    clients: Arc<AtomicUsize>,
    /// Set at a graceful stop, for sockets the hub does not hold (the host's relays).
    closing: Arc<Kick>,
    /// This run of the server: sequence numbers start again at 1 in each.
    pub epoch: u64,
}

impl Hub {
    /// Starts the hub's task on the current runtime, fed by `events`; rosters are read from
    /// `partitions`.
    pub fn start(events: Events, partitions: Partitions, replay_len: usize, per_user_max: usize, epoch: u64) -> Hub {
        let (tx, rx) = mpsc::unbounded_channel();
        let clients = Arc::new(AtomicUsize::new(0));
        let state = State {
            partitions,
            epoch,
            seq: 0,
            recent: VecDeque::with_capacity(replay_len.min(4096)),
            replay_len,
            conns: HashMap::new(),
            by_group: HashMap::new(),
            by_user: HashMap::new(),
            next_id: 1,
            clients: Arc::clone(&clients),
            closed: None,
            per_user_max,
        };
        tokio::spawn(state.run(events, rx));
        Hub { tx, clients, epoch, closing: Arc::new(watch::Sender::new(None)) }
    }

    /// Adds a connection; the hub first pushes a `hello` (and what it missed since `since`).
    /// `None` if the hub has stopped.
    pub async fn join(&self, join: Join) -> Option<ConnId> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Join(join, tx)).ok()?;
        rx.await.ok()
    }

    /// The connection watches one more group (already checked against the roster).
    pub fn watch(&self, conn: ConnId, group: GroupId) {
        let _ = self.tx.send(Command::Watch(conn, group));
    }

    /// Removes a connection.
    pub fn leave(&self, conn: ConnId) {
        let _ = self.tx.send(Command::Leave(conn));
    }

    /// Tells every connection to close with `reason`, and waits until the hub has.
    pub async fn close_all(&self, reason: &'static str) {
        self.closing.send_replace(Some(reason));
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::CloseAll(reason, tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Told when every socket must close.
    pub fn closing(&self) -> watch::Receiver<Option<&'static str>> {
        self.closing.subscribe()
    }

    /// Connections now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

struct Conn {
    user: UserId,
    groups: HashSet<GroupId>,
    tx: mpsc::Sender<Push>,
    kick: Kick,
}

/// An event as kept: whom it concerns, and its frame, written the first time someone is to
/// receive it (a storm nobody watches costs no JSON).
struct Sent {
    seq: u64,
    group: Option<GroupId>,
    parties: Vec<UserId>,
    event: Event,
    frame: std::sync::OnceLock<Arc<str>>,
}

impl Sent {
    fn frame(&self) -> Arc<str> {
        let frame = self
            .frame
            .get_or_init(|| json!({ "type": "event", "seq": self.seq, "event": self.event }).to_string().into());
        Arc::clone(frame)
    }
}

struct State {
    partitions: Partitions,
    epoch: u64,
    seq: u64,
    recent: VecDeque<Sent>,
    replay_len: usize,
    conns: HashMap<ConnId, Conn>,
    by_group: HashMap<GroupId, HashSet<ConnId>>,
    by_user: HashMap<UserId, HashSet<ConnId>>,
    next_id: ConnId,
    clients: Arc<AtomicUsize>,
    /// Set once every connection was told to close: later joins are closed at once.
    closed: Option<&'static str>,
    /// Sockets one member may hold.
    per_user_max: usize,
}

impl State {
    async fn run(mut self, mut events: Events, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            tokio::select! {
                biased;
                command = rx.recv() => match command {
                    Some(command) => self.command(command),
                    None => return,
                },
                event = events.next() => match event {
                    Some(Ok(event)) => self.publish(event),
                    Some(Err(EventsError::Lagged { skipped })) => self.lost(skipped),
                    Some(Err(_)) | None => {
                        self.close_all("the engine has stopped");
                        // Keep answering commands (joins are closed at once) until every
                        // handle is gone.
                        while let Some(command) = rx.recv().await {
                            self.command(command);
                        }
                        return;
                    }
                },
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Join(join, reply) => {
                let id = self.join(join);
                let _ = reply.send(id);
            }
            Command::Watch(id, group) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.groups.insert(group);
                    self.by_group.entry(group).or_default().insert(id);
                }
            }
            Command::Leave(id) => self.remove(id),
            Command::CloseAll(reason, done) => {
                self.close_all(reason);
                let _ = done.send(());
            }
        }
    }

    fn join(&mut self, join: Join) -> ConnId {
        let id = self.next_id;
        self.next_id += 1;
        let hello =
            json!({ "type": "hello", "epoch": self.epoch, "seq": self.seq, "user": join.user, "groups": join.groups });
        let mut first = vec![Arc::<str>::from(hello.to_string())];
        let conn =
            Conn { user: join.user, groups: join.groups.iter().copied().collect(), tx: join.tx, kick: join.kick };
        let held = self.by_user.get(&conn.user).map_or(0, HashSet::len);
        if let Some(reason) = self.closed.or((held >= self.per_user_max).then_some(TOO_MANY_SOCKETS)) {
            conn.kick.send_replace(Some(reason));
            return id;
        }
        match join.since {
            None => {}
            Some((epoch, since)) if epoch == self.epoch && self.replayable(since) => {
                let missed: Vec<&Sent> =
                    self.recent.iter().filter(|s| s.seq > since && self.concerns(&conn, s, false)).collect();
                // More than the socket's queue holds: reading the state again is cheaper.
                if missed.len() < conn.tx.capacity() {
                    first.extend(missed.iter().map(|s| s.frame()));
                } else {
                    first.push(resync("more events were missed than are replayed"));
                }
            }
            Some(_) => first.push(resync("the events since then are no longer kept")),
        }
        // A member who cannot take their own backlog is too slow from the start.
        for frame in first {
            if conn.tx.try_send(frame).is_err() {
                conn.kick.send_replace(Some(TOO_SLOW));
                return id;
            }
        }
        for group in &conn.groups {
            self.by_group.entry(*group).or_default().insert(id);
        }
        self.by_user.entry(conn.user).or_default().insert(id);
        self.conns.insert(id, conn);
        self.clients.store(self.conns.len(), Ordering::Relaxed);
        id
    }

    /// Whether every event after `since` is still kept.
    fn replayable(&self, since: u64) -> bool {
        since <= self.seq && self.recent.front().map_or(since == self.seq, |first| first.seq <= since + 1)
    }

    /// Whether `sent` is for `conn`: a party, or watching its group and in its roster.
    fn concerns(&self, conn: &Conn, sent: &Sent, party_checked: bool) -> bool {
        (!party_checked && sent.parties.contains(&conn.user))
            || sent.group.is_some_and(|g| conn.groups.contains(&g) && self.partitions.is_member(g, conn.user))
    }

    fn publish(&mut self, event: Event) {
        self.seq += 1;
        let (group, parties) = (event.group(), event.parties());
        let sent = Sent { seq: self.seq, group, parties, event, frame: std::sync::OnceLock::new() };
        let mut to: Vec<ConnId> = Vec::new();
        for user in &sent.parties {
            to.extend(self.by_user.get(user).into_iter().flatten());
        }
        if let Some(group) = sent.group {
            let watching = self.by_group.get(&group).into_iter().flatten();
            to.extend(watching.filter(|id| {
                self.conns.get(id).is_some_and(|c| !sent.parties.contains(&c.user) && self.concerns(c, &sent, true))
            }));
        }
        to.sort_unstable();
        to.dedup();
        let mut slow = Vec::new();
        for id in to {
            if let Some(conn) = self.conns.get(&id) {
                if conn.tx.try_send(sent.frame()).is_err() {
                    slow.push(id);
                }
            }
        }
        for id in slow {
            if let Some(conn) = self.conns.get(&id) {
                conn.kick.send_replace(Some(TOO_SLOW));
            }
            self.remove(id);
        }
        if self.recent.len() == self.replay_len {
            self.recent.pop_front();
        }
        self.recent.push_back(sent);
    }

    /// The hub's own subscription fell behind: every member's stream has a hole. Tell them to
    /// fetch state again, and keep no history across the hole.
    fn lost(&mut self, skipped: u64) {
        tracing::warn!(skipped, "the event hub lagged behind the engine; clients are told to resync");
        self.seq += skipped;
        self.recent.clear();
        let frame = resync("the server fell behind its events");
        for conn in self.conns.values() {
            if conn.tx.try_send(Arc::clone(&frame)).is_err() {
                conn.kick.send_replace(Some(TOO_SLOW));
            }
        }
    }

    fn remove(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.remove(&id) {
            for group in &conn.groups {
                if let Some(set) = self.by_group.get_mut(group) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.by_group.remove(group);
                    }
                }
            }
            if let Some(set) = self.by_user.get_mut(&conn.user) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_user.remove(&conn.user);
                }
            }
        }
        self.clients.store(self.conns.len(), Ordering::Relaxed);
    }

    fn close_all(&mut self, reason: &'static str) {
        self.closed = Some(reason);
        for (_, conn) in self.conns.drain() {
            conn.kick.send_replace(Some(reason));
        }
        self.by_group.clear();
        self.by_user.clear();
        self.clients.store(0, Ordering::Relaxed);
    }
}

fn resync(reason: &str) -> Arc<str> {
    json!({ "type": "resync", "reason": reason }).to_string().into()
}
