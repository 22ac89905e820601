//! Time of the crop resize (Pillow's filter, bit for bit) with this CPU's kernels and with
//! the portable reference kernels, on crops of the sizes RandomResizedCrop draws from an
//! ImageNet-sized image: `cargo run --release -p loader --example resize_times`.
use loader::image::crop::CropBox;
use loader::image::interpolation::Interpolation;
use loader::image::resample::Resampler;
use std::time::Instant;

fn main() {
    // A deterministic busy 500 x 375 image (ImageNet's most common size).
    let (w, h) = (500usize, 375usize);
    let mut s = 12345u32;
    let pixels: Vec<u8> = (0..w * h * 3)
        .map(|i| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            ((i / 3 % w) as u32 + (s >> 27)) as u8
        })
        .collect();
    // Crop sides from an upscale (scale 0.08 of the area) to the whole image.
    let crops = [(120, 100), (200, 260), (316, 300), (420, 330), (500, 375)];
    let mut out = vec![0u8; 224 * 224 * 3];
    let n = 50;
    println!(
        "ms per resize to 224 x 224 (fastest of 10 rounds of {n} calls, after a warm-up pass): this CPU's kernels, portable, ratio"
    );
    for (pass, f) in [
        Interpolation::Bilinear,
        Interpolation::Bilinear,
        Interpolation::Bicubic,
    ]
    .into_iter()
    .enumerate()
    {
        for &(cw, ch) in &crops {
            let crop = CropBox {
                left: ((w - cw) / 2) as u32,
                top: ((h - ch) / 2) as u32,
                width: cw as u32,
                height: ch as u32,
            };
            // The fastest of ten rounds: this VM's neighbours only ever add time.
            let mut time = |r: &mut Resampler| {
                (0..10)
                    .map(|_| {
                        let t = Instant::now();
                        for _ in 0..n {
                            r.resize(&pixels, w, crop, (224, 224), f, &mut out);
                        }
                        t.elapsed().as_secs_f64() * 1e3 / n as f64
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let fast = time(&mut Resampler::new());
            let portable = time(&mut Resampler::portable());
            if pass == 0 {
                continue; // warm-up: first touches of the buffers, clock ramp-up
            }
            println!(
                "  {f:?} {cw:>3} x {ch:<3}  {fast:.3}  {portable:.3}  {:.2}x",
                portable / fast
            );
        }
    }
}
