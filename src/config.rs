//! How an engine is set up: its limits, its threads, its clock and its journal.

use std::fmt;
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::journal::{Durability, FileJournalConfig, History, Journal, MemoryJournal};
use crate::limits::Limits;
use crate::partition::Partition;
use crate::replay::Folded;

/// An engine's configuration. `Config::default()` is the embedded default: system clock,
/// in-memory journal, one arbiter per core, product limits.
///
/// # Examples
///
/// ```
/// use hongbao::{Config, ManualClock};
/// use std::sync::Arc;
/// let clock = ManualClock::default();
/// let config = Config::default().with_clock(Arc::new(clock.clone())).with_seed(7);
/// assert_eq!(config.seed, Some(7));
/// ```
#[derive(Clone)]
pub struct Config {
    /// Every bound.
    pub limits: Limits,
    /// Threads that host packet actors (default: one per core). Packets are placed on them by
    /// hashing their id.
    pub arbiters: usize,
    /// Wallet shard actors (default: two per arbiter). Users are placed on them by hashing.
    pub wallet_shards: usize,
    /// Where deadlines come from.
    pub clock: Arc<dyn Clock>,
    /// Where state changes are recorded when `journal_dir` is not set (default: in memory).
    pub journal: Arc<dyn Journal>,
    /// The durable file journal: when set, the engine recovers from this directory at start
    /// and records every change there (`journal` is then unused).
    pub journal_dir: Option<FileJournalConfig>,
    /// What `journal` already holds, replayed at start (a replicated journal's earlier
    /// records); unused with `journal_dir`.
    pub history: Option<Arc<dyn History>>,
    /// What `journal` already holds, folded (a snapshot and the records after it): the engine
    /// starts from it, then replays `history` if any; unused with `journal_dir`.
    pub start: Option<Arc<Folded>>,
    /// Seeds every packet's lucky draw from this and the packet id, for reproducible runs.
    /// `None` (the default) draws each packet's seed from the operating system.
    pub seed: Option<u64>,
    /// Which partition of a cluster this engine serves (default: the whole, unpartitioned).
    /// Money credited here to members whose wallets are in another partition leaves as
    /// [`crate::Remittance`]s. A partition journals to `journal` (a replicated log, with its
    /// `history` or `start`) or memory: the file journal (`journal_dir`) is refused, as a
    /// partition's journal is its cluster's replicated log.
    pub partition: Partition,
}

impl Default for Config {
    fn default() -> Config {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            limits: Limits::default(),
            arbiters: cores,
            wallet_shards: cores * 2,
            clock: Arc::new(SystemClock),
            journal: Arc::new(MemoryJournal::new()),
            journal_dir: None,
            history: None,
            start: None,
            seed: None,
            partition: Partition::whole(),
        }
    }
}

impl Config {
    /// This configuration recording to `journal`, which already holds `history`: the engine
    /// replays it at start, as it recovers from a file journal.
    pub fn with_journal_history(mut self, journal: Arc<dyn Journal>, history: Arc<dyn History>) -> Config {
        self.journal = journal;
        self.history = Some(history);
        self
    }

    /// This configuration recording to `journal`, starting from `state`: what its log already
    /// holds, folded (a snapshot and the records after it), which the engine checks and loads
    /// as it recovers from a file journal.
    pub fn with_journal_state(mut self, journal: Arc<dyn Journal>, state: Folded) -> Config {
        self.journal = journal;
        self.start = Some(Arc::new(state));
        self
    }

    /// This configuration with `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Config {
        self.clock = clock;
        self
    }

    /// This configuration with `journal`.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Config {
        self.journal = journal;
        self
    }

    /// This configuration with the durable journal in `dir` (see [`FileJournalConfig`] for
    /// its other bounds).
    pub fn with_journal_dir(mut self, dir: impl Into<std::path::PathBuf>, durability: Durability) -> Config {
        self.journal_dir = Some(FileJournalConfig::new(dir, durability));
        self
    }

    /// This configuration with `limits`.
    pub fn with_limits(mut self, limits: Limits) -> Config {
        self.limits = limits;
        self
    }

    /// This configuration serving `partition` of a cluster.
    pub fn with_partition(mut self, partition: Partition) -> Config {
        self.partition = partition;
        self
    }

    /// This configuration with a fixed seed for every packet's lucky draw.
    pub fn with_seed(mut self, seed: u64) -> Config {
        self.seed = Some(seed);
        self
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("limits", &self.limits)
            .field("arbiters", &self.arbiters)
            .field("wallet_shards", &self.wallet_shards)
            .field("clock", &self.clock)
            .field("journal_dir", &self.journal_dir)
            .field("partition", &self.partition)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}
