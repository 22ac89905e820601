//! libjpeg's "fancy" chroma upsampling (`jdsample.c`).

/// One output row of jdsample.c's fancy upsampling by (`fh`, `fv`) in {1, 2}: ¾ of the nearer
/// sample and ¼ of the next in each doubled direction, libjpeg's rounding biases, edges
/// replicated. `near` is the plane's row under the output row, `far` the row above it (`below`
/// false) or below it (`below` true), the edge row itself at the plane's top or bottom; with
/// `fv` 1 only `near` is read. Into `o` (`near.len() * fh` long); `sums`, a row of column sums
/// at least as long as `near`, is scratch. `None` for other factors or mismatched lengths.
///
/// One row at a time, so that the caller converts it to RGB while it is in the level-1 cache
/// and no upsampled plane is ever held. The loops run over whole rows without branches or index
/// arithmetic, so that the compiler vectorises them (in the decoder's AVX2 build, 16 or 32
/// samples a step).
#[inline(always)]
pub(super) fn upsample_row(
    (near, far): (&[u8], &[u8]),
    (fh, fv): (usize, usize),
    below: bool,
    o: &mut [u8],
    sums: &mut [u16],
) -> Option<()> {
    let w = near.len();
    if w == 0 || !(1..=2).contains(&fh) || !(1..=2).contains(&fv) || o.len() != w * fh {
        return None;
    }
    if fv == 1 {
        if fh == 1 {
            o.copy_from_slice(near);
        } else {
            widen(near, o);
        }
        return Some(());
    }
    if far.len() != w || sums.len() < w {
        return None;
    }
    let sums = &mut sums[..w];
    for ((s, &n), &f) in sums.iter_mut().zip(near).zip(far) {
        *s = u16::from(n) * 3 + u16::from(f);
    }
    if fh == 1 {
        let bias = if below { 2 } else { 1 };
        for (v, &s) in o.iter_mut().zip(sums.iter()) {
            *v = ((s + bias) >> 2) as u8;
        }
    } else {
        widen_sums(sums, o);
    }
    Some(())
}

/// h2v1: each sample of `row` becomes two, ¾ of it and ¼ of its neighbour (libjpeg's biases 1
/// and 2), the edges copied.
#[inline(always)]
fn widen(row: &[u8], o: &mut [u8]) {
    let w = row.len();
    o[0] = row[0];
    o[2 * w - 1] = row[w - 1];
    if w < 2 {
        return;
    }
    for (pair, win) in o[1..2 * w - 1].chunks_exact_mut(2).zip(row.windows(2)) {
        let (a, b) = (u16::from(win[0]), u16::from(win[1]));
        pair[0] = ((a * 3 + b + 2) >> 2) as u8;
        pair[1] = ((b * 3 + a + 1) >> 2) as u8;
    }
}

/// h2v2's horizontal step on a row of column sums (each 3 × near + far): ¾ and ¼ again, with
/// libjpeg's biases 8 and 7; the edges use the sum alone.
#[inline(always)]
fn widen_sums(sums: &[u16], o: &mut [u8]) {
    let w = sums.len();
    o[0] = ((sums[0] * 4 + 8) >> 4) as u8;
    o[2 * w - 1] = ((sums[w - 1] * 4 + 7) >> 4) as u8;
    if w < 2 {
        return;
    }
    for (pair, win) in o[1..2 * w - 1].chunks_exact_mut(2).zip(sums.windows(2)) {
        let (a, b) = (win[0], win[1]);
        pair[0] = ((a * 3 + b + 7) >> 4) as u8;
        pair[1] = ((b * 3 + a + 8) >> 4) as u8;
    }
}
