//! What users look at after (or during) runs: one run's curves ([`curves`], `trainer plot`),
//! several runs side by side ([`compare`]), and studies of many runs ([`study`]); [`draw`]
//! holds what their PNGs share.

pub mod compare;
pub mod curves;
pub mod draw;
pub mod study;
