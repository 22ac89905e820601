//! The trainer's readers of what users and disks hand it, fuzzed: TensorBoard event files,
//! `metrics.jsonl`, a checkpoint's `state.json`, safetensors files and recipes, each from the
//! repository's corpus (`fuzz/corpus/<target>`: a real run's files, an exported model, the
//! shipped recipes) with a few edits, or arbitrary bytes. Each reader answers or refuses,
//! never panics; and where it answers, what it answered holds:
//! - an event file's records are read in order, never past the file, each re-read the same,
//!   and a resume's cut leaves no record past the checkpoint;
//! - a resume's cut of `metrics.jsonl` leaves a file every reader takes whole;
//! - a `state.json` read back is the state written again;
//! - a safetensors file the header-first reader takes is one safetensors itself reads;
//! - a recipe that passes the gate passes it again as the TOML it resolves to, unchanged.

use proptest::prelude::*;
use shard_tool::fuzzing::{Edit, cases, corpus, mutate};

use crate::model::safetensors_file::read_checked;
use crate::recipe::{Overrides, TrainConfig};
use crate::run::Checkpoint;
use crate::run::metrics::{MetricsLog, read_metrics};
use crate::run::tensorboard::{EventFile, Records, event_files, masked_crc, read_events};

/// Records framed as TensorFlow frames them, each length's CRC right whatever the length
/// (extremes included), each data CRC right or not: what reaches past the length's check,
/// which random bytes almost never do.
fn framed_records() -> impl Strategy<Value = Vec<u8>> {
    let declared = prop_oneof![
        (0u64..16).prop_map(|k| u64::MAX - k),
        (0u32..64).prop_map(|k| 1u64 << k),
        any::<u64>(),
        Just(0u64),
    ];
    let record = (
        prop::option::of(declared),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    );
    prop::collection::vec(record, 1..4).prop_map(|records| {
        let mut out = Vec::new();
        for (declared, data, good) in records {
            let len = declared.unwrap_or(data.len() as u64).to_le_bytes();
            out.extend_from_slice(&len);
            out.extend_from_slice(&masked_crc(&len).to_le_bytes());
            out.extend_from_slice(&data);
            let crc = masked_crc(&data) ^ u32::from(!good);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    })
}

/// Lines of the metrics seeds picked in any order, repeated or left out, then a few edits:
/// whole lines out of order, which byte edits alone almost never make.
fn metric_lines() -> impl Strategy<Value = Vec<u8>> {
    let lines: Vec<Vec<u8>> = corpus("metrics")
        .iter()
        .flat_map(|seed| {
            seed.split(|b| *b == b'\n')
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .collect();
    let n = lines.len();
    (
        prop::collection::vec(0..n, 0..12),
        prop::collection::vec(any::<Edit>(), 0..3),
    )
        .prop_map(move |(picks, edits)| {
            let text: Vec<u8> = picks
                .iter()
                .flat_map(|&i| lines[i].iter().copied().chain([b'\n']))
                .collect();
            mutate(&text, &edits)
        })
}

/// Arbitrary bytes, or a seed of corpus `target` with a few edits.
fn input(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    let n = seeds.len();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..1024),
        4 => (0..n, prop::collection::vec(any::<Edit>(), 0..6))
            .prop_map(move |(i, edits)| mutate(&seeds[i], &edits)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_event_file_is_read_and_cut_without_a_panic(
        bytes in prop_oneof![input("event_file"), framed_records()],
        steps_done in 0u64..5,
    ) {
        let mut records = Records::new(&bytes[..], bytes.len() as u64);
        let mut read = 0usize;
        while let Some((event, frame)) = records.next_record() {
            read += frame.len();
            prop_assert!(read <= bytes.len());
            let again = Records::new(frame, frame.len() as u64).next_record().map(|(e, _)| e);
            prop_assert_eq!(again, Some(event));
        }
        // A resume after `steps_done` steps cuts the file back and starts a new one.
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("events.out.tfevents.000000000000.0000000001.rsb");
        std::fs::write(&old, &bytes).unwrap();
        let new = EventFile::create(dir.path(), steps_done).unwrap();
        for path in event_files(dir.path()).unwrap() {
            if path == new.path() {
                continue;
            }
            for event in read_events(&path).unwrap() {
                prop_assert!(u64::try_from(event.step).is_ok_and(|s| s <= steps_done));
            }
        }
    }

    #[test]
    fn any_metrics_file_is_cut_back_to_one_every_reader_takes(
        bytes in prop_oneof![input("metrics"), metric_lines()],
        steps_done in 0u64..6,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(&path, &bytes).unwrap();
        let _ = read_metrics(&path);
        drop(MetricsLog::open(&path, steps_done).unwrap());
        let kept = read_metrics(&path);
        prop_assert!(kept.is_ok(), "{:?}", kept);
        prop_assert!(kept.unwrap().iter().all(|m| m.step() <= steps_done));
    }

    #[test]
    fn any_state_json_is_refused_or_read_back_the_same(bytes in input("state")) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), &bytes).unwrap();
        if let Ok(state) = Checkpoint::at(dir.path()).state() {
            let json = serde_json::to_vec(&state).unwrap();
            std::fs::write(dir.path().join("state.json"), json).unwrap();
            prop_assert_eq!(Checkpoint::at(dir.path()).state().unwrap(), state);
        }
    }

    #[test]
    fn a_safetensors_file_the_header_check_takes_is_one_safetensors_reads(bytes in input("safetensors")) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(read) = read_checked(&path, 1 << 20, "a weights file") {
            prop_assert_eq!(&read, &bytes);
            prop_assert!(safetensors::SafeTensors::deserialize(&read).is_ok());
            let _ = crate::model::float_types::check(&read);
        }
    }

    #[test]
    fn a_recipe_through_the_gate_passes_again_as_the_toml_it_resolves_to(bytes in input("recipe")) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(loaded) = TrainConfig::parse(&text, "fuzz.toml", &Overrides::none()) {
            let again = TrainConfig::parse(&loaded.config.to_toml(), "again.toml", &Overrides::none());
            prop_assert!(again.is_ok(), "{:?}", again.err());
            prop_assert_eq!(again.unwrap().config, loaded.config);
        }
    }
}

#[test]
fn the_corpus_seeds_are_what_their_readers_take() {
    for seed in corpus("event_file") {
        let mut records = Records::new(&seed[..], seed.len() as u64);
        let mut n = 0;
        while records.next_record().is_some() {
            n += 1;
        }
        assert!(n > 3, "{n} records");
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, target) in [("metrics.jsonl", "metrics"), ("state.json", "state")] {
        std::fs::write(dir.path().join(name), &corpus(target)[0]).unwrap();
    }
    assert!(
        !read_metrics(&dir.path().join("metrics.jsonl"))
            .unwrap()
            .is_empty()
    );
    Checkpoint::at(dir.path()).state().unwrap();
    for seed in corpus("recipe") {
        TrainConfig::parse(
            &String::from_utf8_lossy(&seed),
            "seed.toml",
            &Overrides::none(),
        )
        .unwrap();
    }
}
