//! The convolution's arithmetic on the CPU, on contiguous NCHW f32 slices: forward, the input's
//! gradient and the weight's, each as matrix products on the `gemm` crate (the one burn-flex
//! uses).
//!
//! Per image, with `P = OH·OW` output positions and `K = C·kh·kw`:
//! - forward: `Y[n] (O×P) = W (O×K) · cols(X[n]) (K×P)`;
//! - weight gradient: `dW (O×K) = Σₙ dY[n] (O×P) · cols(X[n])ᵀ (P×K)`;
//! - input gradient: `dX[n] = col2im(Wᵀ (K×O) · dY[n] (O×P))`.
//!
//! `cols` is im2col: row `(c, i, j)` holds the input pixel under kernel tap `(i, j)` for every
//! output position, 0 where the tap falls in the padding. Every element of the buffer is written
//! once per image (no zero-fill of the whole buffer first), and each thread keeps its buffer for
//! all the images it takes. A 1×1 convolution of stride 1 without padding has `cols(X[n]) =
//! X[n]` viewed as `C×P`: no im2col at all.
//!
//! Images are shared among rayon's threads when there are at least as many as threads, each
//! image's products on one thread; with fewer images, one image at a time with the products
//! spread over the threads.

use rayon::prelude::*;

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
    fn p(&self) -> usize {
        let [oh, ow] = self.out();
        oh * ow
    }

    /// Rows of `cols`: input channels × kernel taps.
    fn taps(&self) -> usize {
        self.c * self.k[0] * self.k[1]
    }

    /// A 1×1 convolution of stride 1 without padding: the input is its own `cols`.
    fn pointwise(&self) -> bool {
        self.k == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    fn out_image(&self) -> usize {
        self.o * self.p()
    }
}

/// A row-major matrix view for [`matmul`]: its data and (row, column) strides.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// `dst (m×n, row-major) = [dst +] a (m×k) · b (k×n)`.
fn matmul(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    a: View<'_>,
    b: View<'_>,
    parallel: bool,
) {
    debug_assert!(dst.len() >= m * n);
    debug_assert!(m == 0 || k == 0 || a.data.len() > (m - 1) * a.rs + (k - 1) * a.cs);
    debug_assert!(k == 0 || n == 0 || b.data.len() > (k - 1) * b.rs + (n - 1) * b.cs);
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let stride = |s: usize| s as isize;
    // SAFETY: the three views cover every element the strides address (checked above in
    // debug builds, and by construction in every caller: the views are whole images, kernels
    // or `cols` buffers of the geometry's sizes); `dst` is not aliased by `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            stride(n),
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

/// The range of output columns `ox` whose input column `ox·s + j - p` is inside `0..w`.
fn inside(ow: usize, w: usize, s: usize, j: usize, p: usize) -> std::ops::Range<usize> {
    // First ox with ox·s + j >= p; last with ox·s + j - p < w.
    let first = p.saturating_sub(j).div_ceil(s);
    let end = if w + p > j {
        (w + p - j).div_ceil(s)
    } else {
        0
    };
    first.min(ow)..end.min(ow)
}

/// im2col of one image `x` (C×H×W) into `cols` (taps × P).
fn im2col(g: &Geometry, x: &[f32], cols: &mut [f32]) {
    let [oh, ow] = g.out();
    let ([kh, kw], [sh, sw], [ph, pw]) = (g.k, g.stride, g.padding);
    let p = oh * ow;
    for c in 0..g.c {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..kh {
            for j in 0..kw {
                let row = (c * kh + i) * kw + j;
                let dst = &mut cols[row * p..(row + 1) * p];
                let cols_in = inside(ow, g.w, sw, j, pw);
                for oy in 0..oh {
                    let out = &mut dst[oy * ow..(oy + 1) * ow];
                    let iy = (oy * sh + i).wrapping_sub(ph);
                    if iy >= g.h {
                        out.fill(0.0);
                        continue;
                    }
                    if cols_in.is_empty() {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    out[..cols_in.start].fill(0.0);
                    out[cols_in.end..].fill(0.0);
                    let first = cols_in.start * sw + j - pw;
                    if sw == 1 {
                        out[cols_in.clone()].copy_from_slice(&src[first..first + cols_in.len()]);
                    } else {
                        for (k, ox) in cols_in.clone().enumerate() {
                            out[ox] = src[first + k * sw];
                        }
                    }
                }
            }
        }
    }
}

/// col2im: `dx` (C×H×W) becomes the sum of `cols` (taps × P) over the taps that read each pixel.
fn col2im(g: &Geometry, cols: &[f32], dx: &mut [f32]) {
    let [oh, ow] = g.out();
    let ([kh, kw], [sh, sw], [ph, pw]) = (g.k, g.stride, g.padding);
    let p = oh * ow;
    dx.fill(0.0);
    for c in 0..g.c {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..kh {
            for j in 0..kw {
                let row = (c * kh + i) * kw + j;
                let src = &cols[row * p..(row + 1) * p];
                let cols_in = inside(ow, g.w, sw, j, pw);
                if cols_in.is_empty() {
                    continue;
                }
                for oy in 0..oh {
                    let iy = (oy * sh + i).wrapping_sub(ph);
                    if iy >= g.h {
                        continue;
                    }
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let from = &src[oy * ow..(oy + 1) * ow];
                    let first = cols_in.start * sw + j - pw;
                    for (k, ox) in cols_in.clone().enumerate() {
                        dst[first + k * sw] += from[ox];
                    }
                }
            }
        }
    }
}

/// Whether to give each thread its own images (else the products use every thread).
fn per_image(g: &Geometry) -> bool {
    g.n >= rayon::current_num_threads()
}

/// `cols(X[img])` (taps × P): the image itself for a pointwise convolution, else its im2col in
/// `cols` (grown once, then reused for every image of the thread).
fn columns<'a>(g: &Geometry, x: &'a [f32], img: usize, cols: &'a mut Vec<f32>) -> &'a [f32] {
    let xi = &x[img * g.image()..(img + 1) * g.image()];
    if g.pointwise() {
        return xi;
    }
    cols.resize(g.taps() * g.p(), 0.0);
    im2col(g, xi, cols);
    cols
}

/// `one(img, out, scratch, parallel)` for every image's `chunk` of `out`: images shared among
/// the threads (each with its own scratch buffer), or one after another with `parallel` products.
fn each_image(
    g: &Geometry,
    out: &mut [f32],
    chunk: usize,
    one: impl Fn(usize, &mut [f32], &mut Vec<f32>, bool) + Sync,
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
    let (p, taps) = (g.p(), g.taps());
    let mut y = vec![0f32; g.n * g.out_image()];
    let w = View {
        data: weight,
        rs: taps,
        cs: 1,
    };
    each_image(g, &mut y, g.out_image(), |img, out, cols, parallel| {
        let b = View {
            data: columns(g, x, img, cols),
            rs: p,
            cs: 1,
        };
        matmul([g.o, p, taps], out, false, w, b, parallel);
        if let Some(bias) = bias {
            for (row, &b) in out.chunks_exact_mut(p).zip(bias) {
                row.iter_mut().for_each(|v| *v += b);
            }
        }
    });
    y
}

/// The weight's gradient (O×C×kh×kw) from the output's `dy` (N×O×OH×OW) and the input `x`.
pub fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (p, taps) = (g.p(), g.taps());
    // dW += dY[n] (O×P) · cols(X[n])ᵀ (P×taps).
    let add = |img: usize, dw: &mut [f32], cols: &mut Vec<f32>, accumulate: bool, parallel| {
        let cols = columns(g, x, img, cols);
        let a = View {
            data: &dy[img * g.out_image()..(img + 1) * g.out_image()],
            rs: p,
            cs: 1,
        };
        let b = View {
            data: cols,
            rs: 1,
            cs: p,
        };
        matmul([g.o, taps, p], dw, accumulate, a, b, parallel);
    };
    let size = g.o * taps;
    if per_image(g) {
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
    }
}

/// The input's gradient (N×C×H×W) from the output's `dy` and the weight.
pub fn input_grad(g: &Geometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    let (p, taps) = (g.p(), g.taps());
    let mut dx = vec![0f32; g.n * g.image()];
    // Wᵀ (taps×O): element (r, o) at weight[o·taps + r].
    let wt = View {
        data: weight,
        rs: 1,
        cs: taps,
    };
    each_image(g, &mut dx, g.image(), |img, out, cols, parallel| {
        let b = View {
            data: &dy[img * g.out_image()..(img + 1) * g.out_image()],
            rs: p,
            cs: 1,
        };
        if g.pointwise() {
            matmul([taps, p, g.o], out, false, wt, b, parallel);
        } else {
            cols.resize(taps * p, 0.0);
            matmul([taps, p, g.o], cols, false, wt, b, parallel);
            col2im(g, cols, out);
        }
    });
    dx
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

    /// The convolution by its definition, in f64.
    fn reference(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f64> {
        let [oh, ow] = g.out();
        let mut y = vec![0f64; g.n * g.o * oh * ow];
        for n in 0..g.n {
            for o in 0..g.o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0f64;
                        for c in 0..g.c {
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
                                    let xv =
                                        x[((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = w[((o * g.c + c) * g.k[0] + i) * g.k[1] + j];
                                    s += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        y[((n * g.o + o) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn worst(a: &[f32], b: &[f64]) -> f64 {
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
        }
    }

    const CASES: [Geometry; 6] = [
        geometry(2, [3, 9, 7], 4, 3, 1, 1),
        geometry(3, [2, 11, 10], 5, 7, 2, 3),
        geometry(1, [4, 5, 5], 3, 1, 1, 0),
        geometry(2, [4, 7, 6], 3, 1, 2, 0),
        geometry(4, [5, 8, 9], 2, 3, 2, 1),
        geometry(2, [2, 3, 4], 2, 3, 1, 0),
    ];

    #[test]
    fn forward_and_both_gradients_equal_the_definition() {
        for (case, g) in CASES.iter().enumerate() {
            assert!(g.is_valid());
            let x = random(g.n * g.image(), case as u64);
            let w = random(g.o * g.taps(), 100 + case as u64);
            let y = forward(g, &x, &w, None);
            let e = worst(&y, &reference(g, &x, &w));
            assert!(e < 1e-6, "case {case} forward: {e:e}");
            // The gradients are the forward's linear maps' adjoints: <dy, conv(x, w)> is linear
            // in x and in w, so dX and dW are its derivatives; checked by finite sums against
            // the definition (exact for a linear function).
            let dy = random(y.len(), 200 + case as u64);
            let dw = weight_grad(g, &x, &dy);
            let dx = input_grad(g, &w, &dy);
            let dot = |y: &[f64]| {
                y.iter()
                    .zip(&dy)
                    .map(|(a, b)| a * f64::from(*b))
                    .sum::<f64>()
            };
            // d<dy, conv(x, w)>/dw[k] = <dy, conv(x, e_k)>.
            for k in [0, g.o * g.taps() / 2, g.o * g.taps() - 1] {
                let mut e_k = vec![0f32; w.len()];
                e_k[k] = 1.0;
                let want = dot(&reference(g, &x, &e_k));
                assert!(
                    (f64::from(dw[k]) - want).abs() < 1e-4 * want.abs().max(1.0),
                    "case {case} dW[{k}]"
                );
            }
            for k in [0, x.len() / 2 + 1, x.len() - 1] {
                let mut e_k = vec![0f32; x.len()];
                e_k[k] = 1.0;
                let want = dot(&reference(g, &e_k, &w));
                assert!(
                    (f64::from(dx[k]) - want).abs() < 1e-4 * want.abs().max(1.0),
                    "case {case} dX[{k}]"
                );
            }
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
        let first = weight_grad(&g, &x, &dy);
        for _ in 0..20 {
            assert!(weight_grad(&g, &x, &dy) == first, "the bits moved");
        }
    }
}
