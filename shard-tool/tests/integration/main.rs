//! Integration tests of the `shard-tool` binary on trees the tests make themselves, plus the
//! real data in `../shared/data` where present.

mod corruption;
mod fuzz;
mod pack;
mod real_data;
mod resume;
mod util;
