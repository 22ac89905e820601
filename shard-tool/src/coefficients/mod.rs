/*!
Coefficient records: a JPEG's quantised DCT coefficients, stored in a form that reads about three
times faster than its Huffman-coded data (issue 40; docs/loader.md, "Coefficient records").

Huffman decoding is more than half of what an A3 sample costs, and no entropy decoder measured
is a third faster than zune-jpeg's. So `shard-tool pack --records coefficients` does it once, at
pack time: each train JPEG (after its lossless re-encode with restart markers, [`crate::restart`])
is stored as its coefficients, and the loader goes straight to the IDCT. The same coefficients,
quantisation tables and sampling mean the same pixels; `extract` gives back the restart-marked
JPEG byte for byte (libjpeg writes it again from the coefficients, [`to_jpeg`]), which the packer
checks for every record before it stores one.

Layout (integers little-endian):

```text
[0, 4)        MAGIC, "RSBC" (a JPEG starts with FF D8)
[4, 8)        H: length of the JPEG header
[8, 12)       N: chunks (one per restart interval)
[12, 12 + H)  the JPEG's bytes from SOI to the end of its SOS segment: frame, quantisation and
              Huffman tables, restart interval (DRI: MCUs per chunk)
then          N + 1 offsets (u32) into the body: chunk k is body[offset k, offset k+1); the
              first is 0, the last the body's length
then          the body
```

The body holds the MCUs in scan order, as the entropy-coded data does (in an MCU, component by
component in frame order, each component's blocks row by row). A block is a LEB128 mask of its
nonzero coefficients (bit k: zigzag position k), then each of them in zigzag order as one byte
(-127..=127) or `0x80` and two bytes (i16). The DC coefficient is stored as the difference from
the previous block of its component, zero at a chunk's start, as a JPEG's DC is coded: a chunk
reads on its own, as a restart interval does, so the loader decodes only the chunks under a crop
([`crate::restart::Intervals`] splits both kinds of record).

Records measured on imagenet-sample: 1.71 times the JPEGs' bytes, their entropy stage 207 ms
against zune-jpeg's 660 (docs/loader.md).
*/

mod convert;

pub use crate::record::{
    COEFFICIENTS_MAGIC as MAGIC, COEFFICIENTS_PREFIX_LEN as PREFIX_LEN,
    CoefficientRecord as Record, MalformedRecord, is_coefficients,
};
pub use convert::{from_jpeg, to_jpeg};

use crate::libjpeg::TranscodeError;

/// Zigzag position → natural (row-major) position in a block.
pub const NATURAL: [u8; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// The escape byte before a two-byte value.
const ESCAPE: u8 = 0x80;

/// Why a coefficient record could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoefficientError {
    /// Its bytes contradict its layout (the shard changed on disk).
    #[error(transparent)]
    Malformed(#[from] MalformedRecord),
    /// The JPEG is not one a coefficient record holds (a single-scan baseline JPEG with restart
    /// intervals that tile its MCU rows).
    #[error("not made into a coefficient record: {0}")]
    Unsuitable(String),
    /// libjpeg refused.
    #[error(transparent)]
    Libjpeg(#[from] TranscodeError),
}

/// Appends one block (`natural`: coefficients in row-major order, slot 0 the DC difference).
pub fn write_block(out: &mut Vec<u8>, natural: &[i16; 64]) {
    let mut mask = 0u64;
    for (z, &at) in NATURAL.iter().enumerate() {
        if natural[usize::from(at)] != 0 {
            mask |= 1 << z;
        }
    }
    let mut m = mask;
    loop {
        let b = (m & 0x7F) as u8;
        m >>= 7;
        if m == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    while mask != 0 {
        let z = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        let v = natural[usize::from(NATURAL[z])];
        match i8::try_from(v) {
            Ok(b) if b != i8::MIN => out.push(b as u8),
            _ => {
                out.push(ESCAPE);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// Reads the block at `*pos` of `body` into `block` (natural order, slot 0 the DC difference;
/// `block` must be all zero on entry), moving `*pos` past it; whether it has an AC coefficient.
/// `None` where the bytes end inside it or a value is outside an 8-bit JPEG's range (a DC
/// difference of 11 bits, an AC coefficient of 10), which only damage makes.
#[inline(always)]
pub fn read_block(body: &[u8], pos: &mut usize, block: &mut [i16; 64]) -> Option<bool> {
    let mut p = *pos;
    let mut mask = 0u64;
    let mut shift = 0;
    loop {
        let b = *body.get(p)?;
        p += 1;
        mask |= u64::from(b & 0x7F).checked_shl(shift)?;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let any_ac = mask > 1;
    while mask != 0 {
        let z = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        let b = *body.get(p)?;
        let v = if b == ESCAPE {
            let v = i16::from_le_bytes([*body.get(p + 1)?, *body.get(p + 2)?]);
            let limit = if z == 0 { 2047 } else { 1023 };
            if !(-limit..=limit).contains(&v) {
                return None;
            }
            p += 3;
            v
        } else {
            p += 1;
            i16::from(b as i8)
        };
        block[usize::from(NATURAL[z & 63])] = v;
    }
    *pos = p;
    Some(any_ac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_read_back_as_written() {
        let mut blocks = vec![[0i16; 64]; 4];
        blocks[0][0] = -5;
        blocks[1][0] = 2047;
        blocks[1][63] = -1023;
        blocks[1][1] = 127;
        blocks[1][8] = -128;
        blocks[2] = std::array::from_fn(|i| (i as i16 * 37 % 255) - 127);
        let mut out = Vec::new();
        for b in &blocks {
            write_block(&mut out, b);
        }
        let mut pos = 0;
        for (i, want) in blocks.iter().enumerate() {
            let mut got = [0i16; 64];
            let any_ac = read_block(&out, &mut pos, &mut got).unwrap();
            assert_eq!(&got, want);
            assert_eq!(any_ac, want[1..].iter().any(|&v| v != 0), "block {i}");
        }
        assert_eq!(pos, out.len());
    }

    #[test]
    fn damage_inside_a_block_is_refused() {
        let mut out = Vec::new();
        let mut block = [0i16; 64];
        block[5] = 900;
        write_block(&mut out, &block);
        for cut in 0..out.len() {
            let (mut pos, mut got) = (0, [0i16; 64]);
            assert_eq!(read_block(&out[..cut], &mut pos, &mut got), None);
        }
        // An AC value past 10 bits, and a mask longer than 64 bits.
        let bad = [0x02, ESCAPE, 0x00, 0x04];
        assert_eq!(read_block(&bad, &mut 0, &mut [0; 64]), None);
        let long = [0xFF; 11];
        assert_eq!(read_block(&long, &mut 0, &mut [0; 64]), None);
    }

    #[test]
    fn a_record_with_offsets_out_of_order_is_malformed() {
        let mut r = MAGIC.to_vec();
        r.extend_from_slice(&2u32.to_le_bytes());
        r.extend_from_slice(&1u32.to_le_bytes());
        r.extend_from_slice(&[0xFF, 0xD8]);
        for o in [0u32, 3] {
            r.extend_from_slice(&o.to_le_bytes());
        }
        r.extend_from_slice(&[0, 0, 0]);
        let ok = Record::parse(&r).unwrap();
        assert_eq!((ok.chunks(), ok.offset(1), ok.body.len()), (1, 3, 3));
        assert_eq!(ok.body_start(), r.len() - 3);
        let mut short = r.clone();
        short.pop();
        assert!(Record::parse(&short).is_err());
        assert!(Record::parse(&r[..13]).is_err());
        assert!(Record::parse(b"\xFF\xD8").is_err());
    }
}
