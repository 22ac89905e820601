/*!
timm's `RandomHorizontalFlip`: applied after the crop and before RandAugment. The training path
gets its flip from the resize itself (its horizontal pass writes the columns back to front);
this is the plain form, for `loader augment --op flip` and the resize's reference tests.
*/

/// Mirrors an RGB image left to right in place (timm's `RandomHorizontalFlip`, applied after
/// the crop and before RandAugment).
pub fn flip_horizontal(pixels: &mut [u8], width: usize) {
    for row in pixels.chunks_exact_mut(width * 3) {
        let (mut a, mut b) = (0, width.saturating_sub(1));
        while a < b {
            for c in 0..3 {
                row.swap(a * 3 + c, b * 3 + c);
            }
            a += 1;
            b -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_mirrors_rows_and_twice_is_identity() {
        let mut px: Vec<u8> = (0..3 * 2 * 3).map(|i| i as u8).collect();
        let orig = px.clone();
        flip_horizontal(&mut px, 3);
        assert_eq!(&px[..9], &[6, 7, 8, 3, 4, 5, 0, 1, 2]);
        flip_horizontal(&mut px, 3);
        assert_eq!(px, orig);
    }
}
