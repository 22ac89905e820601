//! The convolution's arithmetic on the CPU, on contiguous NCHW f32 slices: forward, the input's
//! gradient and the weight's, each as matrix products on the `gemm` crate (the one burn-flex
//! uses).
//!
//! Per image, with `P = OH·OW` output positions and `K = C·kh·kw`:
//! - forward: `Y[n] (O×P) = W (O×K) · cols(X[n]) (K×P)`;
//! - weight gradient: `dW (O×K) = Σₙ dY[n] (O×P) · cols(X[n])ᵀ (P×K)`;
//! - input gradient: `dX[n] = col2im(Wᵀ (K×O) · dY[n] (O×P))`.
//!
//! `cols` is im2col (`im2col.rs`). A 1×1 convolution of stride 1 without padding has
//! `cols(X[n]) = X[n]` viewed as `C×P`: no im2col at all.
//!
//! A grouped convolution is the same products with each image's groups taken as images of their
//! own (`Geometry::per_group`), each with its group's block of the weight (`group_block`).
//!
//! Images are shared among rayon's threads when there are at least as many as threads, each
//! image's products on one thread; with fewer images, one image at a time with the products
//! spread over the threads.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

pub use super::geometry::Geometry;
use super::im2col::{Reach, col2im, im2col};
use crate::slices::{as_uninit, filled, zeroed};

/// A matrix view for [`matmul`]: its data and (row, column) strides.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// A product's destination: its data and (row, column) strides.
struct Dst<'a> {
    data: &'a mut [MaybeUninit<f32>],
    rs: usize,
    cs: usize,
}

impl<'a> Dst<'a> {
    /// A whole `m×n` matrix, element `(i, j)` at `i·n + j`.
    fn row_major(data: &'a mut [MaybeUninit<f32>], [_, n]: [usize; 2]) -> Dst<'a> {
        Dst { data, rs: n, cs: 1 }
    }

    /// A whole `m×n` matrix, element `(i, j)` at `j·m + i`.
    fn column_major(data: &'a mut [MaybeUninit<f32>], [m, _]: [usize; 2]) -> Dst<'a> {
        Dst { data, rs: 1, cs: m }
    }
}

/// `dst (m×n) = [dst +] a (m×k) · b (k×n)`. `dst` may be uninitialized where `accumulate` is
/// false (gemm then writes every element without reading any).
fn matmul(
    [m, n, k]: [usize; 3],
    dst: Dst<'_>,
    accumulate: bool,
    a: View<'_>,
    b: View<'_>,
    parallel: bool,
) {
    debug_assert!(m == 0 || n == 0 || dst.data.len() > (m - 1) * dst.rs + (n - 1) * dst.cs);
    debug_assert!(m == 0 || k == 0 || a.data.len() > (m - 1) * a.rs + (k - 1) * a.cs);
    debug_assert!(k == 0 || n == 0 || b.data.len() > (k - 1) * b.rs + (n - 1) * b.cs);
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let stride = |s: usize| s as isize;
    // SAFETY: the three views cover every element the strides address (checked above in
    // debug builds, and by construction in every caller: the views are whole images, kernels,
    // runs of an image's rows or `cols` buffers of the geometry's sizes); `dst` is not aliased
    // by `a` or `b`, and is read only when `accumulate` is set, which every caller does on
    // initialized values.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr().cast::<f32>(),
            stride(dst.cs),
            stride(dst.rs),
            accumulate,
            a.data.as_ptr(),
            stride(a.cs),
            stride(a.rs),
            b.data.as_ptr(),
            stride(b.cs),
            stride(b.rs),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The weight block (`O/groups × taps`) of (pseudo-)image `img` of `g` (per group).
fn group_block<'a>(weight: &'a [f32], g: &Geometry, img: usize, groups: usize) -> &'a [f32] {
    let size = g.o * g.taps();
    &weight[(img % groups) * size..][..size]
}

/// Whether to give each thread its own images (else the products use every thread).
fn per_image(g: &Geometry) -> bool {
    g.n >= rayon::current_num_threads()
}

/// About how many values of `cols` one tile of output rows holds: small enough to stay in a
/// core's L2 cache between im2col writing it and the product reading it (and packing it).
/// Measured with `conv_repro`: a whole image's `cols` (7 MB at ResNet-50's first stage) went
/// through memory twice: a fifth of that convolution's forward.
const TILE_VALUES: usize = 1 << 18;

/// The runs of output rows that an image's products are taken over, one `cols` tile each: all
/// of them for a pointwise convolution (no `cols` at all), else as many rows as fit `values`
/// ([`TILE_VALUES`] but in tests; at least one row).
fn tiles(g: &Geometry, values: usize) -> impl Iterator<Item = Range<usize>> {
    let [oh, ow] = g.out();
    let rows = if g.pointwise() {
        oh
    } else {
        (values / (g.taps() * ow)).clamp(1, oh)
    };
    (0..oh).step_by(rows).map(move |r| r..(r + rows).min(oh))
}

/// `cols(X[img])` over the output rows `tile` (taps × the tile's positions): the image itself
/// for a pointwise convolution, else its im2col in `cols` (grown once, then reused for every
/// tile of the thread).
fn columns<'a>(
    (g, reach): (&Geometry, &Reach),
    x: &'a [f32],
    (img, tile): (usize, Range<usize>),
    cols: &'a mut Vec<f32>,
) -> &'a [f32] {
    let xi = &x[img * g.image()..(img + 1) * g.image()];
    if g.pointwise() {
        return xi;
    }
    cols.resize(g.taps() * tile.len() * g.out()[1], 0.0);
    im2col(reach, xi, tile, cols);
    cols
}

/// `one(img, out, scratch, parallel)` for every image's `chunk` of `out`: images shared among
/// the threads (each with its own scratch buffer), or one after another with `parallel` products.
///
/// One product per image even at small planes: products over several images side by side
/// (`len·P` columns, gathered and scattered around the product) measured slower at every
/// ResNet shape tried, ResNet-18/8's 8×8 and 4×4 planes and ResNet-50's 7×7 included.
fn each_image(
    g: &Geometry,
    out: &mut [MaybeUninit<f32>],
    chunk: usize,
    one: impl Fn(usize, &mut [MaybeUninit<f32>], &mut Vec<f32>, bool) + Sync,
) {
    if per_image(g) {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (img, o)| one(img, o, scratch, false));
    } else {
        let mut scratch = Vec::new();
        for (img, o) in out.chunks_mut(chunk).enumerate() {
            one(img, o, &mut scratch, true);
        }
    }
}

/// The forward convolution: `x` (N×C×H×W), `weight` (O×C×kh×kw), optional `bias` (O); returns
/// N×O×OH×OW.
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    forward_tiled(g, x, weight, bias, TILE_VALUES)
}

/// [`forward`] over tiles of about `tile` values of `cols`.
fn forward_tiled(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    tile: usize,
) -> Vec<f32> {
    let (whole, groups) = (g, g.groups);
    let g = &g.per_group();
    let (p, taps, ow) = (g.p(), g.taps(), g.out()[1]);
    let reach = Reach::new(g);
    let fill = |y: &mut [MaybeUninit<f32>]| {
        each_image(g, y, g.out_image(), |img, out, cols, parallel| {
            let w = View {
                data: group_block(weight, g, img, groups),
                rs: taps,
                cs: 1,
            };
            for tile in tiles(g, tile) {
                let (at, t) = (tile.start * ow, tile.len() * ow);
                let b = View {
                    data: columns((g, &reach), x, (img, tile), cols),
                    rs: t,
                    cs: 1,
                };
                let dst = Dst {
                    data: &mut out[at..],
                    rs: p,
                    cs: 1,
                };
                matmul([g.o, t, taps], dst, false, w, b, parallel);
            }
        });
    };
    // SAFETY: each image's tiles' products write its whole O×P block of the output.
    let mut y = unsafe { filled(g.n * g.out_image(), fill) };
    if let Some(bias) = bias {
        for image in y.chunks_exact_mut(whole.out_image()) {
            for (row, &b) in image.chunks_exact_mut(p).zip(bias) {
                row.iter_mut().for_each(|v| *v += b);
            }
        }
    }
    y
}

/// The weight's gradient (O×C×kh×kw) from the output's `dy` (N×O×OH×OW) and the input `x`.
pub fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    weight_grad_tiled(g, x, dy, TILE_VALUES)
}

/// [`weight_grad`] over tiles of about `tile` values of `cols`.
fn weight_grad_tiled(g: &Geometry, x: &[f32], dy: &[f32], tile: usize) -> Vec<f32> {
    let groups = g.groups;
    let g = &g.per_group();
    let (p, taps, ow) = (g.p(), g.taps(), g.out()[1]);
    let reach = Reach::new(g);
    // dW += dY[n] (O×P) · cols(X[n])ᵀ (P×taps). gemm computes a row-major destination as the
    // transposed product, whose left operand is then `cols` read across its rows; packing that
    // for its kernels took longer than the product itself where an image has many positions
    // (a third of ResNet-18/8's convolution time). Summed column-major instead (element (o, r)
    // at r·O + o, transposed once at the end), the operand it packs is dY; but where positions
    // are few and taps many (ResNet-50's 7×7 planes of 4608 taps) that measured slower: the
    // layout is chosen by that ratio (`conv_repro`, both ways, every ResNet shape).
    let column = p * 8 >= taps;
    let add = |img: usize, dw: &mut [f32], cols: &mut Vec<f32>, mut accumulate: bool, parallel| {
        for tile in tiles(g, tile) {
            let (at, t) = (tile.start * ow, tile.len() * ow);
            let cols = columns((g, &reach), x, (img, tile), cols);
            let a = View {
                data: &dy[img * g.out_image() + at..(img + 1) * g.out_image()],
                rs: p,
                cs: 1,
            };
            let b = View {
                data: cols,
                rs: 1,
                cs: t,
            };
            // SAFETY: the product writes only f32 values.
            let dw = unsafe { as_uninit(dw) };
            let dst = if column {
                Dst::column_major(dw, [g.o, taps])
            } else {
                Dst::row_major(dw, [g.o, taps])
            };
            matmul([g.o, taps, t], dst, accumulate, a, b, parallel);
            accumulate = true;
        }
    };
    let size = g.o * taps;
    let finish = |dw: Vec<f32>| {
        if column {
            row_major(&dw, [g.o, taps])
        } else {
            dw
        }
    };
    if groups > 1 {
        // Each group's block is its own sum over the images, in their order, on one thread:
        // the same bits on every call, the groups spread over the threads.
        let images = g.n / groups;
        let blocks: Vec<Vec<f32>> = (0..groups)
            .into_par_iter()
            .map(|group| {
                let mut dw = vec![0f32; size];
                let mut cols = Vec::new();
                for n in 0..images {
                    add(n * groups + group, &mut dw, &mut cols, n > 0, false);
                }
                finish(dw)
            })
            .collect();
        return blocks.concat();
    }
    let dw = if per_image(g) {
        // Each of a fixed number of runs of consecutive images is summed into its own dW by one
        // thread, and the runs' sums are added in order: the same bits on every call (a
        // fold/reduce over rayon's adaptive splits adds in whatever order the threads steal
        // work, and a run resumed from a checkpoint would part from the uninterrupted one).
        let runs = rayon::current_num_threads().clamp(1, g.n.max(1));
        let per = g.n.div_ceil(runs);
        let sums: Vec<Vec<f32>> = (0..runs)
            .into_par_iter()
            .map(|run| {
                let mut dw = vec![0f32; size];
                let mut cols = Vec::new();
                for (k, img) in (run * per..((run + 1) * per).min(g.n)).enumerate() {
                    add(img, &mut dw, &mut cols, k > 0, false);
                }
                dw
            })
            .collect();
        let mut sums = sums.into_iter();
        let mut dw = sums.next().unwrap_or_else(|| vec![0f32; size]);
        for sum in sums {
            dw.iter_mut().zip(&sum).for_each(|(a, b)| *a += b);
        }
        dw
    } else {
        let mut dw = vec![0f32; size];
        let mut cols = Vec::new();
        for img in 0..g.n {
            add(img, &mut dw, &mut cols, img > 0, true);
        }
        dw
    };
    finish(dw)
}

/// A column-major `m×n` matrix in row-major order.
fn row_major(t: &[f32], [m, n]: [usize; 2]) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        out.extend(t[i..].iter().step_by(m).take(n));
    }
    out
}

/// The input's gradient (N×C×H×W) from the output's `dy` and the weight.
pub fn input_grad(g: &Geometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    input_grad_tiled(g, weight, dy, TILE_VALUES)
}

/// [`input_grad`] over tiles of about `tile` values of `cols`.
fn input_grad_tiled(g: &Geometry, weight: &[f32], dy: &[f32], tile: usize) -> Vec<f32> {
    let groups = g.groups;
    let g = &g.per_group();
    let (p, taps, ow) = (g.p(), g.taps(), g.out()[1]);
    let reach = Reach::new(g);
    let fill = |dx: &mut [MaybeUninit<f32>]| {
        each_image(g, dx, g.image(), |img, out, cols, parallel| {
            // Wᵀ (taps×O) of the image's group: element (r, o) at weight[o·taps + r].
            let wt = View {
                data: group_block(weight, g, img, groups),
                rs: 1,
                cs: taps,
            };
            let dy = &dy[img * g.out_image()..(img + 1) * g.out_image()];
            // dY's columns of the tile's positions (O×t).
            let dy_tile = |at: usize| View {
                data: &dy[at..],
                rs: p,
                cs: 1,
            };
            if g.pointwise() {
                let dst = Dst::row_major(out, [taps, p]);
                matmul([taps, p, g.o], dst, false, wt, dy_tile(0), parallel);
                return;
            }
            let dx = zeroed(out);
            for tile in tiles(g, tile) {
                let (at, t) = (tile.start * ow, tile.len() * ow);
                let b = dy_tile(at);
                cols.resize(taps * t, 0.0);
                // SAFETY: the product writes only f32 values.
                let dst = Dst::row_major(unsafe { as_uninit(cols) }, [taps, t]);
                matmul([taps, t, g.o], dst, false, wt, b, parallel);
                col2im(&reach, cols, tile, dx);
            }
        });
    };
    // SAFETY: each image's block is written whole, by the product (taps = C for a pointwise
    // convolution, P = H×W) or zeroed and then summed into by col2im.
    unsafe { filled(g.n * g.image(), fill) }
}

/// The bias's gradient (O): `dy` summed over images and positions.
pub fn bias_grad(g: &Geometry, dy: &[f32]) -> Vec<f32> {
    let p = g.p();
    let mut db = vec![0f32; g.o];
    for image in dy.chunks_exact(g.out_image()) {
        for (d, row) in db.iter_mut().zip(image.chunks_exact(p)) {
            *d += row.iter().sum::<f32>();
        }
    }
    db
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every `(y, x, w)` index triple the convolution multiplies (`y += x · w`), by its
    /// definition.
    fn products(g: &Geometry, mut f: impl FnMut(usize, usize, usize)) {
        let [oh, ow] = g.out();
        let (cg, og) = (g.c / g.groups, g.o / g.groups);
        for n in 0..g.n {
            for o in 0..g.o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for c in 0..cg {
                            for i in 0..g.k[0] {
                                for j in 0..g.k[1] {
                                    let iy =
                                        (oy * g.stride[0] + i) as isize - g.padding[0] as isize;
                                    let ix =
                                        (ox * g.stride[1] + j) as isize - g.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    // Output o reads its group's input channels only.
                                    let ci = o / og * cg + c;
                                    f(
                                        ((n * g.o + o) * oh + oy) * ow + ox,
                                        ((n * g.c + ci) * g.h + iy as usize) * g.w + ix as usize,
                                        ((o * cg + c) * g.k[0] + i) * g.k[1] + j,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The forward convolution, the input's gradient and the weight's by their definitions, in
    /// f64.
    fn reference(g: &Geometry, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f64>; 3] {
        let [oh, ow] = g.out();
        let mut y = vec![0f64; g.n * g.o * oh * ow];
        let (mut dx, mut dw) = (vec![0f64; x.len()], vec![0f64; w.len()]);
        let f = |v: f32| f64::from(v);
        products(g, |yi, xi, wi| {
            y[yi] += f(x[xi]) * f(w[wi]);
            dx[xi] += f(dy[yi]) * f(w[wi]);
            dw[wi] += f(dy[yi]) * f(x[xi]);
        });
        [y, dx, dw]
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn worst(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len(), "lengths");
        let num: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - y).powi(2))
            .sum();
        let den: f64 = b.iter().map(|y| y * y).sum();
        (num / den.max(1e-30)).sqrt()
    }

    /// `n` images of `c`×`h`×`w` to `o` channels, a `k`×`k` kernel, stride `s`, padding `p`.
    const fn geometry(
        n: usize,
        [c, h, w]: [usize; 3],
        o: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> Geometry {
        Geometry {
            n,
            c,
            h,
            w,
            o,
            k: [k, k],
            stride: [s, s],
            padding: [p, p],
            groups: 1,
        }
    }

    /// `g` in `groups` groups.
    const fn grouped(g: Geometry, groups: usize) -> Geometry {
        Geometry { groups, ..g }
    }

    const CASES: [Geometry; 21] = [
        geometry(2, [3, 9, 7], 4, 3, 1, 1),
        // Same width at stride 1: whole-run copies and sums, with wrapped columns (planes as
        // narrow as the kernel's reach, and narrower).
        geometry(2, [3, 4, 4], 3, 3, 1, 1),
        geometry(1, [2, 1, 1], 3, 7, 1, 3),
        geometry(2, [3, 4, 2], 2, 5, 1, 2),
        geometry(1, [2, 2, 3], 2, 3, 1, 1),
        // Several images, small planes.
        geometry(7, [3, 4, 4], 5, 3, 1, 1),
        geometry(5, [4, 3, 3], 6, 1, 1, 0),
        geometry(6, [3, 5, 5], 4, 3, 2, 1),
        geometry(3, [2, 11, 10], 5, 7, 2, 3),
        geometry(1, [4, 5, 5], 3, 1, 1, 0),
        geometry(2, [4, 7, 6], 3, 1, 2, 0),
        geometry(4, [5, 8, 9], 2, 3, 2, 1),
        geometry(2, [2, 3, 4], 2, 3, 1, 0),
        // Grouped: ResNeXt's 3×3 (stride 1 and 2), depthwise, and pointwise in groups.
        grouped(geometry(3, [8, 6, 5], 8, 3, 1, 1), 4),
        grouped(geometry(2, [12, 7, 7], 6, 3, 2, 1), 3),
        grouped(geometry(1, [4, 5, 4], 4, 3, 1, 1), 4),
        grouped(geometry(4, [6, 3, 3], 4, 1, 1, 0), 2),
        // More depthwise: EfficientNet's 5×5 at stride 1 and 2, its 3×3 at stride 2, planes
        // narrower than the kernel.
        grouped(geometry(3, [5, 9, 8], 5, 5, 1, 2), 5),
        grouped(geometry(2, [3, 9, 10], 3, 3, 2, 1), 3),
        grouped(geometry(2, [3, 11, 8], 3, 5, 2, 2), 3),
        grouped(geometry(1, [2, 2, 3], 2, 5, 1, 2), 2),
    ];

    #[test]
    fn forward_and_both_gradients_equal_the_definition() {
        // One thread, two, and three (more threads than some cases have images: one image at
        // a time, products over the threads).
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            pool.install(|| {
                for (case, g) in CASES.iter().enumerate() {
                    assert!(g.is_valid());
                    let x = random(g.n * g.image(), case as u64);
                    let w = random(g.o * g.taps(), 100 + case as u64);
                    assert_eq!(w.len() * g.groups, g.o * g.c * g.k[0] * g.k[1]);
                    let dy = random(g.n * g.out_image(), 200 + case as u64);
                    let [y_want, dx_want, dw_want] = reference(g, &x, &w, &dy);
                    // Whole images in one tile, one output row per tile, and a few rows.
                    for tile in [TILE_VALUES, 1, 3 * g.taps() * g.out()[1] - 1] {
                        let checks = [
                            ("forward", forward_tiled(g, &x, &w, None, tile), &y_want),
                            (
                                "input gradient",
                                input_grad_tiled(g, &w, &dy, tile),
                                &dx_want,
                            ),
                            (
                                "weight gradient",
                                weight_grad_tiled(g, &x, &dy, tile),
                                &dw_want,
                            ),
                        ];
                        for (what, ours, want) in checks {
                            let e = worst(&ours, want);
                            assert!(
                                e < 1e-6,
                                "case {case}, {threads} threads, tiles of {tile}, {what}: {e:e}"
                            );
                        }
                    }
                }
            });
        }
    }

    #[test]
    fn the_bias_is_added_per_channel_and_its_gradient_sums_positions() {
        let g = CASES[0];
        let x = random(g.n * g.image(), 1);
        let w = random(g.o * g.taps(), 2);
        let bias = [1.0, -2.0, 0.5, 3.0];
        let plain = forward(&g, &x, &w, None);
        let biased = forward(&g, &x, &w, Some(&bias));
        let p = g.p();
        for (i, (a, b)) in biased.iter().zip(&plain).enumerate() {
            assert!((a - b - bias[(i / p) % g.o]).abs() < 1e-5);
        }
        let db = bias_grad(&g, &vec![1.0; plain.len()]);
        assert_eq!(db, vec![(g.n * p) as f32; g.o]);
    }

    #[test]
    fn the_weight_gradient_of_many_images_is_the_same_bits_on_every_call() {
        // Summed over threads: the order of the additions must not depend on which thread
        // took which images (a resumed run repeats the uninterrupted one's bits).
        let g = geometry(48, [8, 9, 9], 16, 3, 1, 1);
        assert!(per_image(&g));
        let x = random(g.n * g.image(), 7);
        let dy = random(g.n * g.o * g.p(), 8);
        for g in [g, grouped(g, 4)] {
            let first = weight_grad(&g, &x, &dy);
            for _ in 0..20 {
                assert!(weight_grad(&g, &x, &dy) == first, "the bits moved");
            }
        }
    }
}
