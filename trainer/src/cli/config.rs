//! `trainer config`: a recipe resolved, with timm's flags over it, and its global batch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use trainer::device::DeviceKind;
use trainer::ranks::replicas::Placement;

use super::load_recipe;
use super::recipe_flags::RecipeFlags;

/// `trainer config` flags.
#[derive(Args)]
pub struct ConfigArgs {
    /// The TOML file.
    pub path: PathBuf,
    /// The devices the run would use (as `trainer train --devices`), to see how the ranks
    /// are placed.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "LIST",
        default_value = "flex"
    )]
    pub devices: Vec<DeviceKind>,
    #[command(flatten)]
    pub recipe: RecipeFlags,
}

/// Prints the resolved recipe.
pub fn run(a: ConfigArgs) -> Result<ExitCode> {
    let c = load_recipe(&a.path, &a.recipe)?;
    print!("{}", c.to_toml());
    println!(
        "# global batch {} = batch_size {} x rsb.world_size {}",
        c.global_batch(),
        c.batch_size,
        c.rsb.world_size
    );
    let placement = Placement::new(c.rsb.world_size, &a.devices)?;
    println!("# {}", placement.describe(c.batch_size));
    Ok(ExitCode::SUCCESS)
}
