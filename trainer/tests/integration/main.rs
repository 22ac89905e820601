//! The trainer's integration tests, one binary (one link of burn instead of one per file):
//! the binary's front door ([`cli`]), golden values from timm and torch ([`golden`], and for
//! timm's ResNet family [`family`]), runs
//! with several ranks ([`ranks`]) and, with the `mpi` feature, several processes (`mpi`), exact resume ([`resume`]), a run folder a neighbour writes into ([`neighbours`]), a disk that fills ([`faults`]), studies ([`study`]) and the
//! upload from a ring slot ([`upload`]), each step's own time ([`timing`]); [`common`] is what
//! they share.

mod cli;
mod common;
mod family;
mod faults;
mod golden;
#[cfg(feature = "mpi")]
mod mpi;
mod neighbours;
mod ranks;
mod resume;
mod study;
mod tensorboard;
mod timing;
mod upload;
