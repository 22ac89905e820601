//! The trainer's side of the loader: where batches come from ([`source`]: a `loader serve`
//! daemon, or a loader started in this process, and the split checks made before a model is
//! built), a run's streams, one per rank under one job id ([`streams`]), a ring slot's way to the device without a host copy ([`upload`]) and its
//! normalization there ([`normalize`], as timm's `PrefetchLoader` normalizes on the GPU), and
//! the loader core's batches in this process for `trainer bench` ([`feed`]).

pub mod feed;
pub mod normalize;
pub mod source;
pub mod streams;
pub mod upload;

pub use source::{DataError, DataSource};
