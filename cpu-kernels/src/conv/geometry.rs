//! The shapes of one convolution, and the sizes derived from them that the convolution's
//! products ([`super::cpu`]) and its im2col ([`super::im2col`]) share, and the reach of a
//! kernel tap, which max pooling ([`crate::max_pool`]) shares too.

use std::ops::Range;

/// The range of output columns `ox` (of `ow`) whose input column `ox·s + j - p` is inside
/// `0..w`: for kernel column `j`, stride `s`, padding `p` (rows alike).
#[inline]
pub(crate) fn inside(ow: usize, w: usize, s: usize, j: usize, p: usize) -> Range<usize> {
    // First ox with ox·s + j >= p; last with ox·s + j - p < w.
    let first = p.saturating_sub(j).div_ceil(s);
    let end = if w + p > j {
        (w + p - j).div_ceil(s)
    } else {
        0
    };
    first.min(ow)..end.min(ow)
}

/// The shapes of one convolution (groups 1, dilation 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel height and width.
    pub k: [usize; 2],
    /// Stride.
    pub stride: [usize; 2],
    /// Zero padding on each side.
    pub padding: [usize; 2],
}

impl Geometry {
    /// Output height and width.
    pub fn out(&self) -> [usize; 2] {
        let side = |input: usize, k: usize, s: usize, p: usize| (input + 2 * p - k) / s + 1;
        [
            side(self.h, self.k[0], self.stride[0], self.padding[0]),
            side(self.w, self.k[1], self.stride[1], self.padding[1]),
        ]
    }

    /// Whether the shapes make a convolution (the kernel fits the padded input, no zero sizes).
    pub fn is_valid(&self) -> bool {
        let dims = [self.n, self.c, self.h, self.w, self.o, self.k[0], self.k[1]];
        dims.iter().all(|&d| d > 0)
            && self.stride.iter().all(|&s| s > 0)
            && self.h + 2 * self.padding[0] >= self.k[0]
            && self.w + 2 * self.padding[1] >= self.k[1]
    }

    /// Output positions per image.
    pub(super) fn p(&self) -> usize {
        let [oh, ow] = self.out();
        oh * ow
    }

    /// Rows of `cols`: input channels × kernel taps.
    pub(super) fn taps(&self) -> usize {
        self.c * self.k[0] * self.k[1]
    }

    /// A 1×1 convolution of stride 1 without padding: the input is its own `cols`.
    pub(super) fn pointwise(&self) -> bool {
        self.k == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    pub(super) fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    pub(super) fn out_image(&self) -> usize {
        self.o * self.p()
    }
}
