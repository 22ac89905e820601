//! `loader`: the rsb data loader. So far: `loader augment`, which applies one transform with
//! explicit parameters to one image (to look at an op, and to compare with Pillow).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use loader::crop::{CropBox, Interpolation, InterpolationChoice};
use loader::decode::{Decoder, RgbImage};
use loader::eval_transform::{EvalTransform, flip_horizontal};
use loader::rand_augment::{Op, OpArg, RandAugment, level_value};
use loader::resample::Resampler;
use zune_core::bit_depth::BitDepth;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::{DecoderOptions, EncoderOptions};
use zune_png::{PngDecoder, PngEncoder};

#[derive(Parser)]
#[command(
    name = "loader",
    version,
    about = "The rsb data loader (so far: `augment`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply one transform with explicit parameters to IN (JPEG or PNG) and write OUT.png.
    ///
    /// Ops: `decode` (no transform), `resized-crop` (--arg LEFT,TOP,WIDTH,HEIGHT --size S:
    /// Pillow's img.crop(box).resize((S, S), interp)), `eval` (--size S --crop-pct P: timm's
    /// eval resize and center crop), `flip` (horizontal), and the 15 RandAugment ops
    /// (auto-contrast, equalize, invert, rotate, posterize, solarize, solarize-add, color,
    /// contrast, brightness, sharpness, shear-x, shear-y, translate-x-rel, translate-y-rel)
    /// with either --arg X (the op's argument: degrees, bits, threshold, factor, shear,
    /// fraction) or --magnitude M (timm's increasing level function at M; --negative for the
    /// negated sign).
    Augment {
        /// The transform.
        #[arg(long)]
        op: String,
        /// The op's explicit parameter (see above).
        #[arg(long, conflicts_with = "magnitude")]
        arg: Option<String>,
        /// RandAugment magnitude (0..10) turned into the argument as timm does.
        #[arg(long)]
        magnitude: Option<f64>,
        /// With --magnitude: take the negative sign where timm draws one.
        #[arg(long, requires = "magnitude")]
        negative: bool,
        /// Output side in pixels.
        #[arg(long, default_value_t = 224)]
        size: u32,
        /// Eval crop fraction.
        #[arg(long, default_value_t = 0.95)]
        crop_pct: f64,
        /// Resize filter.
        #[arg(long, default_value = "bicubic")]
        interp: Interp,
        /// Input image.
        input: PathBuf,
        /// Output PNG.
        output: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Interp {
    Bilinear,
    Bicubic,
}

impl From<Interp> for Interpolation {
    fn from(i: Interp) -> Interpolation {
        match i {
            Interp::Bilinear => Interpolation::Bilinear,
            Interp::Bicubic => Interpolation::Bicubic,
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Augment {
            op,
            arg,
            magnitude,
            negative,
            size,
            crop_pct,
            interp,
            input,
            output,
        } => {
            let image = read_image(&input)?;
            let out = match op.as_str() {
                "decode" => image,
                "flip" => {
                    let mut image = image;
                    flip_horizontal(&mut image.pixels, image.width as usize);
                    image
                }
                "resized-crop" => {
                    let crop = parse_box(arg.as_deref(), &image)?;
                    let side = size as usize;
                    let mut pixels = vec![0u8; side * side * 3];
                    Resampler::new().resize(
                        &image.pixels,
                        image.width as usize,
                        crop,
                        (side, side),
                        interp.into(),
                        &mut pixels,
                    );
                    RgbImage {
                        width: size,
                        height: size,
                        pixels,
                    }
                }
                "eval" => {
                    if !(crop_pct > 0.0 && crop_pct <= 1.0) {
                        bail!("--crop-pct must be in (0, 1], got {crop_pct}");
                    }
                    let t = EvalTransform {
                        img_size: size,
                        crop_pct,
                        interpolation: interp.into(),
                    };
                    let side = size as usize;
                    let mut pixels = vec![0u8; side * side * 3];
                    t.apply(
                        &image,
                        &mut Resampler::new(),
                        &mut RgbImage::default(),
                        &mut pixels,
                    );
                    RgbImage {
                        width: size,
                        height: size,
                        pixels,
                    }
                }
                name => {
                    let op: Op = name.parse().map_err(|e: String| {
                        anyhow::anyhow!("{e}, or decode, resized-crop, eval, flip")
                    })?;
                    let no_arg = matches!(level_value(op, 0.0, true, false), OpArg::None);
                    let arg = match (arg, magnitude) {
                        (Some(a), _) => parse_op_arg(op, &a)?,
                        (None, Some(m)) => level_value(op, m, true, negative),
                        (None, None) if no_arg => OpArg::None,
                        (None, None) => bail!("{name} needs --arg X or --magnitude M"),
                    };
                    let mut image = image;
                    let mut ra = RandAugment::new(
                        "rand-m0".parse()?,
                        InterpolationChoice::Fixed(interp.into()),
                    );
                    ra.apply_op(&mut image, op, arg, interp.into());
                    eprintln!("applied {name} with {arg:?}");
                    image
                }
            };
            write_png(&output, &out)
        }
    }
}

fn parse_op_arg(op: Op, text: &str) -> Result<OpArg> {
    Ok(match level_value(op, 0.0, true, false) {
        OpArg::None => OpArg::None,
        OpArg::Int(_) => OpArg::Int(
            text.parse()
                .with_context(|| format!("--arg {text:?}: {} takes a whole number", op.name()))?,
        ),
        OpArg::Float(_) => OpArg::Float(
            text.parse()
                .with_context(|| format!("--arg {text:?}: {} takes a number", op.name()))?,
        ),
    })
}

fn parse_box(arg: Option<&str>, image: &RgbImage) -> Result<CropBox> {
    let arg = arg.context("resized-crop needs --arg LEFT,TOP,WIDTH,HEIGHT")?;
    let v: Vec<u32> = arg
        .split(',')
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--arg {arg:?}: expected four whole numbers"))?;
    let [left, top, width, height] = v[..] else {
        bail!("--arg {arg:?}: expected LEFT,TOP,WIDTH,HEIGHT");
    };
    if width == 0 || height == 0 || left + width > image.width || top + height > image.height {
        bail!(
            "crop {left},{top},{width},{height} does not fit the {}x{} image",
            image.width,
            image.height
        );
    }
    Ok(CropBox {
        top,
        left,
        height,
        width,
    })
}

/// Reads a JPEG (through the loader's decoder) or a PNG (as RGB, alpha dropped).
fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"\x89PNG") {
        let options = DecoderOptions::default().png_set_strip_to_8bit(true);
        let mut d = PngDecoder::new_with_options(ZCursor::new(&bytes[..]), options);
        let raw = d
            .decode_raw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .with_context(|| format!("decoding {}", path.display()))?;
        let (w, h) = d.dimensions().context("PNG without a header")?;
        let channels = d
            .colorspace()
            .context("PNG without a colorspace")?
            .num_components();
        let mut pixels = Vec::with_capacity(w * h * 3);
        for px in raw.chunks_exact(channels) {
            match channels {
                1 | 2 => pixels.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => pixels.extend_from_slice(&px[..3]),
            }
        }
        return Ok(RgbImage {
            width: w as u32,
            height: h as u32,
            pixels,
        });
    }
    let mut image = RgbImage::default();
    Decoder::default()
        .decode_into(&bytes, &mut image)
        .with_context(|| format!("decoding {}", path.display()))?;
    Ok(image)
}

fn write_png(path: &Path, image: &RgbImage) -> Result<()> {
    let options = EncoderOptions::new(
        image.width as usize,
        image.height as usize,
        ColorSpace::RGB,
        BitDepth::Eight,
    );
    let mut out = Vec::new();
    PngEncoder::new(&image.pixels, options)
        .encode(&mut out)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .with_context(|| format!("encoding {}", path.display()))?;
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
