/*!
The rsb loader: decoding, timm's train/eval transforms, repeated-augmentation sampling, the
shared-memory batch ring and the daemon that serves it.

Not built yet: this crate holds only its place in the workspace (see the loader issues). It
will read records through [`shard_tool::Dataset`].
*/
#![deny(missing_docs)]
