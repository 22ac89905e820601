//! The daemon's reader of what clients send, and the client's of what the daemon sends,
//! fuzzed: frames from the corpus (`fuzz/corpus/frames`, captured from a real `loader fetch`
//! and `loader status`) mutated, or arbitrary bytes, fed to the frame decoder in arbitrary
//! pieces. Each decode is a message, a wait for more bytes, or an error; never a panic, never
//! a buffer grown past one frame's limit, and never a loop that does not consume.

use bytes::BytesMut;
use proptest::prelude::*;
use shard_tool::fuzzing::{Edit, cases, corpus, mutate};
use tokio_util::codec::Decoder;

use crate::wire::frame::{FrameCodec, MAX_FRAME};
use crate::wire::protocol::{Reply, Request};

/// Arbitrary bytes, or a corpus frame (several, one after another) with a few edits.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus("frames");
    let n = seeds.len();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        4 => (prop::collection::vec(0..n, 1..4), prop::collection::vec(any::<Edit>(), 0..6))
            .prop_map(move |(picks, edits)| {
                let joined: Vec<u8> = picks.iter().flat_map(|&i| seeds[i].clone()).collect();
                mutate(&joined, &edits)
            }),
    ]
}

/// Feeds `bytes` to a decoder of `In` in pieces of `piece` bytes, decoding after each piece
/// as the connection does, until an error or the end.
fn decode_all<In: serde::de::DeserializeOwned>(
    bytes: &[u8],
    piece: usize,
) -> Result<(), TestCaseError> {
    let mut codec = FrameCodec::<In>::default();
    let mut buf = BytesMut::new();
    for chunk in bytes.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(_)) => prop_assert!(buf.len() < before, "a message that consumed nothing"),
                Ok(None) => break,
                Err(_) => return Ok(()),
            }
        }
        prop_assert!(
            buf.capacity() <= 2 * (MAX_FRAME + 4) + bytes.len(),
            "buffer {}",
            buf.capacity()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn the_daemon_reads_any_bytes_a_client_sends_without_a_panic(
        bytes in frames(),
        piece in 1usize..64,
    ) {
        decode_all::<Request>(&bytes, piece)?;
    }

    #[test]
    fn a_client_reads_any_bytes_a_daemon_sends_without_a_panic(
        bytes in frames(),
        piece in 1usize..64,
    ) {
        decode_all::<Reply>(&bytes, piece)?;
    }
}

#[test]
fn the_corpus_frames_decode_whole() {
    for seed in corpus("frames") {
        let mut buf = BytesMut::from(&seed[..]);
        let request = FrameCodec::<Request>::default().decode(&mut buf);
        let mut buf = BytesMut::from(&seed[..]);
        let reply = FrameCodec::<Reply>::default().decode(&mut buf);
        assert!(
            matches!(request, Ok(Some(_))) || matches!(reply, Ok(Some(_))),
            "{request:?} {reply:?}"
        );
    }
}

/// A restart-marked JPEG (as `shard-tool pack` stores a train record) with a few edits.
fn restarted_records() -> impl Strategy<Value = Vec<u8>> {
    let jpeg =
        shard_tool::restart::add_restart_markers(&shard_tool::synth::class_image(2, 3, 90, 70), 2)
            .unwrap_or_default();
    prop::collection::vec(any::<Edit>(), 0..6).prop_map(move |edits| mutate(&jpeg, &edits))
}

/// A coefficient record (as `shard-tool pack` stores a train record by default) with a few edits.
fn coefficient_records() -> impl Strategy<Value = Vec<u8>> {
    let jpeg =
        shard_tool::restart::add_restart_markers(&shard_tool::synth::class_image(2, 3, 90, 70), 2)
            .unwrap_or_default();
    let record = shard_tool::coefficients::from_jpeg(&jpeg).unwrap_or_default();
    prop::collection::vec(any::<Edit>(), 0..6).prop_map(move |edits| mutate(&record, &edits))
}

/// A3 and A1 on `record` by `worker`s of both decoders; whatever comes back, no panic.
fn produce_both(record: &[u8], position: u32) {
    for (preset, pillow) in [("a3", false), ("a1", false), ("a3", true)] {
        let Ok(t) = preset.parse::<crate::request::transform::TransformSpec>() else {
            continue;
        };
        let mut worker = crate::batches::pipeline::Worker::new(t, 7);
        worker.set_pillow_exact(pillow);
        let n = t.image_bytes();
        let mut buf = vec![0u8; 3 * n];
        let samples: Vec<crate::sampling::sampler::Sample> = (0..3)
            .map(|repeat| crate::sampling::sampler::Sample {
                index: 0,
                position,
                repeat,
            })
            .collect();
        let mut outs: Vec<&mut [u8]> = buf.chunks_exact_mut(n).collect();
        let take = if preset == "a3" { 1 } else { 3 };
        let _ = worker.produce(record, 0, &samples[..take], &mut outs[..take]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Crop-aware decoding of a damaged record (markers renumbered, removed, cut off, headers
    /// changed) is an image of the declared size or a decode error; never a panic. A3 and A1
    /// with zune-jpeg, A3 with the decoder of Pillow's bytes.
    #[test]
    fn a_damaged_restart_marked_record_decodes_by_region_or_is_an_error(
        jpeg in restarted_records(),
        position in 0u32..1000,
    ) {
        produce_both(&jpeg, position);
    }

    /// The same for a damaged coefficient record (offsets, masks and values changed, chunks cut
    /// off): decoded or refused, never a panic (the loader's CRC check keeps such a record from
    /// being decoded at all; this is the decoder's own guard).
    #[test]
    fn a_damaged_coefficient_record_decodes_by_region_or_is_an_error(
        record in coefficient_records(),
        position in 0u32..1000,
    ) {
        produce_both(&record, position);
    }
}
