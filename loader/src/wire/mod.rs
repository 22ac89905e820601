//! Between the daemon and its trainers: the shared-memory ring of batch slots ([`ring`]), the
//! socket's messages ([`protocol`]), the one frame codec every reader of the socket shares
//! ([`frame`]: length prefix, JSON, an explicit "incomplete"), and the client that attaches to
//! a daemon and reads batches in place, with exact resume ([`client`]).

pub mod client;
pub mod frame;
pub mod protocol;
pub mod ring;
