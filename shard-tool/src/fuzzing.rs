//! What the readers' fuzz tests share: the seed corpora kept in the repository
//! (`fuzz/corpus/<target>/`: valid files of each kind the readers take, which the tests mutate)
//! and the mutation of a seed by a list of edits that `proptest` draws (and shrinks).
//!
//! Each crate's tests draw with `proptest`, a well-kept property-testing crate: arbitrary
//! bytes, or a seed with a few arbitrary edits, which reach far deeper into a format than
//! bytes alone (a valid length prefix with one bit flipped behind it). A failure is shrunk to
//! the fewest edits and saved by proptest under the test's `proptest-regressions/` file, run
//! again first by every later run. How many cases each test draws is [`cases`].

use std::path::{Path, PathBuf};

/// One edit of a seed, as drawn: what, where (taken modulo the length), and a byte.
pub type Edit = (u8, usize, u8);

/// Cases per fuzz test: `RSB_FUZZ_CASES`, else 256 (a few seconds in a debug build; `.ci/run`
/// runs the fuzz tests again with more, timed).
pub fn cases() -> u32 {
    std::env::var("RSB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(256)
}

/// The folder of the seed corpus `target` in the repository.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// The seeds of corpus `target`, in name order.
///
/// # Panics
/// If the corpus folder is missing or unreadable: the tests need it.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()).unwrap_or_default())
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// `seed` with `edits` applied in order: 0 flips bits of a byte, 1 sets a byte, 2 inserts a
/// byte, 3 removes a byte, 4 cuts the rest off, 5 repeats a run of up to 64 bytes (lengths and
/// counts that run past what follows), 6 writes a little-endian length (a large one, or the
/// byte's value) over the 8 bytes there.
pub fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(kind, at, byte) in edits {
        let len = out.len();
        let at = if len == 0 { 0 } else { at % len };
        match kind % 7 {
            0 if len > 0 => out[at] ^= byte.max(1),
            1 if len > 0 => out[at] = byte,
            2 => out.insert(at.min(len), byte),
            3 if len > 0 => {
                out.remove(at);
            }
            4 => out.truncate(at),
            5 if len > 0 => {
                let run: Vec<u8> = out[at..(at + 1 + usize::from(byte % 64)).min(len)].to_vec();
                // The run once more, just before itself.
                let tail = out.split_off(at);
                out.extend_from_slice(&run);
                out.extend_from_slice(&tail);
            }
            6 => {
                let value: u64 = match byte % 4 {
                    0 => u64::MAX,
                    1 => u64::MAX - u64::from(byte),
                    2 => 1 << (byte % 64),
                    _ => u64::from(byte),
                };
                for (i, b) in value.to_le_bytes().iter().enumerate() {
                    if let Some(slot) = out.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_do_what_they_say_and_never_panic_on_empty_input() {
        assert_eq!(mutate(b"abc", &[(0, 1, 1)]), b"acc");
        assert_eq!(mutate(b"abc", &[(1, 4, b'z')]), b"azc");
        assert_eq!(mutate(b"abc", &[(2, 3, b'z')]), b"zabc");
        assert_eq!(mutate(b"abc", &[(3, 2, 0)]), b"ab");
        assert_eq!(mutate(b"abc", &[(4, 2, 0)]), b"ab");
        assert_eq!(mutate(b"abc", &[(5, 1, 0)]), b"abbc");
        assert_eq!(
            mutate(&[0u8; 9], &[(6, 1, 0)])[1..9],
            u64::MAX.to_le_bytes()
        );
        for kind in 0..7 {
            let _ = mutate(b"", &[(kind, 5, 7)]);
        }
    }

    #[test]
    fn every_corpus_the_fuzz_tests_read_is_in_the_repository() {
        for target in [
            "event_file",
            "metrics",
            "state",
            "safetensors",
            "recipe",
            "frames",
        ] {
            assert!(!corpus(target).is_empty(), "fuzz/corpus/{target} is empty");
        }
    }
}
