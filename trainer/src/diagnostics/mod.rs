//! Measurements of the trainer itself: the training step's speed ([`bench`](mod@bench), `trainer bench`),
//! the sum of a step's gradients over processes ([`all_reduce`], `trainer bench --all-reduce`)
//! and one batch on two devices compared ([`device_check`], `trainer check-device`).

pub mod all_reduce;
pub mod bench;
pub mod device_check;
