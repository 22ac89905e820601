//! The `trainer` binary's front door: timm's flags over a recipe, and every bad value refused
//! with one line naming it and exit status 2, before a model is built or a loader reached.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::str::contains;

use crate::common;

fn trainer() -> Command {
    let mut c = Command::cargo_bin("trainer").unwrap();
    // A refusal must come at once, not after a model build or a loader's reconnect timeout.
    c.timeout(std::time::Duration::from_secs(60));
    c
}

fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// `configs/smoke.toml` with `from` replaced by `to`, written to `dir/bad.toml`.
fn smoke_with(dir: &Path, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(configs().join("smoke.toml")).unwrap();
    assert!(text.contains(from), "{from}");
    let path = dir.join("bad.toml");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

#[test]
fn config_prints_the_recipe_with_the_flags_applied() {
    trainer()
        .arg("config")
        .arg(configs().join("a1.toml"))
        .args(["--batch-size", "128", "--world-size", "16"])
        .assert()
        .success()
        .stdout(contains("batch_size = 128"))
        .stdout(contains("world_size = 16"))
        .stdout(contains(
            "# global batch 2048 = batch_size 128 x rsb.world_size 16",
        ));
}

#[test]
fn bad_flags_exit_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens here: a refusal that came after a connection attempt would name the
    // socket, not the value.
    let socket = dir.path().join("no-loader.sock");
    // Bounds are checked where clap parses the flag; what the gate refines within them
    // (`lr` above 0) is the gate's, naming the flag as given.
    let flag_cases: [(&[&str], &str); 7] = [
        (
            &["--crop-pct", "1e-3"],
            "'--crop-pct <CROP_PCT>': 0.001 is outside 0.5..=1.0",
        ),
        (
            &["--num-classes", "0"],
            "'--num-classes <NUM_CLASSES>': 0 is outside 1..=1000000",
        ),
        (&["--aa", "rand-q1"], "--aa \"rand-q1\" does not parse"),
        (
            &["--img-size", "99999"],
            "'--img-size <IMG_SIZE>': 99999 is outside 8..=2048",
        ),
        (&["--lr", "NaN"], "'--lr <LR>': NaN is outside 0.0..=10.0"),
        (
            &["--lr", "0"],
            "--lr 0 is outside (0, 10] (given on the command line)",
        ),
        (&["--lr-base", "0.1"], "unexpected argument '--lr-base'"),
    ];
    for (flags, want) in flag_cases {
        trainer()
            .args(["train", "--config"])
            .arg(configs().join("smoke.toml"))
            .arg("--loader")
            .arg(&socket)
            .arg("--out")
            .arg(dir.path().join("run"))
            .args(flags)
            .assert()
            .code(2)
            .stderr(contains(want));
    }
    assert!(
        !dir.path().join("run").exists(),
        "nothing is written for a bad recipe"
    );
}

/// The one line a refused command prints, and its exit status.
fn refusal(assert: assert_cmd::assert::Assert) -> (Option<i32>, String) {
    let out = assert.get_output();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_study_and_train_refuse_the_same_recipes_with_the_same_line() {
    let dir = tempfile::tempdir().unwrap();
    // No dataset here: a refusal that came after the loader was started would name it, and
    // the model is built only after that.
    let shards = dir.path().join("no-shards");
    let config = |recipe: &Path, flags: &[&str]| {
        refusal(trainer().arg("config").arg(recipe).args(flags).assert())
    };
    let train = |recipe: &Path, flags: &[&str]| {
        refusal(
            trainer()
                .args(["train", "--config"])
                .arg(recipe)
                .arg("--shards")
                .arg(&shards)
                .arg("--out")
                .arg(dir.path().join("run"))
                .args(flags)
                .assert(),
        )
    };
    let study = |recipe: &Path, vary: &str| {
        refusal(
            trainer()
                .args(["study", "--config"])
                .arg(recipe)
                .arg("--shards")
                .arg(&shards)
                .args(["--vary", vary, "--out"])
                .arg(dir.path().join("study"))
                .assert(),
        )
    };
    // The keys the trainer's own check refused (config and study accepted them), then the
    // recipe's ranges, choices and unknown keys.
    let cases = [
        (
            "model_ema = false",
            "model_ema = true",
            "model_ema = true is not implemented yet",
        ),
        (
            "seed = 0",
            "seed = 0\nclip_grad = 1.0",
            "clip_grad = 1.0 is not supported",
        ),
        (
            "reprob = 0.0",
            "reprob = 0.25",
            "reprob = 0.25 is not implemented yet",
        ),
        (
            "drop = 0.0",
            "drop = 0.1",
            "drop = 0.1 is not implemented yet",
        ),
        (
            "opt = \"lamb\"",
            "opt = \"sgd\"",
            "opt = \"sgd\" is not supported",
        ),
        ("lr = 4e-3", "lr = -1.0", "lr = -1 is outside (0, 10]"),
        (
            "crop_pct = 0.875",
            "crop_pct = 1e-3",
            "crop_pct = 0.001 is outside 0.5..=1.0",
        ),
        (
            "aa = \"rand-m6-mstd0.5-inc1\"",
            "aa = \"rand-m6-x\"",
            "aa = \"rand-m6-x\" does not parse",
        ),
        (
            "num_classes = 10",
            "num_classes = 0",
            "num_classes = 0 is outside 1..=1000000",
        ),
        (
            "world_size = 1",
            "world_size = 0",
            "rsb.world_size = 0 is outside 1..=4096",
        ),
        (
            "img_size = 32",
            "img_size = 3",
            "img_size = 3 is outside 8..=2048",
        ),
        (
            "test_img_size = 32",
            "test_img_size = 0",
            "rsb.test_img_size = 0 is outside 8..=2048",
        ),
        (
            "ratio = [0.75, 1.3333333333333333]",
            "ratio = [1e3, 1e3]",
            "ratio = [1000, 1000]",
        ),
        (
            "lr = 4e-3",
            "lr = 4e-3\nlr_base = 0.1",
            "unknown field `lr_base`",
        ),
    ];
    for (from, to, want) in cases {
        let bad = smoke_with(dir.path(), from, to);
        let (code, line) = config(&bad, &[]);
        assert_eq!(code, Some(2), "config, {to}: {line}");
        assert!(
            line.starts_with("error: ") && line.contains("bad.toml"),
            "{line}"
        );
        assert!(line.contains(want), "{to}: {line}");
        assert_eq!(line.lines().count(), 1, "{line}");
        assert_eq!(train(&bad, &[]), (code, line.clone()), "train, {to}");
        assert_eq!(study(&bad, "seed=0,1"), (code, line.clone()), "study, {to}");
    }
    // A study whose second combination is bad is refused before its first run, with the
    // problem the flag gets from config and train.
    let smoke = configs().join("smoke.toml");
    let (code, line) = study(&smoke, "drop=0,0.1");
    assert_eq!(code, Some(2), "{line}");
    let problem = "is not implemented yet; the RSB recipes do not use it (set it to 0";
    assert!(
        line.contains("smoke.toml: --vary drop=0.1 ") && line.contains(problem),
        "{line}"
    );
    for (code, line) in [
        config(&smoke, &["--drop", "0.1"]),
        train(&smoke, &["--drop", "0.1"]),
    ] {
        assert_eq!(code, Some(2), "{line}");
        assert!(
            line.contains("smoke.toml: --drop 0.1 ") && line.contains(problem),
            "{line}"
        );
    }
    for never in ["run", "study"] {
        assert!(!dir.path().join(never).exists(), "{never} was written");
    }
}

/// A 3-class tree with a flat, unlabelled `test/` folder, packed.
fn three_classes(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    let spec = shard_tool::synth::TreeSpec {
        classes: 3,
        train_per_class: 4,
        val_per_class: 2,
        size: 24,
        ..shard_tool::synth::TreeSpec::default()
    };
    shard_tool::synth::write_tree(&src, &spec).unwrap();
    std::fs::create_dir_all(src.join("test")).unwrap();
    for i in 0..4 {
        let jpeg = shard_tool::synth::class_image(i, 0, 24, 24);
        std::fs::write(src.join("test").join(format!("t{i}.jpg")), jpeg).unwrap();
    }
    let shards = dir.join("shards");
    shard_tool::pack(&src, &shard_tool::PackOptions::new(&shards), &mut |_| {}).unwrap();
    shards
}

#[test]
fn a_dataset_that_does_not_fit_the_recipe_is_refused_before_the_model_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_classes(dir.path());
    let run = |flags: &[&str]| {
        trainer()
            .args(["train", "--config"])
            .arg(configs().join("smoke.toml"))
            .arg("--shards")
            .arg(&shards)
            .arg("--out")
            .arg(dir.path().join("run"))
            .args(flags)
            .assert()
            .code(2)
    };
    // smoke.toml says 10 classes; the dataset has 3.
    run(&[]).stderr(contains(
        "the dataset has 3 classes (its manifest) and the recipe says num_classes = 10; set \
         num_classes = 3 in the recipe or pass --num-classes 3",
    ));
    // The flat test/ folder has no labels: burn's one-hot would have panicked on them.
    run(&["--num-classes", "3", "--train-split", "test"]).stderr(contains(
        "split \"test\" (rsb.train_split) has 4 of its 4 records without a label",
    ));
    run(&["--num-classes", "3", "--val-split", "nope"]).stderr(contains(
        "no split \"nope\" in this dataset (it has test, train, val)",
    ));
    // A metrics port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    run(&["--num-classes", "3", "--metrics-listen", &addr]).stderr(contains(format!(
        "cannot listen on {addr} for metrics: Address already in use"
    )));
    assert!(
        !dir.path().join("run").exists(),
        "nothing is written for a refused run"
    );
}

/// A tree whose `val/` holds ImageNet validation file names, 2 per class of 10.
fn val_named(dir: &Path) -> PathBuf {
    let src = dir.join("val-src");
    for class in 0..10u32 {
        let folder = src.join("val").join(format!("n{class:08}"));
        std::fs::create_dir_all(&folder).unwrap();
        for k in 0..2u32 {
            let number = class * 2 + k + 1;
            let jpeg = shard_tool::synth::class_image(class, k, 32, 32);
            std::fs::write(
                folder.join(format!("ILSVRC2012_val_{number:08}.JPEG")),
                jpeg,
            )
            .unwrap();
        }
    }
    let shards = dir.join("val-rsb");
    shard_tool::pack(&src, &shard_tool::PackOptions::new(&shards), &mut |_| {}).unwrap();
    shards
}

/// ImageNet-V2's layout: `test/0` … `test/9`.
fn numbered(dir: &Path) -> PathBuf {
    let src = dir.join("v2-src");
    for class in 0..10u32 {
        let folder = src.join("test").join(class.to_string());
        std::fs::create_dir_all(&folder).unwrap();
        let jpeg = shard_tool::synth::class_image(class, 0, 32, 32);
        std::fs::write(folder.join("a.jpeg"), jpeg).unwrap();
    }
    let shards = dir.join("v2-rsb");
    shard_tool::pack(&src, &shard_tool::PackOptions::new(&shards), &mut |_| {}).unwrap();
    shards
}

#[test]
fn eval_reports_every_set_in_one_table_with_real_where_the_names_are_imagenets() {
    let dir = tempfile::tempdir().unwrap();
    let (val, v2) = (val_named(dir.path()), numbered(dir.path()));
    let weights = dir.path().join("w.safetensors");
    trainer()
        .args([
            "export",
            "--model",
            "resnet18",
            "--num-classes",
            "10",
            "--width",
            "0.25",
        ])
        .args(["--small-stem"])
        .arg(&weights)
        .assert()
        .success();
    // ReaL, 50,000 entries: images 1 and 3 accept every class (always right), the others have
    // no label (not counted).
    let entries: Vec<&str> = (1..=50_000)
        .map(|i| match i {
            1 | 3 => "[0,1,2,3,4,5,6,7,8,9]",
            _ => "[]",
        })
        .collect();
    let real = dir.path().join("real.json");
    std::fs::write(&real, format!("[{}]", entries.join(","))).unwrap();
    let eval = |extra: &[&str]| {
        let mut c = trainer();
        c.args(["eval", "--config"])
            .arg(configs().join("smoke.toml"))
            .arg("--set")
            .arg(format!("val={}", val.display()))
            .arg("--set")
            .arg(format!("v2={}:test", v2.display()))
            .arg(&weights)
            .args(extra);
        c
    };
    let out = eval(&["--real-labels", real.to_str().unwrap(), "--json"])
        .assert()
        .success();
    let scores: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let sets = scores.as_array().unwrap();
    assert_eq!(sets.len(), 2, "{scores}");
    assert_eq!(sets[0]["name"], "val");
    assert_eq!(sets[0]["images"], 20);
    // Only images 1 and 3 count, and any prediction is right for them.
    assert_eq!(sets[0]["real"]["images"], 2, "{scores}");
    assert_eq!(sets[0]["real"]["top1"], 100.0);
    assert_eq!(sets[1]["name"], "v2");
    assert_eq!(sets[1]["split"], "test");
    assert_eq!(sets[1]["images"], 10);
    assert!(
        sets[1]["real"].is_null(),
        "no ImageNet names in V2: {scores}"
    );
    // The text table, and the refusals.
    eval(&[]).assert().success().stdout(contains("ReaL top-1"));
    let short = dir.path().join("short.json");
    std::fs::write(&short, "[[1], [2]]").unwrap();
    eval(&["--real-labels", short.to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(contains("has 2 entries"));
}

#[test]
fn amp_from_the_recipe_or_the_flags_is_said_once_with_what_it_does_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_classes(dir.path());
    let train = |out: &str, flags: &[&str]| {
        let assert = trainer()
            .args(["train", "--config"])
            .arg(configs().join("smoke.toml"))
            .arg("--shards")
            .arg(&shards)
            .arg("--out")
            .arg(dir.path().join(out))
            .args(common::TINY_FLAGS)
            .args(["--max-steps", "1", "-j", "1"])
            .args(flags)
            .assert()
            .success();
        String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
    };
    let amp = train("amp", &["--amp"]);
    assert_eq!(amp.matches("amp on the CPU").count(), 1, "{amp}");
    let pure = train("pure", &["--amp", "--dtype", "f32"]);
    assert!(
        pure.contains("the recipe says amp = true; --dtype f32 trains in pure f32 instead"),
        "{pure}"
    );
    let plain = train("plain", &[]);
    assert!(!plain.contains("amp"), "{plain}");
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn a_path_that_is_not_a_regular_file_is_refused_naming_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    // A recipe: /dev/zero would be read forever, a FIFO would block the open.
    for (path, what) in [
        (
            Path::new("/dev/zero"),
            "is a character device, not a regular file",
        ),
        (fifo.as_path(), "is a FIFO, not a regular file"),
    ] {
        let (code, stderr) = refusal(trainer().arg("config").arg(path).assert());
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(what) && stderr.contains(&*path.to_string_lossy()),
            "{stderr}"
        );
    }
    // A recipe of a megabyte and more is not a recipe.
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 << 20]).unwrap();
    let (code, stderr) = refusal(trainer().arg("config").arg(&big).assert());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("a recipe of 2097152 bytes is over the limit"),
        "{stderr}"
    );
    // Metrics to plot, and the PNG's target: neither is read from, or renamed over, a FIFO.
    let piped = dir.path().join("piped");
    std::fs::create_dir(&piped).unwrap();
    mkfifo(&piped.join("metrics.jsonl"));
    let (_, stderr) = refusal(trainer().arg("plot").arg(&piped).assert().failure());
    assert!(stderr.contains("is a FIFO, not a regular file"), "{stderr}");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"kind\":\"step\",\"step\":1,\"epoch\":0,\"loss\":0.7,\"lr\":0.001,\"global_batch\":8,\
         \"samples_per_s\":10.0,\"data_wait_s\":0.0,\"upload_s\":0.0}\n",
    )
    .unwrap();
    // Refused as the user's mistake (exit 2) before any drawing, by each command that writes
    // a file the user names.
    for args in [
        vec!["plot".into(), run.clone().into_os_string(), "--out".into()],
        vec![
            "compare".into(),
            run.clone().into_os_string(),
            "--out".into(),
        ],
        vec!["export".into()],
    ] {
        let (code, stderr) = refusal(trainer().args(&args).arg(&fifo).assert().failure());
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("is a FIFO, not a regular file"), "{stderr}");
    }
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(
        std::os::unix::fs::FileTypeExt::is_fifo(&kind),
        "the FIFO was replaced"
    );
}

#[test]
fn check_device_refuses_a_device_against_itself_and_pairs_it_cannot_compare() {
    // flex against flex (the default reference): a check of nothing, every difference zero.
    // A bf16 side on one device makes both bf16 (the type is the device's setting): a bf16
    // reference against f32 reported exactly 0. A bf16 reference against amp panicked in
    // burn-flex. Each is refused before a model is built, exit 2, saying why.
    let model = [
        "--model",
        "resnet18",
        "--width",
        "0.125",
        "--small-stem",
        "--num-classes",
        "10",
        "--img-size",
        "16",
        "--batch",
        "4",
    ];
    let cases: [(&[&str], &str); 4] = [
        (&["--device", "flex"], "compared with itself"),
        (
            &["--device", "flex", "--reference-dtype", "bf16"],
            "compared with itself",
        ),
        (
            &[
                "--device",
                "cube-cpu",
                "--reference-dtype",
                "bf16",
                "--dtype",
                "amp",
            ],
            "cannot vouch for --dtype amp",
        ),
        (
            &[
                "--device",
                "cuda",
                "--reference-dtype",
                "amp",
                "--dtype",
                "f32",
            ],
            "cannot vouch for --dtype f32",
        ),
    ];
    for (flags, want) in cases {
        trainer()
            .arg("check-device")
            .args(flags)
            .args(model)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(want));
    }
}

/// `from`'s tensors written to `to`: those named `only` (all, when `None`) as `dtype`, each
/// f32 value through `encode`; the others as they were.
fn retyped(
    from: &Path,
    to: &Path,
    only: Option<&str>,
    dtype: safetensors::Dtype,
    encode: fn(f32) -> Vec<u8>,
) {
    let bytes = std::fs::read(from).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            if only.is_some_and(|o| o != name) {
                return (
                    name,
                    view.dtype(),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                );
            }
            let data = view
                .data()
                .chunks_exact(4)
                .flat_map(|b| encode(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect();
            (name, dtype, view.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data);
            (name.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, to).unwrap();
}

#[test]
fn weights_of_any_float_type_timm_saves_are_cast_and_said_others_refused_by_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let model = [
        "--model",
        "resnet18",
        "--num-classes",
        "10",
        "--width",
        "0.125",
    ];
    let weights = dir.path().join("w.safetensors");
    trainer()
        .arg("export")
        .args(model)
        .arg(&weights)
        .assert()
        .success();
    let logits = |w: &Path| {
        let out = trainer()
            .arg("logits")
            .args(model)
            .arg("--weights")
            .arg(w)
            .assert()
            .success();
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
        let json: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        (json, stderr)
    };
    let (want, quiet) = logits(&weights);
    assert!(!quiet.contains("cast"), "{quiet}");
    // What `model.half()` / `.double()` then `save_file` writes: taken, said once, and F64
    // of F32 values gives the same logits exactly.
    let double = dir.path().join("double.safetensors");
    retyped(&weights, &double, None, safetensors::Dtype::F64, |v| {
        f64::from(v).to_le_bytes().to_vec()
    });
    let (got, said) = logits(&double);
    assert_eq!(got, want);
    assert_eq!(said.matches("cast to the model's F32").count(), 1, "{said}");
    let half = dir.path().join("half.safetensors");
    retyped(&weights, &half, None, safetensors::Dtype::F16, |v| {
        burn::tensor::f16::from_f32(v).to_le_bytes().to_vec()
    });
    let (_, said) = logits(&half);
    assert!(said.contains("tensors F16"), "{said}");
    // Integers hold no weights: refused naming a tensor and its type, exit 2, no panic.
    let ints = dir.path().join("ints.safetensors");
    retyped(&weights, &ints, None, safetensors::Dtype::I32, |v| {
        (v as i32).to_le_bytes().to_vec()
    });
    let (code, stderr) = refusal(
        trainer()
            .arg("logits")
            .args(model)
            .arg("--weights")
            .arg(&ints)
            .assert()
            .failure(),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("ints.safetensors: tensor ") && stderr.contains(" is I32;"),
        "{stderr}"
    );
}

#[test]
fn logits_that_overflow_count_as_wrong_and_are_said() {
    let dir = tempfile::tempdir().unwrap();
    let val = val_named(dir.path());
    let weights = dir.path().join("w.safetensors");
    trainer()
        .args(["export", "--model", "resnet18", "--num-classes", "10"])
        .args(["--width", "0.25", "--small-stem"])
        .arg(&weights)
        .assert()
        .success();
    // Finite weights (the file is accepted) whose classifier overflows f32: every logit row
    // holds an infinity or a NaN. Counted as right, a NaN row once gave top-1 100 %.
    let huge = dir.path().join("huge.safetensors");
    retyped(
        &weights,
        &huge,
        Some("fc.weight"),
        safetensors::Dtype::F32,
        |v| (v.signum() * 3e38).to_le_bytes().to_vec(),
    );
    let out = trainer()
        .args(["eval", "--config"])
        .arg(configs().join("smoke.toml"))
        .arg("--set")
        .arg(format!("val={}", val.display()))
        .arg(&huge)
        .arg("--json")
        .assert()
        .success();
    let scores: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(scores[0]["images"], 20, "{scores}");
    assert_eq!(scores[0]["non_finite"], 20, "{scores}");
    assert_eq!(scores[0]["top1"], 0.0, "{scores}");
    assert_eq!(scores[0]["top5"], 0.0, "{scores}");
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        stderr.contains("val: 20 of 20 images had NaN or infinite logits, counted wrong"),
        "{stderr}"
    );
}

#[test]
fn model_and_image_sizes_outside_their_bounds_are_refused_before_any_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let cases: [(&[&str], &str); 6] = [
        (
            &["export", "--width", "1e9"],
            "'--width <WIDTH>': 1000000000.0 is outside 0.0..=8.0",
        ),
        // Within the flag's bounds, the model's own check.
        (
            &["export", "--width", "0"],
            "width multiplier 0 is outside (0, 8]",
        ),
        (
            &["export", "--num-classes", "0"],
            "'--num-classes <NUM_CLASSES>': 0 is outside 1..=1000000",
        ),
        (
            &["logits", "--drop-path", "1.5", "--weights", "w"],
            "'--drop-path <DROP_PATH>': 1.5 is outside 0.0..=0.99",
        ),
        (&["plot", "run", "--width", "100000"], "100000"),
        (&["compare", "a", "b", "--height", "100000"], "100000"),
    ];
    for (args, want) in cases {
        let mut c = trainer();
        c.args(args);
        if args[0] == "export" {
            c.arg(&out);
        }
        c.assert().code(2).stderr(contains(want));
    }
    assert!(!out.exists(), "nothing was written");
}

/// Started by mpirun as one of several processes, a trainer built without the `mpi` feature
/// would train alone on the same ranks as every other: it refuses, naming the fix.
#[cfg(not(feature = "mpi"))]
#[test]
fn several_processes_without_the_mpi_feature_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    trainer()
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .arg("train")
        .arg("--config")
        .arg(configs().join("smoke.toml"))
        .arg("--shards")
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("run"))
        .assert()
        .code(2)
        .stderr(contains("one of 2 processes (OMPI_COMM_WORLD_SIZE=2)"))
        .stderr(contains("--features mpi"));
    assert!(!dir.path().join("run").exists());
}

#[test]
fn a_model_we_do_not_build_or_weights_of_another_are_refused_naming_both_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    // Before any work: no dataset exists, so a refusal after the loader would name it.
    let train = |model: &str, flags: &[&str]| {
        refusal(
            trainer()
                .args(["train", "--config"])
                .arg(configs().join("smoke.toml"))
                .arg("--shards")
                .arg(dir.path().join("no-shards"))
                .args(["--model", model, "--out"])
                .arg(dir.path().join("run"))
                .args(flags)
                .assert()
                .failure(),
        )
    };
    let (code, stderr) = train("resnet51", &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("\"resnet51\"")
            && stderr.contains("resnext50_32x4d")
            && !stderr.contains("no-shards"),
        "{stderr}"
    );
    let (code, stderr) = refusal(
        trainer()
            .args(["export", "--model", "vit_huge_patch14_224"])
            .arg(dir.path().join("w.safetensors"))
            .assert()
            .failure(),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("vit_huge_patch14_224") && stderr.contains("vit_small_patch16_224"));
    assert!(!dir.path().join("w.safetensors").exists());
    // A ViT whose patch does not divide the image: refused before any work, with the sizes
    // that fit; and evaluation at another size than training's.
    for (flags, says) in [
        (
            ["--img-size", "30"],
            "image size 30 is not a multiple of its 4-pixel patch",
        ),
        (
            ["--test-img-size", "64"],
            "must equal img_size (32) for vit_small_patch16_224",
        ),
    ] {
        let (code, stderr) = train("vit_small_patch16_224", &flags);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(says) && !stderr.contains("no-shards"),
            "{stderr}"
        );
    }

    // seresnet50's weights hold all of resnet50's tensors and SE's besides: refused, not
    // loaded with SE's dropped.
    let small = ["--num-classes", "10", "--width", "0.125"];
    let weights = dir.path().join("se.safetensors");
    trainer()
        .args(["export", "--model", "seresnet50"])
        .args(small)
        .arg(&weights)
        .assert()
        .success();
    let (code, stderr) = refusal(
        trainer()
            .args(["logits", "--model", "resnet50"])
            .args(small)
            .arg("--weights")
            .arg(&weights)
            .assert()
            .failure(),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("se.safetensors holds a ResNet with 16 bottleneck blocks (3, 4, 6, 3), squeeze-excite, 10 classes, not a ResNet with 16 bottleneck blocks (3, 4, 6, 3), 10 classes")
            && stderr.contains("--model"),
        "{stderr}"
    );
}
