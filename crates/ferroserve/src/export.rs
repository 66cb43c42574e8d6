//! `ferroserve export kubernetes`: reads what is to be served (a model repository or a
//! `ferroserve run` file), and writes the manifests `ferroserve_kubernetes` renders for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ferroserve_kubernetes::{AppFolder, Autoscale, Settings, Source, Workload};

use crate::cli::KubernetesArgs;

/// Folders never packed with a `ferroserve run` file: they are caches or tools' state.
const SKIPPED_FOLDERS: [&str; 4] = ["__pycache__", "node_modules", ".venv", "venv"];

/// Writes the manifests into `--output` and lists them.
pub fn kubernetes(args: KubernetesArgs) -> anyhow::Result<()> {
    let workload = match &args.file {
        Some(file) => app(file, args.app_source.as_deref())?,
        None => repository(&args)?,
    };
    let mut s = Settings::new(workload);
    if let Some(name) = &args.name {
        s.name = name.clone();
    }
    s.image = args.image.clone();
    if let Some(n) = args.replicas {
        s.replicas = n;
    }
    if let Some(n) = args.gpus {
        s.gpus = n;
    }
    if let Some(q) = &args.cpu {
        s.cpu = q.clone();
    }
    if let Some(q) = &args.memory {
        s.memory = q.clone();
    }
    if let Some(bounds) = &args.autoscale {
        let mut a = Autoscale::parse(bounds)?;
        if let Some(p) = args.target_cpu {
            a.target_cpu_percent = p;
        }
        if let Some(n) = args.target_queue {
            a.target_queue_depth = n;
        }
        s.autoscale = Some(a);
    }
    if let Some(v) = args.shutdown_grace {
        s.shutdown_grace_s = v;
    }
    if let Some(v) = args.drain_delay {
        s.drain_delay_s = v;
    }
    if let Some(v) = args.startup_timeout {
        s.startup_timeout_s = v;
    }
    if let Some(image) = &args.storage_initializer {
        s.storage_initializer = image.clone();
    }
    s.disruption_budget = !args.no_disruption_budget;

    let manifests = ferroserve_kubernetes::render(&s)?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    for m in manifests {
        let path = args.output.join(&m.file);
        std::fs::write(&path, m.yaml)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// `--model-repository` (and `--models-from`) as a workload.
fn repository(args: &KubernetesArgs) -> anyhow::Result<Workload> {
    let Some(repo) = &args.model_repository else {
        anyhow::bail!("give --model-repository, or a `ferroserve run` file");
    };
    let local = Path::new(repo);
    if repo.contains("://") || !local.exists() {
        if args.models_from.is_some() {
            anyhow::bail!("--models-from goes with a local --model-repository folder, whose model.yaml files are exported; {repo} is not one");
        }
        return Ok(Workload::Repository {
            models: Source::parse(repo)?,
            config: BTreeMap::new(),
        });
    }
    if !local.is_dir() {
        anyhow::bail!("--model-repository {repo} is not a folder");
    }
    let Some(from) = &args.models_from else {
        anyhow::bail!(
            "{repo} is a local folder: its model.yaml files go into a ConfigMap, but the weights must reach the pod another way; say where with --models-from pvc://CLAIM[/SUBPATH] or a URI (s3://, gs://, https://, ...)"
        );
    };
    let mut config = BTreeMap::new();
    for model in ferroserve_runtime::repository::scan(local)
        .with_context(|| format!("cannot read the model repository {repo}"))?
    {
        let file = model.dir.join(ferroserve_runtime::config::CONFIG_FILE);
        if !file.is_file() {
            continue;
        }
        // A file the server would refuse is better refused now than in a crash-looping pod.
        ferroserve_runtime::config::ModelConfig::load_file(&file)?;
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        config.insert(model.name, text);
    }
    Ok(Workload::Repository {
        models: Source::parse(from)?,
        config,
    })
}

/// A `ferroserve run` file as a workload: its kind (Flow or Deployment, or a Ray Serve config),
/// whether it serves gRPC, and its folder.
fn app(file: &Path, source: Option<&str>) -> anyhow::Result<Workload> {
    if !file.is_file() {
        anyhow::bail!("{} is not a file", file.display());
    }
    let ray = ferroserve_flow::ray::ServeConfig::is_serve_config(file);
    let grpc = if ray {
        ferroserve_flow::ray::ServeConfig::load(file).map_err(anyhow::Error::msg)?;
        false
    } else {
        let spec = ferroserve_flow::spec::FlowSpec::load(file)?;
        spec.gateway.protocols().iter().any(|p| p == "grpc")
    };
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{}: the file's name is not UTF-8", file.display()))?
        .to_string();
    let folder = match source {
        Some(source) => AppFolder::Source(Source::parse(source)?),
        None => {
            let dir = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            AppFolder::Files(files_under(dir)?)
        }
    };
    Ok(Workload::App {
        file: name,
        folder,
        grpc,
        ray,
    })
}

/// Every file under `dir` by its relative path (`/`-separated), but hidden ones and caches;
/// sizes are checked before anything is read, so weights beside the file are refused cheaply.
fn files_under(dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || SKIPPED_FOLDERS.contains(&name.as_ref()) {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let relative = path
                    .strip_prefix(dir)
                    .context("a file outside the folder")?
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                found.push((relative, path, meta.len()));
            }
        }
    }
    ferroserve_kubernetes::check_app_size(found.iter().map(|(r, _, n)| (r.as_str(), *n)))?;
    let mut files = BTreeMap::new();
    for (relative, path, _) in found {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        files.insert(relative, bytes);
    }
    Ok(files)
}
