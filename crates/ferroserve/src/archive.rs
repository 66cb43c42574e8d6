//! `ferroserve archive`: package a model for a model store, or print an archive's manifest.

use std::path::Path;

use anyhow::Context;
use ferroserve_runtime::config::ModelConfig;
use ferroserve_store::{archive, ArchiveFormat, ArchiveSpec};

use crate::cli::{ArchiveArgs, ArchiveFormatArg};

/// Writes the archive (or prints the manifest with `--inspect`).
pub fn run(args: ArchiveArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.inspect {
        let manifest = archive::inspect(file)?;
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    let (Some(model_name), Some(model_path)) = (args.model_name, args.model_file) else {
        anyhow::bail!("--model-name and --model-file are required (or --inspect FILE)");
    };
    let spec = ArchiveSpec {
        model_name,
        version: args.version,
        model_path,
        task: args.task,
        config: args.config,
        extra_files: args.extra_files,
        export_path: args.export_path,
        format: match args.archive_format {
            ArchiveFormatArg::Far => ArchiveFormat::Far,
            ArchiveFormatArg::NoArchive => ArchiveFormat::NoArchive,
        },
        force: args.force,
        validate: Some(check_config),
    };
    let out = archive::create(&spec).context("cannot write the archive")?;
    let manifest = archive::inspect(&out)?;
    println!(
        "{} (model {} version {}, {} files, {} bytes)",
        out.display(),
        manifest.model_name,
        manifest.model_version,
        manifest.files.len(),
        manifest.bytes()
    );
    Ok(())
}

/// The server's own parser, so the archive holds a config the server accepts.
fn check_config(text: &str) -> Result<(), String> {
    ModelConfig::parse(Path::new("model.yaml"), text)
        .map(|_| ())
        .map_err(|e| e.message)
}
