/*!
Restart markers: how a record is stored so that the loader decodes only the part of it that a
crop keeps (issue 40; docs/design.md, "crop-aware decoding").

A baseline JPEG's entropy-coded data is one sequential bit stream: to reach the MCU under a
crop's top-left corner, a decoder must Huffman-decode every MCU before it. A restart marker
(`RSTn`) every `interval` MCUs resets the DC predictors and byte-aligns the stream, so each
interval can be found by scanning for markers and decoded on its own.

- At pack time, [`add_restart_markers`] re-encodes a JPEG's entropy-coded data with a restart
  interval that divides its MCU row (libjpeg's coefficient API, as `jpegtran -restart` uses
  it): the DCT coefficients, quantisation tables and sampling stay the same, so every decoder
  gives the same pixels. The packer checks that, by decoding both, before it stores the result.
- At read time, [`Intervals::parse`] finds each interval's bytes and [`Intervals::splice`]
  writes a smaller JPEG made of the intervals that cover a region (with new restart numbers and
  a new frame size), which the stock decoder reads. With a margin of one chroma sample's
  context around the region (see [`Intervals::covering`]), the pixels inside the region are the
  bits a full decode gives.
*/

mod intervals;
mod transcode;

pub use intervals::{Covering, Intervals, NotSpliceable, SpliceError};
pub use transcode::{DEFAULT_INTERVAL_MCUS, TranscodeError, add_restart_markers, choose_interval};
