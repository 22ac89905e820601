//! libjpeg's "fancy" chroma upsampling (`jdsample.c`).

/// jdsample.c's fancy upsampling of a `w`×`h` plane (row `stride`) by (`fh`, `fv`) in {1, 2}:
/// ¾ of the nearer sample and ¼ of the next in each doubled direction, libjpeg's rounding
/// biases, edges replicated. Into `out`; its row length, or `None` for other factors.
#[inline(always)]
pub(super) fn upsample(
    p: &[u8],
    stride: usize,
    (w, h): (usize, usize),
    (fh, fv): (usize, usize),
    out: &mut Vec<u8>,
) -> Option<usize> {
    let at = |x: usize, y: usize| i32::from(p[y * stride + x]);
    let (ow, oh) = (w * fh, h * fv);
    // Every byte is written below.
    out.resize(ow * oh, 0);
    for (oy, o) in out.chunks_exact_mut(ow).enumerate() {
        let (y, below) = (oy / fv, oy % fv == 1);
        let far = if below {
            (y + 1).min(h - 1)
        } else {
            y.saturating_sub(1)
        };
        match (fh, fv) {
            (1, 1) => o
                .iter_mut()
                .enumerate()
                .for_each(|(x, v)| *v = p[y * stride + x]),
            (1, 2) => {
                let bias = if below { 2 } else { 1 };
                for (x, v) in o.iter_mut().enumerate() {
                    *v = ((at(x, y) * 3 + at(x, far) + bias) >> 2) as u8;
                }
            }
            (2, 1) => {
                for x in 0..w {
                    let near = at(x, y) * 3;
                    o[2 * x] = if x == 0 {
                        at(0, y) as u8
                    } else {
                        ((near + at(x - 1, y) + 1) >> 2) as u8
                    };
                    o[2 * x + 1] = if x + 1 == w {
                        at(x, y) as u8
                    } else {
                        ((near + at(x + 1, y) + 2) >> 2) as u8
                    };
                }
            }
            (2, 2) => {
                let col = |x: usize| at(x, y) * 3 + at(x, far);
                for x in 0..w {
                    let this = col(x);
                    o[2 * x] = if x == 0 {
                        ((this * 4 + 8) >> 4) as u8
                    } else {
                        ((this * 3 + col(x - 1) + 8) >> 4) as u8
                    };
                    o[2 * x + 1] = if x + 1 == w {
                        ((this * 4 + 7) >> 4) as u8
                    } else {
                        ((this * 3 + col(x + 1) + 7) >> 4) as u8
                    };
                }
            }
            _ => return None,
        }
    }
    Some(ow)
}
