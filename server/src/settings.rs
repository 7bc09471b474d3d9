//! The server's settings: every address, path and bound of `hongbao serve` in one place.
//!
//! Precedence: command-line flags, then the environment (`HONGBAO_…`), then a TOML file
//! (`--config FILE`), then the defaults below. Flags and environment variables are parsed by
//! clap into [`ServeArgs`] (every field optional); the file and the defaults by serde into
//! [`Settings`]; [`Settings::load`] lays the first over the second.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything `hongbao serve` runs with. Field names are the TOML keys, the flags
/// (`--body-bytes-max`) and the environment variables (`HONGBAO_BODY_BYTES_MAX`); every field
/// has all three.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The journal's directory; every acknowledged change is fsynced there.
    pub journal: PathBuf,
    /// No journal at all: state lives in memory and is lost at exit (demos, benchmarks).
    pub memory: bool,
    /// The chat host's Ed25519 public key (PEM): the only key that signs members' tokens.
    pub public_key: Option<PathBuf>,
    /// HTTP worker threads (0: one per core).
    pub workers: usize,
    /// The engine's packet-actor threads (0: the engine's default, one per core).
    pub arbiters: usize,
    /// A NATS JetStream cluster (client URLs, comma-separated): this node is one of the
    /// cluster's, serving the partitions whose leases it holds (each journaled on a stream
    /// replicated there, instead of `journal`) and forwarding requests for the others.
    pub cluster: Option<String>,
    /// How many partitions the cluster has: the same on every node, and for the cluster's
    /// whole life (placement depends on it).
    pub partitions: u32,
    /// Where the other nodes reach this one (`http://HOST:PORT`; empty: the address it listens
    /// on).
    pub advertise: String,
    /// This node's name in the leases (empty: `node-` and random hex).
    pub node: String,
    /// How long a lease outlives its last renewal: the longest a dead owner's partition waits
    /// for another node.
    pub lease_ttl_secs: u64,
    /// Replicas of the partition's stream and of the lease bucket (3 on a cluster of three).
    pub nats_replicas: usize,
    /// Store a snapshot of each partition this node serves every this many records, and when
    /// it lets the partition go (0: never; a new owner then reads the whole stream).
    pub snapshot_every_records: u64,
    /// Logs as JSON lines instead of text.
    pub log_json: bool,
    /// Log filter, as `RUST_LOG` takes it.
    pub log_level: String,

    // Authentication.
    /// Sends and transfers above this many fen need a strong authentication (`bio` or `pin`)
    /// within `step_up_secs`.
    pub step_up_fen: u64,
    /// How recent a strong authentication must be for a large send.
    pub step_up_secs: u64,
    /// Clock skew allowed when checking a token's expiry.
    pub token_leeway_secs: u64,
    /// Verified tokens remembered, so that a member's later requests skip the signature check
    /// (about 200 bytes each): size it to the members active within a token's lifetime.
    pub token_cache_len: usize,

    // Bounds.
    /// Largest request body.
    pub body_bytes_max: usize,
    /// Largest WebSocket message from a client.
    pub ws_message_bytes_max: usize,
    /// Most open connections (HTTP and WebSocket) per worker.
    pub connections_max: usize,
    /// Most WebSocket clients at once.
    pub ws_clients_max: usize,
    /// Most WebSocket clients one member may hold at once.
    pub ws_per_user_max: usize,
    /// Events queued for one WebSocket client; a client further behind is disconnected.
    pub ws_buffer_len: usize,
    /// Grabs one WebSocket client may have in flight; more are answered `busy`.
    pub ws_inflight_max: usize,
    /// Grabs one host relay socket may have in flight; more are answered `busy`.
    pub ws_relay_inflight_max: usize,
    /// Recent events kept for clients resuming after a reconnect.
    pub ws_replay_len: usize,
    /// How long a new WebSocket client has to authenticate.
    pub ws_auth_secs: u64,
    /// Seconds between pings; a client silent for three of them is disconnected.
    pub ws_ping_secs: u64,
    /// Claims in one page of a packet view.
    pub claims_page_max: usize,
    /// Seconds to drain requests in flight at shutdown.
    pub shutdown_secs: u64,

    // Rate limits (per second, with bursts of the same size; 0 turns one off).
    /// Grabs per member.
    pub grabs_per_user: u32,
    /// Grabs per client address.
    pub grabs_per_ip: u32,
    /// Packet sends per member.
    pub sends_per_user: u32,
    /// Packet sends per client address.
    pub sends_per_ip: u32,
    /// Transfers (and their recalls, accepts, declines) per member.
    pub transfers_per_user: u32,
    /// Transfers per client address.
    pub transfers_per_ip: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            journal: PathBuf::from("hongbao-journal"),
            memory: false,
            public_key: None,
            workers: 0,
            arbiters: 0,
            cluster: None,
            partitions: 1,
            advertise: String::new(),
            node: String::new(),
            lease_ttl_secs: 5,
            nats_replicas: 3,
            snapshot_every_records: hongbao_cluster::StreamSpec::SNAPSHOT_EVERY_RECORDS,
            log_json: false,
            log_level: "info".into(),
            step_up_fen: 20_000,
            step_up_secs: 300,
            token_leeway_secs: 30,
            token_cache_len: 262_144,
            body_bytes_max: 64 * 1024,
            ws_message_bytes_max: 4 * 1024,
            connections_max: 25_000,
            ws_clients_max: 50_000,
            ws_per_user_max: 8,
            ws_buffer_len: 1024,
            ws_inflight_max: 16,
            ws_relay_inflight_max: 4096,
            ws_replay_len: 65_536,
            ws_auth_secs: 10,
            ws_ping_secs: 20,
            claims_page_max: 200,
            shutdown_secs: 10,
            grabs_per_user: 20,
            grabs_per_ip: 20_000,
            sends_per_user: 5,
            sends_per_ip: 2_000,
            transfers_per_user: 5,
            transfers_per_ip: 2_000,
        }
    }
}

/// `hongbao serve`'s flags. Each one, when given (or set in the environment), overrides the
/// file and the default of the setting of the same name.
#[derive(clap::Args, Clone, Debug, Default, Serialize)]
pub struct ServeArgs {
    /// A TOML file of settings (keys as the flags' names, with underscores)
    #[arg(long, env = "HONGBAO_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Set up a demo org, groups and members with balances, and print a sign-in link for each
    /// (development only: it writes a signing key beside the journal)
    #[arg(long, env = "HONGBAO_DEMO")]
    #[serde(skip)]
    pub demo: bool,
    /// Where to listen [default: 127.0.0.1:8080]
    #[arg(long, env = "HONGBAO_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The journal directory [default: ./hongbao-journal]
    #[arg(long, env = "HONGBAO_JOURNAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<PathBuf>,
    /// Keep state in memory only (nothing survives the process)
    #[arg(long, env = "HONGBAO_MEMORY", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
    /// The chat host's Ed25519 public key (PEM) that signs tokens
    #[arg(long, env = "HONGBAO_PUBLIC_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PathBuf>,
    /// HTTP worker threads (0: one per core)
    #[arg(long, env = "HONGBAO_WORKERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// The engine's packet-actor threads (0: one per core)
    #[arg(long, env = "HONGBAO_ARBITERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arbiters: Option<usize>,
    /// Join the NATS JetStream cluster at these URLs (nats://HOST:PORT, comma-separated): serve
    /// the partitions whose leases this node holds, journaled there, and forward the rest
    #[arg(long, env = "HONGBAO_CLUSTER", value_name = "URLS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The cluster's partitions: the same on every node, for the cluster's life [default: 1]
    #[arg(long, env = "HONGBAO_PARTITIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Where the other nodes reach this one (http://HOST:PORT) [default: the listen address]
    #[arg(long, env = "HONGBAO_ADVERTISE", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// This node's name in the leases: letters, digits, '-' and '_' [default: node-<random>]
    #[arg(long, env = "HONGBAO_NODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Seconds a lease outlives its last renewal [default: 5]
    #[arg(long, env = "HONGBAO_LEASE_TTL_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl_secs: Option<u64>,
    /// Replicas of the stream and the lease bucket [default: 3]
    #[arg(long, env = "HONGBAO_NATS_REPLICAS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_replicas: Option<usize>,
    /// Snapshot each partition every this many records; 0: never [default: 1000000]
    #[arg(long, env = "HONGBAO_SNAPSHOT_EVERY_RECORDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_every_records: Option<u64>,
    /// Log JSON lines
    #[arg(long, env = "HONGBAO_LOG_JSON", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_json: Option<bool>,
    /// Log filter (as RUST_LOG) [default: info]
    #[arg(long, env = "HONGBAO_LOG_LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Sends above this many fen need a recent strong authentication [default: 20000]
    #[arg(long, env = "HONGBAO_STEP_UP_FEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_up_fen: Option<u64>,
    /// How recent that authentication must be [default: 300]
    #[arg(long, env = "HONGBAO_STEP_UP_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_up_secs: Option<u64>,
    /// Largest request body in bytes [default: 65536]
    #[arg(long, env = "HONGBAO_BODY_BYTES_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_bytes_max: Option<usize>,
    /// Largest WebSocket message in bytes [default: 4096]
    #[arg(long, env = "HONGBAO_WS_MESSAGE_BYTES_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_message_bytes_max: Option<usize>,
    /// Most open connections per worker [default: 25000]
    #[arg(long, env = "HONGBAO_CONNECTIONS_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_max: Option<usize>,
    /// Most WebSocket clients [default: 50000]
    #[arg(long, env = "HONGBAO_WS_CLIENTS_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_clients_max: Option<usize>,
    /// Grabs per member per second (0: unlimited) [default: 20]
    #[arg(long, env = "HONGBAO_GRABS_PER_USER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grabs_per_user: Option<u32>,
    /// Grabs per client address per second (0: unlimited) [default: 20000]
    #[arg(long, env = "HONGBAO_GRABS_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grabs_per_ip: Option<u32>,
    /// Packet sends per member per second (0: unlimited) [default: 5]
    #[arg(long, env = "HONGBAO_SENDS_PER_USER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sends_per_user: Option<u32>,
    /// Transfers per member per second (0: unlimited) [default: 5]
    #[arg(long, env = "HONGBAO_TRANSFERS_PER_USER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfers_per_user: Option<u32>,
    /// Packet sends per client address per second (0: unlimited) [default: 2000]
    #[arg(long, env = "HONGBAO_SENDS_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sends_per_ip: Option<u32>,
    /// Transfers per client address per second (0: unlimited) [default: 2000]
    #[arg(long, env = "HONGBAO_TRANSFERS_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfers_per_ip: Option<u32>,
    /// Clock skew allowed on token expiry, in seconds [default: 30]
    #[arg(long, env = "HONGBAO_TOKEN_LEEWAY_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_leeway_secs: Option<u64>,
    /// Verified tokens remembered [default: 262144]
    #[arg(long, env = "HONGBAO_TOKEN_CACHE_LEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_cache_len: Option<usize>,
    /// Most WebSocket clients per member [default: 8]
    #[arg(long, env = "HONGBAO_WS_PER_USER_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_per_user_max: Option<usize>,
    /// Events queued for one WebSocket client before it is dropped [default: 1024]
    #[arg(long, env = "HONGBAO_WS_BUFFER_LEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_buffer_len: Option<usize>,
    /// Grabs one member's socket may have in flight [default: 16]
    #[arg(long, env = "HONGBAO_WS_INFLIGHT_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_inflight_max: Option<usize>,
    /// Grabs one host relay may have in flight [default: 4096]
    #[arg(long, env = "HONGBAO_WS_RELAY_INFLIGHT_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_relay_inflight_max: Option<usize>,
    /// Recent events kept for resuming clients [default: 65536]
    #[arg(long, env = "HONGBAO_WS_REPLAY_LEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_replay_len: Option<usize>,
    /// Seconds a new WebSocket has to authenticate [default: 10]
    #[arg(long, env = "HONGBAO_WS_AUTH_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_auth_secs: Option<u64>,
    /// Seconds between pings [default: 20]
    #[arg(long, env = "HONGBAO_WS_PING_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_ping_secs: Option<u64>,
    /// Claims in one page of a packet view [default: 200]
    #[arg(long, env = "HONGBAO_CLAIMS_PAGE_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims_page_max: Option<usize>,
    /// Seconds to drain requests at shutdown [default: 10]
    #[arg(long, env = "HONGBAO_SHUTDOWN_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_secs: Option<u64>,
    /// Turn every rate limit off (load tests from one address)
    #[arg(long, env = "HONGBAO_NO_RATE_LIMITS")]
    #[serde(skip)]
    pub no_rate_limits: bool,
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file, or the flags over it, are not valid settings.
    #[error("invalid settings{}: {message}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Invalid {
        /// The file, if the error is in it.
        path: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },
}

impl Settings {
    /// The defaults, overlaid by the file (if `args.config` names one), overlaid by the flags
    /// and environment variables that were given.
    pub fn load(args: &ServeArgs) -> Result<Settings, SettingsError> {
        let mut table = match &args.config {
            Some(path) => read_table(path)?,
            None => toml::Table::new(),
        };
        let given = toml::Table::try_from(args).map_err(|e| invalid(None, e))?;
        table.extend(given);
        let mut settings: Settings =
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| invalid(args.config.as_deref(), e))?;
        if args.no_rate_limits {
            settings = settings.without_rate_limits();
        }
        settings.validate()?;
        Ok(settings)
    }

    /// These settings with every rate limit off (load tests, which come from one address).
    pub fn without_rate_limits(self) -> Settings {
        Settings {
            grabs_per_user: 0,
            grabs_per_ip: 0,
            sends_per_user: 0,
            sends_per_ip: 0,
            transfers_per_user: 0,
            transfers_per_ip: 0,
            ..self
        }
    }

    /// Bounds that would make the server useless or unbounded are refused.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let positive = [
            ("body_bytes_max", self.body_bytes_max),
            ("ws_message_bytes_max", self.ws_message_bytes_max),
            ("connections_max", self.connections_max),
            ("ws_clients_max", self.ws_clients_max),
            ("ws_per_user_max", self.ws_per_user_max),
            ("ws_buffer_len", self.ws_buffer_len),
            ("ws_inflight_max", self.ws_inflight_max),
            ("ws_relay_inflight_max", self.ws_relay_inflight_max),
            ("ws_replay_len", self.ws_replay_len),
            ("claims_page_max", self.claims_page_max),
        ];
        if let Some(urls) = &self.cluster {
            if urls.split(',').any(|u| !u.trim().starts_with("nats://")) {
                return Err(invalid(
                    None,
                    format!("cluster takes nats://HOST:PORT URLs, comma-separated, not {urls:?}"),
                ));
            }
            if self.memory {
                return Err(invalid(None, "cluster and memory exclude each other: the cluster is the journal"));
            }
        }
        if !(1..=hongbao::PARTITIONS_MAX).contains(&self.partitions) {
            return Err(invalid(None, format!("partitions must be 1 to {}", hongbao::PARTITIONS_MAX)));
        }
        if !self.advertise.is_empty() {
            let host_port = self.advertise.strip_prefix("http://").unwrap_or_default();
            if host_port.is_empty() || host_port.contains(['/', '?', '#', ' ']) {
                return Err(invalid(None, format!("advertise takes http://HOST:PORT, not {:?}", self.advertise)));
            }
        }
        if !(1..=3600).contains(&self.lease_ttl_secs) || !(1..=5).contains(&self.nats_replicas) {
            return Err(invalid(None, "lease_ttl_secs must be 1 to 3600 and nats_replicas 1 to 5"));
        }
        match positive.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(invalid(None, format!("{name} must be at least 1"))),
            None if self.ws_auth_secs == 0 || self.ws_ping_secs == 0 => {
                Err(invalid(None, "ws_auth_secs and ws_ping_secs must be at least 1"))
            }
            None => Ok(()),
        }
    }
}

fn read_table(path: &Path) -> Result<toml::Table, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read { path: path.into(), source })?;
    text.parse::<toml::Table>().map_err(|e| invalid(Some(path), e))
}

fn invalid(path: Option<&Path>, e: impl std::fmt::Display) -> SettingsError {
    SettingsError::Invalid { path: path.map(Path::to_path_buf), message: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let dir = std::env::temp_dir().join(format!("hongbao-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("serve.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nbody_bytes_max = 1000\ngrabs_per_user = 7\n").unwrap();
        let args = ServeArgs { config: Some(file.clone()), body_bytes_max: Some(2000), ..ServeArgs::default() };
        let settings = Settings::load(&args).unwrap();
        assert_eq!(settings.listen, "127.0.0.1:9000".parse().unwrap(), "from the file");
        assert_eq!(settings.body_bytes_max, 2000, "the flag wins over the file");
        assert_eq!(settings.grabs_per_user, 7);
        assert_eq!(settings.sends_per_user, Settings::default().sends_per_user, "the default stays");

        std::fs::write(&file, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let err = Settings::load(&args).unwrap_err();
        assert!(err.to_string().contains("lisen"), "a misspelt key is named: {err}");
        let off = ServeArgs { no_rate_limits: true, grabs_per_user: Some(7), ..ServeArgs::default() };
        let off = Settings::load(&off).unwrap();
        assert_eq!((off.grabs_per_user, off.sends_per_ip, off.transfers_per_user), (0, 0, 0), "the switch wins");
        let zero = ServeArgs { ws_message_bytes_max: Some(0), ..ServeArgs::default() };
        assert!(Settings::load(&zero).unwrap_err().to_string().contains("ws_message_bytes_max"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
