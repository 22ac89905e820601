//! Time of each RandAugment op on a 224 x 224 image (both filters for the geometric ones), the
//! figures behind `loader bench`'s RandAugment stage:
//! `cargo run --release -p loader --example op_times`.
use loader::image::decode::RgbImage;
use loader::image::interpolation::{Interpolation, InterpolationChoice};
use loader::image::rand_augment::{OPS, RandAugment, RandAugmentConfig, is_geometric, level_value};
use std::time::Instant;

fn main() {
    // A deterministic busy image (a ramp plus noise): no op finds it flat.
    let (w, h) = (224u32, 224u32);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    let mut s = 12345u32;
    for (i, p) in pixels.iter_mut().enumerate() {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        *p = ((i / 3 % 224) as u32 + (s >> 28)) as u8;
    }
    let base = RgbImage {
        width: w,
        height: h,
        pixels,
    };
    let mut ra = RandAugment::new(RandAugmentConfig::default(), InterpolationChoice::Random);
    let n = 200;
    println!(
        "ms per call at 224 x 224, magnitude 7 ({n} calls each, the image reset before each):"
    );
    for op in OPS {
        let geometric = is_geometric(op);
        for f in [Interpolation::Bilinear, Interpolation::Bicubic] {
            let arg = level_value(op, 7.0, true, false);
            let mut img = base.clone();
            let t = Instant::now();
            for _ in 0..n {
                img.pixels.copy_from_slice(&base.pixels);
                ra.apply_op(&mut img, op, arg, f);
            }
            let name = if geometric {
                format!("{} ({f:?})", op.name())
            } else {
                op.name().to_string()
            };
            println!(
                "  {name:<26} {:.3}",
                t.elapsed().as_secs_f64() * 1e3 / n as f64
            );
            if !geometric {
                break;
            }
        }
    }
}
