//! Command-line arguments: every flag of every subcommand, documented for `--help`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Serve trained models over the Open Inference Protocol (KServe V2), from one binary.
#[derive(Debug, Parser)]
#[command(name = "ferroserve", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format: `text` for people, `json` (one object per line) for log collectors. The level
    /// comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve every model of a model repository over HTTP.
    Serve(Box<ServeArgs>),
    /// Serve a Deployment or a Flow from its YAML file (Jina's `jtype: Deployment | Flow`), or
    /// a Ray Serve application (`module:attribute`, or a config file with `applications:`).
    Run(Box<RunArgs>),
    /// Post a file of documents to a running Deployment or Flow, in requests of a given size.
    Client(ClientArgs),
    /// Send one inference request to a running server and print the response.
    Infer(InferArgs),
    /// Load-test a running server: requests/s, latency percentiles, errors.
    Bench(BenchArgs),
    /// Package a model into one archive file (NAME.far) for a model store, or print an
    /// archive's manifest (--inspect).
    Archive(ArchiveArgs),
    /// TorchServe's command line (`--start --ncs --model-store DIR --models NAME=FILE.mar`,
    /// `--stop`): serves `.mar` archives with TorchServe's ports and config.properties.
    Torchserve(TorchServeArgs),
    /// Write deployment files for a cluster (`export kubernetes`).
    #[command(subcommand)]
    Export(ExportCommand),
}

/// `ferroserve export`: what to write.
#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Kubernetes manifests (Deployment, Service, HorizontalPodAutoscaler,
    /// PodDisruptionBudget, ConfigMap) for a model repository or a `ferroserve run` file, one
    /// resource per file: `kubectl apply -f DIR`.
    Kubernetes(Box<KubernetesArgs>),
}

/// `ferroserve export kubernetes`. Defaults are those of the Helm chart's values.yaml.
#[derive(Debug, Args)]
pub struct KubernetesArgs {
    /// A `ferroserve run` file (a Deployment or Flow YAML, or a Ray Serve config) to export
    /// instead of a model repository. Its folder goes into a ConfigMap unless --app-source says
    /// where the pod finds it.
    #[arg(value_name = "FILE.yml", required_unless_present = "model_repository", conflicts_with_all = ["model_repository", "models_from"])]
    pub file: Option<PathBuf>,

    /// The model repository: `pvc://CLAIM[/SUBPATH]` (mounted read-only), a URI that KServe's
    /// storage initializer downloads (s3://, gs://, https://, ...), or a local folder, whose
    /// model.yaml files go into a ConfigMap while --models-from brings the weights.
    #[arg(long, value_name = "PATH|pvc://CLAIM[/SUB]|URI")]
    pub model_repository: Option<String>,

    /// With a local --model-repository: where the pod gets the repository's files
    /// (`pvc://CLAIM[/SUBPATH]` or a URI).
    #[arg(long, value_name = "pvc://CLAIM[/SUB]|URI")]
    pub models_from: Option<String>,

    /// With FILE: where the pod gets the file's folder (`pvc://CLAIM[/SUBPATH]` or a URI)
    /// instead of a ConfigMap, for folders over 900 KiB.
    #[arg(long, value_name = "pvc://CLAIM[/SUB]|URI", requires = "file")]
    pub app_source: Option<String>,

    /// Name of every resource (a DNS-1123 label). Default: ferroserve.
    #[arg(long)]
    pub name: Option<String>,

    /// Container image. Default: ghcr.io/ferroserve/ferroserve:VERSION (VERSION-cuda with
    /// --gpus).
    #[arg(long)]
    pub image: Option<String>,

    /// Replicas, without --autoscale. Default: 1.
    #[arg(long, conflicts_with = "autoscale")]
    pub replicas: Option<u32>,

    /// NVIDIA GPUs per pod (`nvidia.com/gpu`); models choose them with `devices: [cuda:0]`.
    #[arg(long)]
    pub gpus: Option<u32>,

    /// CPU request per pod (a Kubernetes quantity). Default: 1.
    #[arg(long)]
    pub cpu: Option<String>,

    /// Memory request and limit per pod. Default: 2Gi.
    #[arg(long)]
    pub memory: Option<String>,

    /// A HorizontalPodAutoscaler between MIN and MAX replicas, on CPU and on the pods' queue
    /// depth (`ferroserve_queue_depth` through the Prometheus Adapter).
    #[arg(long, value_name = "MIN:MAX")]
    pub autoscale: Option<String>,

    /// Average CPU use the autoscaler keeps, in percent of the request. Default: 70.
    #[arg(long, value_name = "PERCENT", requires = "autoscale")]
    pub target_cpu: Option<u32>,

    /// Average requests waiting per pod the autoscaler keeps. Default: 4.
    #[arg(long, value_name = "N", requires = "autoscale")]
    pub target_queue: Option<u32>,

    /// The server's --shutdown-grace in the pod. Default: 30.
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_grace: Option<u32>,

    /// The server's --drain-delay in the pod. Default: 5.
    #[arg(long, value_name = "SECONDS")]
    pub drain_delay: Option<u32>,

    /// Seconds the models may take to load before Kubernetes restarts the pod. Default: 600.
    #[arg(long, value_name = "SECONDS")]
    pub startup_timeout: Option<u32>,

    /// KServe's storage initializer image, which downloads URIs.
    #[arg(long, value_name = "IMAGE")]
    pub storage_initializer: Option<String>,

    /// No PodDisruptionBudget.
    #[arg(long)]
    pub no_disruption_budget: bool,

    /// Folder to write the files into (created if missing).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: PathBuf,
}

/// `ferroserve torchserve`: TorchServe's own flags.
#[derive(Debug, Args)]
pub struct TorchServeArgs {
    /// Start the server (the default); without --foreground it runs in the background.
    #[arg(long, conflicts_with = "stop")]
    pub start: bool,

    /// Stop the server an earlier `--start` put in the background.
    #[arg(long)]
    pub stop: bool,

    /// TorchServe's "no config snapshot"; ferroserve never writes snapshots, so it changes
    /// nothing.
    #[arg(long)]
    pub ncs: bool,

    /// Folder of `.mar` (and `.far`) archives.
    #[arg(long, value_name = "DIR")]
    pub model_store: Option<PathBuf>,

    /// Models to serve at start: `all`, `NAME=FILE.mar` or `FILE.mar` (named by its manifest),
    /// space- or comma-separated.
    #[arg(long, value_name = "all|NAME=FILE", num_args = 1.., value_delimiter = ',')]
    pub models: Vec<String>,

    /// TorchServe's config.properties (inference_address, management_address,
    /// metrics_address, model_store, load_models, job_queue_size, max_request_size, ...).
    #[arg(long, value_name = "FILE")]
    pub ts_config: Option<PathBuf>,

    /// Stay in the foreground, logging to the terminal.
    #[arg(long)]
    pub foreground: bool,

    /// Python interpreter for handlers and TorchScript exports: a virtual environment's
    /// bin/python with torch (and TorchServe's `ts` package for its built-in handlers).
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,

    /// Install an archive's requirements.txt into the Python interpreter before loading it.
    #[arg(long)]
    pub install_requirements: bool,

    /// gRPC inference port (TorchServe's default).
    #[arg(long, default_value_t = 7070)]
    pub grpc_port: u16,

    /// ONNX Runtime's library, as for `serve`.
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// Accepted for TorchServe's command lines: the management API takes no token unless
    /// the server is started with one (it is served on loopback only without one).
    #[arg(long)]
    pub disable_token_auth: bool,

    /// Accepted for TorchServe's command lines: registering models from the model store is
    /// always on.
    #[arg(long)]
    pub enable_model_api: bool,

    /// TorchServe's log4j configuration; ignored (RUST_LOG sets the level).
    #[arg(long, value_name = "FILE")]
    pub log_config: Option<PathBuf>,
}

/// `ferroserve serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model repository: one folder per model, each with `model.onnx` or numeric version
    /// folders (`1/model.onnx`) and an optional `model.yaml`.
    #[arg(long, value_name = "DIR", required_unless_present = "model_store")]
    pub model_repository: Option<PathBuf>,

    /// Name of the model when --model-repository is itself one model's folder (KServe's
    /// single-model layout: a model file, model.yaml, config.pbtxt or numeric version folders
    /// at its top) rather than a folder of model folders. Default: the folder's name.
    #[arg(long, env = "MODEL_NAME", value_name = "NAME")]
    pub model_name: Option<String>,

    /// Folder of MODEL/model.yaml files that replace the model folders' own configuration:
    /// settings kept apart from the weights, as a Kubernetes ConfigMap mounts them.
    #[arg(long, value_name = "DIR")]
    pub model_config_dir: Option<PathBuf>,

    /// Model store: a folder of archives (`ferroserve archive`). --models picks what is served
    /// at start; the management API registers others from it.
    #[arg(long, value_name = "DIR")]
    pub model_store: Option<PathBuf>,

    /// Archives of the model store to serve: `all`, or NAME=FILE (repeatable, or
    /// comma-separated; several FILEs under one NAME are its versions).
    #[arg(
        long,
        value_name = "all|NAME=FILE",
        value_delimiter = ',',
        requires = "model_store"
    )]
    pub models: Vec<String>,

    /// Where archives are unpacked, in folders named by their sha256. Default:
    /// $FERROSERVE_HOME/cache (FERROSERVE_HOME defaults to ~/.ferroserve).
    #[arg(long, value_name = "DIR")]
    pub store_cache: Option<PathBuf>,

    /// Largest archive accepted, in bytes (suffixes K, M, G, Ki, Mi, Gi); an archive may unpack
    /// to twice that.
    #[arg(long, value_name = "BYTES", value_parser = ferroserve_runtime::parse_bytes, default_value = "32Gi")]
    pub max_archive_bytes: u64,

    /// Size of the archive cache beyond which folders no served model uses are removed, least
    /// recently used first (suffixes K, M, G, Ki, Mi, Gi). Folders of unregistered models and
    /// of failed loads are removed at once.
    #[arg(long, value_name = "BYTES", value_parser = ferroserve_runtime::parse_bytes, default_value = "32Gi")]
    pub max_cache_bytes: u64,

    /// Address of the management API. Anything but a loopback address needs a token.
    #[arg(long, default_value = "127.0.0.1")]
    pub management_host: IpAddr,

    /// Port of the management API (TorchServe's routes and Triton's repository extension; 0
    /// picks a free one).
    #[arg(long, default_value_t = 8081)]
    pub management_port: u16,

    /// Token the management API requires (`Authorization: Bearer TOKEN`); also required for the
    /// repository extension's load and unload on the inference ports. Prefer the file or the
    /// environment variable over the command line, which other users can read.
    #[arg(
        long,
        env = "FERROSERVE_MANAGEMENT_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with = "management_token_file"
    )]
    pub management_token: Option<String>,

    /// File holding the management token.
    #[arg(long, value_name = "FILE")]
    pub management_token_file: Option<PathBuf>,

    /// Folders under which the management API may register models by path (repeatable, or
    /// comma-separated). Default: none (only files in the model store).
    #[arg(long, value_name = "DIR", value_delimiter = ',')]
    pub allowed_paths: Vec<PathBuf>,

    /// URL prefixes the management API may download archives from (repeatable). Default: none;
    /// the server never fetches a URL a client names otherwise.
    #[arg(long, value_name = "PREFIX", value_delimiter = ',')]
    pub allowed_urls: Vec<String>,

    /// Re-scan the repository and the store every SECONDS: new models load, changed ones are
    /// swapped without failing requests, removed ones unload. Default: off.
    #[arg(long, value_name = "SECONDS")]
    pub poll_interval: Option<f64>,

    /// Address to listen on. The default accepts local connections only; use 0.0.0.0 to serve
    /// other machines.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// HTTP port (0 picks a free one; the log says which).
    #[arg(long, default_value_t = 8000)]
    pub http_port: u16,

    /// gRPC port for inference.GRPCInferenceService and grpc.health.v1 (0 picks a free one).
    #[arg(long, default_value_t = 8001)]
    pub grpc_port: u16,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub grpc_max_message_bytes: usize,

    /// Also serve GET /metrics on this port (it is always on the HTTP port too).
    #[arg(long)]
    pub metrics_port: Option<u16>,

    /// Replicas of a TorchServe archive whose model-config.yaml sets no minWorkers (TorchServe's
    /// default_workers_per_model). Default: 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub default_workers_per_model: Option<u32>,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Settings of the runtime and its listeners that `serve` and `run` share.
#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// ONNX Runtime shared library (libonnxruntime.so), loaded by the first ONNX model (a
    /// repository without one never needs it). Default: $ORT_DYLIB_PATH, else
    /// $FERROSERVE_HOME/lib/libonnxruntime.so (FERROSERVE_HOME defaults to ~/.ferroserve),
    /// which scripts/setup.sh fills.
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// Python interpreter for Python models (`model.py`) and executors (`py_modules`) that name
    /// none with `python:`: a virtual environment's bin/python holding their dependencies.
    /// Default: python3 on PATH.
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,

    /// Let executors with `install_requirements: true` install their requirements.txt into
    /// their Python with pip before starting. Off by default: installing packages is the
    /// operator's decision.
    #[arg(long)]
    pub install_requirements: bool,

    /// Largest request body accepted, in bytes; larger requests get HTTP 413.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Requests that may wait in one model version's queue (unless its model.yaml sets
    /// dynamic_batching.max_queue_size); more get HTTP 503 with Retry-After at once.
    #[arg(long, default_value_t = 1024)]
    pub max_queue_size: usize,

    /// Threads that decode and resize images and tokenise text for tasks (models with `task:`).
    /// Default: the machine's cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub task_threads: Option<u32>,

    /// On SIGTERM or SIGINT: stop accepting, then give in-flight and queued requests this many
    /// seconds to finish before exiting.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub shutdown_grace: f64,

    /// On SIGTERM or SIGINT, first answer not-ready on the health routes and keep accepting
    /// requests for this many seconds, so that a load balancer (a Kubernetes Service) stops
    /// sending new ones before the listeners close; --shutdown-grace counts from then.
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    pub drain_delay: f64,

    /// Do not serve the web console at `/` on the HTTP port (the API, `/openapi.json` and
    /// `/docs` stay).
    #[arg(long)]
    pub no_console: bool,

    /// Estimated bytes of model weights loaded at once on each device: BYTES for every device,
    /// or DEVICE=BYTES,... (`cpu=8Gi,cuda:0=20Gi`); suffixes K, M, G, Ki, Mi, Gi. Loading past
    /// it first unloads the least recently used idle `load: lazy` models there. Default: none.
    #[arg(long, value_name = "BYTES|DEVICE=BYTES,...")]
    pub memory_budget: Option<ferroserve_runtime::MemoryBudget>,

    /// Elements of all a request's input tensors together; more get HTTP 413 (gRPC
    /// RESOURCE_EXHAUSTED) before any work is queued.
    #[arg(long, default_value_t = 64 << 20, value_name = "N")]
    pub max_request_elements: usize,

    /// Elements of BYTES inputs (strings) in one request; more get HTTP 413. Each string costs
    /// the model far more than its bytes on the wire.
    #[arg(long, default_value_t = 1 << 20, value_name = "N")]
    pub max_bytes_elements: usize,

    #[command(flatten)]
    pub connections: ConnectionArgs,
}

/// Bounds on each listener's connections (HTTP, gRPC, management, metrics).
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Connections open at once on each listener; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = 2048, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Seconds a client has to send a request's headers (HTTP/1.1), counted from when the
    /// connection is ready for a request, so it also closes idle keep-alive connections.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub header_read_timeout: f64,

    /// Seconds a connection may stay open with no request in flight (HTTP/1.1, HTTP/2, gRPC).
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
    pub idle_timeout: f64,

    /// Longest wait, in seconds, for the next piece of a request body; also the grace period
    /// before --min-body-rate applies.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub body_read_timeout: f64,

    /// Bytes per second a request body must average once --body-read-timeout has passed (0:
    /// no minimum).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub min_body_rate: u64,

    /// Seconds between HTTP/2 pings that find peers gone without closing the connection.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub http2_keep_alive_interval: f64,

    /// Seconds a ping may go unanswered before the connection is closed.
    #[arg(long, default_value_t = 20.0, value_name = "SECONDS")]
    pub http2_keep_alive_timeout: f64,
}

impl ConnectionArgs {
    /// The listeners' limits; an error names a flag that is not a positive number of seconds.
    pub fn limits(&self) -> anyhow::Result<ferroserve_listen::Limits> {
        let seconds = |flag: &str, v: f64| {
            if v > 0.0 && v.is_finite() && v < 1e9 {
                Ok(std::time::Duration::from_secs_f64(v))
            } else {
                Err(anyhow::anyhow!(
                    "--{flag} must be a number of seconds above 0, got {v}"
                ))
            }
        };
        Ok(ferroserve_listen::Limits {
            max_connections: self.max_connections as usize,
            header_read_timeout: seconds("header-read-timeout", self.header_read_timeout)?,
            idle_timeout: seconds("idle-timeout", self.idle_timeout)?,
            body_read_timeout: seconds("body-read-timeout", self.body_read_timeout)?,
            min_body_rate: self.min_body_rate,
            http2_keep_alive_interval: seconds(
                "http2-keep-alive-interval",
                self.http2_keep_alive_interval,
            )?,
            http2_keep_alive_timeout: seconds(
                "http2-keep-alive-timeout",
                self.http2_keep_alive_timeout,
            )?,
        })
    }
}

/// `ferroserve archive`.
#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// The model's name (the archive is NAME.far).
    #[arg(long, required_unless_present = "inspect")]
    pub model_name: Option<String>,

    /// Version to record (a number). Default: 1, or the highest version folder of a model folder
    /// that has them.
    #[arg(long)]
    pub version: Option<u64>,

    /// The model file, or a whole model folder (a repository entry or a checkpoint folder).
    #[arg(long, value_name = "PATH", required_unless_present = "inspect")]
    pub model_file: Option<PathBuf>,

    /// Built-in task, written into the archive's model.yaml.
    #[arg(long)]
    pub task: Option<String>,

    /// A model.yaml to use instead of the folder's.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More files to put beside the model file (comma-separated).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub extra_files: Vec<PathBuf>,

    /// Folder to write the archive into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub export_path: PathBuf,

    /// Replace an existing archive of that name.
    #[arg(long, short = 'f')]
    pub force: bool,

    /// `far`: one NAME.far file; `no-archive`: a folder NAME/ with the same contents.
    #[arg(long, value_enum, default_value_t = ArchiveFormatArg::Far)]
    pub archive_format: ArchiveFormatArg,

    /// Print the manifest of this archive (file or no-archive folder) and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["model_name", "model_file"])]
    pub inspect: Option<PathBuf>,
}

/// What `ferroserve archive` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchiveFormatArg {
    /// One NAME.far file (zstd-compressed tar).
    Far,
    /// A folder NAME/.
    NoArchive,
}

/// `ferroserve run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to serve: a Deployment or Flow YAML file (model folders in it are relative to the
    /// file); a Ray Serve application as `module:attribute` (imported from --app-dir); or a Ray
    /// Serve config file (one with `applications:`).
    #[arg(value_name = "FILE.yml | module:attribute")]
    pub target: String,

    /// Arguments for a Ray Serve application builder (`module:builder`), as `key=value`, as
    /// `serve run` takes them.
    #[arg(value_name = "KEY=VALUE")]
    pub args: Vec<String>,

    /// The folder a `module:attribute` is imported from (Ray's `--app-dir`).
    #[arg(long, default_value = ".")]
    pub app_dir: PathBuf,

    /// Where a `module:attribute` application's ingress answers HTTP (Ray's `--route-prefix`).
    #[arg(long, default_value = "/")]
    pub route_prefix: String,

    /// The name of a `module:attribute` application (Ray's `--name`).
    #[arg(long, default_value = "default")]
    pub name: String,

    /// Address to listen on (default 127.0.0.1, or a Ray config's `http_options.host`).
    #[arg(long)]
    pub host: Option<IpAddr>,

    /// HTTP port; overrides the file's `port` (default 8080, 8000 for Ray Serve applications as
    /// in Ray; 0 picks a free one, the log says which).
    #[arg(long)]
    pub port: Option<u16>,

    /// gRPC port, when the file's `protocol` includes grpc; overrides the file (default 8081).
    #[arg(long)]
    pub grpc_port: Option<u16>,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// `ferroserve client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Documents, one per line: JSON (`{"text": "...", "tags": {...}}`) or plain text (a text
    /// document). `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub input: PathBuf,

    /// The Deployment or Flow.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Endpoint to call (`execEndpoint`).
    #[arg(long, default_value = "/default")]
    pub endpoint: String,

    /// Documents per request.
    #[arg(long, default_value_t = 32)]
    pub request_size: usize,

    /// Request parameters, a JSON object.
    #[arg(long, value_name = "JSON")]
    pub parameters: Option<String>,

    /// Write the answered documents here (JSON lines) instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Seconds to wait for each request.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,

    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Which protocol a client command speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// The Open Inference Protocol over HTTP (REST).
    Http,
    /// The Open Inference Protocol over gRPC.
    Grpc,
}

impl Protocol {
    /// The URL of a local server's listener for this protocol, at its default port.
    pub fn default_url(self) -> &'static str {
        match self {
            Protocol::Http => "http://127.0.0.1:8000",
            Protocol::Grpc => "http://127.0.0.1:8001",
        }
    }
}

/// Where a client command sends its requests.
#[derive(Debug, Args)]
pub struct Endpoint {
    /// Protocol to speak.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    pub protocol: Protocol,

    /// Server URL (default: http://127.0.0.1:8000 for HTTP, http://127.0.0.1:8001 for gRPC).
    #[arg(long)]
    pub url: Option<String>,

    /// Model version (default: the server's default version).
    #[arg(long)]
    pub model_version: Option<String>,
}

impl Endpoint {
    /// The URL to use, without a trailing slash.
    pub fn url(&self) -> String {
        self.url
            .as_deref()
            .unwrap_or(self.protocol.default_url())
            .trim_end_matches('/')
            .to_string()
    }
}

/// `ferroserve infer`.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// Model name.
    pub model: String,

    #[command(flatten)]
    pub endpoint: Endpoint,

    /// An input as NAME=FILE, repeatable. FILE is a NumPy `.npy` array (sent as binary data) or a
    /// `.json` file holding a V2 tensor: {"datatype": "FP32", "shape": [1, 3], "data": [...]}.
    #[arg(long = "input", short = 'i', value_name = "NAME=FILE", required = true)]
    pub inputs: Vec<String>,

    /// Output to return, repeatable (default: all outputs).
    #[arg(long = "output", short = 'o', value_name = "NAME")]
    pub outputs: Vec<String>,
}

/// How tensors travel in `ferroserve bench` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `data` arrays in the JSON body.
    Json,
    /// Triton's binary tensor extension, for inputs and outputs.
    Binary,
}

/// `ferroserve bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model name.
    #[arg(long)]
    pub model: String,

    #[command(flatten)]
    pub endpoint: Endpoint,

    /// Requests in flight at once (one connection each).
    #[arg(long, short = 'c', default_value_t = 1)]
    pub concurrency: usize,

    /// Seconds to measure (default 10, unless --requests is given).
    #[arg(long, conflicts_with = "requests")]
    pub duration: Option<f64>,

    /// Number of requests to measure, instead of a duration.
    #[arg(long)]
    pub requests: Option<u64>,

    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,

    /// An input as NAME=FILE (.npy or .json, as for `infer`), repeatable. Without any, inputs are
    /// random, shaped from the model's metadata.
    #[arg(long = "input", short = 'i', value_name = "NAME=FILE")]
    pub inputs: Vec<String>,

    /// Shape of a random input as NAME=d1,d2,... (default: the model's, with dynamic dimensions
    /// set to --batch for the first and 1 for the others).
    #[arg(long = "shape", value_name = "NAME=DIMS")]
    pub shapes: Vec<String>,

    /// Rows (first dimension) of random inputs whose first dimension is dynamic.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// How tensors travel over HTTP: JSON `data` or Triton's binary extension (gRPC always
    /// sends raw tensor bytes).
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// Threads of the load generator (it reports its own CPU use; keep it below the server's).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}
