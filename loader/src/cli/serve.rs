//! `loader serve`: the daemon, from a config file and flags.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use loader::server::{ServeConfig, Server};
use shard_tool::console::number_in;

use super::UsageError;

/// `loader serve` flags; each overrides the config file's key of the same name.
#[derive(Args)]
pub struct ServeArgs {
    /// TOML config (keys: shards, socket, workers, decode_turns, slots, max_slots, max_ring_bytes,
    /// max_clients, max_clients_per_uid, memory_budget_bytes, allow_uids, allow_gids, allow_groups, socket_mode,
    /// handshake_timeout_s, idle_timeout_s, stall_timeout_s, ring_bytes_per_s_per_uid, clients_per_s_per_uid,
    /// group_wait_s, metrics_listen; see configs/loader.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset directory made by `shard-tool pack`.
    #[arg(long)]
    pub shards: Option<PathBuf>,
    /// Socket path (default: $RUNTIME_DIRECTORY/loader.sock, $XDG_RUNTIME_DIR/rsb/loader.sock
    /// or /run/rsb/loader.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Worker threads per client (default: one per core).
    #[arg(short = 'j', long, value_parser = number_in(0..=1024u32))]
    pub workers: Option<u32>,
    /// Ring slots per client when the client does not ask (default 8).
    #[arg(long, value_parser = number_in(1..=1024u32))]
    pub slots: Option<u32>,
    /// Allow this user id to connect (repeatable; default: the daemon's own uid).
    #[arg(long = "allow-uid")]
    pub allow_uids: Vec<u32>,
    /// Allow this group id to connect (repeatable).
    #[arg(long = "allow-gid")]
    pub allow_gids: Vec<u32>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0 picks a
    /// free one, logged at start). Samples, decodes, decode errors, stage-time histograms,
    /// clients and refusals by reason, ring bytes against the budget, each client's queue
    /// depth and waits (labelled uid, job id, rank). Off by default. Who can read them: anyone
    /// who can connect to ADDR; on 127.0.0.1 every user of this machine, on any other address
    /// anyone who can reach the port (warned at start).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Serves until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> Result<()> {
    let origin = args.config.as_ref().map_or_else(
        || "loader serve".to_owned(),
        |p| format!("{} (or its flag)", p.display()),
    );
    let mut config: ServeConfig = match &args.config {
        Some(path) => {
            // A service config is a page of TOML; 1 MiB bounds a path that is something else.
            let text = shard_tool::user_file::read_string_capped(
                path,
                shard_tool::user_file::MIB,
                "a loader config",
            )
            .map_err(|e| UsageError(e.chain()))?;
            toml::from_str(&text)
                .map_err(|e| UsageError(format!("{}: {}", path.display(), e.message())))?
        }
        None => ServeConfig::default(),
    };
    if let Some(s) = args.shards {
        config.shards = Some(s);
    }
    if let Some(s) = args.socket {
        config.socket = Some(s);
    }
    if let Some(w) = args.workers {
        config.workers = w;
    }
    if let Some(s) = args.slots {
        config.slots = s;
    }
    if !args.allow_uids.is_empty() {
        config.allow_uids = args.allow_uids;
    }
    if !args.allow_gids.is_empty() {
        config.allow_gids = args.allow_gids;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = Some(addr);
    }
    config
        .validate()
        .map_err(|e| UsageError(format!("{origin}: {e}")))?;
    shard_tool::console::init_logging("info");
    // Before the runtime's threads: see `server::trim`.
    loader::server::single_arena();
    // A file size limit (`ulimit -f`, systemd's LimitFSIZE=) stops a ring past it with EFBIG,
    // which refuses that one client (`RingError::NoMemory`); SIGXFSZ's default action would
    // instead kill the daemon and every client's ring with it.
    // SAFETY: a signal's disposition set to SIG_IGN, before any thread is started.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // The handlers come before the socket: once a client can connect, a SIGTERM or SIGHUP
        // must stop the daemon cleanly (its socket removed), never by the default action (a
        // SIGHUP sent just after the socket appeared once left it behind, under load).
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        // A closed terminal (SIGHUP) stops the daemon as cleanly as SIGTERM.
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shards = config.shards.clone();
        let server = Server::bind(config)?;
        println!("{}", server.socket().display());
        tracing::info!(
            "serving {} on {}",
            shards.unwrap_or_default().display(),
            server.socket().display()
        );
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = hangup.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("shutting down");
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        };
        server.run(shutdown).await;
        Ok(())
    })
}
