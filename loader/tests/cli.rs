//! The `loader` binary end to end: `augment` on generated images, and every bad value refused
//! with one line naming it and exit status 2 before any file is read or socket touched.

use assert_cmd::Command;
use predicates::str::contains;

fn loader() -> Command {
    Command::cargo_bin("loader").unwrap()
}

#[test]
fn augment_applies_ops_and_explains_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = dir.path().join("in.jpg");
    std::fs::write(&jpeg, shard_tool::synth::class_image(3, 1, 80, 60)).unwrap();
    let decoded = dir.path().join("decoded.png");
    let flipped = dir.path().join("flipped.png");
    let back = dir.path().join("back.png");
    loader()
        .args(["augment", "--op", "decode"])
        .arg(&jpeg)
        .arg(&decoded)
        .assert()
        .success();
    loader()
        .args(["augment", "--op", "flip"])
        .arg(&decoded)
        .arg(&flipped)
        .assert()
        .success();
    loader()
        .args(["augment", "--op", "flip"])
        .arg(&flipped)
        .arg(&back)
        .assert()
        .success();
    assert_ne!(
        std::fs::read(&decoded).unwrap(),
        std::fs::read(&flipped).unwrap()
    );
    assert_eq!(
        std::fs::read(&decoded).unwrap(),
        std::fs::read(&back).unwrap()
    );

    let out = dir.path().join("crop.png");
    loader()
        .args([
            "augment",
            "--op",
            "resized-crop",
            "--arg",
            "10,5,40,30",
            "--size",
            "32",
        ])
        .arg(&jpeg)
        .arg(&out)
        .assert()
        .success();
    loader()
        .args([
            "augment",
            "--op",
            "eval",
            "--size",
            "48",
            "--crop-pct",
            "0.875",
        ])
        .arg(&jpeg)
        .arg(&out)
        .assert()
        .success();
    // Refused with exit status 2 and the flag at fault. Near u32::MAX, LEFT + WIDTH wrapped
    // around (a panic in debug builds, a bad box in release ones).
    let refused: [(&[&str], &str); 4] = [
        (
            &["--op", "resized-crop", "--arg", "70,5,40,30"],
            "must lie within the 80x60 image",
        ),
        (
            &["--op", "resized-crop", "--arg", "4294967295,0,1,1"],
            "--arg 4294967295,0,1,1: the box must lie within",
        ),
        (
            &["--op", "eval", "--crop-pct", "1e-3"],
            "'--crop-pct <CROP_PCT>': 0.001 is outside 0.5..=1.0",
        ),
        (
            &["--op", "resized-crop"],
            "needs --arg LEFT,TOP,WIDTH,HEIGHT",
        ),
    ];
    for (args, want) in refused {
        loader()
            .arg("augment")
            .args(args)
            .arg(&jpeg)
            .arg(&out)
            .assert()
            .code(2)
            .stderr(contains(want));
    }
}

/// A loader config with one key changed; the daemon must refuse it before binding anything.
fn serve_with(dir: &std::path::Path, line: &str) -> assert_cmd::assert::Assert {
    let config = dir.join("loader.toml");
    let socket = dir.join("never.sock");
    std::fs::write(&config, format!("{line}\n")).unwrap();
    let assert = loader()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--shards")
        .arg(dir.join("no-such-shards"))
        .arg("--socket")
        .arg(&socket)
        .timeout(std::time::Duration::from_secs(20))
        .assert();
    assert!(!socket.exists(), "{line}: the socket was bound");
    assert
}

#[test]
fn bad_daemon_settings_are_refused_by_name_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    for (line, want) in [
        // Duration::from_secs_f64 panicked on these.
        (
            "handshake_timeout_s = inf",
            "handshake_timeout_s = inf is outside 0.1..=3600.0",
        ),
        (
            "handshake_timeout_s = 1e300",
            "handshake_timeout_s = 1e300 is outside",
        ),
        (
            "group_wait_s = 1e300",
            "group_wait_s = 1e300 is outside 0.0..=3600.0",
        ),
        (
            "group_wait_s = nan",
            "group_wait_s = NaN is outside 0.0..=3600.0",
        ),
        ("slots = 0", "slots = 0 is outside 1..=32"),
        ("max_clients = 0", "max_clients = 0 is outside 1..=4096"),
        ("slot = 4", "unknown field `slot`"),
        // 64 GiB of rings against a 1 GiB budget.
        (
            "max_clients = 64\nmax_ring_bytes = 1073741824\nmemory_budget_bytes = 1073741824",
            "max_clients × max_ring_bytes = 64 × 1.0 GiB = 64.0 GiB is over the rings' memory \
             budget of 1.0 GiB (memory_budget_bytes)",
        ),
    ] {
        serve_with(dir.path(), line)
            .code(2)
            .stderr(contains("loader.toml"))
            .stderr(contains(want));
    }
}

#[test]
fn bad_client_flags_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let fetch = |args: &[&str]| {
        let mut c = loader();
        c.arg("fetch").arg("--socket").arg(&socket).args(args);
        c.timeout(std::time::Duration::from_secs(20)).assert()
    };
    let cases: [(&[&str], &str); 10] = [
        (
            &["--reconnect-timeout", "-1"],
            "-1 is outside 0..=86400 seconds",
        ),
        (&["--reconnect-timeout", "inf"], "--reconnect-timeout"),
        (
            &["--crop-pct", "0.9"],
            "--crop-pct applies to eval transforms",
        ),
        (
            &["--transform", "eval", "--crop-pct", "1e-3"],
            "'--crop-pct <CROP_PCT>': 0.001 is outside 0.5..=1.0",
        ),
        (
            &["--ratio", "1e-3", "1e-3"],
            "'--ratio <MIN> <MAX>': 0.001 is outside 0.1..=10.0",
        ),
        // Within each bound, the pair is the transform's own check.
        (
            &["--ratio", "2", "1"],
            "--ratio [2, 1] must satisfy 0.1 <= min <= max <= 10",
        ),
        (
            &["--aa", "rand-q9"],
            "--aa \"rand-q9\" does not parse: RandAugment config `rand-q9`",
        ),
        (
            &["-b", "0"],
            "'--batch-size <BATCH_SIZE>': 0 is outside 1..=8192",
        ),
        (
            &["--world-size", "2", "--rank", "2"],
            "rank = 2 is not below world_size = 2",
        ),
        (&["--transform", "a9"], "unknown transform \"a9\""),
    ];
    for (args, want) in cases {
        fetch(args).code(2).stderr(contains(want));
    }
}
