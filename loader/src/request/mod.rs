//! What a trainer asks for: the transform ([`transform`]: every setting of timm's train or eval
//! transform, its checks, and the A1/A2/A3/eval presets, the one place they live) and the job
//! ([`job`]: split, transform, seed, ranks, batch size, checked where it enters and again by the
//! daemon, and its plan: which samples make batch (epoch, step)).

pub mod job;
pub mod transform;
