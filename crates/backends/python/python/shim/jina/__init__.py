"""The subset of Jina 3 that executor files use: Executor, @requests, @dynamic_batching.

ferroserve's Python worker installs this as `jina` (with the docarray shim as `docarray`)
only when the real Jina does not import. ferroserve itself plays the Flow/Deployment/gateway
role, so those names exist only to fail with a clear message.

The instance structures mirror real Jina 3 so the worker can treat both alike:
`executor.requests` maps endpoint -> (unbound) handler function, a bare `@requests` handler
sits under '/default', and `executor.dynamic_batching` maps endpoint -> {'preferred_batch_size',
'timeout'}.
"""

import logging
import os
import sys
import types

from docarray import Document, DocumentArray  # re-exported, as Jina 3 does

__version__ = "3.0.0+ferroserve.shim"
__default_endpoint__ = "/default"

__all__ = [
    "Executor", "requests", "dynamic_batching", "monitor", "Document", "DocumentArray",
    "Flow", "Deployment", "Client", "__default_endpoint__",
]

# Attributes the decorators leave on handler functions. Both decorators return the function
# itself, so they compose in either order.
_ENDPOINTS_ATTR = "__ferroserve_endpoints__"
_BATCHING_ATTR = "__ferroserve_dynamic_batching__"


def requests(func=None, *, on=None, request_schema=None, response_schema=None):
    """`@requests` (the default handler) or `@requests(on='/x')` / `on=['/a', '/b']`."""
    if on is None:
        endpoints = [__default_endpoint__]
    elif isinstance(on, str):
        endpoints = [on]
    else:
        endpoints = list(on)

    def mark(fn):
        existing = getattr(fn, _ENDPOINTS_ATTR, None) or []
        setattr(fn, _ENDPOINTS_ATTR, existing + [e for e in endpoints if e not in existing])
        return fn

    if func is not None and callable(func):
        return mark(func)
    return mark


def dynamic_batching(func=None, *, preferred_batch_size=None, timeout=10_000, flush_all=False,
                     custom_metric=None, use_custom_metric=False):
    """Records the batching settings on the handler; the worker reports them per endpoint."""

    def mark(fn):
        setattr(fn, _BATCHING_ATTR, {
            "preferred_batch_size": preferred_batch_size,
            "timeout": timeout,
        })
        return fn

    if func is not None and callable(func):
        return mark(func)
    return mark


def monitor(*args, name=None, documentation=None, **kwargs):
    """Jina's Prometheus decorator; ferroserve has its own metrics, so this is a no-op."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda fn: fn


def _collect_handlers(cls):
    """endpoint -> function, walking the MRO from the base so subclasses override."""
    handlers = {}
    batching = {}
    for klass in reversed(cls.__mro__):
        for fn in vars(klass).values():
            endpoints = getattr(fn, _ENDPOINTS_ATTR, None)
            if not isinstance(endpoints, list) or not endpoints:
                continue
            settings = getattr(fn, _BATCHING_ATTR, None)
            if not isinstance(settings, dict):
                settings = None
            for endpoint in endpoints:
                handlers[endpoint] = fn
                if settings is not None:
                    batching[endpoint] = dict(settings)
                else:
                    batching.pop(endpoint, None)
    return handlers, batching


def _namespace(value, defaults):
    merged = dict(defaults)
    if isinstance(value, dict):
        merged.update(value)
    elif value is not None:
        merged.update(vars(value))
    return types.SimpleNamespace(**merged)


def _make_logger(name):
    logger = logging.getLogger(name)
    # Jina's loggers print INFO and up; a bare logging.Logger would drop everything below
    # WARNING, so give it its own stderr handler once.
    if not getattr(logger, "_ferroserve_configured", False):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s@%(process)d %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger._ferroserve_configured = True
    return logger


class Executor:
    """Base class of executors. Subclasses call `super().__init__(**kwargs)`."""

    def __init__(self, metas=None, requests=None, runtime_args=None, workspace=None,
                 dynamic_batching=None, **kwargs):
        name = self.__class__.__name__
        self.metas = _namespace(metas, {"name": name, "workspace": None, "description": None,
                                        "py_modules": None})
        if not self.metas.name:
            self.metas.name = name
        self.runtime_args = _namespace(runtime_args, {
            "name": self.metas.name, "shard_id": 0, "shards": 1, "replicas": 1,
            "replica_id": 0, "workspace": None,
        })
        self._init_workspace = workspace
        self.logger = _make_logger(self.metas.name)

        handlers, batching = _collect_handlers(type(self))
        if requests:
            # Jina's `uses_requests`: endpoint -> method name overrides the decorators.
            for endpoint, method in requests.items():
                handlers[endpoint] = getattr(type(self), method) if isinstance(method, str) \
                    else method
        self.requests = handlers
        self.dynamic_batching = batching
        if dynamic_batching:
            self.dynamic_batching.update(dynamic_batching)

    @property
    def workspace(self):
        """`<workspace>/<name>[/<shard_id>]`, created on first use, as Jina does."""
        root = (getattr(self.runtime_args, "workspace", None) or self.metas.workspace
                or self._init_workspace
                or os.path.join(os.path.expanduser("~"), ".cache", "jina"))
        path = os.path.join(root, self.metas.name)
        shard_id = getattr(self.runtime_args, "shard_id", None)
        if shard_id is not None and shard_id != -1:
            path = os.path.join(path, str(shard_id))
        os.makedirs(path, exist_ok=True)
        return os.path.abspath(path)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _unavailable(what):
    class _Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(
                "jina.{} is not available inside ferroserve: ferroserve runs the Flow itself "
                "(from your Flow YAML); executors only need Executor, requests and "
                "dynamic_batching".format(what))

    _Unavailable.__name__ = what
    return _Unavailable


Flow = _unavailable("Flow")
Deployment = _unavailable("Deployment")
Client = _unavailable("Client")
