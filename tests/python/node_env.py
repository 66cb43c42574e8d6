"""The Node packages the browser tests run with (playwright-core, pinned in tests/browser): installed
with `npm ci` into ~/.cache/ferroserve/node-<key>, keyed by a hash of tests/browser's package.json
and package-lock.json, so the clone holds no node_modules and a changed pin gets a folder of its
own. scripts/setup.sh --test calls this when the folder is missing; the tests call it too, so a
checkout without the set-up still runs. Standard library only."""
import fcntl
import hashlib
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tests" / "browser"
CACHE = pathlib.Path.home() / ".cache" / "ferroserve"
FILES = ("package.json", "package-lock.json")


def root() -> pathlib.Path:
    digest = hashlib.sha256()
    for name in FILES:
        digest.update((PACKAGE / name).read_bytes())
    return CACHE / f"node-{digest.hexdigest()[:12]}"


def node_modules() -> pathlib.Path:
    """The installed node_modules folder, installing first when missing (progress on stderr)."""
    folder = root()
    if (folder / ".complete").exists():
        return folder / "node_modules"
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed (Debian: apt-get install nodejs npm)")
    CACHE.mkdir(parents=True, exist_ok=True)
    # One installer at a time: setup.sh and a test session may both be at it.
    with open(CACHE / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".complete").exists():
            print(f"(installing tests/browser's Node packages into {folder})", file=sys.stderr, flush=True)
            # A folder without its mark is an interrupted install: npm ci starts it afresh.
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for name in FILES:
                shutil.copyfile(PACKAGE / name, folder / name)
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=folder, check=True,
                           stdout=2)
            (folder / ".complete").write_text("".join((PACKAGE / name).read_text() for name in FILES))
    return folder / "node_modules"


if __name__ == "__main__":
    # --path: only say where the packages go (setup.sh checks for the mark itself).
    print(root() if sys.argv[1:] == ["--path"] else node_modules())
