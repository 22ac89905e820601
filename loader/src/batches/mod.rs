//! From samples to batches: the per-thread [`pipeline::Worker`] that draws each sample's
//! stream and runs its transform (decoding a record once for all of its repeats), [`batch`]
//! that fills a batch on several threads bit-identically whatever the thread count, and
//! [`stream`], the one loop from a job to its batches (positions, sample orders, fills, ids,
//! reports) the daemon's producer, `loader bench` and the trainer's in-process feed share.

pub mod batch;
pub mod pipeline;
pub mod stream;
