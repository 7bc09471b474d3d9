//! `hongbao`: the server in front of members, and operator commands for a journal.
//!
//! `hongbao serve` runs the engine behind HTTP + WebSocket (see the `hongbao_server` library
//! and the README's Server section); `hongbao keygen` and `hongbao token` make a signing key
//! and tokens for development and tests.
//!
//! `hongbao audit DIR` verifies every checksum and the whole hash chain of the journal in
//! DIR, replays it through the engine's own rules (every lucky claim checked against the share
//! its recorded seed draws), checks conservation and every packet (shares within bounds and
//! summing to the total, nobody paid twice, refunds exactly once). Exit status 0 when all
//! holds, 1 naming the first problem. The work is the library's `audit_journal`; this only
//! prints it.
//!
//! `hongbao log DIR --org N` prints an org's operation log from the journal in DIR, verifying
//! every checksum and the hash chain as it reads (the library's `operation_log`).

mod operator;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hongbao::{Config, Engine, Limits, OpKind, OpQuery, OrgId, Timestamp, UserId};
use hongbao_server::auth::{self, Claims};
use hongbao_server::{demo, telemetry, ServeArgs, Settings};

#[derive(Parser)]
#[command(version, about = "The hongbao server, and operator commands for a hongbao journal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the engine over HTTP + WebSocket, with the live page at /
    Serve(Box<ServeArgs>),
    /// Make an Ed25519 key pair for signing tokens (development and tests: in production the
    /// chat host keeps its own key)
    Keygen {
        /// Where to write `hongbao-host.key` (private) and `hongbao-host.pub` (public)
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Print a token signed with a private key (development and tests)
    Token {
        /// The private key (PEM), as `keygen` writes it
        #[arg(long)]
        key: PathBuf,
        /// The member
        #[arg(long, required_unless_present = "host")]
        user: Option<u64>,
        /// The device the token is bound to
        #[arg(long, required_unless_present = "host")]
        device: Option<String>,
        /// How the member authenticated (pwd, bio, pin…), comma-separated
        #[arg(long, value_delimiter = ',', default_value = "pwd")]
        amr: Vec<String>,
        /// An org the member administers (repeatable)
        #[arg(long)]
        admin: Vec<u64>,
        /// A host token (deposits, withdrawals, rosters, orgs) instead of a member's
        #[arg(long, conflicts_with_all = ["user", "device"])]
        host: bool,
        /// Seconds until it expires
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Open a journal as an engine starting on it would (recovery, a torn tail cut off), report
    /// how long that took, and close it cleanly (which writes a snapshot)
    Open {
        /// The journal directory
        dir: PathBuf,
    },
    /// Verify a journal directory: checksums, hash chain, replay, conservation, every packet
    Audit {
        /// The journal directory
        #[arg(required_unless_present = "cluster")]
        dir: Option<PathBuf>,
        /// Audit the journal on this NATS JetStream cluster instead (nats://HOST:PORT,
        /// comma-separated): the partition's stream, replayed and checked the same way
        #[arg(long, value_name = "URLS", conflicts_with = "dir")]
        cluster: Option<String>,
        /// How many partitions the cluster has (with --cluster): each one's stream is audited,
        /// then conservation over all of them with the remittances in flight counted (the
        /// streams are read one after another: audit a quiet cluster)
        #[arg(long, default_value_t = 1, requires = "cluster",
              value_parser = clap::value_parser!(u32).range(1..=i64::from(hongbao::PARTITIONS_MAX)))]
        partitions: u32,
        /// Print the result as one JSON document
        #[arg(long)]
        json: bool,
        /// The per-share cap the engine ran with, in fen (re-deriving lucky shares needs it)
        #[arg(long, default_value_t = Limits::default().share_fen_max)]
        share_fen_max: u64,
    },
    /// Print an org's operation log from a journal directory, verifying its hash chain
    Log {
        /// The journal directory
        dir: PathBuf,
        /// The org
        #[arg(long)]
        org: u64,
        /// From this time, in milliseconds since the Unix epoch (inclusive)
        #[arg(long)]
        since: Option<u64>,
        /// Until this time, in milliseconds since the Unix epoch (exclusive)
        #[arg(long)]
        until: Option<u64>,
        /// Only this actor's operations
        #[arg(long)]
        actor: Option<u64>,
        /// Only this kind (org_created, policy_set, group_attached, packet_sent, packet_opened,
        /// claimed, packet_cancelled, packet_expired, packet_recalled)
        #[arg(long)]
        kind: Option<OpKind>,
        /// Print the entries as one JSON document
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(&args),
        Command::Keygen { dir } => keygen(&dir),
        Command::Token { key, user, device, amr, admin, host, ttl_secs } => {
            let claims = if host {
                Claims::host(ttl_secs)
            } else {
                let (user, device) = (user.unwrap_or_default(), device.unwrap_or_default());
                let amr: Vec<&str> = amr.iter().map(String::as_str).collect();
                let mut claims = Claims::member(UserId(user), &device, &amr, ttl_secs);
                claims.adm = admin;
                claims
            };
            token(&key, &claims)
        }
        Command::Audit { cluster: Some(urls), partitions, json, share_fen_max, .. } => {
            let streams: Vec<_> = (0..partitions).map(|i| cluster::stream(i, 3, None)).collect();
            operator::run_cluster_audit(&urls, &streams, json, share_fen_max)
        }
        Command::Audit { dir, cluster: None, json, share_fen_max, .. } => {
            operator::run_audit(&dir.expect("clap requires it without --cluster"), json, share_fen_max)
        }
        Command::Open { dir } => operator::open(&dir),
        Command::Log { dir, org, since, until, actor, kind, json } => {
            let query = OpQuery {
                since: since.map(Timestamp),
                until: until.map(Timestamp),
                actor: actor.map(UserId),
                kind,
                ..OpQuery::default()
            };
            operator::log(&dir, OrgId(org), &query, json)
        }
    }
}

/// Exit status for arguments or settings that cannot work: nothing was started.
const USAGE: u8 = 2;

fn serve(args: &ServeArgs) -> ExitCode {
    let settings = match Settings::load(args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("hongbao serve: {e}");
            return ExitCode::from(USAGE);
        }
    };
    telemetry::init_logs(settings.log_json, &settings.log_level);
    let (public, demo_key) = match (&settings.public_key, args.demo) {
        (Some(_), true) => {
            eprintln!("hongbao serve: --demo signs its own tokens; drop --public-key");
            return ExitCode::from(USAGE);
        }
        (None, true) => {
            let (private, public) = auth::keygen();
            (public, Some(private))
        }
        (Some(path), false) => match std::fs::read_to_string(path) {
            Ok(public) => (public, None),
            Err(e) => {
                eprintln!("hongbao serve: cannot read the public key {}: {e}", path.display());
                return ExitCode::from(USAGE);
            }
        },
        (None, false) => {
            eprintln!(
                "hongbao serve: --public-key FILE is required (the chat host's Ed25519 key that signs tokens; \
                 `hongbao keygen` makes one for development), or --demo"
            );
            return ExitCode::from(USAGE);
        }
    };
    let mut config = Config::default();
    if settings.arbiters > 0 {
        config.arbiters = settings.arbiters;
    }
    if let Some(urls) = settings.cluster.clone() {
        if demo_key.is_some() {
            eprintln!("hongbao serve: --demo runs one engine of its own; drop --cluster");
            return ExitCode::from(USAGE);
        }
        return cluster::serve(&urls, settings, config, &public);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    if !settings.memory {
        config.journal_dir = Some(hongbao_server::service::journal_config(&settings.journal));
    }
    let engine = match Engine::start(config) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("hongbao serve: the engine did not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match hongbao_server::start(settings, engine.clone(), public.as_bytes()) {
        Ok(running) => running,
        Err(e) => {
            eprintln!("hongbao serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let base = format!("http://{}", running.addr);
        if let Some(private) = demo_key {
            match demo::setup(&engine, &private, &base).await {
                Ok(invites) => {
                    println!("demo: sign in as a member of the demo group (development only):");
                    for invite in invites {
                        println!("  {:<10} {}", invite.name, invite.link);
                    }
                }
                Err(e) => eprintln!("hongbao serve: the demo could not be set up: {e}"),
            }
        }
        println!("listening on {base}");
        tracing::info!(addr = %running.addr, "listening");
        wait_for_signal().await;
        stopped(running.shutdown().await)
    })
}

/// The end of a graceful stop.
fn stopped(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hongbao serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `hongbao serve --cluster`: one node of a cluster.
mod cluster {
    use std::process::ExitCode;
    use std::time::Duration;

    use hongbao::Config;
    use hongbao_cluster::{Fleet, FleetSpec, StreamSpec};
    use hongbao_server::cluster::Partitions;
    use hongbao_server::service::Backend;
    use hongbao_server::Settings;

    /// How long a node waits for another node's answer to a request it forwarded.
    const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

    /// Joins the cluster at `urls`, listens at once (forwarding what other nodes serve), and
    /// serves each partition whose lease it takes, until SIGTERM or SIGINT.
    pub fn serve(urls: &str, settings: Settings, config: Config, public: &str) -> ExitCode {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
        let node = if settings.node.is_empty() { default_name() } else { settings.node.clone() };
        if settings.advertise.is_empty() && settings.listen.ip().is_unspecified() {
            eprintln!(
                "hongbao serve: listening on {} says nothing about where the other nodes reach this one: give \
                 --advertise http://HOST:PORT",
                settings.listen
            );
            return ExitCode::from(super::USAGE);
        }
        let spec = FleetSpec {
            urls: urls.to_owned(),
            node: node.clone(),
            partitions: settings.partitions,
            lease_ttl: Duration::from_secs(settings.lease_ttl_secs),
            replicas: settings.nats_replicas,
            snapshot_every_records: Some(settings.snapshot_every_records).filter(|&n| n > 0),
        };
        let joined = runtime.block_on(async {
            let fleet = Fleet::join(spec).await?;
            let events = fleet.events().await?;
            Ok::<_, hongbao_cluster::FleetError>((fleet, events))
        });
        let (mut fleet, events) = match joined {
            Ok(joined) => joined,
            Err(e) => {
                eprintln!("hongbao serve: cannot join the cluster: {e}");
                return ExitCode::FAILURE;
            }
        };
        let partitions = Partitions::cluster(
            settings.partitions,
            fleet.serving(),
            fleet.directory(),
            fleet.secret().to_owned(),
            FORWARD_TIMEOUT,
        );
        let advertise = settings.advertise.clone();
        let running = match hongbao_server::service::start_with(
            settings,
            Backend::Cluster(partitions, events),
            public.as_bytes(),
        ) {
            Ok(running) => running,
            Err(e) => {
                eprintln!("hongbao serve: {e}");
                return ExitCode::FAILURE;
            }
        };
        let base = format!("http://{}", running.addr);
        let address = if advertise.is_empty() { base.clone() } else { advertise };
        runtime.block_on(async move {
            if let Err(e) = fleet.hold(&address, &config) {
                eprintln!("hongbao serve: {e}");
                let _ = running.shutdown().await;
                fleet.stop().await;
                return ExitCode::from(super::USAGE);
            }
            println!("node {node} listening on {base} (reached at {address}); it serves the partitions it takes");
            let mut serving = fleet.serving();
            let announce = async {
                loop {
                    let held: Vec<u32> = serving.borrow_and_update().keys().copied().collect();
                    println!("node {node} serves partitions {held:?}");
                    if serving.changed().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                () = super::wait_for_signal() => {}
                () = announce => {}
            }
            tracing::info!("stopping: giving the partitions up, closing sockets, draining requests");
            // Each partition's engine flushes and its lease is given up, so another node takes
            // it at once; the requests drained meanwhile are forwarded to it.
            fleet.release().await;
            let stopped = running.shutdown().await;
            fleet.stop().await;
            super::stopped(stopped)
        })
    }

    /// A name no other node has: `node-` and random hex (process ids repeat across
    /// containers).
    fn default_name() -> String {
        let mut bytes = [0u8; 6];
        let _ = getrandom::fill(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("node-{hex}")
    }

    /// Partition `index`'s stream.
    pub fn stream(index: u32, replicas: usize, snapshot_every_records: Option<u64>) -> StreamSpec {
        hongbao_cluster::fleet::stream(index, replicas, snapshot_every_records)
    }
}

/// SIGTERM or SIGINT.
async fn wait_for_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn keygen(dir: &Path) -> ExitCode {
    let (private, public) = auth::keygen();
    let (private_path, public_path) = (dir.join("hongbao-host.key"), dir.join("hongbao-host.pub"));
    if private_path.exists() || public_path.exists() {
        eprintln!(
            "hongbao keygen: {} or {} exists; not overwriting a key",
            private_path.display(),
            public_path.display()
        );
        return ExitCode::from(USAGE);
    }
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| write_private(&private_path, &private))
        .and_then(|()| std::fs::write(&public_path, public));
    match written {
        Ok(()) => {
            println!("private key (keep it secret): {}", private_path.display());
            println!("public key (for --public-key): {}", public_path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hongbao keygen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(pem.as_bytes())
}

fn token(key: &Path, claims: &Claims) -> ExitCode {
    let pem = match std::fs::read(key) {
        Ok(pem) => pem,
        Err(e) => {
            eprintln!("hongbao token: cannot read {}: {e}", key.display());
            return ExitCode::from(USAGE);
        }
    };
    match auth::mint(&pem, claims) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hongbao token: {e}");
            ExitCode::from(USAGE)
        }
    }
}
