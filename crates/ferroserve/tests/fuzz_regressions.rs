//! Replays the fuzz targets' inputs (fuzz/seeds: valid inputs that start each corpus;
//! fuzz/regressions: minimised inputs that once crashed, hung or blew up a decoder) through the
//! same entry points `cargo fuzz` drives (scripts/fuzz.sh). Each must return, whatever it
//! decodes to.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        if let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) {
            files.extend(dir.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    files.sort();
    files
}

fn replay(target: &str, run: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "fuzz target {target} has no seeds");
    for file in files {
        let data = std::fs::read(&file).unwrap();
        eprintln!("{target}: {}", file.display());
        run(&data);
    }
}

#[test]
fn v2_request() {
    replay("v2_request", ferroserve_http::fuzzing::v2_request);
}

#[test]
fn v2_data() {
    replay("v2_data", ferroserve_http::fuzzing::v2_data);
}

#[test]
fn multipart() {
    replay("multipart", ferroserve_http::fuzzing::multipart);
}

#[test]
fn grpc_request() {
    replay("grpc_request", ferroserve_grpc::fuzzing::infer_request);
}

#[test]
fn image() {
    replay("image", ferroserve_tasks::fuzzing::image);
}

#[test]
fn far_unpack() {
    replay("far_unpack", ferroserve_store::fuzzing::unpack);
}

#[test]
fn model_yaml() {
    replay("model_yaml", |data| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = ferroserve_runtime::config::ModelConfig::parse(Path::new("model.yaml"), text);
        }
    });
}

#[test]
fn flow_yaml() {
    replay("flow_yaml", |data| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = ferroserve_flow::spec::FlowSpec::parse(text, PathBuf::from("/nonexistent"));
        }
    });
}
