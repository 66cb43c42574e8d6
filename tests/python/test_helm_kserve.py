"""The Helm chart deploy/helm/ferroserve and the KServe resources in deploy/kserve, checked
offline: helm lint, helm template for several value sets validated strictly against the
Kubernetes OpenAPI schemas, the canonical example of deploy/README.md rendered exactly, and the
KServe runtime and InferenceServices validated against KServe's CRDs (tests/fixtures/kserve, copied from ../shared/kserve).

CANONICAL is the Helm side of the cross-check with `ferroserve export kubernetes`: the same
resources must come out of both (less the labels k8s.normalise drops)."""
import copy
import glob
import pathlib
import subprocess

import pytest
import yaml

import k8s
from servers import ROOT

LABELS = {
    "app.kubernetes.io/name": "ferroserve",
    "app.kubernetes.io/instance": "demo",
    "app.kubernetes.io/version": "0.1.0",
    "app.kubernetes.io/managed-by": "Helm",
    "helm.sh/chart": "ferroserve-0.1.0",
}
SELECTOR = {"app.kubernetes.io/name": "ferroserve", "app.kubernetes.io/instance": "demo"}
SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}

# `helm template demo deploy/helm/ferroserve --set models.pvc.claimName=models
#  --set models.pvc.subPath=repo --set gpus=1 --set autoscaling.enabled=true
#  --set autoscaling.minReplicas=2 --set autoscaling.maxReplicas=6`, as deploy/README.md writes it.
CANONICAL_SET = ["--set", "models.pvc.claimName=models", "--set", "models.pvc.subPath=repo", "--set", "gpus=1",
                 "--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=2",
                 "--set", "autoscaling.maxReplicas=6"]
CANONICAL_VALUES = {"models": {"pvc": {"claimName": "models", "subPath": "repo"}}, "gpus": 1,
                    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}}
CANONICAL = {
    "deployment.yaml": {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "demo", "labels": LABELS},
        "spec": {
            "selector": {"matchLabels": SELECTOR},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": LABELS,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "8080",
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": 40,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "ferroserve",
                        "image": "ghcr.io/ferroserve/ferroserve:0.1.0-cuda",
                        "imagePullPolicy": "IfNotPresent",
                        "args": [
                            "--log-format=json",
                            "serve",
                            "--model-repository=/models",
                            "--host=0.0.0.0",
                            "--http-port=8080",
                            "--grpc-port=9000",
                            "--shutdown-grace=30",
                            "--drain-delay=5",
                        ],
                        "env": [{"name": "FERROSERVE_HOME", "value": "/var/lib/ferroserve"}],
                        "ports": [
                            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                            {"name": "grpc", "containerPort": 9000, "protocol": "TCP"},
                        ],
                        "startupProbe": {
                            "httpGet": {"path": "/v2/health/ready", "port": "http"},
                            "periodSeconds": 5,
                            "timeoutSeconds": 3,
                            "failureThreshold": 120,
                        },
                        "readinessProbe": {
                            "httpGet": {"path": "/v2/health/ready", "port": "http"},
                            "periodSeconds": 5,
                            "timeoutSeconds": 3,
                            "failureThreshold": 2,
                        },
                        "livenessProbe": {
                            "httpGet": {"path": "/v2/health/live", "port": "http"},
                            "periodSeconds": 10,
                            "timeoutSeconds": 5,
                            "failureThreshold": 3,
                        },
                        "resources": {
                            "requests": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "1"},
                            "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"},
                        },
                        "securityContext": SECURITY_CONTEXT,
                        "volumeMounts": [
                            {"name": "models", "mountPath": "/models", "readOnly": True, "subPath": "repo"},
                            {"name": "state", "mountPath": "/var/lib/ferroserve"},
                            {"name": "tmp", "mountPath": "/tmp"},
                            {"name": "dshm", "mountPath": "/dev/shm"},
                        ],
                    }],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
                        {"name": "state", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                    ],
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                },
            },
        },
    },
    "service.yaml": {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "demo", "labels": LABELS},
        "spec": {
            "type": "ClusterIP",
            "selector": SELECTOR,
            "ports": [
                {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
                {"name": "grpc", "port": 9000, "targetPort": "grpc", "protocol": "TCP",
                 "appProtocol": "kubernetes.io/h2c"},
            ],
        },
    },
    "horizontalpodautoscaler.yaml": {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "demo", "labels": LABELS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo"},
            "minReplicas": 2,
            "maxReplicas": 6,
            "metrics": [
                {"type": "Resource",
                 "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
                {"type": "Pods",
                 "pods": {"metric": {"name": "ferroserve_queue_depth"},
                          "target": {"type": "AverageValue", "averageValue": "4"}}},
            ],
        },
    },
    "poddisruptionbudget.yaml": {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "demo", "labels": LABELS},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}},
    },
}

# The storage initializer of deploy/README.md ("With a storage URI instead of a PVC").
def storage_initializer(uri, image="kserve/storage-initializer:v0.15.2"):
    return {
        "name": "storage-initializer",
        "image": image,
        "args": [uri, "/models"],
        "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": SECURITY_CONTEXT,
        "volumeMounts": [{"name": "models", "mountPath": "/models"}, {"name": "tmp", "mountPath": "/tmp"}],
    }


# The KServe runtime's container args, exactly as deploy/README.md's KServe section gives them.
RUNTIME_ARGS = ["--log-format=json", "serve", "--model-repository=/mnt/models", "--model-name={{.Name}}",
                "--host=0.0.0.0", "--http-port=8080", "--grpc-port=9000"]
RUNTIME = k8s.KSERVE_DIR / "ferroserve-runtime.yaml"
EXAMPLES = sorted(pathlib.Path(p) for p in glob.glob(str(k8s.KSERVE_DIR / "examples" / "*.yaml")))
MODEL_YAML = (ROOT / "examples" / "models" / "minilm" / "model.yaml").read_text()


def by_kind(docs):
    out = {}
    for doc in docs:
        assert doc["kind"] not in out, f"two {doc['kind']}s"
        out[doc["kind"]] = doc
    return out


def pod(docs):
    return by_kind(docs)["Deployment"]["spec"]["template"]["spec"]


# ---------------------------------------------------------------------------------------------
# Helm


def test_tools_run():
    tools = k8s.tools()
    assert "v3." in k8s.helm("version", "--short").stdout
    out = subprocess.run([str(tools.kubectl), "version", "--client"], check=True, capture_output=True, text=True)
    assert "Client Version" in out.stdout


@pytest.mark.parametrize("values", [
    None,  # the defaults: helm lint reports the missing model source as information only
    {"models": {"pvc": {"claimName": "models"}}},
    {"models": {"storageUri": "s3://bucket/models"}, "gpus": 2,
     "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3},
     "modelConfig": {"minilm": MODEL_YAML}, "podDisruptionBudget": {"enabled": False}},
], ids=["defaults", "pvc", "everything"])
def test_helm_lint(values):
    out = k8s.helm_lint(values)
    assert "0 chart(s) failed" in out


def test_helm_lint_checks_value_types():
    """values.schema.json: a wrong type or an unknown value fails lint and template."""
    with pytest.raises(k8s.HelmError, match="gpus: Invalid type"):
        k8s.helm_lint({"models": {"pvc": {"claimName": "models"}}, "gpus": "two"})
    with pytest.raises(k8s.HelmError, match="Additional property gpu is not allowed"):
        k8s.helm_template("demo", {"models": {"pvc": {"claimName": "models"}}, "gpu": 1})
    with pytest.raises(k8s.HelmError, match="memory"):
        k8s.helm_template("demo", {"models": {"pvc": {"claimName": "models"}}, "resources": {"memory": "two gigs"}})
    with pytest.raises(k8s.HelmError, match="subPath"):
        k8s.helm_template("demo", {"models": {"pvc": {"claimName": "models", "subPath": "../etc"}}})


def test_canonical_example_renders_the_spec_exactly():
    """deploy/README.md's canonical example: the same files, each with exactly the spec's resource
    (values as --set gives them: integers; and from a values file: floats to Helm)."""
    for values, args in ((None, CANONICAL_SET), (CANONICAL_VALUES, ())):
        files = k8s.helm_template_files("demo", values, args=args)
        assert sorted(files) == sorted(CANONICAL)
        for name, expected in CANONICAL.items():
            assert files[name] == [expected], name
        docs = [d for ds in files.values() for d in ds]
        k8s.validate_kubernetes(docs)
        assert all("namespace" not in d["metadata"] for d in docs)
    # What the cross-check with the export compares.
    normal = k8s.normalise(CANONICAL.values())
    assert sorted(normal) == [("Deployment", "demo"), ("HorizontalPodAutoscaler", "demo"),
                              ("PodDisruptionBudget", "demo"), ("Service", "demo")]
    assert normal[("Service", "demo")]["metadata"]["labels"] == {
        k: v for k, v in LABELS.items() if k not in k8s.UNCOMPARED_LABELS}
    assert normal[("Deployment", "demo")]["spec"]["template"]["metadata"]["labels"] == \
        normal[("Service", "demo")]["metadata"]["labels"]
    assert CANONICAL["service.yaml"]["metadata"]["labels"] == LABELS  # normalise copies


def test_namespace_is_not_written():
    docs = k8s.helm_template("demo", {"models": {"pvc": {"claimName": "models"}}, "modelConfig": {"a": "x: 1\n"}},
                             namespace="ml")
    assert docs and all("namespace" not in d["metadata"] for d in docs)


VALUE_SETS = {
    "pvc": {"models": {"pvc": {"claimName": "models"}}},
    "storage-uri": {"models": {"storageUri": "s3://bucket/models/repo"}, "replicas": 3},
    "gpus-autoscaling": {"models": {"pvc": {"claimName": "models", "subPath": "a/b"}}, "gpus": 2,
                         "resources": {"cpu": "4", "memory": "16Gi"},
                         "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 10,
                                         "targetCPUUtilization": 50, "targetQueueDepth": 8}},
    "model-config": {"models": {"storageUri": "gs://bucket/weights"},
                     "modelConfig": {"minilm": MODEL_YAML, "a-b": "task: text-embedding\n", "a": "replicas: 1"}},
    "pdb-disabled": {"models": {"pvc": {"claimName": "models"}}, "podDisruptionBudget": {"enabled": False},
                     "fullnameOverride": "fs", "shutdownGraceSeconds": 60, "drainDelaySeconds": 0,
                     "startupTimeoutSeconds": 61, "image": {"tag": "dev", "pullPolicy": "Always"}},
    "helm-only": {"models": {"pvc": {"claimName": "models"}}, "gpus": 1,
                  "imagePullSecrets": [{"name": "regcred"}],
                  "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                  "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                  "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                      "nodeSelectorTerms": [{"matchExpressions": [
                          {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}}},
}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_value_set_renders_valid_resources(name):
    values = VALUE_SETS[name]
    docs = k8s.helm_template("rel", values)
    k8s.validate_kubernetes(docs)
    kinds = by_kind(docs)
    deployment = kinds["Deployment"]
    spec = pod(docs)
    container = spec["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    resource_name = values.get("fullnameOverride", "rel")
    assert {d["metadata"]["name"] for d in docs} <= {resource_name, f"{resource_name}-model-config"}

    # Model source.
    if "storageUri" in values["models"]:
        assert spec["initContainers"] == [storage_initializer(values["models"]["storageUri"])]
        assert volumes["models"] == {"name": "models", "emptyDir": {}}
        assert mounts["models"] == {"name": "models", "mountPath": "/models"}
    else:
        pvc = values["models"]["pvc"]
        assert "initContainers" not in spec
        assert volumes["models"] == {"name": "models",
                                     "persistentVolumeClaim": {"claimName": pvc["claimName"], "readOnly": True}}
        assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True,
                                    **({"subPath": pvc["subPath"]} if pvc.get("subPath") else {})}

    # GPUs.
    gpus = values.get("gpus", 0)
    tag = values.get("image", {}).get("tag") or ("0.1.0-cuda" if gpus else "0.1.0")
    assert container["image"] == f"ghcr.io/ferroserve/ferroserve:{tag}"
    assert container["imagePullPolicy"] == values.get("image", {}).get("pullPolicy", "IfNotPresent")
    resources = values.get("resources", {})
    expected_requests = {"cpu": resources.get("cpu", "1"), "memory": resources.get("memory", "2Gi")}
    expected_limits = {"memory": resources.get("memory", "2Gi")}
    if gpus:
        expected_requests["nvidia.com/gpu"] = expected_limits["nvidia.com/gpu"] = str(gpus)
    assert container["resources"] == {"requests": expected_requests, "limits": expected_limits}
    gpu_toleration = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}] if gpus else []
    assert spec.get("tolerations", []) == gpu_toleration + values.get("tolerations", [])
    for field in ("imagePullSecrets", "nodeSelector", "affinity"):
        assert spec.get(field) == values.get(field), field

    # Autoscaling.
    autoscaling = values.get("autoscaling", {})
    if autoscaling.get("enabled"):
        assert "replicas" not in deployment["spec"]
        hpa = kinds["HorizontalPodAutoscaler"]["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (autoscaling["minReplicas"], autoscaling["maxReplicas"])
        assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == \
            autoscaling.get("targetCPUUtilization", 70)
        assert hpa["metrics"][1]["pods"]["target"]["averageValue"] == str(autoscaling.get("targetQueueDepth", 4))
    else:
        assert deployment["spec"]["replicas"] == values.get("replicas", 1)
        assert "HorizontalPodAutoscaler" not in kinds

    # Model configuration.
    config = values.get("modelConfig")
    if config:
        cm = kinds["ConfigMap"]
        assert cm["metadata"]["name"] == f"{resource_name}-model-config"
        assert cm["data"] == {f"{m}.model.yaml": text for m, text in config.items()}
        assert container["args"][-1] == "--model-config-dir=/etc/ferroserve/models"
        assert container["volumeMounts"][-1] == {"name": "model-config", "mountPath": "/etc/ferroserve/models",
                                                 "readOnly": True}
        # Items sorted by model name (a < a-b < minilm), not by key (a-b.model.yaml < a.model.yaml).
        assert spec["volumes"][-1] == {"name": "model-config", "configMap": {
            "name": f"{resource_name}-model-config",
            "items": [{"key": f"{m}.model.yaml", "path": f"{m}/model.yaml"} for m in sorted(config)]}}
    else:
        assert "ConfigMap" not in kinds
        assert not any(a.startswith("--model-config-dir") for a in container["args"])
        assert "model-config" not in mounts and "model-config" not in volumes

    # PodDisruptionBudget.
    assert ("PodDisruptionBudget" in kinds) == values.get("podDisruptionBudget", {}).get("enabled", True)

    # Timing.
    grace, drain = values.get("shutdownGraceSeconds", 30), values.get("drainDelaySeconds", 5)
    assert container["args"][6:8] == [f"--shutdown-grace={grace}", f"--drain-delay={drain}"]
    assert spec["terminationGracePeriodSeconds"] == grace + drain + 5
    startup = values.get("startupTimeoutSeconds", 600)
    assert container["startupProbe"]["failureThreshold"] == -(-startup // 5)


def test_model_config_text_is_kept_exactly():
    """Texts YAML could mangle (leading spaces, no final newline, blank lines, document markers,
    non-ASCII) reach the ConfigMap unchanged."""
    texts = {"lead": "  indented: 1\n  more: 2\n", "nonl": "task: x", "blank": "\n\nx: 1\n\n\n",
             "doc": "---\n# comment\nkey: \"quoted\"\nname: café 日本\n", "empty": "",
             "pipe": "|\n  not a block\n", "tabs": "a:\tb  \n"}
    docs = k8s.helm_template("demo", {"models": {"pvc": {"claimName": "models"}}, "modelConfig": texts})
    k8s.validate_kubernetes(docs)
    assert by_kind(docs)["ConfigMap"]["data"] == {f"{m}.model.yaml": t for m, t in texts.items()}


@pytest.mark.parametrize("values,message", [
    ({}, "no model source: set models.pvc.claimName"),
    ({"models": {"pvc": {"claimName": "models"}, "storageUri": "s3://bucket/models"}},
     "two model sources: models.pvc.claimName"),
    ({"models": {"storageUri": "pvc://models/repo"}}, "set models.pvc.claimName"),
    ({"models": {"storageUri": "s3://b/m", "pvc": {"subPath": "repo"}}}, "subPath is set without"),
    ({"models": {"pvc": {"claimName": "models"}},
      "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas \\(5\\) is above"),
    ({"models": {"pvc": {"claimName": "models"}}, "fullnameOverride": "Not_A_Label"}, "fullnameOverride"),
], ids=["none", "both", "pvc-uri", "subpath-alone", "min-above-max", "bad-name"])
def test_chart_fails_with_a_clear_message(values, message):
    with pytest.raises(k8s.HelmError, match=message):
        k8s.helm_template("demo", values)


def test_release_name_must_be_a_label():
    with pytest.raises(k8s.HelmError, match="is not a DNS-1123 label"):
        k8s.helm_template("demo.v1", {"models": {"pvc": {"claimName": "models"}}})


def test_notes():
    notes = k8s.helm_notes("demo", {"models": {"pvc": {"claimName": "models", "subPath": "repo"}},
                                    "autoscaling": {"enabled": True}}, namespace="ml")
    assert "kubectl -n ml port-forward service/demo 8080:8080 9000:9000" in notes
    assert "PersistentVolumeClaim models (folder repo)" in notes
    assert "ferroserve_queue_depth" in notes
    notes = k8s.helm_notes("demo", {"models": {"storageUri": "s3://b/m"}})
    assert "s3://b/m" in notes and "ferroserve_queue_depth" not in notes


def test_validate_kubernetes_rejects_broken_resources():
    """The validator can fail: an unknown field, a wrong type, a missing field, a bad name."""
    docs = copy.deepcopy(list(CANONICAL.values()))
    k8s.validate_kubernetes(docs)

    def broken(change):
        doc = copy.deepcopy(CANONICAL["deployment.yaml"])
        change(doc)
        with pytest.raises(AssertionError, match="Deployment/") as e:
            k8s.validate_kubernetes(doc)
        return str(e.value)

    container = lambda d: d["spec"]["template"]["spec"]["containers"][0]  # noqa: E731
    assert "readinesProbe" in broken(lambda d: container(d).__setitem__("readinesProbe", {}))
    assert "terminationGracePeriodSeconds" in broken(
        lambda d: d["spec"]["template"]["spec"].__setitem__("terminationGracePeriodSeconds", "forty"))
    assert "selector" in broken(lambda d: d["spec"].pop("selector"))
    assert "volume 'modelz'" in broken(lambda d: container(d)["volumeMounts"][0].__setitem__("name", "modelz"))
    assert "Demo" in broken(lambda d: d["metadata"].__setitem__("name", "Demo"))
    assert "does not match" in broken(lambda d: d["spec"]["selector"]["matchLabels"].__setitem__("x", "y"))
    service = copy.deepcopy(CANONICAL["service.yaml"])
    service["spec"]["ports"][0]["port"] = "8080x"
    with pytest.raises(AssertionError, match="Service/demo"):
        k8s.validate_kubernetes(service)


# ---------------------------------------------------------------------------------------------
# KServe


def test_runtime_validates_and_matches_the_spec():
    [runtime] = k8s.load_yaml(RUNTIME)
    k8s.validate_kserve(runtime)
    assert (runtime["apiVersion"], runtime["kind"], runtime["metadata"]["name"]) == \
        ("serving.kserve.io/v1alpha1", "ClusterServingRuntime", "ferroserve")
    spec = runtime["spec"]
    assert spec["annotations"] == {"prometheus.kserve.io/port": "8080", "prometheus.kserve.io/path": "/metrics"}
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    formats = {(f["name"], f["version"]): f for f in spec["supportedModelFormats"]}
    assert sorted(formats) == [("onnx", "1"), ("pytorch", "1"), ("triton", "2")]
    assert formats[("onnx", "1")]["autoSelect"] is True
    # KServe's webhook rejects a runtime giving onnx "1" the priority kserve-tritonserver gives it.
    [triton] = k8s.load_yaml(k8s.KSERVE_CRDS / "kserve-tritonserver.yaml")
    triton_onnx = [f for f in triton["spec"]["supportedModelFormats"] if (f["name"], f["version"]) == ("onnx", "1")]
    assert formats[("onnx", "1")]["priority"] != triton_onnx[0]["priority"]
    [container] = spec["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == "ghcr.io/ferroserve/ferroserve:0.1.0"
    assert container["args"] == RUNTIME_ARGS
    assert container["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"},
                                      "limits": {"cpu": "1", "memory": "2Gi"}}


def test_examples_validate_and_use_the_runtime():
    [runtime] = k8s.load_yaml(RUNTIME)
    supported = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert len(EXAMPLES) >= 4
    names, gpu = set(), []
    for path in EXAMPLES:
        for doc in k8s.load_yaml(path):
            k8s.validate_kserve(doc)
            assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService"), path
            model = doc["spec"]["predictor"]["model"]
            assert model["modelFormat"]["name"] == "onnx" and model["modelFormat"]["name"] in supported, path
            assert model["runtime"] == "ferroserve", path
            assert model["protocolVersion"] == "v2" and model["protocolVersion"] in runtime["spec"]["protocolVersions"]
            # The placeholder names a demo model of examples/models.
            assert model["storageUri"].startswith("pvc://models/"), path
            assert (ROOT / "examples" / "models" / model["storageUri"].removeprefix("pvc://models/")).is_dir(), path
            names.add(doc["metadata"]["name"])
            if "nvidia.com/gpu" in model.get("resources", {}).get("limits", {}):
                gpu.append(doc)
    assert {"simple", "minilm", "efficientnet-lite0"} <= names
    assert len(gpu) == 1 and str(gpu[0]["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"]) == "1"


def test_validate_kserve_rejects_broken_resources():
    """The validator can fail: unknown fields (where the API server would prune them silently),
    wrong types, a missing required field, an unknown kind."""
    [runtime] = k8s.load_yaml(RUNTIME)
    isvc = k8s.load_yaml(k8s.KSERVE_DIR / "examples" / "minilm.yaml")[0]

    def rejected(doc, change, match):
        doc = copy.deepcopy(doc)
        change(doc)
        with pytest.raises(AssertionError, match=match):
            k8s.validate_kserve(doc)

    rejected(runtime, lambda d: d["spec"]["containers"][0].__setitem__("argz", []), "argz")
    rejected(runtime, lambda d: d["spec"].__setitem__("supportedModelTypes", []), "supportedModelTypes")
    rejected(runtime, lambda d: d["spec"]["supportedModelFormats"][0].__setitem__("priority", "2"),
             "priority: '2' is not of type 'integer'")
    rejected(runtime, lambda d: d["spec"]["supportedModelFormats"][0].__setitem__("priority", 0), "minimum")
    rejected(runtime, lambda d: d["spec"].pop("containers"), "containers")
    rejected(runtime, lambda d: d["metadata"].__setitem__("labelz", {}), "labelz")
    rejected(isvc, lambda d: d["spec"]["predictor"]["model"].__setitem__("storageURI", "s3://x"), "storageURI")
    rejected(isvc, lambda d: d["spec"]["predictor"].__setitem__("minReplicas", "1"), "minReplicas")
    rejected(isvc, lambda d: d["spec"]["predictor"]["model"].__setitem__("modelFormat", "onnx"), "modelFormat")
    rejected(isvc, lambda d: d["spec"]["predictor"]["model"].__setitem__(
        "ports", [{"containerPort": 9000}, {"containerPort": 9000, "protocol": "TCP"}]), "duplicate")
    rejected(isvc, lambda d: d["spec"]["predictor"]["model"].__setitem__(
        "ports", [{"containerPort": 2 ** 40}]), "int32")
    rejected(isvc, lambda d: d["metadata"].__setitem__("name", "1minilm"), "not a valid name")
    rejected(isvc, lambda d: d.__setitem__("apiVersion", "serving.kserve.io/v1alpha1"), "no CRD")
    # A field where the CRD keeps unknown fields stays accepted.
    ok = copy.deepcopy(isvc)
    ok["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] = 1
    k8s.validate_kserve(ok)


def test_normalise_drops_only_the_uncompared_labels():
    helm_docs = copy.deepcopy(list(CANONICAL.values()))
    export_docs = copy.deepcopy(helm_docs)
    for doc in export_docs:
        for labels in (doc["metadata"]["labels"],
                       doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels")):
            if labels is not None:
                labels.pop("helm.sh/chart", None)  # (deepcopy keeps LABELS shared)
                labels["app.kubernetes.io/managed-by"] = "ferroserve"
    assert k8s.normalise(helm_docs) == k8s.normalise(reversed(export_docs))
    export_docs[0]["metadata"]["labels"]["app.kubernetes.io/version"] = "0.2.0"
    assert k8s.normalise(helm_docs) != k8s.normalise(export_docs)
    assert yaml.safe_dump(helm_docs) == yaml.safe_dump(list(CANONICAL.values()))  # left alone
