//! The command line: every flag with its unit and default.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Grab storms against hongbao (embedded, in-memory journal) or against the Redis + Lua design
/// most red packet services use, measured the way wrk2 and k6 measure: per-request latency in
/// HdrHistograms, coordinated omission corrected in open-loop mode, and an audit of every fen.
///
/// Examples:
///   loadtest                                   # the default storm, embedded
///   loadtest --scenario hot --members 10000    # one packet, 10 000 members at once
///   loadtest --target redis://127.0.0.1:6379   # the same storm against Redis + Lua
///   loadtest --scenario mixed --rate 20000     # open loop, 20 000 requests/s
#[derive(Parser, Debug, Clone)]
#[command(name = "loadtest", version, about, verbatim_doc_comment)]
pub struct Args {
    /// Which load to run: storm (G groups × M members, all grabbing at once, R rounds), hot
    /// (one packet, M members at once, R rounds), recall (the storm in groups of an org whose
    /// admin recalls every packet right behind a seeded one of its grabs; embedded only), mixed
    /// (deposits, sends, grabs, transfers and balance reads for --duration-secs), idle (open --packets packets nobody grabs; report
    /// memory), retire (send --packets one-share packets, grab each, move the engine's clock past
    /// the retention and retire them all; report whether memory returns to its baseline),
    /// transfers (--transfers transfers among --members users, instant or delayed 2 h, each
    /// accepted, declined, recalled or left to lapse; then the engine's clock moves past every
    /// arrival and every acceptance window, and the deadlines are timed), fairness (for each
    /// lucky draw rule, the mean share, its spread and the best-luck chance of every grab
    /// position over --packets packets of --yuan yuan in --shares shares; no engine runs)
    #[arg(long, value_enum, default_value_t = Scenario::Storm)]
    pub scenario: Scenario,

    /// What to load: `embedded` (an engine in this process), `redis://HOST:PORT` (the
    /// Redis + Lua design), or a running `hongbao serve` over HTTP/1.1 (`http://HOST:PORT`),
    /// its members' own WebSockets (`ws://HOST:PORT`) or the chat host's relay sockets, each
    /// carrying many members' grabs with their tokens (`relay://HOST:PORT`, --connections of
    /// them); server targets need --key. A cluster's nodes are joined by `+`
    /// (`http://HOST:PORT+HOST:PORT+HOST:PORT`): each member talks to one of them. Give
    /// several targets, comma-separated, to
    /// run the same scenario against each in turn and compare them side by side
    /// (`--target embedded,redis://127.0.0.1:6379,http://127.0.0.1:8080`)
    #[arg(long, value_delimiter = ',', default_value = "embedded")]
    pub target: Vec<String>,

    /// The private key (PEM) whose public half the server target trusts (`hongbao keygen`
    /// writes both): the load tool signs the host's and every member's tokens with it
    #[arg(long)]
    pub key: Option<std::path::PathBuf>,

    /// Groups (storm, mixed); hot always uses one
    #[arg(long, default_value_t = 100)]
    pub groups: u64,

    /// Members per group; in storm and hot every one grabs at the same instant
    #[arg(long, default_value_t = 1_000)]
    pub members: u64,

    /// Shares per packet
    #[arg(long, default_value_t = 100)]
    pub shares: u32,

    /// Each packet's total, in yuan
    #[arg(long, default_value_t = 100)]
    pub yuan: u64,

    /// Measured rounds, each with fresh packets (storm, hot) [default: 100 for storm, 1000 for hot]
    #[arg(long)]
    pub rounds: Option<u32>,

    /// Warm-up rounds run first and left out of every figure (storm, hot)
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,

    /// Packets opened (and left untouched) before a storm, to show that a grab's cost does not
    /// depend on how many packets are open (storm, hot)
    #[arg(long, default_value_t = 0)]
    pub background_packets: u64,

    /// How long to run, in seconds: mixed runs this long [default: 10]; with --rate, storm, hot
    /// and recall stop once this much measured time has passed (each round's setup, funding and
    /// sending its packets, is outside it), counting every grab scheduled in it but not started
    /// as dropped [default: until every round is done]
    #[arg(long)]
    pub duration_secs: Option<u64>,

    /// Transfers to send (transfers)
    #[arg(long, default_value_t = 100_000)]
    pub transfers: u64,

    /// Packets to open (idle, retire), or to draw (fairness)
    #[arg(long, default_value_t = 1_000_000)]
    pub packets: u64,

    /// Open loop: start requests on a fixed schedule of this many per second, and measure
    /// latency from each request's scheduled start (coordinated omission corrected; the
    /// uncorrected figure is reported beside it). Without it, storm and hot release every grab
    /// at once and mixed runs closed-loop (each worker sends when its last reply came)
    #[arg(long, value_name = "REQUESTS_PER_SEC")]
    pub rate: Option<f64>,

    /// Seconds a request to Redis or a server may go unanswered before it counts as an error
    /// (its outcome unknown); it also bounds how long a run waits for the requests in flight
    /// when its time ends
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout_secs: u64,

    /// Client workers, each with its own histograms (and its own Redis connection)
    #[arg(long, default_value_t = 64)]
    pub connections: usize,

    /// Redis: at most one request in flight per connection (as HTTP/1.1 allows), instead of
    /// pipelining every request the workers have on the connections
    #[arg(long)]
    pub redis_no_pipelining: bool,

    /// Redis: keep the run's keys (under a random `hb:XXXXXXXX:` prefix) instead of deleting
    /// them when the run ends
    #[arg(long)]
    pub redis_keep: bool,

    /// Client runtime threads [default: the number of cores]
    #[arg(long)]
    pub threads: Option<usize>,

    /// Arbiter threads of the embedded engine [default: half the cores, at least one: the
    /// client shares the machine, so the engine gets half of it rather than the library's
    /// default of one per core]
    #[arg(long)]
    pub arbiters: Option<usize>,

    /// Wallet shards of the embedded engine [default: two per arbiter]
    #[arg(long)]
    pub wallet_shards: Option<usize>,

    /// Run the embedded engine on the durable file journal in DIR (which must be empty or
    /// missing) instead of the in-memory journal
    #[arg(long, value_name = "DIR")]
    pub journal: Option<PathBuf>,

    /// Run the embedded engine on a journal replicated by the NATS JetStream cluster at URLS
    /// (`nats://HOST:PORT`, comma-separated): a stream of the run's own with --nats-replicas
    /// replicas, deleted when the run ends
    #[arg(long, value_name = "URLS", conflicts_with = "journal")]
    pub journal_nats: Option<String>,

    /// With --journal-nats: replicas of the run's stream (3 on a cluster of three)
    #[arg(long, default_value_t = 3)]
    pub nats_replicas: usize,

    /// With --journal: `sync` (acknowledged means fsynced) or `buffered` (written to the OS,
    /// fsynced every --sync-interval-ms)
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    pub durability: DurabilityArg,

    /// With --durability buffered: milliseconds between fsyncs
    #[arg(long, default_value_t = 100)]
    pub sync_interval_ms: u64,

    /// With --journal or --journal-nats: write a snapshot every this many records (0: only at
    /// shutdown)
    #[arg(long, default_value_t = 1_000_000)]
    pub snapshot_every_records: u64,

    /// With --journal: keep the segments a snapshot covers instead of deleting them
    #[arg(long)]
    pub keep_segments: bool,

    /// Requests the embedded engine queues per packet before answering Busy
    #[arg(long, default_value_t = 4_096)]
    pub mailbox_capacity: usize,

    /// Times a grab answered Busy is sent again (after 1 ms) before it counts as an error
    #[arg(long, default_value_t = 10_000)]
    pub busy_retries_max: u32,

    /// Seed for packet splits and the mixed scenario's choices
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Also write the report as one JSON document to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Also write the latency percentile distribution (HdrHistogram text layout, ms) to FILE
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Also draw latency by percentile (log-scaled percentile axis) as SVG to FILE
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,

    /// Show no progress. Otherwise progress goes to stderr: a bar when it is a terminal, else
    /// a line every --progress-every-secs
    #[arg(long)]
    pub no_progress: bool,

    /// Seconds between progress lines when stderr is not a terminal
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub progress_every_secs: u64,
}

/// The journal's durability, as a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    Sync,
    Buffered,
}

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Storm,
    Hot,
    Recall,
    Mixed,
    Idle,
    Retire,
    Transfers,
    Fairness,
}

impl Args {
    /// Records between snapshots of the journal (`u64::MAX`: only at shutdown).
    pub fn snapshot_every(&self) -> u64 {
        Some(self.snapshot_every_records).filter(|&n| n > 0).unwrap_or(u64::MAX)
    }

    /// The embedded engine's arbiter threads.
    pub fn arbiters(&self) -> usize {
        self.arbiters.unwrap_or_else(|| (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1))
    }

    /// Client runtime threads.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// How long a network request may go unanswered.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs)
    }

    /// Measured rounds for storm and hot.
    pub fn rounds(&self) -> u32 {
        self.rounds.unwrap_or(match self.scenario {
            Scenario::Hot => 1_000,
            _ => 100,
        })
    }

    /// How long the measured part of the run may last: mixed always has a duration; an
    /// open-loop storm has one when asked.
    pub fn duration(&self) -> Option<std::time::Duration> {
        let secs = match self.scenario {
            Scenario::Mixed => Some(self.duration_secs.unwrap_or(10)),
            _ => self.duration_secs,
        };
        secs.map(std::time::Duration::from_secs)
    }

    /// Checks what clap cannot.
    ///
    /// # Errors
    ///
    /// A message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        let known = |t: &&String| {
            *t == "embedded" || ["redis://", "http://", "ws://", "relay://"].iter().any(|scheme| t.starts_with(scheme))
        };
        if let Some(bad) = self.target.iter().find(|t| !known(t)) {
            return Err(format!(
                "--target must be `embedded`, redis://HOST:PORT, http://HOST:PORT, ws://HOST:PORT or relay://HOST:PORT, not {bad:?}"
            ));
        }
        let server = |t: &String| ["http://", "ws://", "relay://"].iter().any(|scheme| t.starts_with(scheme));
        if self.key.is_none() && self.target.iter().any(server) {
            return Err("a server target (http:// or ws://) needs --key FILE, the private key of the server's \
                        --public-key"
                .into());
        }
        if self.rate.is_some_and(|r| !(RATE_MIN..=RATE_MAX).contains(&r)) {
            return Err(format!(
                "--rate must be between {RATE_MIN} and {RATE_MAX:e} requests per second (past that, slots are closer \
                 than a nanosecond)"
            ));
        }
        if self.duration_secs.is_some_and(|d| d > DURATION_SECS_MAX) {
            return Err(format!("--duration-secs must be at most {DURATION_SECS_MAX} (a week)"));
        }
        if !(1..=DURATION_SECS_MAX).contains(&self.timeout_secs) {
            return Err(format!("--timeout-secs must be between 1 and {DURATION_SECS_MAX}"));
        }
        if self.members == 0 || self.groups == 0 || self.shares == 0 || self.connections == 0 || self.yuan == 0 {
            return Err("--members, --groups, --shares, --yuan and --connections must be at least 1".into());
        }
        let zero = [
            ("--threads", self.threads),
            ("--arbiters", self.arbiters),
            ("--wallet-shards", self.wallet_shards),
            ("--mailbox-capacity", Some(self.mailbox_capacity)),
        ];
        if let Some((flag, _)) = zero.iter().find(|(_, v)| *v == Some(0)) {
            return Err(format!("{flag} must be at least 1"));
        }
        if self.rounds == Some(0) {
            return Err("--rounds must be at least 1: a run of no rounds measures nothing".into());
        }
        if self.rate.is_some()
            && !matches!(self.scenario, Scenario::Storm | Scenario::Hot | Scenario::Recall | Scenario::Mixed)
        {
            return Err("--rate applies to --scenario storm, hot, recall and mixed; the other scenarios run their \
                        work as fast as the target answers"
                .into());
        }
        if !(1..=DURATION_SECS_MAX).contains(&self.progress_every_secs) {
            return Err(format!("--progress-every-secs must be between 1 and {DURATION_SECS_MAX}"));
        }
        if self.duration_secs == Some(0) {
            return Err("--duration-secs must be at least 1: a run of no time measures nothing".into());
        }
        let timed = self.scenario == Scenario::Mixed
            || (matches!(self.scenario, Scenario::Storm | Scenario::Hot | Scenario::Recall) && self.rate.is_some());
        if self.duration_secs.is_some() && !timed {
            return Err("--duration-secs applies to --scenario mixed, and to storm, hot and recall with --rate (a \
                        burst runs --rounds; the other scenarios run a fixed amount of work)"
                .into());
        }
        if let Some(urls) = &self.journal_nats {
            if urls.split(',').any(|u| !u.trim().starts_with("nats://")) {
                return Err(format!("--journal-nats takes nats://HOST:PORT URLs, comma-separated, not {urls:?}"));
            }
            if !(1..=5).contains(&self.nats_replicas) {
                return Err("--nats-replicas must be between 1 and 5 (JetStream's limit)".into());
            }
            if self.target.iter().any(|t| t != "embedded") {
                return Err("--journal-nats is the embedded engine's journal: --target embedded only".into());
            }
        }
        if self.journal.is_none() && self.durability == DurabilityArg::Buffered {
            return Err("--durability buffered applies to --journal DIR; without it the journal is in memory".into());
        }
        if self.yuan.checked_mul(100).is_none_or(|fen| fen < u64::from(self.shares)) {
            return Err("--yuan must give every share at least 0.01 (and fit in fen)".into());
        }
        self.check_sizes()?;
        self.check_outputs()?;
        if let Some(dir) = &self.journal {
            if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
                return Err(format!(
                    "--journal {} must be empty or missing: a load test starts from nothing",
                    dir.display()
                ));
            }
        }
        if matches!(self.scenario, Scenario::Idle | Scenario::Retire) && self.packets == 0 {
            return Err("--packets must be at least 1".into());
        }
        if self.scenario == Scenario::Retire && self.target.iter().any(|t| t != "embedded") {
            return Err("--scenario retire measures the embedded engine's retention: --target embedded only".into());
        }
        if self.scenario == Scenario::Recall && self.target.iter().any(|t| t != "embedded") {
            return Err("--scenario recall uses the engine's org API: --target embedded only".into());
        }
        if matches!(self.scenario, Scenario::Transfers | Scenario::Fairness)
            && self.target.iter().any(|t| t != "embedded")
        {
            return Err("--scenario transfers and fairness are the engine's own: --target embedded only".into());
        }
        if self.scenario == Scenario::Transfers && (self.transfers == 0 || self.members < 2) {
            return Err("--scenario transfers needs --transfers of at least 1 and --members of at least 2".into());
        }
        Ok(())
    }

    /// Sizes the engine cannot hold, or this machine: refused before any work, with what the
    /// run would need.
    fn check_sizes(&self) -> Result<(), String> {
        let limits = hongbao::Limits::default();
        if self.members > MEMBERS_MAX {
            return Err(format!("--members {} is over {MEMBERS_MAX}, the most one group can hold here", self.members));
        }
        let members_total = self.groups.checked_mul(self.members).ok_or("--groups × --members overflows")?;
        if self.scenario == Scenario::Recall
            && self.groups as usize > limits.org_groups_max.min(limits.org_whitelist_max)
        {
            return Err(format!(
                "--groups {} is over what one org holds (org_groups_max {}, org_whitelist_max {})",
                self.groups, limits.org_groups_max, limits.org_whitelist_max
            ));
        }
        if matches!(self.scenario, Scenario::Storm | Scenario::Recall) && self.groups as usize > limits.groups_max {
            return Err(format!("--groups {} is over the engine's groups_max ({})", self.groups, limits.groups_max));
        }
        if self.shares > limits.shares_per_packet_max {
            return Err(format!(
                "--shares {} is over the engine's shares_per_packet_max ({})",
                self.shares, limits.shares_per_packet_max
            ));
        }
        if self.yuan * 100 > limits.packet_total_fen_max {
            return Err(format!(
                "--yuan {} is over the engine's packet_total_fen_max ({})",
                self.yuan,
                hongbao::Amount::fen(limits.packet_total_fen_max)
            ));
        }
        let share_cap = limits.share_fen_max;
        if self.yuan * 100 > share_cap.saturating_mul(u64::from(self.shares)) {
            return Err(format!(
                "--yuan {} in --shares {} is more than the engine's per-share cap ({}) allows",
                self.yuan,
                self.shares,
                hongbao::Amount::fen(share_cap)
            ));
        }
        if matches!(self.scenario, Scenario::Idle) && self.packets as usize > limits.open_packets_max {
            return Err(format!(
                "--packets {} is over the engine's open_packets_max ({}): the idle packets must all be open at once",
                self.packets, limits.open_packets_max
            ));
        }
        let storm = matches!(self.scenario, Scenario::Storm | Scenario::Hot | Scenario::Recall);
        if storm {
            // Packets with more shares than members never sell out and stay open, as do the
            // background packets.
            let groups = if self.scenario == Scenario::Hot { 1 } else { self.groups };
            let rounds = u64::from(self.warmup) + u64::from(self.rounds());
            let unsold = if self.members < u64::from(self.shares) { groups.saturating_mul(rounds) } else { 0 };
            let open = unsold.saturating_add(self.background_packets);
            if open > limits.open_packets_max as u64 {
                return Err(format!(
                    "--background-packets and the packets left unsold (--members below --shares) come to {open} open \
                     at once, over the engine's open_packets_max ({})",
                    limits.open_packets_max
                ));
            }
        }
        if let (true, Some(rate), None) = (storm, self.rate, self.duration_secs) {
            let groups = if self.scenario == Scenario::Hot { 1 } else { self.groups };
            let requests = (u64::from(self.rounds()) * groups).saturating_mul(self.members);
            let secs = requests as f64 / rate;
            if secs > DURATION_SECS_MAX as f64 {
                return Err(format!(
                    "{requests} grabs at --rate {rate} would take {secs:.0} s: bound the run with --duration-secs \
                     (at most {DURATION_SECS_MAX})"
                ));
            }
        }
        // What a run holds at once: each member's roster entry, wallet and grab of the round,
        // and each client worker's histograms.
        let needed = members_total
            .saturating_mul(BYTES_PER_MEMBER)
            .saturating_add((self.connections as u64).saturating_mul(BYTES_PER_CONNECTION));
        if let Some(available) = available_memory() {
            if needed > available / 10 * 8 {
                return Err(format!(
                    "--groups {} × --members {} with --connections {} needs about {} MiB, more than the {} MiB this \
                     machine has free",
                    self.groups,
                    self.members,
                    self.connections,
                    needed >> 20,
                    available >> 20
                ));
            }
        }
        Ok(())
    }

    /// Every output file can be written, checked before the run rather than after it.
    fn check_outputs(&self) -> Result<(), String> {
        for (flag, path) in [("--json", &self.json), ("--hgrm", &self.hgrm), ("--plot", &self.plot)] {
            let Some(path) = path else { continue };
            let existed = path.exists();
            let opened = std::fs::OpenOptions::new().append(true).create(true).open(path);
            if let Err(e) = opened {
                return Err(format!("{flag} {}: {e}", path.display()));
            }
            if !existed {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }
}

/// The slowest and fastest open-loop rates, in requests per second.
const RATE_MIN: f64 = 0.01;
const RATE_MAX: f64 = 1e9;

/// The longest run, and the longest open-loop schedule: a week.
const DURATION_SECS_MAX: u64 = 7 * 24 * 3600;

/// The most members one group may have in a load (the engine's own bound is a setting; a
/// storm of more members than this in one group is a typo, not a test).
const MEMBERS_MAX: u64 = 10_000_000;

/// What a member costs a run at most, in bytes (roster entry, wallet, grab and reply
/// bookkeeping), measured with generous rounding.
const BYTES_PER_MEMBER: u64 = 400;

/// What a client worker costs at most, in bytes: its three latency histograms (about 170 KiB
/// each) and its task, with generous rounding.
const BYTES_PER_CONNECTION: u64 = 1 << 20;

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim();
    kb.parse::<u64>().ok().map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("loadtest").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_the_documented_storm() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.scenario, Scenario::Storm);
        assert_eq!((a.groups, a.members, a.shares, a.yuan, a.rounds(), a.warmup), (100, 1_000, 100, 100, 100, 2));
        assert_eq!(a.target, ["embedded"]);
        assert!(a.rate.is_none() && a.json.is_none());
        a.validate().unwrap();
    }

    #[test]
    fn scenarios_and_flags_parse() {
        let a = parse(&["--scenario", "hot", "--members", "100000", "--rate", "5000", "--json", "out.json"]).unwrap();
        assert_eq!((a.scenario, a.members, a.rate, a.rounds()), (Scenario::Hot, 100_000, Some(5_000.0), 1_000));
        assert_eq!(a.json.unwrap().to_str(), Some("out.json"));
        let a = parse(&["--scenario", "idle", "--packets", "10", "--target", "redis://127.0.0.1:6379"]).unwrap();
        assert_eq!((a.scenario, a.packets), (Scenario::Idle, 10));
        a.validate().unwrap();
        let a = parse(&["--target", "embedded,redis://127.0.0.1:6379"]).unwrap();
        assert_eq!(a.target, ["embedded", "redis://127.0.0.1:6379"]);
    }

    #[test]
    fn bad_flags_are_refused_with_their_name() {
        assert!(parse(&["--scenario", "flood"]).is_err());
        assert!(parse(&["--members", "-3"]).is_err());
        let a = parse(&["--target", "tcp://x"]).unwrap();
        assert!(a.validate().unwrap_err().contains("--target"));
        let a = parse(&["--target", "http://127.0.0.1:8080"]).unwrap();
        assert!(a.validate().unwrap_err().contains("--key"), "a server target needs the signing key");
        let a = parse(&["--rate", "0"]).unwrap();
        assert!(a.validate().unwrap_err().contains("--rate"));
        let a = parse(&["--shares", "1000", "--yuan", "1", "--members", "5"]).unwrap();
        assert!(a.validate().unwrap_err().contains("--yuan"));
    }

    #[test]
    fn help_names_every_flag_with_its_default() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        for flag in ["--scenario", "--target", "--groups", "--members", "--rate", "--hgrm", "--plot", "--json"] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
        assert!(help.contains("[default: 100]") && help.contains("in yuan"));
    }
}
