"""ferroserve's stand-in for `ray`: only what Ray Serve application files touch.

This is not Ray. ferroserve's ray worker (ferroserve_ray.py) puts this package ahead of any
installed `ray`, so that an application file written for Ray Serve imports unchanged while
ferroserve itself plays Ray's part (replicas, routing, batching, autoscaling).

Provided: `ray.serve` (see its docstring), `ray.init` / `ray.shutdown` / `ray.is_initialized`
(no cluster to start: they only keep a flag), `ray.get` (resolves `DeploymentResponse`s, alone
or in a list) and `ray.put` (the value itself). Ray tasks and actors (`ray.remote`) are not.
"""

__version__ = "2.40.0+ferroserve.shim"

from . import serve  # noqa: E402  (`import ray; ray.serve...` must work, as it does with Ray)

__all__ = ["serve", "init", "shutdown", "is_initialized", "get", "put"]

_initialized = False


def init(*args, **kwargs):
    """Accepted and ignored: ferroserve runs the replicas, there is no cluster to join."""
    global _initialized
    _initialized = True


def shutdown(*args, **kwargs):
    global _initialized
    _initialized = False


def is_initialized():
    return _initialized


def get(refs, *, timeout=None):
    """The result of a DeploymentResponse (or of each in a list); anything else as it is."""
    if isinstance(refs, list):
        return [get(r, timeout=timeout) for r in refs]
    if isinstance(refs, serve.handle.DeploymentResponse):
        return refs.result(timeout_s=timeout)
    return refs


def put(value, **kwargs):
    # Nothing crosses an object store here: the "reference" is the value, and get() returns it.
    return value
