//! `trainer config`: a recipe resolved, with timm's flags over it, and its global batch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use trainer::config::TrainConfig;
use trainer::overrides::RecipeOverrides;

/// `trainer config` flags.
#[derive(Args)]
pub struct ConfigArgs {
    /// The TOML file.
    pub path: PathBuf,
    #[command(flatten)]
    pub overrides: RecipeOverrides,
}

/// Prints the resolved recipe.
pub fn run(a: ConfigArgs) -> Result<ExitCode> {
    let ConfigArgs { path, overrides } = a;
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
    println!(
        "# ranks: {} on one device, one after another per step (virtual ranks: gradients \
         averaged over all, BN statistics per rank, reduced at each epoch end); each rank's BN \
         normalizes over its own {} images",
        c.rsb.world_size, c.batch_size
    );
    Ok(ExitCode::SUCCESS)
}
