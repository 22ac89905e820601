//! `loader augment` end to end on generated images.

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
    loader()
        .args(["augment", "--op", "resized-crop", "--arg", "70,5,40,30"])
        .arg(&jpeg)
        .arg(&out)
        .assert()
        .failure()
        .stderr(contains("does not fit the 80x60 image"));
    loader()
        .args(["augment", "--op", "resized-crop"])
        .arg(&jpeg)
        .arg(&out)
        .assert()
        .failure()
        .stderr(contains("needs --arg LEFT,TOP,WIDTH,HEIGHT"));
}
