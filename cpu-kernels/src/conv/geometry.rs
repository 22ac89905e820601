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

/// The shapes of one convolution (dilation 1).
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
    /// Groups: the input and output channels split into this many, each output group reading
    /// its input group alone (1: every output reads every input; ResNeXt's 3×3: 32).
    pub groups: usize,
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
            && self.groups > 0
            && self.c.is_multiple_of(self.groups)
            && self.o.is_multiple_of(self.groups)
            && self.stride.iter().all(|&s| s > 0)
            && self.h + 2 * self.padding[0] >= self.k[0]
            && self.w + 2 * self.padding[1] >= self.k[1]
    }

    /// Output positions per image.
    pub(super) fn p(&self) -> usize {
        let [oh, ow] = self.out();
        oh * ow
    }

    /// Rows of `cols` (and a weight row's length): a group's input channels × kernel taps.
    pub(super) fn taps(&self) -> usize {
        self.c / self.groups * self.k[0] * self.k[1]
    }

    /// The same convolution with each image's groups as images of their own: `n·groups`
    /// images of `c / groups` channels to `o / groups`, groups 1. NCHW keeps a group's
    /// channels together, so the input, the output and their gradients are the same slices
    /// read this way; image `i` takes the weight's group `i % groups`.
    pub(super) fn per_group(&self) -> Geometry {
        Geometry {
            n: self.n * self.groups,
            c: self.c / self.groups,
            o: self.o / self.groups,
            groups: 1,
            ..*self
        }
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
