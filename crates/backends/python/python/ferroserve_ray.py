"""ferroserve's worker for Ray Serve applications (../PROTOCOL.md, "Ray Serve applications").

ferroserve_worker.py hands its connection to run() when a `load` says `kind: "ray"`, and this
module keeps it: it answers the load (describing the application, or starting one replica of
one of its deployments), then serves many requests at once until `stop` or a closed socket ends
the process (exit 0).

Threads: one reads frames; the main thread runs one asyncio event loop where the user's code
lives. Each call/http/health becomes a task on that loop (sync methods run on the loop's thread,
blocking it, as Ray runs them). Answers to the worker's own handle calls complete
concurrent.futures.Futures straight from the reader thread, so a sync `.result()` on the loop's
thread gets its answer without the loop having to run. Sends come from several threads and are
serialised by a lock.
"""

import asyncio
import concurrent.futures
import importlib
import inspect
import itertools
import json
import os
import pickle
import sys
import threading
import traceback
import urllib.parse

import ferroserve_worker as fw

_SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim_ray")
_PICKLE = 5
_REQUEST_OPS = ("call", "http", "health")


def run(conn, h):
    """Answers the ray `load` h on conn, then serves until stop or a closed socket; never
    returns."""
    _RayWorker(conn).main(h)


def _exit(code):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    # os._exit: the user's own threads (non-daemon ones included) must not keep a replica
    # alive after ferroserve let it go.
    os._exit(code)


class _NoShm:
    """A ray worker has no shared-memory file: every buffer travels in the frame."""

    def slice(self, offset, length):
        raise fw.ProtocolError("ray workers take no shared-memory references")


def _frame(ref, payload):
    return fw._resolve(ref, payload, _NoShm())


# --------------------------------------------------------------------------------------
# Loading: the shim, the user's module, the deployment graph
# --------------------------------------------------------------------------------------

def _install_shim():
    """Makes `import ray` give ferroserve's shim even where Ray is installed (or imported)."""
    for name in [n for n in sys.modules if n == "ray" or n.startswith("ray.")]:
        del sys.modules[name]
    if _SHIM in sys.path:
        sys.path.remove(_SHIM)
    sys.path.insert(0, _SHIM)
    importlib.invalidate_caches()
    # Imported now, before app_dir goes ahead of the shim and could shadow it.
    import ray.serve  # noqa: F401


def _split_import_path(path):
    # Ray takes both "pkg.module:attr" and "pkg.module.attr".
    if ":" in path:
        module, _, attr = path.partition(":")
    else:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ValueError("import path {!r} is not of the form 'module:attribute'".format(path))
    return module, attr


def _load_application(h):
    from ray.serve.deployment import Application, Deployment

    import_path = h.get("import_path") or ""
    module_name, attr = _split_import_path(import_path)
    if h.get("app_dir"):
        sys.path.insert(0, os.path.abspath(h["app_dir"]))
    target = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    args = h.get("args")
    if isinstance(target, Application):
        if args:
            raise ValueError("arguments can only be passed to an application builder "
                             "function, and {} is an already built application"
                             .format(import_path))
        return target
    if isinstance(target, Deployment):
        raise TypeError("{} is a deployment, not an application: bind it "
                        "(`app = {}.bind(...)`) and serve the result".format(import_path, attr))
    if not inspect.isfunction(target):
        raise TypeError("Expected a built Serve application or an application builder "
                        "function but got: {}.".format(type(target).__name__))
    app = target(_builder_argument(target, args or {}))
    if not isinstance(app, Application):
        raise TypeError("the application builder {} returned {}, not an application "
                        "(a bound deployment)".format(import_path, type(app).__name__))
    return app


def _builder_argument(builder, args):
    """args as Ray gives them to a builder: parsed into the pydantic model its parameter is
    annotated with, else the dict itself."""
    try:
        params = list(inspect.signature(builder, eval_str=True).parameters.values())
    except Exception:
        params = list(inspect.signature(builder).parameters.values())
    if len(params) != 1:
        raise TypeError("Application builder functions should take exactly one parameter, a "
                        "dictionary containing the passed arguments.")
    annotation = params[0].annotation
    if inspect.isclass(annotation):
        for parse in ("model_validate", "parse_obj"):
            fn = getattr(annotation, parse, None)
            if callable(fn):
                return fn(args)
    return args


def _applications_in(value):
    from ray.serve.deployment import Application

    if isinstance(value, Application):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _applications_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _applications_in(item)


def _with_handles(value, app_name):
    """value with every bound deployment replaced by a DeploymentHandle to it."""
    from ray.serve.deployment import Application
    from ray.serve.handle import DeploymentHandle

    if isinstance(value, Application):
        return DeploymentHandle(value.deployment.name, app_name)
    if isinstance(value, list):
        return [_with_handles(v, app_name) for v in value]
    if isinstance(value, tuple):
        items = [_with_handles(v, app_name) for v in value]
        # A namedtuple is rebuilt from its fields, a plain tuple from an iterable.
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, dict):
        return {k: _with_handles(v, app_name) for k, v in value.items()}
    return value


class _Graph:
    """The application's deployments by name, ingress first, each with the deployments bound
    among its arguments."""

    def __init__(self, app):
        self.nodes = {}
        self.handles = {}
        self.ingress = self._visit(app)

    def _visit(self, node):
        name = node.deployment.name
        known = self.nodes.get(name)
        if known is not None:
            if known is not node:
                raise ValueError("the application has multiple deployments named {!r}; "
                                 "give them different names with .options(name=...)"
                                 .format(name))
            return name
        self.nodes[name] = node
        handles = []
        for child in _applications_in((node.args, node.kwargs)):
            child_name = self._visit(child)
            if child_name not in handles:
                handles.append(child_name)
        self.handles[name] = handles
        return name

    def node(self, name):
        node = self.nodes.get(name)
        if node is None:
            raise LookupError("the application has no deployment named {!r} (it has {})"
                              .format(name, ", ".join(self.nodes)))
        return node

    def describe(self, name):
        from ray.serve.deployment import ASGI_APP_ATTR

        deployment = self.nodes[name].deployment
        target = deployment.func_or_class
        if inspect.isclass(target):
            methods = _public_methods(target)
            batch = {m: _batch_settings(getattr(target, m)) for m in methods}
            entry = {"kind": "class", "asgi": getattr(target, ASGI_APP_ATTR, None) is not None,
                     "callable": "__call__" in methods, "methods": methods,
                     "batch": {m: s for m, s in batch.items() if s is not None}}
        else:
            settings = _batch_settings(target)
            entry = {"kind": "function", "asgi": False, "callable": True,
                     "methods": ["__call__"],
                     "batch": {} if settings is None else {"__call__": settings}}
        return {"name": name, **entry,
                "options": _json_options(name, deployment.options_given),
                "handles": self.handles[name]}


def _public_methods(cls):
    names = []
    for name in dir(cls):
        if name.startswith("_") and name != "__call__":
            continue
        # Static lookup: properties must not run, and a class without __call__ must not
        # report type's.
        attr = inspect.getattr_static(cls, name)
        if inspect.isfunction(attr) or isinstance(attr, (staticmethod, classmethod)):
            names.append(name)
    return names


def _batch_settings(fn):
    from ray.serve.batching import SETTINGS_ATTR

    settings = getattr(fn, SETTINGS_ATTR, None)
    if settings is None:
        return None
    return {"max_batch_size": settings["max_batch_size"],
            "batch_wait_timeout_s": settings["batch_wait_timeout_s"]}


def _json_options(name, options):
    out = {}
    for key, value in options.items():
        try:
            out[key] = _plain(value)
        except TypeError as exc:
            fw._note("deployment {}: option {} is left out ({})".format(name, key, exc))
    return out


def _plain(value):
    """value as JSON data; option objects (AutoscalingConfig, pydantic models) as dicts of the
    fields they were given."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    for dump in ("model_dump", "dict"):
        fn = getattr(value, dump, None)
        if callable(fn):
            return _plain(fn(exclude_unset=True))
    raise TypeError("a {} is not JSON data".format(type(value).__name__))


# --------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------

class _RayWorker:
    def __init__(self, conn):
        self.conn = conn
        self.send_lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.handle_ids = itertools.count(1)
        self.waiting = {}           # handle call id -> Future, completed by the reader thread
        self.tasks = set()          # running requests (the loop keeps only weak references)
        self.app_name = "default"
        self.deployment = None      # the started deployment's name
        self.target = None          # its instance, or the function of a function deployment
        self.is_function = False
        self.asgi_app = None
        self.lifespan_state = {}
        self.lifespan_task = None

    # -- lifecycle ---------------------------------------------------------------------
    def main(self, h):
        asyncio.set_event_loop(self.loop)
        # Reading starts before the load: a constructor may already call other deployments,
        # and a stop must end even a slow import.
        threading.Thread(target=self.read_frames, name="ferroserve-reader", daemon=True).start()
        try:
            reply = self.load(h)
        except BaseException as exc:
            # The worker stays (answering errors) until ferroserve stops it.
            reply = fw._error_reply(exc)
        self.send(reply)
        try:
            self.loop.run_forever()
        except BaseException:
            fw._note("the event loop failed:\n{}".format(traceback.format_exc()))
            _exit(1)
        _exit(0)

    def send(self, header, payload=b""):
        data = fw._dumps(header)
        with self.send_lock:
            try:
                self.conn.send(data, payload)
            except OSError:
                # ferroserve is gone: there is nobody left to serve.
                _exit(0)

    def read_frames(self):
        while True:
            try:
                header, payload = self.conn.recv()
            except fw.PeerClosed as exc:
                if str(exc) != "socket closed":
                    fw._note(str(exc))
                _exit(0)
            op = header.get("op")
            if op == "stop":
                self.send({"op": "stopped"})
                _exit(0)
            try:
                if op in ("handle_result", "handle_error"):
                    self.settle(op, header, payload)
                elif op in _REQUEST_OPS:
                    self.loop.call_soon_threadsafe(self.start_request, op, header, payload)
                else:
                    raise fw.ProtocolError("unknown op {!r}".format(op))
            except Exception as exc:
                reply = fw._error_reply(exc)
                if "id" in header:
                    reply["id"] = header["id"]
                self.send(reply)

    # -- load --------------------------------------------------------------------------
    def load(self, h):
        _install_shim()
        graph = _Graph(_load_application(h))
        self.app_name = h.get("app_name") or "default"
        name = h.get("deployment")
        if name is None:
            return {"op": "ready", "ingress": graph.ingress,
                    "deployments": [graph.describe(n) for n in graph.nodes]}
        self.loop.run_until_complete(self.start_replica(graph.node(name), h))
        return {"op": "ready"}

    async def start_replica(self, node, h):
        from ray.serve import context
        from ray.serve.deployment import ASGI_APP_ATTR

        deployment = node.deployment
        self.deployment = deployment.name
        context.runtime = self
        context.replica_context = context.ReplicaContext(
            self.app_name, deployment.name, h.get("replica_id") or deployment.name + "#0")
        target = deployment.func_or_class
        user_config = h.get("user_config")
        if not inspect.isclass(target):
            if user_config is not None:
                raise ValueError("user_config is set for {}, but only class deployments take "
                                 "one (through a reconfigure method)".format(deployment.name))
            self.target, self.is_function = target, True
            return

        # As Ray does: __new__, then __init__ awaited when it is a coroutine (async __init__).
        instance = target.__new__(target)
        await _finish(instance.__init__(*_with_handles(node.args, self.app_name),
                                        **_with_handles(node.kwargs, self.app_name)))
        context.replica_context.servable_object = instance
        app = getattr(target, ASGI_APP_ATTR, None)
        if app is not None:
            _bind_routes(app, target, instance)
            self.lifespan_state, self.lifespan_task = await _start_lifespan(app)
            self.asgi_app = app
        if user_config is not None:
            reconfigure = getattr(instance, "reconfigure", None)
            if not callable(reconfigure):
                raise ValueError("user_config is set for {}, but it has no reconfigure method"
                                 .format(deployment.name))
            await _finish(reconfigure(user_config))
        self.target = instance

    # -- handles (called from any thread by the shim's DeploymentHandle) ---------------
    def submit(self, deployment, method, args, kwargs):
        data = pickle.dumps((tuple(args), dict(kwargs)), protocol=_PICKLE)
        future = concurrent.futures.Future()
        handle_id = next(self.handle_ids)
        # Registered before sending: the answer may come before send() returns.
        self.waiting[handle_id] = future
        self.send({"op": "handle", "id": handle_id, "deployment": deployment,
                   "method": method, "args": ["frame", 0, len(data)]}, data)
        return future

    def settle(self, op, h, payload):
        future = self.waiting.pop(h.get("id"), None)
        if future is None:
            fw._note("an answer to handle call {!r}, which is not waiting".format(h.get("id")))
            return
        try:
            if op == "handle_result":
                outcome = ("result", _frame(h.get("result"), payload))
            else:
                ref = h.get("exception")
                outcome = ("error", h.get("error") or "RayServeException",
                           _frame(ref, payload) if ref is not None else None)
        except Exception as exc:
            # The caller must not wait forever for an answer that was unreadable.
            future.set_exception(exc)
            return
        future.set_result(outcome)

    # -- requests (on the loop) --------------------------------------------------------
    def start_request(self, op, h, payload):
        task = self.loop.create_task(self.serve_request(op, h, payload))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def serve_request(self, op, h, payload):
        request_id = h.get("id")
        try:
            if self.target is None:
                raise fw.ProtocolError("no replica is running here (the load failed, or only "
                                       "described the application)")
            if op == "call":
                reply, body = await self.op_call(h, payload)
            elif op == "http":
                reply, body = await self.op_http(h, payload)
            else:
                reply, body = await self.op_health()
        # BaseException: not even a user's sys.exit() may end the replica.
        except BaseException as exc:
            reply, body = _error_reply(exc)
        reply["id"] = request_id
        self.send(reply, body)

    def method(self, name):
        if self.is_function:
            if name != "__call__":
                raise AttributeError("function deployment {} has no method {!r}"
                                     .format(self.deployment, name))
            return self.target
        fn = getattr(self.target, name, None)
        if not callable(fn):
            raise AttributeError("deployment {} has no method {!r}".format(self.deployment, name))
        return fn

    async def op_call(self, h, payload):
        from ray.serve.batching import SETTINGS_ATTR

        fn = self.method(h.get("method") or "__call__")
        calls = [_call_arguments(ref, payload) for ref in h.get("calls") or []]
        if getattr(fn, SETTINGS_ATTR, None) is not None:
            results = await _call_batched(fn, calls)
        else:
            if len(calls) != 1:
                raise fw.ProtocolError("{} is not a @serve.batch method and takes one call at "
                                       "a time, not {}".format(h.get("method"), len(calls)))
            args, kwargs = calls[0]
            results = [await _finish(fn(*args, **kwargs))]
        chunks, refs, offset = [], [], 0
        for value in results:
            data = pickle.dumps(value, protocol=_PICKLE)
            chunks.append(data)
            refs.append(["frame", offset, len(data)])
            offset += len(data)
        return {"op": "result", "results": refs}, b"".join(chunks)

    async def op_http(self, h, payload):
        scope = _asgi_scope(h.get("scope") or {}, self.lifespan_state)
        ref = h.get("body")
        body = bytes(_frame(ref, payload)) if ref is not None else b""
        if self.asgi_app is not None:
            status, headers, out = await _run_asgi(self.asgi_app, scope, body)
        else:
            result = await _finish(self.method("__call__")(_request(scope, body)))
            status, headers, out = await _response(result, scope)
        return {"op": "http_response", "status": status, "headers": headers,
                "body": ["frame", 0, len(out)]}, out

    async def op_health(self):
        check = None if self.is_function else getattr(self.target, "check_health", None)
        if callable(check):
            await _finish(check())
        return {"op": "result", "results": []}, b""


async def _finish(value):
    return await value if inspect.isawaitable(value) else value


def _error_reply(exc):
    reply = fw._error_reply(exc)
    try:
        data = pickle.dumps(exc, protocol=_PICKLE)
        # Only an exception that also unpickles is worth sending: the caller re-raises it.
        pickle.loads(data)
    except Exception:
        return reply, b""
    reply["exception"] = ["frame", 0, len(data)]
    return reply, data


def _call_arguments(ref, payload):
    call = pickle.loads(_frame(ref, payload))
    if (not isinstance(call, (tuple, list)) or len(call) != 2
            or not isinstance(call[0], (tuple, list)) or not isinstance(call[1], dict)):
        raise fw.ProtocolError("a call is a pickled (args tuple, kwargs dict), not {!r}"
                               .format(type(call).__name__))
    return tuple(call[0]), call[1]


async def _call_batched(fn, calls):
    """Calls a @serve.batch method once for all calls, Ray's way: argument i becomes the list
    of every call's argument i, keyword k the list of every call's k."""
    from ray.serve.batching import FUNCTION_ATTR
    from ray.serve.exceptions import RayServeException

    if not calls:
        raise fw.ProtocolError("a call op with no calls")
    first_args, first_kwargs = calls[0]
    for args, kwargs in calls[1:]:
        if len(args) != len(first_args) or kwargs.keys() != first_kwargs.keys():
            raise TypeError("the calls batched for {} pass different arguments: {} positional "
                            "and {} against {} positional and {}"
                            .format(fn.__name__, len(args), sorted(kwargs),
                                    len(first_args), sorted(first_kwargs)))
    batch_args = [[args[i] for args, _ in calls] for i in range(len(first_args))]
    batch_kwargs = {k: [kwargs[k] for _, kwargs in calls] for k in first_kwargs}
    inner = getattr(fn, FUNCTION_ATTR)
    lead = (fn.__self__,) if inspect.ismethod(fn) else ()
    results = await _finish(inner(*lead, *batch_args, **batch_kwargs))
    try:
        results = list(results)
    except TypeError:
        raise TypeError("@serve.batch method {} must return a list, not {}"
                        .format(fn.__name__, type(results).__name__))
    if len(results) != len(calls):
        raise RayServeException(
            "Batched function doesn't preserve batch size. The input list has length {} but "
            "the returned list has length {}.".format(len(calls), len(results)))
    return results


# --------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------

def _latin1(text):
    return text.encode("latin-1") if isinstance(text, str) else bytes(text)


def _asgi_scope(wire, lifespan_state):
    scope = dict(wire)
    scope["type"] = "http"
    scope["asgi"] = {"version": "3.0"}
    scope["headers"] = [(_latin1(k).lower(), _latin1(v)) for k, v in wire.get("headers") or []]
    scope["query_string"] = _latin1(wire.get("query_string") or "")
    if "raw_path" in wire:
        scope["raw_path"] = _latin1(wire["raw_path"])
    for key in ("client", "server"):
        if isinstance(scope.get(key), list):
            scope[key] = tuple(scope[key])
    scope.setdefault("method", "GET")
    scope.setdefault("path", "/")
    scope.setdefault("root_path", "")
    scope.setdefault("scheme", "http")
    scope.setdefault("http_version", "1.1")
    # Each request gets a shallow copy of the lifespan state, as ASGI servers give it.
    scope.setdefault("state", dict(lifespan_state))
    return scope


def _receiver(body, done=None):
    """ASGI receive: the body in one message, then http.disconnect. With `done`, the
    disconnect waits for it: a streaming response watches receive() and would stop early."""
    given = False

    async def receive():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        if done is not None:
            await done.wait()
        return {"type": "http.disconnect"}

    return receive


async def _run_asgi(app, scope, body):
    """(status, [[name, value], ...], body) of the response an ASGI app sends."""
    done = asyncio.Event()
    start, chunks, finished = None, [], False

    async def send(message):
        nonlocal start, finished
        kind = message.get("type")
        if kind == "http.response.start" and start is None:
            start = message
        elif kind == "http.response.body" and start is not None and not finished:
            chunks.append(bytes(message.get("body", b"")))
            finished = not message.get("more_body", False)

    try:
        await app(scope, _receiver(body, done), send)
    finally:
        done.set()
    if start is None:
        raise RuntimeError("the ASGI application returned without sending a response")
    headers = [[bytes(k).decode("latin-1"), bytes(v).decode("latin-1")]
               for k, v in start.get("headers") or []]
    return int(start.get("status", 200)), headers, b"".join(chunks)


async def _start_lifespan(app):
    """Runs the app's lifespan startup (FastAPI's lifespan / on_startup) once, as an ASGI
    server would; returns (its state, the task that keeps it alive). Shutdown never comes: a
    stop ends the process. An app without lifespan support gives ({}, None)."""
    loop = asyncio.get_running_loop()
    answered = loop.create_future()
    state = {}
    asked = False

    async def receive():
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "lifespan.startup"}
        return await loop.create_future()

    async def send(message):
        if not answered.done() and str(message.get("type", "")).startswith("lifespan.startup."):
            answered.set_result(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
             "state": state}
    task = loop.create_task(app(scope, receive, send))
    # The outcome is read here or not at all: no "exception was never retrieved" noise.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    await asyncio.wait({task, answered}, return_when=asyncio.FIRST_COMPLETED)
    if not answered.done():
        if not task.cancelled() and task.exception() is not None:
            fw._note("the ASGI app runs no lifespan ({}: {}); startup handlers are skipped"
                     .format(type(task.exception()).__name__, task.exception()))
        return {}, None
    message = answered.result()
    if message["type"] == "lifespan.startup.failed":
        # Starlette's message is a whole traceback: it goes to the log, its last line (the
        # exception) into the error.
        text = str(message.get("message", "")).strip()
        if "\n" in text:
            fw._note("the ASGI app's lifespan startup failed:\n" + text)
        raise RuntimeError("the ASGI app's lifespan startup failed: {}"
                           .format(text.splitlines()[-1] if text else "no reason given"))
    return state, task


def _bind_routes(app, cls, instance):
    """Binds the routes of an @serve.ingress class to the replica's instance, as Ray does:
    each endpoint that is a function of the class gets `self` as a dependency that gives the
    instance (and its other parameters keyword-only), and is re-added through an APIRouter so
    that FastAPI analyses the new signature."""
    try:
        from fastapi import APIRouter, Depends
        from fastapi.routing import APIRoute, APIWebSocketRoute
    except ImportError:
        return  # not a FastAPI app: served as the ASGI app it is
    routes = getattr(app, "routes", None)
    if routes is None:
        return
    own = {id(v) for klass in cls.__mro__ for v in vars(klass).values() if inspect.isfunction(v)}
    bound = [r for r in routes
             if isinstance(r, (APIRoute, APIWebSocketRoute)) and id(r.endpoint) in own]
    if not bound:
        return

    async def the_instance():
        return instance

    router = APIRouter()
    for route in bound:
        routes.remove(route)
        signature = inspect.signature(route.endpoint)
        params = list(signature.parameters.values())
        if not params:
            from ray.serve.exceptions import RayServeException

            raise RayServeException("Methods in FastAPI class-based view must have ``self`` "
                                    "as their first argument.")
        # The rest become keyword-only: `self` now has a default, so it cannot stay first
        # among positional parameters without defaults.
        rest = [p if p.kind == p.VAR_KEYWORD else p.replace(kind=p.KEYWORD_ONLY)
                for p in params[1:]]
        route.endpoint.__signature__ = signature.replace(
            parameters=[params[0].replace(default=Depends(the_instance))] + rest)
        router.routes.append(route)
    app.include_router(router)


def _request(scope, body):
    try:
        from starlette.requests import Request
    except ImportError:
        return _Request(scope, body)
    return Request(scope, _receiver(body))


async def _response(result, scope):
    """What a __call__(request) returned, as Ray turns it into a response."""
    responses = sys.modules.get("starlette.responses")
    if responses is not None and isinstance(result, responses.Response):
        return await _run_asgi(result, scope, b"")
    if result is None:
        body, content_type = b"", "text/plain"
    elif isinstance(result, bytes):
        body, content_type = result, "text/plain"
    elif isinstance(result, str):
        body, content_type = result.encode("utf-8"), "text/plain; charset=utf-8"
    else:
        body, content_type = _json_body(result), "application/json"
    return 200, [["content-type", content_type]], body


def _json_body(value):
    np = sys.modules.get("numpy")
    try:
        from fastapi.encoders import jsonable_encoder
    except ImportError:
        return json.dumps(value, default=_json_default).encode("utf-8")
    encoders = {np.ndarray: lambda a: a.tolist(), np.generic: lambda x: x.item()} if np else {}
    return json.dumps(jsonable_encoder(value, custom_encoder=encoders)).encode("utf-8")


def _json_default(value):
    for name in ("tolist", "model_dump", "dict"):  # numpy arrays and scalars, pydantic
        fn = getattr(value, name, None)
        if callable(fn):
            return fn()
    raise TypeError("Object of type {} is not JSON serializable".format(type(value).__name__))


class _Request:
    """What __call__(request) deployments use of starlette.requests.Request, for interpreters
    without Starlette."""

    def __init__(self, scope, body):
        self.scope = scope
        self._body = body
        self.method = scope["method"]
        self.url = _URL(scope)
        self.query_params = _MultiDict(urllib.parse.parse_qsl(
            scope["query_string"].decode("latin-1"), keep_blank_values=True))
        self.path_params = {}
        self.headers = _MultiDict(((k.decode("latin-1"), v.decode("latin-1"))
                                   for k, v in scope["headers"]), fold_case=True)
        self.client = scope.get("client")

    async def body(self):
        return self._body

    async def json(self):
        return json.loads(self._body)


class _URL(str):
    def __new__(cls, scope):
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if not host and scope.get("server"):
            host = "{}:{}".format(*scope["server"])
        query = scope["query_string"].decode("latin-1")
        url = super().__new__(cls, "{}://{}{}{}".format(
            scope["scheme"], host, scope["path"], "?" + query if query else ""))
        url.scheme, url.netloc, url.path, url.query = scope["scheme"], host, scope["path"], query
        return url


class _MultiDict:
    """Starlette's read-only multi-dict: `[key]` and .get() give the last value (the first for
    headers, whose names match in any case), .getlist() all of them."""

    def __init__(self, pairs, fold_case=False):
        self._fold = str.lower if fold_case else (lambda k: k)
        self._list = [(self._fold(k), v) for k, v in pairs]
        self._one = {}
        for key, value in (reversed(self._list) if fold_case else self._list):
            self._one[key] = value

    def __getitem__(self, key):
        return self._one[self._fold(key)]

    def get(self, key, default=None):
        return self._one.get(self._fold(key), default)

    def getlist(self, key):
        key = self._fold(key)
        return [v for k, v in self._list if k == key]

    def __contains__(self, key):
        return self._fold(key) in self._one

    def __iter__(self):
        return iter(self._one)

    def __len__(self):
        return len(self._one)

    def keys(self):
        return self._one.keys()

    def values(self):
        return self._one.values()

    def items(self):
        return self._one.items()

    def multi_items(self):
        return list(self._list)
