//! Where a decode's blocks come from: a JPEG's Huffman-coded scan ([`Scan`]), or a coefficient
//! record's stored blocks ([`Stored`], [`shard_tool::coefficients`]). Both give each block in
//! scan order with its DC prediction added, and both restart at each restart interval (a
//! coefficient record's chunk).

use shard_tool::coefficients::{self, Record};

use super::huffman::{Bits, Huffman};

/// A source of blocks, in scan order.
pub(super) trait Blocks {
    /// Moves to the start of restart interval `k` (`k > 0`); `None` if the data says it is
    /// elsewhere.
    fn restart(&mut self, k: usize) -> Option<()>;
    /// The next block of component `c` (natural order, slot 64 scratch; `block` all zero on
    /// entry); whether it has an AC coefficient.
    fn block(&mut self, c: usize, block: &mut [i16; 65]) -> Option<bool>;
    /// Whether the data ended where its last block did.
    fn ended(&self) -> bool;
    /// Whether the data is long enough to hold `count` blocks (checked before the image's
    /// buffers are sized from its header: a damaged header may declare 65,535²).
    fn may_hold(&self, count: usize) -> bool;
}

/// A JPEG's entropy-coded data, stuffing removed ([`super::huffman::unstuff`]).
pub(super) struct Scan<'a> {
    pub(super) bits: Bits<'a>,
    /// Where each restart interval starts in the unstuffed data.
    pub(super) starts: &'a [usize],
    /// Each component's DC and AC tables.
    pub(super) tables: [Option<(&'a Huffman, &'a Huffman)>; 3],
    pub(super) preds: [i32; 3],
}

impl Blocks for Scan<'_> {
    #[inline(always)]
    fn restart(&mut self, k: usize) -> Option<()> {
        self.bits = Bits {
            data: self.bits.data,
            pos: *self.starts.get(k)?,
            buf: 0,
            n: 0,
        };
        self.preds = [0; 3];
        Some(())
    }

    #[inline(always)]
    fn block(&mut self, c: usize, block: &mut [i16; 65]) -> Option<bool> {
        let (dc, ac) = (*self.tables.get(c)?)?;
        self.bits.block(dc, ac, self.preds.get_mut(c)?, block)
    }

    fn ended(&self) -> bool {
        // A stream that ends far from where its data ends did not decode (16 bytes of padding
        // follow the data).
        let bits = &self.bits;
        bits.pos.saturating_sub(bits.n as usize / 8) + 2 >= bits.data.len() - 16
    }

    fn may_hold(&self, count: usize) -> bool {
        // A block takes two bits at least: a DC code and an end of block.
        self.bits.data.len().saturating_sub(16).saturating_mul(4) >= count
    }
}

/// A coefficient record's blocks.
pub(super) struct Stored<'a> {
    pub(super) record: Record<'a>,
    pub(super) pos: usize,
    pub(super) preds: [i16; 3],
}

impl Blocks for Stored<'_> {
    #[inline(always)]
    fn restart(&mut self, k: usize) -> Option<()> {
        // Each chunk must start where the one before it ended: damage shows here.
        if self.pos != self.record.offset(k) {
            return None;
        }
        self.preds = [0; 3];
        Some(())
    }

    #[inline(always)]
    fn block(&mut self, c: usize, block: &mut [i16; 65]) -> Option<bool> {
        let natural = block.first_chunk_mut::<64>()?;
        let any_ac = coefficients::read_block(self.record.body, &mut self.pos, natural)?;
        let pred = self.preds.get_mut(c)?;
        *pred = pred.wrapping_add(natural[0]);
        natural[0] = *pred;
        Some(any_ac)
    }

    fn ended(&self) -> bool {
        self.pos == self.record.body.len()
    }

    fn may_hold(&self, count: usize) -> bool {
        // A block takes its mask's byte at least.
        self.record.body.len() >= count
    }
}
