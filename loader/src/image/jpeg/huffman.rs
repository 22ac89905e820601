//! The entropy-coded data: Huffman tables with an 11-bit lookup, the bit reader, one block's
//! coefficients, and the stuffing removed before any of it.

/// Zigzag position → natural position ([`shard_tool::coefficients::NATURAL`]); past 63, the
/// scratch slot 64 (where an end of block's run lands, so that the fast path has no branch for
/// it).
pub(super) static NATURAL: [u8; 128] = {
    let mut t = [64u8; 128];
    let mut i = 0;
    while i < 64 {
        t[i] = shard_tool::coefficients::NATURAL[i];
        i += 1;
    }
    t
};

/// Bits of the Huffman lookup table.
pub(super) const LOOKUP_BITS: u32 = 11;

/// A Huffman table: an 11-bit lookup whose entries hold the code's length, and for AC codes
/// the run and, where code and value fit in the 11 bits, the value itself; longer codes by
/// their canonical limits.
pub(super) struct Huffman {
    /// Entry: bits 0-4 the bits to consume, 5-6 the kind, 8-13 the run, 12-15 the value's size
    /// (symbol kind), 16-31 the value (value kind).
    lookup: Vec<u32>,
    maxcode: [i32; 18],
    offset: [i32; 17],
    symbols: Vec<u8>,
    ac: bool,
}

pub(super) const SLOW: u32 = 0;
pub(super) const VALUE: u32 = 1;
pub(super) const SYMBOL: u32 = 2;

/// A value of `size` bits as JPEG codes it (the high half positive).
pub(super) fn extend(v: i32, size: u32) -> i32 {
    if size == 0 {
        0
    } else if v < 1 << (size - 1) {
        v - (1 << size) + 1
    } else {
        v
    }
}

impl Huffman {
    pub(super) fn new(counts: &[u8], symbols: &[u8], ac: bool) -> Option<Huffman> {
        let mut lookup = vec![SLOW; 1 << LOOKUP_BITS];
        let mut maxcode = [-1i32; 18];
        let mut offset = [0i32; 17];
        let (mut code, mut k) = (0u32, 0usize);
        for len in 1..=16u32 {
            let n = usize::from(counts[len as usize - 1]);
            offset[len as usize] = k as i32 - code as i32;
            for _ in 0..n {
                // More codes of this length than fit: not a Huffman table.
                if code >= 1 << len {
                    return None;
                }
                let symbol = u32::from(*symbols.get(k)?);
                // A value of more bits than an 8-bit JPEG's coefficients have.
                if (!ac && symbol > 11) || (ac && symbol & 15 > 10) {
                    return None;
                }
                if len <= LOOKUP_BITS {
                    let (run, size) = if ac {
                        (symbol >> 4, symbol & 15)
                    } else {
                        (0, symbol)
                    };
                    let shift = LOOKUP_BITS - len;
                    for fill in 0..1u32 << shift {
                        let entry = if ac && size == 0 {
                            // End of block: a run past the block's end; 15: sixteen zeros.
                            let run = if run == 15 { 15 } else { 63 };
                            len | VALUE << 5 | run << 8
                        } else if len + size <= LOOKUP_BITS {
                            let bits = (fill >> (shift - size)) & ((1 << size) - 1);
                            let v = extend(bits as i32, size);
                            (len + size) | VALUE << 5 | run << 8 | (v as u32) << 16
                        } else {
                            len | SYMBOL << 5 | run << 8 | size << 12
                        };
                        lookup[((code << shift) | fill) as usize] = entry;
                    }
                }
                code += 1;
                k += 1;
            }
            maxcode[len as usize] = if n > 0 { code as i32 - 1 } else { -1 };
            if code > 1 << len {
                return None;
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        Some(Huffman {
            lookup,
            maxcode,
            offset,
            symbols: symbols.to_vec(),
            ac,
        })
    }
}

/// The entropy-coded data, stuffing removed, read MSB first with 64-bit refills.
pub(super) struct Bits<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    pub(super) buf: u64,
    pub(super) n: u32,
}

impl Bits<'_> {
    #[inline(always)]
    pub(super) fn refill(&mut self) {
        let word = match self.data.get(self.pos..self.pos + 8) {
            Some(w) => u64::from_be_bytes(w.try_into().unwrap_or([0; 8])),
            // Past the end: zeros, and the stream is judged by where it ended.
            None => 0,
        };
        self.buf |= word >> self.n;
        self.pos += ((63 - self.n) >> 3) as usize;
        self.n |= 56;
    }

    fn peek(&self, k: u32) -> u32 {
        (self.buf >> (64 - k)) as u32
    }

    fn consume(&mut self, k: u32) {
        self.buf <<= k;
        self.n -= k;
    }

    fn get(&mut self, k: u32) -> u32 {
        if k == 0 {
            return 0;
        }
        let v = self.peek(k);
        self.consume(k);
        v
    }

    /// A code longer than the lookup: its symbol as (run, size), or `None` for a bad code.
    fn slow(&mut self, t: &Huffman) -> Option<(u32, u32)> {
        let mut len = LOOKUP_BITS + 1;
        while len <= 16 && self.peek(len) as i32 > t.maxcode[len as usize] {
            len += 1;
        }
        if len > 16 {
            return None;
        }
        let at = self.peek(len) as i32 + t.offset[len as usize];
        self.consume(len);
        let symbol = u32::from(*t.symbols.get(usize::try_from(at).ok()?)?);
        Some(if t.ac {
            (symbol >> 4, symbol & 15)
        } else {
            (0, symbol)
        })
    }

    /// One block's coefficients (natural order, slot 64 scratch) after the DC prediction;
    /// whether any AC term came (where none did, the block is its DC alone).
    #[inline(always)]
    pub(super) fn block(
        &mut self,
        dc: &Huffman,
        ac: &Huffman,
        pred: &mut i32,
        out: &mut [i16; 65],
    ) -> Option<bool> {
        self.refill();
        let e = dc.lookup[self.peek(LOOKUP_BITS) as usize];
        let diff = match (e >> 5) & 3 {
            VALUE => {
                self.consume(e & 31);
                (e as i32) >> 16
            }
            SYMBOL => {
                self.consume(e & 31);
                let s = (e >> 12) & 15;
                extend(self.get(s) as i32, s)
            }
            _ => {
                let (_, s) = self.slow(dc)?;
                self.refill();
                extend(self.get(s.min(16)) as i32, s.min(16))
            }
        };
        *pred = pred.wrapping_add(diff);
        out[0] = *pred as i16;
        let (mut k, mut any) = (1usize, false);
        while k < 64 {
            self.refill();
            let e = ac.lookup[self.peek(LOOKUP_BITS) as usize];
            if (e >> 5) & 3 == VALUE {
                self.consume(e & 31);
                // A run of 63 is an end of block (JPEG's runs stop at 15).
                any |= (e >> 8) & 63 != 63;
                k += ((e >> 8) & 63) as usize;
                out[usize::from(NATURAL[k])] = ((e as i32) >> 16) as i16;
                k += 1;
                continue;
            }
            let (r, s) = if (e >> 5) & 3 == SYMBOL {
                self.consume(e & 31);
                ((e >> 8) & 15, (e >> 12) & 15)
            } else {
                let rs = self.slow(ac)?;
                self.refill();
                rs
            };
            if s == 0 {
                if r == 15 {
                    k += 16;
                    continue;
                }
                return Some(any);
            }
            any = true;
            k += r as usize;
            out[usize::from(NATURAL[k.min(64)])] = extend(self.get(s) as i32, s) as i16;
            k += 1;
        }
        Some(any)
    }
}

/// The scan's bytes with the stuffing removed into `out`, and where each restart interval
/// starts into `starts`.
pub(super) fn unstuff(src: &[u8], out: &mut Vec<u8>, starts: &mut Vec<usize>) {
    out.clear();
    starts.clear();
    starts.push(0);
    let mut p = 0;
    while p < src.len() {
        // Runs without 0xFF are copied whole (most of the data).
        let run = memchr::memchr(0xFF, &src[p..]).unwrap_or(src.len() - p);
        out.extend_from_slice(&src[p..p + run]);
        p += run;
        if p >= src.len() {
            break;
        }
        match src.get(p + 1) {
            Some(0) => {
                out.push(0xFF);
                p += 2;
            }
            Some(0xD0..=0xD7) => {
                out.extend_from_slice(&[0; 8]);
                starts.push(out.len());
                p += 2;
            }
            Some(0xFF) => p += 1,
            _ => break,
        }
    }
    out.extend_from_slice(&[0; 16]);
}
