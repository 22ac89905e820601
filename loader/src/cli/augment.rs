//! `loader augment`: one transform with explicit parameters on one image, to compare with
//! Pillow's output for the same call.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use loader::image::crop::CropBox;
use loader::image::decode::RgbImage;
use loader::image::eval_transform::EvalTransform;
use loader::image::flip::flip_horizontal;
use loader::image::interpolation::{Interpolation, InterpolationChoice};
use loader::image::rand_augment::{Op, OpArg, RandAugment, level_value};
use loader::image::resample::Resampler;
use loader::request::transform::TransformSpec;
use shard_tool::console::number_in;

use super::UsageError;
use super::png::{read_image, write_png};

/// `loader augment` flags.
#[derive(Args)]
pub struct AugmentArgs {
    /// The transform.
    #[arg(long)]
    pub op: String,
    /// The op's explicit parameter (see above).
    #[arg(long, conflicts_with = "magnitude")]
    pub arg: Option<String>,
    /// RandAugment magnitude (0..10) turned into the argument as timm does.
    #[arg(long, value_parser = number_in(0.0..=loader::image::rand_augment::LEVEL_DENOM))]
    pub magnitude: Option<f64>,
    /// With --magnitude: take the negative sign where timm draws one.
    #[arg(long, requires = "magnitude")]
    pub negative: bool,
    /// Output side in pixels.
    #[arg(long, default_value_t = 224, value_parser = number_in(loader::request::transform::IMG_SIZE))]
    pub size: u32,
    /// Eval crop fraction (timm's --crop-pct).
    #[arg(long, default_value_t = 0.95, value_parser = number_in(loader::request::transform::CROP_PCT))]
    pub crop_pct: f64,
    /// Resize filter.
    #[arg(long, default_value = "bicubic")]
    pub interp: Interpolation,
    /// Input image.
    pub input: PathBuf,
    /// Output PNG.
    pub output: PathBuf,
}

/// Applies the op and writes the PNG.
pub fn run(args: &AugmentArgs) -> Result<()> {
    let (size, crop_pct, interp, magnitude, negative) = (
        args.size,
        args.crop_pct,
        args.interp,
        args.magnitude,
        args.negative,
    );
    let (op, arg, input, output) = (&args.op, args.arg.clone(), &args.input, &args.output);
    let image = read_image(input)?;
    let out = match op.as_str() {
        "decode" => image,
        "flip" => {
            let mut image = image;
            flip_horizontal(&mut image.pixels, image.width as usize);
            image
        }
        "resized-crop" => {
            check_size(size)?;
            let crop = parse_box(arg.as_deref(), &image)?;
            let side = size as usize;
            let mut pixels = vec![0u8; side * side * 3];
            Resampler::new().resize(
                &image.pixels,
                image.width as usize,
                crop,
                (side, side),
                interp,
                &mut pixels,
            );
            RgbImage {
                width: size,
                height: size,
                pixels,
            }
        }
        "eval" => {
            let t = EvalTransform {
                img_size: size,
                crop_pct,
                interpolation: interp,
            };
            TransformSpec::Eval(t)
                .validate()
                .map_err(super::flag_error)?;
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
            let op: Op = name
                .parse()
                .map_err(|e: String| anyhow::anyhow!("{e}, or decode, resized-crop, eval, flip"))?;
            let no_arg = matches!(level_value(op, 0.0, true, false), OpArg::None);
            let arg = match (arg, magnitude) {
                (Some(a), _) => parse_op_arg(op, &a)?,
                (None, Some(m)) => level_value(op, m, true, negative),
                (None, None) if no_arg => OpArg::None,
                (None, None) => bail!("{name} needs --arg X or --magnitude M"),
            };
            let mut image = image;
            let mut ra = RandAugment::new("rand-m0".parse()?, InterpolationChoice::Fixed(interp));
            ra.apply_op(&mut image, op, arg, interp);
            eprintln!("applied {name} with {arg:?}");
            image
        }
    };
    write_png(output, &out)
}

/// `--size` of `augment`: the loader's output range.
fn check_size(size: u32) -> Result<()> {
    if !loader::request::transform::IMG_SIZE.contains(&size) {
        return Err(UsageError(format!(
            "--size {size} is outside {}..={}",
            loader::request::transform::IMG_SIZE.start(),
            loader::request::transform::IMG_SIZE.end()
        ))
        .into());
    }
    Ok(())
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
    let usage = |m: String| anyhow::Error::from(UsageError(m));
    let arg = arg.ok_or_else(|| usage("resized-crop needs --arg LEFT,TOP,WIDTH,HEIGHT".into()))?;
    let v: Vec<u32> = arg
        .split(',')
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| usage(format!("--arg {arg:?}: expected four whole numbers")))?;
    let [left, top, width, height] = v[..] else {
        return Err(usage(format!(
            "--arg {arg:?}: expected LEFT,TOP,WIDTH,HEIGHT"
        )));
    };
    // Checked: a box near u32::MAX must not wrap around into the image.
    let fits = |start: u32, len: u32, side: u32| {
        len > 0 && start.checked_add(len).is_some_and(|end| end <= side)
    };
    if !fits(left, width, image.width) || !fits(top, height, image.height) {
        return Err(usage(format!(
            "--arg {left},{top},{width},{height}: the box must lie within the {}x{} image \
             (LEFT + WIDTH <= {}, TOP + HEIGHT <= {}, sides at least 1)",
            image.width, image.height, image.width, image.height
        )));
    }
    Ok(CropBox {
        top,
        left,
        height,
        width,
    })
}
