//! timm's optimizer and learning-rate schedule as the recipes use them: [`lamb`] (timm's
//! `Lamb`, with its global gradient clip) and [`schedule`] (linear warmup, then cosine).

pub mod lamb;
pub mod schedule;
