//! `dit init`: a built-in pipeline as a diffusers pipeline folder.

use std::path::PathBuf;

use dit::teacache::COEFFICIENTS_FILE;
use dit::weights::{self, ModelSource};
use zimage::pipeline;

use crate::{model_source, CliResult, FloatDtype};

#[derive(clap::Args)]
pub struct Args {
    /// The built-in pipeline to write: tiny or small.
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
    let ModelSource::Builtin(builtin) = &args.model else {
        return Err(format!(
            "--model {}: init writes a built-in pipeline (tiny or small)",
            args.model
        )
        .into());
    };
    weights::check_new_target(&args.out)?;
    pipeline::write_builtin(*builtin, &args.out, args.dtype.dtype())?;
    if let Some(coefficients) = weights::teacache_coefficients(&args.model)? {
        coefficients.write(&args.out.join("transformer").join(COEFFICIENTS_FILE))?;
    }
    println!(
        "wrote the {} pipeline to {} ({})",
        args.model,
        args.out.display(),
        args.dtype.dtype()
    );
    Ok(())
}
