//! im2col and col2im: one image's convolution taps laid out as the columns of a matrix (and
//! the sum back), which turns the convolution into matrix products ([`super::cpu`]).
//!
//! `cols` has one row per tap `(c, i, j)` (channel, kernel row, kernel column) and one column
//! per output position: the input pixel under that tap, 0 where it falls in the padding. Every
//! element is written once per image (no zero-fill of the whole buffer first).

use std::ops::Range;

use super::geometry::{Geometry, inside};
use crate::simd;

/// Whether each output row reads whole input rows shifted sideways: stride 1 and an output as
/// wide as the input ("same" padding: 3×3 with padding 1). Then the taps of one row of `cols`
/// over all the output rows that read inside the image are one contiguous run of the input
/// plane, shifted by the tap, in which only the columns that wrap around into the neighbouring
/// input row must be zero instead: one long copy (and one long sum in col2im) instead of a
/// short one per output row, which dominated at ResNets' small planes (4×4 to 32×32).
fn same_width_stride_one(g: &Geometry) -> bool {
    g.stride == [1, 1] && g.out()[1] == g.w
}

/// One row of `cols` over the output rows of a tile: channel `c`, kernel tap `(i, j)`, where
/// its values lie in `cols`, and the rows of the tile and output columns whose input under the
/// tap is inside the image.
struct Tap<'a> {
    /// Channel `c`'s plane in the input (or its gradient).
    plane: Range<usize>,
    ij: [usize; 2],
    /// The tap's values in `cols` (the tile's positions).
    at: Range<usize>,
    /// The tile's rows (counted from the tile's first) that read inside the image.
    rows_in: Range<usize>,
    /// The output row of `rows_in`'s first.
    first_row: usize,
    cols_in: &'a Range<usize>,
    /// The output's width.
    ow: usize,
}

/// What im2col and col2im derive from a convolution's geometry, once per convolution rather
/// than per image: per kernel row and column, the output rows and columns whose taps read
/// inside the image (two divisions each), and whether the whole-run path applies.
pub(super) struct Reach {
    g: Geometry,
    rows_inside: Vec<Range<usize>>,
    cols_inside: Vec<Range<usize>>,
    same: bool,
}

impl Reach {
    /// The reach of `g`'s kernel taps.
    pub(super) fn new(g: &Geometry) -> Reach {
        let [oh, ow] = g.out();
        Reach {
            g: *g,
            rows_inside: (0..g.k[0])
                .map(|i| inside(oh, g.h, g.stride[0], i, g.padding[0]))
                .collect(),
            cols_inside: (0..g.k[1])
                .map(|j| inside(ow, g.w, g.stride[1], j, g.padding[1]))
                .collect(),
            same: same_width_stride_one(g),
        }
    }

    /// `f(tap)` for every row of `cols` of the output rows `tile`, in order.
    #[inline(always)]
    fn each_tap(&self, tile: &Range<usize>, mut f: impl FnMut(Tap<'_>)) {
        let g = &self.g;
        let ow = g.out()[1];
        let p = tile.len() * ow;
        for c in 0..g.c {
            for (i, rows_in) in self.rows_inside.iter().enumerate() {
                let rows_in = within(rows_in, tile);
                for (j, cols_in) in self.cols_inside.iter().enumerate() {
                    let row = (c * g.k[0] + i) * g.k[1] + j;
                    f(Tap {
                        plane: c * g.h * g.w..(c + 1) * g.h * g.w,
                        ij: [i, j],
                        at: row * p..(row + 1) * p,
                        first_row: tile.start + rows_in.start,
                        rows_in: rows_in.clone(),
                        cols_in,
                        ow,
                    });
                }
            }
        }
    }

    /// The plane's values under `tap` for the `k`-th of its `rows_in`: from the input under its
    /// first column in `cols_in` to the end of that input row (every `stride[1]`-th is read).
    #[inline(always)]
    fn input_row(&self, tap: &Tap<'_>, k: usize) -> Range<usize> {
        let g = &self.g;
        let [i, j] = tap.ij;
        let iy = (tap.first_row + k) * g.stride[0] + i - g.padding[0];
        iy * g.w + tap.cols_in.start * g.stride[1] + j - g.padding[1]..(iy + 1) * g.w
    }
}

/// In the [`same_width_stride_one`] case, the part of the contiguous run under kernel tap
/// `(i, j)` from output row `first_row` on (a block of `block` values of `cols`) that falls
/// inside the plane: how many of the block's first values fall before the plane (wrapped
/// columns, like any value past its end), the plane offset where the rest starts, and how many
/// values are inside.
fn run(g: &Geometry, first_row: usize, [i, j]: [usize; 2], block: usize) -> (usize, usize, usize) {
    let at = (first_row + i - g.padding[0]) * g.w + j;
    let (skip, from) = (
        g.padding[1].saturating_sub(at),
        at.saturating_sub(g.padding[1]),
    );
    let plane = g.h * g.w;
    (skip, from, (block - skip).min(plane.saturating_sub(from)))
}

/// The output rows of `tile` whose taps read inside the image (`rows_in`), as rows of the tile
/// (an empty range where there are none).
#[inline(always)]
fn within(rows_in: &Range<usize>, tile: &Range<usize>) -> Range<usize> {
    let start = rows_in.start.max(tile.start);
    let end = rows_in.end.min(tile.end).max(start);
    start - tile.start..end - tile.start
}

/// The output columns outside `cols_in` of every output row in `block` (row length `ow`) set
/// to zero.
#[inline(always)]
fn zero_outside(block: &mut [f32], ow: usize, cols_in: &Range<usize>) {
    // Column by column: at the narrow planes of a ResNet's late stages a row is 4 to 16 values,
    // and a 3×3 kernel's taps wrap by one column only.
    for x in (0..cols_in.start).chain(cols_in.end..ow) {
        for v in block.iter_mut().skip(x).step_by(ow) {
            *v = 0.0;
        }
    }
}

/// im2col of the output rows `tile` of one image `x` (C×H×W) into `cols` (taps × the tile's
/// positions).
pub(super) fn im2col(reach: &Reach, x: &[f32], tile: Range<usize>, cols: &mut [f32]) {
    // A closure marked to inline, so that the body is compiled inside the dispatch (see
    // `simd::run`).
    simd::run(
        #[inline(always)]
        || im2col_body(reach, x, &tile, cols),
    )
}

#[inline(always)]
fn im2col_body(reach: &Reach, x: &[f32], tile: &Range<usize>, cols: &mut [f32]) {
    reach.each_tap(
        tile,
        #[inline(always)]
        |tap| {
            let (plane, ow) = (&x[tap.plane.clone()], tap.ow);
            let (rows_in, cols_in) = (&tap.rows_in, tap.cols_in);
            let dst = &mut cols[tap.at.clone()];
            if rows_in.is_empty() || cols_in.is_empty() {
                dst.fill(0.0);
                return;
            }
            dst[..rows_in.start * ow].fill(0.0);
            dst[rows_in.end * ow..].fill(0.0);
            let block = &mut dst[rows_in.start * ow..rows_in.end * ow];
            if reach.same {
                let (skip, from, n) = run(&reach.g, tap.first_row, tap.ij, block.len());
                if n > 0 {
                    block[skip..skip + n].copy_from_slice(&plane[from..from + n]);
                }
                // What the run read past a row's end (or before the plane) is padding.
                zero_outside(block, ow, cols_in);
                return;
            }
            for (k, out) in block.chunks_exact_mut(ow).enumerate() {
                let src = &plane[reach.input_row(&tap, k)];
                out[..cols_in.start].fill(0.0);
                out[cols_in.end..].fill(0.0);
                let out = &mut out[cols_in.clone()];
                let stride = reach.g.stride[1];
                if stride == 1 {
                    out.copy_from_slice(&src[..out.len()]);
                } else {
                    for (o, s) in out.iter_mut().zip(src.iter().step_by(stride)) {
                        *o = *s;
                    }
                }
            }
        },
    );
}

/// col2im of the output rows `tile`: `cols` (taps × the tile's positions), summed over the taps
/// that read each pixel, is added to `dx` (C×H×W). `cols` is scratch: the entries of taps that
/// fall in the padding are zeroed on the way.
pub(super) fn col2im(reach: &Reach, cols: &mut [f32], tile: Range<usize>, dx: &mut [f32]) {
    simd::run(
        #[inline(always)]
        || col2im_body(reach, cols, &tile, dx),
    )
}

#[inline(always)]
fn col2im_body(reach: &Reach, cols: &mut [f32], tile: &Range<usize>, dx: &mut [f32]) {
    reach.each_tap(
        tile,
        #[inline(always)]
        |tap| {
            let (rows_in, cols_in, ow) = (&tap.rows_in, tap.cols_in, tap.ow);
            if rows_in.is_empty() || cols_in.is_empty() {
                return;
            }
            let plane = &mut dx[tap.plane.clone()];
            let block = &mut cols[tap.at.clone()][rows_in.start * ow..rows_in.end * ow];
            if reach.same {
                // Padding taps add 0 (x + 0 is x): the run is summed whole.
                zero_outside(block, ow, cols_in);
                let (skip, from, n) = run(&reach.g, tap.first_row, tap.ij, block.len());
                if n > 0 {
                    for (d, s) in plane[from..from + n].iter_mut().zip(&block[skip..]) {
                        *d += s;
                    }
                }
                return;
            }
            for (k, from) in block.chunks_exact(ow).enumerate() {
                let from = &from[cols_in.clone()];
                let dst = &mut plane[reach.input_row(&tap, k)];
                let stride = reach.g.stride[1];
                if stride == 1 {
                    for (d, s) in dst[..from.len()].iter_mut().zip(from) {
                        *d += s;
                    }
                } else {
                    for (d, s) in dst.iter_mut().step_by(stride).zip(from) {
                        *d += s;
                    }
                }
            }
        },
    );
}
