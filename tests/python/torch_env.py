"""The virtual environment with PyTorch, torchvision and TorchServe that the TorchServe tests build
their models in and give ferroserve's Python workers: ~/.cache/ferroserve/venv-<key>, keyed by a
hash of REQUIREMENTS exactly as scripts/bench_python.py's venv() keys its environments, and made
the same way when missing (PyTorch is a large download, once). An environment found without its
`.complete` mark is completed in place (pip install into it), never deleted."""
import fcntl
import hashlib
import pathlib
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


def console_script(name: str, requirements=REQUIREMENTS) -> pathlib.Path:
    """A console script of the environment (torch-model-archiver, ...)."""
    return python(requirements).parent / name


if __name__ == "__main__":
    print(python())
