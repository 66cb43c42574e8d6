"""ferroserve as KServe starts it: the container of deploy/kserve/ferroserve-runtime.yaml, run
with exactly its args (KServe's `{{.Name}}` filled in, /mnt/models mapped to a temporary folder,
its ports to free loopback ones), serves an InferenceService's one model under the service's
name, or every model of a repository, and answers the V2 protocol on both ports."""
import json
import shutil
import urllib.error
import urllib.request

import yaml

from servers import ROOT, Server, free_port, image_env, infer_simple

RUNTIME = ROOT / "deploy" / "kserve" / "ferroserve-runtime.yaml"
SIMPLE = ROOT / "examples" / "models" / "simple" / "1" / "model.onnx"



def kserve_container(model_dir, isvc_name):
    """The runtime's container as a local command: (args, env, {port name: local port})."""
    runtime = yaml.safe_load(RUNTIME.read_text())
    c = runtime["spec"]["containers"][0]
    ports = {"8080": free_port(), "9000": free_port()}
    args = []
    for a in c["args"]:
        a = a.replace("{{.Name}}", isvc_name).replace("/mnt/models", str(model_dir))
        a = a.replace("--host=0.0.0.0", "--host=127.0.0.1")
        for theirs, ours in ports.items():
            a = a.replace(f"-port={theirs}", f"-port={ours}")
        args.append(a)
    env = image_env()
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    return args, env, ports



def index(http):
    req = urllib.request.Request(f"http://{http}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return {m["name"]: m.get("state") for m in json.load(r)}


def test_the_runtime_passes_what_kserve_expects():
    c = yaml.safe_load(RUNTIME.read_text())["spec"]["containers"][0]
    assert c["name"] == "kserve-container"
    assert "--model-repository=/mnt/models" in c["args"]
    assert "--model-name={{.Name}}" in c["args"]
    assert "--http-port=8080" in c["args"] and "--grpc-port=9000" in c["args"]


def test_a_single_model_is_served_under_the_inference_services_name(tmp_path):
    """KServe's storage initializer puts the model's own files at /mnt/models."""
    mnt = tmp_path / "mnt-models"
    mnt.mkdir()
    shutil.copy(SIMPLE, mnt / "model.onnx")
    args, env, ports = kserve_container(mnt, "adder")
    with Server(args, env=env, python=None, listeners={"HTTP", "gRPC"}) as s:
        assert s.http == f"127.0.0.1:{ports['8080']}" and s.grpc == f"127.0.0.1:{ports['9000']}"
        assert index(s.http) == {"adder": "READY"}
        infer_simple(s.http, "adder", add=2)
        import tritonclient.grpc as grpcclient
        client = grpcclient.InferenceServerClient(s.grpc)
        try:
            assert client.is_server_ready() and client.is_model_ready("adder")
        finally:
            client.close()


def test_version_folders_and_model_name_from_the_environment(tmp_path):
    """`1/model.onnx` at the top is one model too; MODEL_NAME names it when no flag does."""
    mnt = tmp_path / "mnt-models"
    (mnt / "1").mkdir(parents=True)
    shutil.copy(SIMPLE, mnt / "1" / "model.onnx")
    args, env, _ = kserve_container(mnt, "ignored")
    args = [a for a in args if not a.startswith("--model-name")]
    env["MODEL_NAME"] = "from-env"
    with Server(args, env=env, python=None, listeners={"HTTP", "gRPC"}) as s:
        assert index(s.http) == {"from-env": "READY"}
        infer_simple(s.http, "from-env", add=2)


def test_a_repository_at_mnt_models_serves_every_model(tmp_path):
    """Triton's layout (model folders), as KServe's triton format passes it."""
    mnt = tmp_path / "mnt-models"
    for name in ["first", "second"]:
        (mnt / name / "1").mkdir(parents=True)
        shutil.copy(SIMPLE, mnt / name / "1" / "model.onnx")
    args, env, _ = kserve_container(mnt, "isvc")
    with Server(args, env=env, python=None, listeners={"HTTP", "gRPC"}) as s:
        assert index(s.http) == {"first": "READY", "second": "READY"}
        infer_simple(s.http, "second", add=2)
