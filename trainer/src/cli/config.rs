//! `trainer config`: a recipe resolved, with timm's flags over it, and its global batch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use trainer::config::TrainConfig;
use trainer::device::DeviceKind;
use trainer::overrides::RecipeOverrides;
use trainer::replicas::Placement;

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
        default_value = "cpu"
    )]
    pub devices: Vec<DeviceKind>,
    #[command(flatten)]
    pub overrides: RecipeOverrides,
}

/// Prints the resolved recipe.
pub fn run(a: ConfigArgs) -> Result<ExitCode> {
    let ConfigArgs {
        path,
        devices,
        overrides,
    } = a;
    let loaded = TrainConfig::load_with(&path, &overrides)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", toml::to_string(&loaded.config)?);
    let c = &loaded.config;
    println!(
        "# global batch {} = batch_size {} x rsb.world_size {}",
        c.global_batch(),
        c.batch_size,
        c.rsb.world_size
    );
    let placement = Placement::new(c.rsb.world_size, &devices)?;
    println!("# {}", placement.describe(c.batch_size));
    Ok(ExitCode::SUCCESS)
}
