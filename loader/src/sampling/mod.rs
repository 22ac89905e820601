//! The draws, reproducible from the seed alone: counter-based random streams ([`rng`]) and
//! the order of the samples, timm's repeated-augmentation sampler and torch's distributed
//! sampler ([`sampler`]).

pub mod rng;
pub mod sampler;
