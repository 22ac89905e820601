//! `loader status`: what a running daemon is doing.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use loader::server::default_socket;

/// `loader status` flags.
#[derive(Args)]
pub struct StatusArgs {
    /// The daemon's socket (default: as `serve`).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Print the raw statistics as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints the daemon's statistics.
pub fn run(args: &StatusArgs) -> Result<()> {
    let socket = args.socket.clone().unwrap_or_else(default_socket);
    let s = loader::wire::client::stats(&socket)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "loader pid {} on {}, up {:.0} s, {} worker thread(s) per client",
        s.pid,
        socket.display(),
        s.uptime_s,
        s.workers
    )?;
    writeln!(
        out,
        "  {:.1} samples/s now; {} samples since start from {} decodes ({:.2} samples per \
         decode); {} decode error(s); {} connection(s) refused",
        s.samples_per_s,
        s.samples,
        s.decoded,
        s.samples as f64 / s.decoded.max(1) as f64,
        s.decode_errors,
        s.refused
    )?;
    let [d, r, f, a, w] = s.stage_ms;
    writeln!(
        out,
        "  per sample (ms, summed over threads): decode {d:.3}, crop+resize {r:.3}, flip \
         {f:.3}, RandAugment {a:.3}, write {w:.3}"
    )?;
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    writeln!(
        out,
        "  memory: {:.1} MiB anonymous, {:.1} MiB of rings written (shared memory; budget {:.1} MiB), \
         {:.1} MiB mapped files (binary and shard pages: page cache)",
        mb(s.memory.anon),
        mb(s.memory.shmem),
        mb(s.memory_budget),
        mb(s.memory.file)
    )?;
    writeln!(out, "  {} client(s)", s.clients.len())?;
    for c in &s.clients {
        writeln!(
            out,
            "    job {:?} rank {} (pid {}, uid {}, {}): next epoch {} step {}, ring {}/{} \
             slots full, {} samples",
            c.job_id,
            c.rank,
            c.pid,
            c.uid,
            match c.group {
                0 => "waiting for its job's other ranks".to_string(),
                1 => "alone".to_string(),
                n => format!("decodes shared by {n} ranks"),
            },
            c.next.epoch,
            c.next.step,
            c.slots_full,
            c.slots,
            c.samples
        )?;
    }
    Ok(())
}
