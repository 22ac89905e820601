//! The machine's own faults, met by a real daemon: shared memory that runs out.
//!
//! The rings are anonymous memory files (`memfd`), not files in `/dev/shm`: a full `/dev/shm`
//! does not touch them. What does is the machine having no memory for a new ring (or a file
//! size limit on the daemon, which the kernel enforces on memory files too, and which this
//! test uses to make the shortage at a size it chooses): that client is refused, saying so,
//! and the daemon serves the others.

use std::path::Path;
use std::process::Command;

use super::bin_dir;
use super::daemon::{Daemon, dataset, nix_uid};

/// `loader fetch` of `steps` batches of `batch` a1 images from the daemon at `socket`.
fn fetch(socket: &Path, batch: u32, steps: u32) -> std::process::Output {
    Command::new(bin_dir().join("loader"))
        .arg("fetch")
        .arg("--socket")
        .arg(socket)
        .args(["--transform", "a1", "--seed", "7", "--digests"])
        .args(["-b", &batch.to_string(), "--steps", &steps.to_string()])
        .args(["--reconnect-timeout", "0"])
        .output()
        .unwrap()
}

#[test]
fn a_ring_there_is_no_memory_for_refuses_that_client_and_the_daemon_serves_the_others() {
    let _cores = super::shared_cores();
    if nix_uid() != 0 {
        eprintln!(
            "skipped: a private /dev/shm needs a mount namespace, which needs root (this is \
             uid {})",
            nix_uid()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let socket = dir.path().join("loader.sock");
    // The daemon in a mount namespace of its own whose /dev/shm is a full 64 KiB tmpfs, and
    // with a 16 MiB file size limit: a 64-image a1 ring (8 slots of 224 px, 77 MB) is past
    // it, a 4-image one (4.8 MB) within.
    let limit = 16u64 << 20;
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs /dev/shm && \
         (head -c 1048576 /dev/zero > /dev/shm/fill 2>/dev/null; true) && \
         df -B1 --output=avail /dev/shm | tail -1 >&2 && \
         exec prlimit --fsize={limit} \"$@\""
    );
    let wrapper = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ];
    let mut daemon = Daemon::start_under(&wrapper, &shards, &socket, &[]);
    let free: u64 = daemon
        .log()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    assert_eq!(
        free,
        0,
        "the daemon's /dev/shm is not full: {}",
        daemon.log()
    );

    let small = fetch(&socket, 4, 20);
    assert!(small.status.success(), "{small:?}");
    let big = fetch(&socket, 64, 2);
    let said = String::from_utf8_lossy(&big.stderr).into_owned();
    assert!(
        !big.status.success(),
        "a 77 MB ring past a 16 MiB limit was made"
    );
    assert!(said.contains("no memory for a ring of"), "{said}");
    // The daemon lives on and serves the next client the same batches.
    let again = fetch(&socket, 4, 20);
    assert!(again.status.success(), "{again:?}");
    let digests = |o: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("epoch "))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(digests(&again), digests(&small));
    assert_eq!(digests(&small).len(), 20);
    daemon.assert_alive();
    eprintln!(
        "/dev/shm full (0 bytes free), file size limit {limit}: 4-image rings served, the \
         64-image one refused:\n{}",
        said.trim()
    );
}
