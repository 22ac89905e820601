//! Measurements of the trainer itself: the training step's speed ([`bench`](mod@bench), `trainer bench`)
//! and one batch on two devices compared ([`device_check`], `trainer check-device`).

pub mod bench;
pub mod device_check;
