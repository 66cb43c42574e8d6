"""`DeploymentHandle` and `DeploymentResponse` (ferroserve's shim, not Ray).

`handle.method.remote(*args, **kwargs)` asks ferroserve (through the worker's runtime, see
context.py) to route the call to that deployment's queue and returns a `DeploymentResponse` at
once. The response is awaitable, and `.result(timeout_s=None)` blocks for it; the worker reads
replies on a thread of its own, so blocking the event loop's thread does not deadlock.
A `DeploymentResponse` passed as an argument to `remote()` is resolved to its result first.
Streaming handles (`options(stream=True)`) are not supported.
"""

import asyncio
import concurrent.futures
import pickle
import threading

from . import context
from .exceptions import RayServeException

__all__ = ["DeploymentHandle", "DeploymentResponse"]


class DeploymentResponse:
    def __init__(self, future):
        # A concurrent.futures.Future: the worker's reader thread completes it.
        self._future = future
        self._outcome = None

    def __await__(self):
        if not self._future.done():
            yield from asyncio.wrap_future(self._future).__await__()
        return self._value()

    def result(self, *, timeout_s=None, _skip_asyncio_check=False):
        try:
            self._future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError("no answer from the deployment within {} s".format(timeout_s))
        return self._value()

    def _value(self):
        # Unpickled once: awaiting the same response twice gives the same object, as in Ray.
        if self._outcome is None:
            self._outcome = _unpack(self._future.result())
        ok, value = self._outcome
        if ok:
            return value
        raise value


def _unpack(outcome):
    """(True, value) or (False, exception) from the runtime's ("result", ...) / ("error", ...)."""
    if outcome[0] == "result":
        return True, pickle.loads(outcome[1])
    _, text, pickled = outcome
    exc = None
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
    return False, exc if isinstance(exc, BaseException) else RayServeException(text)


class DeploymentHandle:
    def __init__(self, deployment_name, app_name="default", *, method_name="__call__",
                 stream=False, multiplexed_model_id=""):
        self.deployment_name = deployment_name
        self.app_name = app_name
        self._method = method_name
        self._stream = stream
        self._model_id = multiplexed_model_id

    def options(self, *, method_name=None, stream=None, multiplexed_model_id=None, **ignored):
        """A copy with another method (or stream / multiplexed_model_id); Ray's other options
        (timeouts, routing hints) are accepted and have no effect here."""
        return DeploymentHandle(
            self.deployment_name, self.app_name,
            method_name=self._method if method_name is None else method_name,
            stream=self._stream if stream is None else stream,
            multiplexed_model_id=self._model_id if multiplexed_model_id is None
            else multiplexed_model_id)

    def remote(self, *args, **kwargs):
        if self._stream:
            raise RayServeException("ferroserve does not support streaming handles "
                                    "(options(stream=True))")
        return _remote(self.deployment_name, self._method, args, kwargs)

    def __getattr__(self, name):
        # Private names stay errors: pickle, copy and hasattr() probe for them.
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def __reduce__(self):
        # A handle passed to another deployment works there through that worker's runtime.
        return (DeploymentHandle, (self.deployment_name, self.app_name),
                {"_method": self._method, "_stream": self._stream, "_model_id": self._model_id})

    def __repr__(self):
        return "DeploymentHandle(deployment={!r}, app={!r}, method={!r})".format(
            self.deployment_name, self.app_name, self._method)


def _remote(deployment, method, args, kwargs):
    runtime = context.runtime
    if runtime is None:
        raise RayServeException(
            "DeploymentHandle calls work only inside a replica that ferroserve runs "
            "(not while the application is imported)")
    pending = [v for v in (*args, *kwargs.values()) if isinstance(v, DeploymentResponse)]
    if not pending:
        return DeploymentResponse(runtime.submit(deployment, method, args, kwargs))
    return DeploymentResponse(_submit_after(runtime, pending, deployment, method, args, kwargs))


def _submit_after(runtime, pending, deployment, method, args, kwargs):
    """A future for a call whose arguments include responses: sent once they all resolved
    (from the thread that resolves the last one), or failing with the first one's error."""
    outer = concurrent.futures.Future()
    lock = threading.Lock()
    left = [len(pending)]

    def on_resolved(_):
        with lock:
            left[0] -= 1
            if left[0]:
                return
        for response in pending:
            if response._future.exception() is None and response._future.result()[0] != "result":
                outer.set_result(response._future.result())
                return
        try:
            resolved_args = tuple(_resolved(v) for v in args)
            resolved_kwargs = {k: _resolved(v) for k, v in kwargs.items()}
            inner = runtime.submit(deployment, method, resolved_args, resolved_kwargs)
        except BaseException as exc:
            outer.set_exception(exc)
            return
        inner.add_done_callback(lambda f: _copy_outcome(f, outer))

    for response in pending:
        response._future.add_done_callback(on_resolved)
    return outer


def _resolved(value):
    return value._value() if isinstance(value, DeploymentResponse) else value


def _copy_outcome(source, target):
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
