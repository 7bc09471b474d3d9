//! What a load test runs against: the embedded engine, or the canonical Redis + Lua design
//! that most red packet services use, driven with the same requests so the two can be
//! compared side by side.
//!
//! The Redis design: at send, the packet's shares are pre-split (with hongbao's own split code
//! and seed) into a list; each grab is one Lua script that refuses a repeat grabber through a
//! claims hash, checks membership, pops a share, records the claim and credits the wallet hash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hongbao::{
    split, Amount, Arrival, Engine, GrabError, GroupId, NewPacket, NewTransfer, OpId, PacketId, SendError, Split,
    TransferError, TransferId, UserId, WalletError,
};
use redis::aio::MultiplexedConnection;
use redis::Script;

use crate::server::ServerTarget;

/// A grab's answer, the same for both targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Won(u64),
    SoldOut,
    AlreadyGrabbed(u64),
    NotEligible,
    Expired,
    UnknownPacket,
    /// An org admin recalled the packet before this grab.
    Recalled,
    Busy,
    Error(String),
}

impl Reply {
    /// The kind, as counted in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Won(_) => "won",
            Reply::SoldOut => "sold_out",
            Reply::AlreadyGrabbed(_) => "already_grabbed",
            Reply::NotEligible => "not_eligible",
            Reply::Expired => "expired",
            Reply::UnknownPacket => "unknown_packet",
            Reply::Recalled => "packet_recalled",
            Reply::Busy => "busy",
            Reply::Error(_) => "error",
        }
    }

    /// The reply as an answer, with the target's message for an error.
    pub fn answer(&self) -> Answer {
        match self {
            Reply::Error(message) => Answer::refused("error", message),
            other => Answer::ok(other.kind()),
        }
    }
}

/// A request's answer: its kind as reports count it and, for a refusal or an error, the
/// target's own words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub kind: &'static str,
    pub message: Option<String>,
}

impl Answer {
    pub fn ok(kind: &'static str) -> Answer {
        Answer { kind, message: None }
    }

    pub fn refused(kind: &'static str, message: impl std::fmt::Display) -> Answer {
        Answer { kind, message: Some(message.to_string()) }
    }
}

impl PartialEq<&str> for Answer {
    fn eq(&self, kind: &&str) -> bool {
        self.kind == *kind
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(message) => write!(f, "{} ({message})", self.kind),
            None => f.write_str(self.kind),
        }
    }
}

/// A lucky packet to send, the same for both targets.
#[derive(Clone, Copy, Debug)]
pub struct LuckySend {
    pub packet: PacketId,
    pub sender: UserId,
    pub group: GroupId,
    pub fen: u64,
    pub shares: u32,
    /// Seed of the Redis pre-split: `hongbao::packet_seed(--seed, packet)`, the seed the engine
    /// draws this packet's shares with, so both targets pay the same shares.
    pub seed: u64,
}

/// The outcome of an audit: whether money is conserved, and the figures.
pub struct Verdict {
    pub balanced: bool,
    pub detail: String,
}

/// The system under test.
pub enum Target {
    Embedded(Engine),
    Redis(Box<RedisTarget>),
    Server(Box<ServerTarget>),
}

impl Target {
    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            Target::Embedded(_) => "embedded (in-memory journal)".into(),
            Target::Redis(r) if r.in_flight.is_some() => format!("redis+lua {} (no pipelining)", r.url),
            Target::Redis(r) => format!("redis+lua {}", r.url),
            Target::Server(s) => format!("hongbao serve {}", s.url),
        }
    }

    pub async fn set_members(&self, group: GroupId, members: Vec<UserId>) -> Result<(), String> {
        match self {
            Target::Embedded(e) => e.set_members(group, members).await.map_err(|e| e.to_string()),
            Target::Redis(r) => r.set_members(group, members).await,
            Target::Server(s) => s.set_members(group, members).await,
        }
    }

    /// Deposits; "deposited" or a refusal.
    pub async fn deposit(&self, op: u64, user: UserId, fen: u64) -> Answer {
        match self {
            Target::Embedded(e) => match e.deposit(OpId(op), user, Amount::fen(fen)).await {
                Ok(_) => Answer::ok("deposited"),
                Err(e @ WalletError::Busy) => Answer::refused("busy", e),
                Err(e) => Answer::refused("deposit_refused", e),
            },
            Target::Redis(r) => r.deposit(op, user, fen).await,
            Target::Server(s) => s.deposit(op, user, fen).await,
        }
    }

    /// Sends an instant transfer (the Redis baseline has none).
    pub async fn transfer(&self, id: u64, from: UserId, to: UserId, fen: u64) -> Answer {
        match self {
            Target::Embedded(e) => {
                let spec = NewTransfer {
                    org: None,
                    id: TransferId(id),
                    from,
                    to,
                    amount: Amount::fen(fen),
                    arrival: Arrival::Instant,
                    note: String::new(),
                };
                transfer_kind(e.transfer(spec).await.map(|_| "transfer_sent"))
            }
            Target::Server(s) => s.transfer(id, from, to, fen).await,
            Target::Redis(_) => Answer::refused("unsupported", "the Redis baseline has no transfers"),
        }
    }

    /// The receiver accepts a transfer (the Redis baseline has none).
    pub async fn accept(&self, id: u64, by: UserId) -> Answer {
        match self {
            Target::Embedded(e) => transfer_kind(e.accept_transfer(TransferId(id), by).await.map(|_| "accepted")),
            Target::Server(s) => s.accept(id, by).await,
            Target::Redis(_) => Answer::refused("unsupported", "the Redis baseline has no transfers"),
        }
    }

    /// Whether the target has transfers.
    pub fn has_transfers(&self) -> bool {
        matches!(self, Target::Embedded(_) | Target::Server(_))
    }

    /// Sends a lucky packet; "sent" or a refusal ("insufficient_funds", "busy", ...).
    pub async fn send(&self, send: &LuckySend) -> Answer {
        let &LuckySend { packet, sender, group, fen, shares, .. } = send;
        match self {
            Target::Embedded(e) => {
                let split = Split::lucky(Amount::fen(fen), shares);
                let spec = NewPacket { id: packet, sender, group, split, greeting: "恭喜发财".into() };
                match e.send_packet(spec).await {
                    Ok(_) => Answer::ok("sent"),
                    Err(e @ SendError::InsufficientFunds { .. }) => Answer::refused("insufficient_funds", e),
                    Err(e @ SendError::Busy) => Answer::refused("busy", e),
                    Err(e) => Answer::refused("send_refused", e),
                }
            }
            Target::Redis(r) => r.send(send).await,
            Target::Server(s) => s.send(send).await,
        }
    }

    pub async fn grab(&self, packet: PacketId, group: GroupId, user: UserId) -> Reply {
        match self {
            Target::Embedded(e) => match e.grab(packet, user).await {
                Ok(g) => Reply::Won(g.amount.as_fen()),
                Err(GrabError::SoldOut) => Reply::SoldOut,
                Err(GrabError::AlreadyGrabbed { amount, .. }) => Reply::AlreadyGrabbed(amount.as_fen()),
                Err(GrabError::NotEligible) => Reply::NotEligible,
                Err(GrabError::Expired) => Reply::Expired,
                Err(GrabError::UnknownPacket) => Reply::UnknownPacket,
                Err(GrabError::Recalled) => Reply::Recalled,
                Err(GrabError::Busy) => Reply::Busy,
                Err(e) => Reply::Error(e.to_string()),
            },
            Target::Redis(r) => r.grab(packet, group, user).await,
            Target::Server(s) => s.grab(packet, user).await,
        }
    }

    pub async fn balance(&self, user: UserId) -> Result<u64, String> {
        match self {
            Target::Embedded(e) => e.balance(user).await.map(|a| a.as_fen()).map_err(|e| e.to_string()),
            Target::Redis(r) => r.balance(user).await,
            Target::Server(s) => s.balance(user).await,
        }
    }

    /// Every claim of a packet: (user, fen).
    pub async fn claims(&self, packet: PacketId) -> Result<Vec<(UserId, u64)>, String> {
        match self {
            Target::Embedded(e) => {
                let view = e.packet(packet).await.map_err(|e| e.to_string())?;
                Ok(view.claims.iter().map(|c| (c.user, c.amount.as_fen())).collect())
            }
            Target::Redis(r) => r.claims(packet).await,
            Target::Server(s) => s.claims(packet).await,
        }
    }

    pub async fn audit(&self) -> Result<Verdict, String> {
        match self {
            Target::Embedded(e) => {
                let a = e.audit().await.map_err(|e| e.to_string())?;
                let mut detail = format!(
                    "wallets {} + escrow {} + pending {} = deposits {} - withdrawals {}",
                    a.wallets, a.escrow, a.pending, a.deposits, a.withdrawals
                );
                for v in &a.violations {
                    detail.push_str(&format!("; {v}"));
                }
                Ok(Verdict { balanced: a.is_balanced(), detail })
            }
            Target::Redis(r) => r.audit().await,
            Target::Server(s) => s.audit().await,
        }
    }

    /// Memory the target holds, in bytes: this process's resident set for the embedded
    /// engine, the server's `used_memory` for Redis.
    pub async fn memory_bytes(&self) -> Result<u64, String> {
        match self {
            Target::Embedded(_) => resident_bytes(),
            Target::Redis(r) => r.used_memory().await,
            Target::Server(_) => Err("memory is not measured through a server target".into()),
        }
    }

    /// Ends the run: the embedded engine shuts down; Redis forgets the run's keys unless
    /// `keep`.
    pub async fn shutdown(&self, keep: bool) -> Result<(), String> {
        match self {
            Target::Embedded(e) => e.shutdown().await,
            Target::Redis(r) if !keep => r.delete_keys().await?,
            _ => {}
        }
        Ok(())
    }
}

/// The answer to a transfer request.
pub fn transfer_kind(result: Result<&'static str, TransferError>) -> Answer {
    let Err(e) = result else { return Answer::ok(result.expect("not an error")) };
    let kind = match e {
        TransferError::InsufficientFunds { .. } => "insufficient_funds",
        TransferError::TooLate { .. } => "too_late",
        TransferError::Busy => "busy",
        TransferError::DailyLimit { .. } => "daily_limit",
        _ => "transfer_error",
    };
    Answer::refused(kind, e)
}

/// This process's resident set size.
pub fn resident_bytes() -> Result<u64, String> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no VmRSS line in /proc/self/status".into())
}

const GRAB_LUA: &str = r#"
-- KEYS: shares list, claims hash, wallets hash, members set; ARGV: user
local prev = redis.call('HGET', KEYS[2], ARGV[1])
if prev then return {1, tonumber(prev)} end
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0 then return {3, 0} end
local share = redis.call('LPOP', KEYS[1])
if not share then return {2, 0} end
redis.call('HSET', KEYS[2], ARGV[1], share)
redis.call('HINCRBY', KEYS[3], ARGV[1], share)
return {0, tonumber(share)}
"#;

const SEND_LUA: &str = r#"
-- KEYS: wallets hash, shares list, packets hash (id -> total); ARGV: sender, packet, total, shares...
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 2 end
local total = tonumber(ARGV[3])
if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') < total then return 1 end
redis.call('HINCRBY', KEYS[1], ARGV[1], -total)
for i = 4, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('HSET', KEYS[3], ARGV[2], total)
return 0
"#;

const DEPOSIT_LUA: &str = r#"
-- KEYS: ops hash, wallets hash, deposits counter; ARGV: op, user, amount
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[3])
  redis.call('INCRBY', KEYS[3], ARGV[3])
end
return 0
"#;

const AUDIT_LUA: &str = r#"
-- KEYS: wallets hash, packets hash, deposits counter; ARGV: key prefix
local wallets = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do wallets = wallets + tonumber(v) end
local escrow, bad = 0, 0
local packets = redis.call('HGETALL', KEYS[2])
for i = 1, #packets, 2 do
  local left = 0
  for _, v in ipairs(redis.call('LRANGE', ARGV[1] .. 'p:' .. packets[i] .. ':s', 0, -1)) do left = left + tonumber(v) end
  local claimed = 0
  for _, v in ipairs(redis.call('HVALS', ARGV[1] .. 'p:' .. packets[i] .. ':c')) do claimed = claimed + tonumber(v) end
  if left + claimed ~= tonumber(packets[i + 1]) then bad = bad + 1 end
  escrow = escrow + left
end
return {wallets, escrow, tonumber(redis.call('GET', KEYS[3]) or '0'), bad}
"#;

/// The Redis + Lua baseline.
pub struct RedisTarget {
    url: String,
    connections: Vec<MultiplexedConnection>,
    next: AtomicUsize,
    prefix: String,
    share_fen_max: u64,
    grab: Script,
    send: Script,
    deposit: Script,
    /// Without pipelining: one permit per connection.
    in_flight: Option<tokio::sync::Semaphore>,
}

impl RedisTarget {
    /// Connects `connections` multiplexed connections to the server at `url`.
    ///
    /// # Errors
    ///
    /// A clear message when the URL is malformed or the server cannot be reached.
    pub async fn connect(
        url: &str,
        connections: usize,
        share_fen_max: u64,
        pipelining: bool,
        timeout: Duration,
    ) -> Result<RedisTarget, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL {url}: {e}"))?;
        let mut conns = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            // --timeout-secs, not the client's default: under a storm, replies queue behind
            // the single-threaded server for longer than that (and a timed-out script still
            // ran, so a timeout is an error of unknown outcome, counted as such).
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(timeout));
            let conn = tokio::time::timeout(
                Duration::from_secs(5),
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await
            .map_err(|_| format!("Redis at {url} did not answer within 5 s"))?
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
            conns.push(conn);
        }
        let mut first = conns[0].clone();
        let _: String = redis::cmd("PING").query_async(&mut first).await.map_err(|e| format!("Redis at {url}: {e}"))?;
        // Each run writes under its own prefix, so runs never mix and nothing is flushed.
        let prefix = format!("hb:{:08x}:", rand::random::<u32>());
        Ok(RedisTarget {
            url: url.to_string(),
            connections: conns,
            next: AtomicUsize::new(0),
            prefix,
            share_fen_max,
            grab: Script::new(GRAB_LUA),
            send: Script::new(SEND_LUA),
            deposit: Script::new(DEPOSIT_LUA),
            in_flight: (!pipelining).then(|| tokio::sync::Semaphore::new(connections.max(1))),
        })
    }

    fn conn(&self) -> MultiplexedConnection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].clone()
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    async fn set_members(&self, group: GroupId, members: Vec<UserId>) -> Result<(), String> {
        let key = self.key(&format!("g:{}", group.0));
        let mut conn = self.conn();
        let mut del = redis::cmd("DEL");
        del.arg(&key);
        let _: () = del.query_async(&mut conn).await.map_err(|e| e.to_string())?;
        for chunk in members.chunks(10_000) {
            let ids: Vec<u64> = chunk.iter().map(|u| u.0).collect();
            let _: () =
                redis::cmd("SADD").arg(&key).arg(ids).query_async(&mut conn).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn deposit(&self, op: u64, user: UserId, fen: u64) -> Answer {
        let mut inv = self.deposit.prepare_invoke();
        inv.key(self.key("ops")).key(self.key("w")).key(self.key("deposits")).arg(op).arg(user.0).arg(fen);
        match inv.invoke_async::<i64>(&mut self.conn()).await {
            Ok(_) => Answer::ok("deposited"),
            Err(e) => Answer::refused("error", e),
        }
    }

    async fn send(&self, send: &LuckySend) -> Answer {
        let &LuckySend { packet, sender, fen, shares, seed, .. } = send;
        // Pre-split at send, with the same code and seed the engine draws from at grab time.
        let split = split::lucky_shares(fen, shares, self.share_fen_max, seed);
        let mut inv = self.send.prepare_invoke();
        inv.key(self.key("w")).key(self.key(&format!("p:{}:s", packet.0))).key(self.key("packets"));
        inv.arg(sender.0).arg(packet.0).arg(fen).arg(split);
        match inv.invoke_async::<i64>(&mut self.conn()).await {
            Ok(0) | Ok(2) => Answer::ok("sent"),
            Ok(1) => Answer::refused("insufficient_funds", format!("the sender has less than {}", Amount::fen(fen))),
            Ok(code) => Answer::refused("error", format!("unexpected script reply {code}")),
            Err(e) => Answer::refused("error", e),
        }
    }

    async fn grab(&self, packet: PacketId, group: GroupId, user: UserId) -> Reply {
        let _permit = match &self.in_flight {
            Some(in_flight) => Some(in_flight.acquire().await.expect("never closed")),
            None => None,
        };
        let mut inv = self.grab.prepare_invoke();
        inv.key(self.key(&format!("p:{}:s", packet.0)))
            .key(self.key(&format!("p:{}:c", packet.0)))
            .key(self.key("w"))
            .key(self.key(&format!("g:{}", group.0)))
            .arg(user.0);
        match inv.invoke_async::<(i64, u64)>(&mut self.conn()).await {
            Ok((0, fen)) => Reply::Won(fen),
            Ok((1, fen)) => Reply::AlreadyGrabbed(fen),
            Ok((2, _)) => Reply::SoldOut,
            Ok((3, _)) => Reply::NotEligible,
            Ok((code, _)) => Reply::Error(format!("unexpected script reply {code}")),
            Err(e) => Reply::Error(e.to_string()),
        }
    }

    async fn balance(&self, user: UserId) -> Result<u64, String> {
        let mut conn = self.conn();
        let v: Option<u64> = redis::cmd("HGET")
            .arg(self.key("w"))
            .arg(user.0)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(v.unwrap_or(0))
    }

    async fn claims(&self, packet: PacketId) -> Result<Vec<(UserId, u64)>, String> {
        let mut conn = self.conn();
        let m: HashMap<u64, u64> = redis::cmd("HGETALL")
            .arg(self.key(&format!("p:{}:c", packet.0)))
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(m.into_iter().map(|(u, a)| (UserId(u), a)).collect())
    }

    async fn audit(&self) -> Result<Verdict, String> {
        let script = Script::new(AUDIT_LUA);
        let mut inv = script.prepare_invoke();
        inv.key(self.key("w")).key(self.key("packets")).key(self.key("deposits")).arg(&self.prefix);
        let (wallets, escrow, deposits, bad): (u64, u64, u64, u64) =
            inv.invoke_async(&mut self.conn()).await.map_err(|e| e.to_string())?;
        Ok(Verdict {
            balanced: wallets + escrow == deposits && bad == 0,
            detail: format!(
                "wallets {} + escrow {} = deposits {}; packets whose claims and list do not add up: {bad}",
                Amount::fen(wallets),
                Amount::fen(escrow),
                Amount::fen(deposits)
            ),
        })
    }

    /// Deletes every key of this run (its prefix), in batches.
    async fn delete_keys(&self) -> Result<(), String> {
        let mut conn = self.conn();
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("cleaning up the run's keys: {e}"))?;
            if !keys.is_empty() {
                let _: () = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await.map_err(|e| e.to_string())?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn used_memory(&self) -> Result<u64, String> {
        let mut conn = self.conn();
        let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.map_err(|e| e.to_string())?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| "no used_memory in INFO".into())
    }
}
