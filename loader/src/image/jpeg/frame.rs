//! The headers of a single-scan baseline JPEG: frame, quantization and Huffman tables, restart
//! interval, scan.

use super::huffman::{Huffman, NATURAL};

/// A component: sampling factors, Huffman tables, quantization table (natural order).
pub(super) struct Component {
    pub(super) h: usize,
    pub(super) v: usize,
    pub(super) dc: usize,
    pub(super) ac: usize,
    pub(super) quant: [i32; 64],
}

/// What the headers say.
pub(super) struct Frame {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) components: Vec<Component>,
    pub(super) dc: Vec<Option<Huffman>>,
    pub(super) ac: Vec<Option<Huffman>>,
    pub(super) restart: usize,
    pub(super) scan: usize,
}

/// Reads the headers of a single-scan baseline JPEG up to its scan; `None` for anything else.
/// `huffman`: build its Huffman tables (a coefficient record's blocks need none).
pub(super) fn frame(j: &[u8], huffman: bool) -> Option<Frame> {
    let (mut dc, mut ac) = (
        (0..4).map(|_| None).collect::<Vec<_>>(),
        (0..4).map(|_| None).collect::<Vec<_>>(),
    );
    let mut quant = [[0i32; 64]; 4];
    let (mut width, mut height, mut restart) = (0, 0, 0);
    let mut ids: Vec<(u8, usize, usize, usize)> = Vec::new();
    let mut p = 2;
    let mut jfif = false;
    loop {
        if *j.get(p)? != 0xFF {
            return None;
        }
        let marker = *j.get(p + 1)?;
        let len = usize::from(u16::from_be_bytes([*j.get(p + 2)?, *j.get(p + 3)?]));
        let seg = j.get(p + 4..p + 2 + len)?;
        match marker {
            0xC0 | 0xC1 => {
                if *seg.first()? != 8 {
                    return None;
                }
                height = usize::from(u16::from_be_bytes([*seg.get(1)?, *seg.get(2)?]));
                width = usize::from(u16::from_be_bytes([*seg.get(3)?, *seg.get(4)?]));
                for c in 0..usize::from(*seg.get(5)?) {
                    let s = seg.get(6 + 3 * c..9 + 3 * c)?;
                    ids.push((
                        s[0],
                        usize::from(s[1] >> 4),
                        usize::from(s[1] & 15),
                        usize::from(s[2] & 3),
                    ));
                }
            }
            // Progressive, lossless, arithmetic coding: not handled here.
            0xC2 | 0xC3 | 0xC5..=0xCF => return None,
            // Adobe's marker: an RGB or CMYK JPEG is not YCbCr.
            0xEE => return None,
            0xE0 => jfif |= seg.starts_with(b"JFIF\0"),
            0xDB => {
                let mut q = 0;
                while q < seg.len() {
                    let (precision, t) = (seg[q] >> 4, usize::from(seg[q] & 3));
                    for (z, &at) in NATURAL[..64].iter().enumerate() {
                        quant[t][usize::from(at)] = if precision == 0 {
                            i32::from(*seg.get(q + 1 + z)?)
                        } else {
                            i32::from(u16::from_be_bytes([
                                *seg.get(q + 1 + 2 * z)?,
                                *seg.get(q + 2 + 2 * z)?,
                            ]))
                        };
                    }
                    q += if precision == 0 { 65 } else { 129 };
                }
            }
            0xC4 if huffman => {
                let mut q = 0;
                while q < seg.len() {
                    let (class, t) = (seg[q] >> 4, usize::from(seg[q] & 3));
                    let counts = seg.get(q + 1..q + 17)?;
                    let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    let table = Huffman::new(counts, seg.get(q + 17..q + 17 + total)?, class == 1)?;
                    if class == 0 {
                        dc[t] = Some(table);
                    } else {
                        ac[t] = Some(table);
                    }
                    q += 17 + total;
                }
            }
            0xDD => restart = usize::from(u16::from_be_bytes([*seg.first()?, *seg.get(1)?])),
            0xDA => {
                let n = usize::from(*seg.first()?);
                if n != ids.len() || !(n == 1 || n == 3) || width == 0 || height == 0 {
                    return None;
                }
                // Without JFIF's marker, components named 'R', 'G', 'B' are RGB to libjpeg
                // (jdapimin.c's `default_decompress_parms`), not YCbCr.
                let named_rgb = ids.iter().map(|c| c.0).eq([b'R', b'G', b'B']);
                if n == 3 && !jfif && named_rgb {
                    return None;
                }
                let mut components = Vec::with_capacity(n);
                for &(id, h, v, q) in &ids {
                    let at = (0..n).find(|&c| seg.get(1 + 2 * c) == Some(&id))?;
                    let tables = *seg.get(2 + 2 * at)?;
                    if !(1..=2).contains(&h) || !(1..=2).contains(&v) {
                        return None;
                    }
                    components.push(Component {
                        h,
                        v,
                        dc: usize::from(tables >> 4) & 3,
                        ac: usize::from(tables & 15) & 3,
                        quant: quant[q],
                    });
                }
                return Some(Frame {
                    width,
                    height,
                    components,
                    dc,
                    ac,
                    restart,
                    scan: p + 2 + len,
                });
            }
            _ => {}
        }
        p += 2 + len;
    }
}
