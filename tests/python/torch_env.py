"""The virtual environment with PyTorch, torchvision and TorchServe that the TorchServe tests build
their models in and give ferroserve's Python workers: ~/.cache/ferroserve/venv-<key>, keyed by a
hash of REQUIREMENTS exactly as scripts/bench_python.py's venv() keys its environments, and made
the same way when missing (PyTorch is a large download, once). An environment found without its
`.complete` mark is completed in place (pip install into it), never deleted."""
import fcntl
import hashlib
import pathlib
import shutil
import subprocess
import sys

CACHE = pathlib.Path.home() / ".cache" / "ferroserve"
REQUIREMENTS = ["torch==2.15.0", "torchvision==0.29.2", "torchserve==0.12.0", "torch-model-archiver==0.12.0",
                "pillow==13.0.0", "numpy==2.4.6", "onnx==1.23.2", "pyyaml==6.0.4"]


def root(requirements=REQUIREMENTS) -> pathlib.Path:
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    return CACHE / f"venv-{key}"


def python(requirements=REQUIREMENTS) -> pathlib.Path:
    """The environment's interpreter, installing what is missing first (progress on stderr)."""
    venv = root(requirements)
    interpreter = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return interpreter
    CACHE.mkdir(parents=True, exist_ok=True)
    # One installer at a time: another test session (or bench_python.py) may be at it.
    with open(CACHE / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            print(f"(installing {', '.join(requirements)} into {venv})", file=sys.stderr, flush=True)
            if not interpreter.exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=2)
            subprocess.run([str(interpreter), "-m", "pip", "install", "--progress-bar", "off", *requirements],
                           check=True, stdout=2)
            (venv / ".complete").write_text("\n".join(requirements))
    return interpreter


# What the Ray Serve tests (issue 19) import beyond PyTorch: the tutorials' libraries. `ray` itself
# is not among them: ferroserve's worker provides `ray.serve`'s API.
SERVE_REQUIREMENTS = ["transformers==5.23.0", "diffusers==0.42.1", "fastapi==0.163.2", "starlette==1.10.0"]


def layered(base_python, requirements):
    """The interpreter of a virtual environment that sees `base_python`'s venv (its site-packages
    through a .pth file) and holds `requirements` on top, so a few packages beside PyTorch cost
    megabytes, not another PyTorch; made when missing (one installer at a time)."""
    base = base_python.parent.parent
    key = hashlib.sha256("\n".join([f"on {base.name}", *requirements]).encode()).hexdigest()[:12]
    root = CACHE / f"venv-{key}"
    interpreter = root / "bin" / "python"
    if (root / ".complete").exists():
        return interpreter
    with open(CACHE / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".complete").exists():
            print(f"(installing {', '.join(requirements)} into {root}, on top of {base})", file=sys.stderr, flush=True)
            shutil.rmtree(root, ignore_errors=True)
            subprocess.run([str(base_python), "-m", "venv", str(root)], check=True, stdout=2)
            # Every site-packages the base sees (its own, and those a layered base sees in turn).
            seen = "import sys; print('\\n'.join(p for p in sys.path if p.endswith('-packages')))"
            inherited = set(subprocess.run([str(base_python), "-c", seen], check=True, capture_output=True,
                                           text=True).stdout.split())
            paths = "import sysconfig; p = sysconfig.get_paths(); print(p['purelib']); print(p['platlib'])"
            own = subprocess.run([str(interpreter), "-c", paths], check=True, capture_output=True,
                                 text=True).stdout.split()
            pathlib.Path(own[0], "_ferroserve_base.pth").write_text("".join(f"{p}\n" for p in sorted(inherited)))
            subprocess.run([str(interpreter), "-m", "pip", "install", "--progress-bar", "off", *requirements],
                           check=True, stdout=2)
            (root / ".complete").write_text("\n".join([f"on {base}", *requirements]))
    return interpreter


def serve_python():
    """The interpreter the Ray Serve tests run the tutorials' applications with: PyTorch plus
    SERVE_REQUIREMENTS."""
    return layered(python(), SERVE_REQUIREMENTS)


def console_script(name: str, requirements=REQUIREMENTS) -> pathlib.Path:
    """A console script of the environment (torch-model-archiver, ...)."""
    return python(requirements).parent / name


if __name__ == "__main__":
    print(python())
