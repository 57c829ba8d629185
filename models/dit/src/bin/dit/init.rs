//! `dit init`: a built-in model as a diffusers-layout checkpoint.

use std::path::PathBuf;

use dit::teacache::COEFFICIENTS_FILE;
use dit::weights::{self, ModelSource};
use mlx::Module;

use crate::{model_source, CliResult, FloatDtype};

#[derive(clap::Args)]
pub struct Args {
    /// The built-in model to write: tiny or small.
    #[arg(long, value_parser = model_source)]
    model: ModelSource,
    /// The directory to write (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// The dtype the weights are stored in.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: FloatDtype,
}

pub fn run(args: Args) -> CliResult {
    if let ModelSource::Dir(dir) = &args.model {
        return Err(format!(
            "--model {}: init writes a built-in model (tiny or small)",
            dir.display()
        )
        .into());
    }
    weights::check_new_target(&args.out)?;
    let loaded = weights::load(&args.model, mlx::Dtype::F32)?;
    weights::save(&loaded.model, &args.out, args.dtype.dtype())?;
    if let Some(coefficients) = weights::teacache_coefficients(&args.model)? {
        coefficients.write(&args.out.join(COEFFICIENTS_FILE))?;
    }
    println!(
        "wrote the {} model to {} ({} tensors, {})",
        args.model,
        args.out.display(),
        loaded.model.parameters().len(),
        args.dtype.dtype()
    );
    Ok(())
}
