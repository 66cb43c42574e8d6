"""`ferroserve export kubernetes`: the manifests validate strictly against Kubernetes' schemas,
equal the Helm chart's rendering for the same settings, and the container they describe works:
the server started exactly with the Deployment's args and env (paths mapped to temporary
folders, ports to free loopback ones) answers every probe and port the manifest names, reads
its ConfigMap, and drains on SIGTERM within terminationGracePeriodSeconds."""
import json
import pathlib
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

import k8s
from servers import ROOT, Server, binary, free_port, image_env, infer_simple

EXAMPLES = ROOT / "examples" / "models"
FLOWS = ROOT / "tests" / "fixtures" / "python" / "executors"
RAY = ROOT / "tests" / "fixtures" / "ray"


def export(tmp_path, *args):
    """Runs the export into a fresh folder; returns {file name: parsed resource}."""
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    done = subprocess.run([str(binary()), "export", "kubernetes", *args, "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = sorted(pathlib.Path(line) for line in done.stdout.split())
    assert written == sorted(out.iterdir()), (written, list(out.iterdir()))
    return {p.name: yaml.safe_load(p.read_text()) for p in written}


def export_fails(tmp_path, *args):
    done = subprocess.run([str(binary()), "export", "kubernetes", *args, "-o", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stdout
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    return done.stderr


def local_repository(tmp_path, folder="repo"):
    """A local repository with model.yaml files, for the ConfigMap."""
    repo = tmp_path / folder
    for name in ["simple", "minilm"]:
        (repo / name).mkdir(parents=True)
        if (EXAMPLES / name / "model.yaml").exists():
            shutil.copy(EXAMPLES / name / "model.yaml", repo / name / "model.yaml")
    (repo / "simple" / "model.yaml").write_text("# from the ConfigMap\nreplicas: 2\n")
    return repo


def container(manifests):
    return manifests["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]


def test_every_export_validates_strictly(tmp_path):
    sets = [
        ["--model-repository", "pvc://models/repo", "--name", "demo", "--gpus", "1", "--autoscale", "2:6"],
        ["--model-repository", "s3://bucket/repo", "--replicas", "3", "--cpu", "500m", "--memory", "3Gi"],
        ["--model-repository", str(local_repository(tmp_path)), "--models-from", "gs://b/repo",
         "--no-disruption-budget"],
        [str(FLOWS / "flow.yml"), "--name", "flow"],
        [str(FLOWS / "deployment.yml"), "--app-source", "pvc://apps/executors"],
        [str(RAY / "serve_config.yaml"), "--name", "shop", "--autoscale", "1:3", "--target-queue", "8"],
    ]
    for args in sets:
        manifests = export(tmp_path, *args)
        k8s.validate_kubernetes(list(manifests.values()))
    # The validator is strict: a field Kubernetes does not know is an error.
    broken = export(tmp_path, *sets[0])["deployment.yaml"]
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(AssertionError):
        k8s.validate_kubernetes([broken])


def test_export_equals_the_helm_chart(tmp_path):
    """The same settings give the same resources, whichever way a user renders them."""
    pairs = [
        (["--model-repository", "pvc://models/repo", "--name", "demo", "--gpus", "1", "--autoscale", "2:6"],
         "demo", {"models": {"pvc": {"claimName": "models", "subPath": "repo"}}, "gpus": 1,
                  "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}}),
        (["--model-repository", str(local_repository(tmp_path)), "--models-from", "s3://bucket/repo",
          "--replicas", "2", "--memory", "4Gi", "--drain-delay", "10"],
         "ferroserve", {"models": {"storageUri": "s3://bucket/repo"}, "replicas": 2,
                        "resources": {"memory": "4Gi"}, "drainDelaySeconds": 10,
                        "modelConfig": {"minilm": (EXAMPLES / "minilm" / "model.yaml").read_text(),
                                        "simple": "# from the ConfigMap\nreplicas: 2\n"}}),
    ]
    for args, release, values in pairs:
        exported = k8s.normalise(list(export(tmp_path, *args).values()))
        helm = k8s.normalise(k8s.helm_template(release, values))
        assert exported.keys() == helm.keys()
        for key in exported:
            assert exported[key] == helm[key], key


def test_bad_settings_are_refused_with_the_reason(tmp_path):
    assert "DNS-1123" in export_fails(tmp_path, "--model-repository", "pvc://m", "--name", "Demo")
    assert "--models-from" in export_fails(tmp_path, "--model-repository", str(local_repository(tmp_path)))
    assert "quantity" in export_fails(tmp_path, "--model-repository", "pvc://m", "--memory", "2GB")
    assert "MIN" in export_fails(tmp_path, "--model-repository", "pvc://m", "--autoscale", "4:2")
    bad = local_repository(tmp_path, "bad")
    (bad / "simple" / "model.yaml").write_text("max_batch_sise: 3\n")
    assert "max_batch_sise" in export_fails(tmp_path, "--model-repository", str(bad), "--models-from", "pvc://m")
    # A folder with weights in it does not fit a ConfigMap: the error says what to do instead.
    big = tmp_path / "big"
    big.mkdir()
    shutil.copy(FLOWS / "deployment.yml", big / "deployment.yml")
    (big / "weights.bin").write_bytes(b"\0" * (1 << 20))
    err = export_fails(tmp_path, str(big / "deployment.yml"))
    assert "weights.bin" in err and "--app-source" in err



def pod_command(manifests, mounts):
    """The Deployment's container as a local command: its args with each mount path replaced by
    a local folder, 0.0.0.0 by 127.0.0.1 and its ports by free ones; its env likewise.
    Returns (args, env, ports by name)."""
    c = container(manifests)
    ports = {p["name"]: (p["containerPort"], free_port()) for p in c["ports"]}

    def local(text):
        for path, folder in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(path, str(folder))
        text = text.replace("--host=0.0.0.0", "--host=127.0.0.1")
        for _, (theirs, ours) in ports.items():
            text = text.replace(f"={theirs}", f"={ours}")
        return text

    # Every mount of the pod must be mapped, or the server would use a path of this machine.
    assert {m["mountPath"] for m in c["volumeMounts"]} - {"/tmp", "/dev/shm"} <= mounts.keys()
    args = [local(a) for a in c["args"]]
    # What the image's own ENV says (the Dockerfile sets ORT_DYLIB_PATH), then the pod's env.
    env = image_env()
    env.update({e["name"]: local(e["value"]) for e in c.get("env", [])})
    return args, env, {name: ours for name, (_, ours) in ports.items()}


def config_map_folder(manifests, volume_name, folder):
    """Writes a ConfigMap volume's items as the kubelet would mount them."""
    pod = manifests["deployment.yaml"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == volume_name)
    data = manifests["configmap.yaml"].get("data", {})
    binary_data = manifests["configmap.yaml"].get("binaryData", {})
    import base64
    for item in volume["configMap"]["items"]:
        target = folder / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if item["key"] in data:
            target.write_text(data[item["key"]])
        else:
            target.write_bytes(base64.b64decode(binary_data[item["key"]]))
    return folder


def get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()



def grpc_ready(grpc):
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(grpc)
    try:
        return client.is_server_live() and client.is_server_ready()
    finally:
        client.close()


def test_the_deployments_probes_ports_and_config_map_work(tmp_path):
    repo = local_repository(tmp_path)
    manifests = export(tmp_path, "--model-repository", str(repo), "--models-from", "pvc://models")
    k8s.validate_kubernetes(list(manifests.values()))
    # The volume the pod would mount: the weights, without model.yaml (the ConfigMap has it).
    weights = tmp_path / "weights"
    (weights / "simple").mkdir(parents=True)
    shutil.copytree(EXAMPLES / "simple" / "1", weights / "simple" / "1")
    state = tmp_path / "state"
    state.mkdir()
    config = config_map_folder(manifests, "model-config", tmp_path / "config")
    assert (config / "simple" / "model.yaml").read_text().endswith("replicas: 2\n")
    args, env, ports = pod_command(manifests, {
        "/models": weights, "/var/lib/ferroserve": state, "/etc/ferroserve/models": config})
    with Server([*args, "--management-port=0"], env=env, python=None, wait_ready=False,
                listeners={"HTTP", "gRPC"}) as s:
        assert s.http == f"127.0.0.1:{ports['http']}" and s.grpc == f"127.0.0.1:{ports['grpc']}"
        c = container(manifests)
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
            get_ = c[probe]["httpGet"]
            assert get_["port"] == "http"
            s.wait_ready(get_["path"], timeout=60)
            assert get(f"http://127.0.0.1:{ports['http']}{get_['path']}")[0] == 200
        assert grpc_ready(s.grpc)
        annotations = manifests["deployment.yaml"]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "8080"
        # The autoscaler's metric exists from the model's load, before any request.
        status, metrics = get(f"http://{s.http}{annotations['prometheus.io/path']}")
        assert status == 200
        assert b'ferroserve_queue_depth{model="simple",version="1"} 0' in metrics
        infer_simple(s.http)
        # The ConfigMap's model.yaml configured the model, not the weights' folder.
        status, body = get(f"http://{s.http}/v2/models/simple/config")
        assert status == 200 and json.loads(body)["instance_group"][0]["count"] == 2
        # The archive cache is the pod's own emptyDir, through FERROSERVE_HOME.
        assert env["FERROSERVE_HOME"] == str(state)


def test_sigterm_drains_within_the_termination_grace_period(tmp_path):
    """Kubernetes' shutdown: SIGTERM, then SIGKILL after terminationGracePeriodSeconds. The pod
    answers not-ready at once, still serves through the drain delay while the Service forgets
    it, finishes the request in flight and exits before the kill."""
    repo = tmp_path / "repo"
    (repo / "slow").mkdir(parents=True)
    shutil.copytree(ROOT / "tests" / "fixtures" / "models" / "slow" / "1", repo / "slow" / "1")
    (repo / "simple").mkdir()
    shutil.copytree(EXAMPLES / "simple" / "1", repo / "simple" / "1")
    manifests = export(tmp_path, "--model-repository", "pvc://models", "--drain-delay", "2",
                       "--shutdown-grace", "20")
    pod = manifests["deployment.yaml"]["spec"]["template"]["spec"]
    kill_after = pod["terminationGracePeriodSeconds"]
    assert kill_after == 2 + 20 + 5
    state = tmp_path / "state"
    state.mkdir()
    args, env, ports = pod_command(manifests, {"/models": repo, "/var/lib/ferroserve": state})
    with Server([*args, "--management-port=0"], env=env, python=None, listeners={"HTTP", "gRPC"}) as s:
        def slow(iters):
            body = {"inputs": [{"name": "ITERS", "datatype": "INT64", "shape": [1, 1], "data": [iters]}]}
            req = urllib.request.Request(f"http://{s.http}/v2/models/slow/infer",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            t = time.time()
            with urllib.request.urlopen(req, timeout=120) as r:
                out = json.load(r)["outputs"][0]["data"]
            return out, time.time() - t

        out, took = slow(300)
        assert out == [300]
        # About 4 s of work: longer than the drain delay, so it is in flight all through it.
        iters = max(300, int(300 * 4.0 / max(took, 1e-3)))
        result = {}
        worker = threading.Thread(target=lambda: result.update(answer=slow(iters)))
        worker.start()
        time.sleep(0.5)
        sigterm_at = time.time()
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Not ready at once; alive, and still serving new requests during the drain delay.
        assert get(f"http://{s.http}/v2/health/ready")[0] == 503
        assert get(f"http://{s.http}/v2/health/live")[0] == 200
        infer_simple(s.http)
        assert not grpc_ready(s.grpc)
        s.proc.wait(timeout=kill_after + 5)
        exited_after = time.time() - sigterm_at
        worker.join(10)
        assert result["answer"][0] == [iters], result
        assert exited_after < kill_after, exited_after
        # It waited for the request rather than the whole grace period.
        assert exited_after < 2 + result["answer"][1] + 5
        assert s.proc.returncode == 0, s.text()
        assert "shut down cleanly" in s.text()


def test_a_flow_runs_from_its_exported_config_map(tmp_path):
    manifests = export(tmp_path, str(FLOWS / "tutorial.yml"), "--name", "executors")
    k8s.validate_kubernetes(list(manifests.values()))
    app = config_map_folder(manifests, "app", tmp_path / "app")
    # The ConfigMap carries the folder: every file the export read, byte for byte.
    for f in FLOWS.iterdir():
        if f.is_file():
            assert (app / f.name).read_bytes() == f.read_bytes(), f.name
    state = tmp_path / "state"
    state.mkdir()
    args, env, ports = pod_command(manifests, {"/app": app, "/var/lib/ferroserve": state})
    assert args[1] == "run" and args[2] == str(app / "tutorial.yml")
    from servers import PYTHON
    with Server([*args], env=env, python=PYTHON, start_timeout=120) as s:
        c = container(manifests)
        for probe in ["readinessProbe", "livenessProbe"]:
            assert get(f"http://{s.http}{c[probe]['httpGet']['path']}")[0] == 200
