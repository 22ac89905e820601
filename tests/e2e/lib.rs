//! End-to-end tests of rsb: the real binaries run together, as a user runs them. The tests are
//! in `e2e/main.rs`; this library is empty.
