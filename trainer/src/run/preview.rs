//! The first batch's images as one PNG grid, for TensorBoard's Images tab: what the model is
//! shown after the loader's augmentations (Mixup and CutMix come later, on the device).

use loader::image::decode::RgbImage;

/// The most images in the grid.
pub const MAX_TILES: usize = 16;

/// Up to [`MAX_TILES`] of `images` (NHWC `u8`, `side × side`, as the loader's ring holds them)
/// in a square-ish grid, row by row.
pub fn grid(images: &[u8], side: usize) -> RgbImage {
    let tile = side * side * 3;
    if tile == 0 {
        return RgbImage::default();
    }
    let count = images.len().checked_div(tile).unwrap_or(0).min(MAX_TILES);
    let cols = (1..=count).find(|c| c * c >= count).unwrap_or(1);
    let mut grid = RgbImage::grid(cols, count.div_ceil(cols).max(1), side);
    for (i, image) in images.chunks_exact(tile).take(count).enumerate() {
        grid.put_tile(i, cols, side, image);
    }
    grid
}

/// `rgb` (`width × height`, 8-bit RGB) as a PNG file's bytes.
///
/// # Errors
/// The encoder's message (sides of zero, or bytes that are not `width × height × 3`).
pub fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_go_row_by_row_in_a_square_grid() {
        let side = 2;
        // Five 2×2 images, image i filled with i.
        let images: Vec<u8> = (0..5u8).flat_map(|i| [i; 12]).collect();
        let g = grid(&images, side);
        assert_eq!((g.width, g.height), (6, 4));
        // Row 0 of the grid: images 0, 1, 2; row 2: images 3, 4 and an empty tile.
        let at = |x: usize, y: usize| g.pixels[(y * 6 + x) * 3];
        assert_eq!([at(0, 0), at(2, 1), at(5, 0)], [0, 1, 2]);
        assert_eq!([at(1, 2), at(3, 3), at(4, 2)], [3, 4, 0]);
        let png = encode_png(&g.pixels, g.width, g.height).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let many = vec![7u8; 40 * 12];
        assert_eq!(grid(&many, side).width, 8);
    }
}
