"""ferroserve Python worker: runs one Triton python-backend model, one Jina executor, or one
Ray Serve application (handed over to ferroserve_ray.py).

Started by ferroserve as

    <python> -u ferroserve_worker.py --socket PATH --shm PATH

and speaks protocol version 1 of ../PROTOCOL.md over the Unix socket. Only the standard
library is imported up front; numpy is imported the first time a tensor or array is built.
stdout and stderr belong to the user's code (ferroserve logs them); the worker's own notes
go to stderr with a "[ferroserve-worker]" prefix.
"""

import argparse
import importlib.util
import inspect
import json
import mmap
import os
import signal
import socket
import struct
import sys
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
_MAX_BODY = 1 << 30
_ALIGN = 64
_DEFAULT_ENDPOINT = "/default"

_np_module = None


def _np():
    global _np_module
    if _np_module is None:
        import numpy

        _np_module = numpy
    return _np_module


def _note(message):
    sys.stderr.write("[ferroserve-worker] {}\n".format(message))
    sys.stderr.flush()


class PeerClosed(Exception):
    """The socket is closed or the peer sent something that is not a frame: time to exit."""


class ProtocolError(Exception):
    """A request that does not follow PROTOCOL.md (answered with an error reply)."""


# --------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------

def _finite(value):
    # NaN/Infinity are not JSON and the Rust side's parser refuses them: send null instead.
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _dumps(obj):
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")
    except ValueError:
        # Only non-finite floats (in user tags or parameters) get here; rare, so the
        # sanitising walk is kept off the common path.
        return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False).encode("ascii")


# --------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------

class Connection:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self._len = bytearray(4)

    def _recv_exact(self, view):
        got, size = 0, len(view)
        while got < size:
            try:
                n = self.sock.recv_into(view[got:], size - got)
            except InterruptedError:
                continue
            except OSError as exc:
                raise PeerClosed(str(exc))
            if n == 0:
                raise PeerClosed("socket closed")
            got += n

    def recv(self):
        """(header dict, payload memoryview). The payload owns its own bytearray, so numpy
        views made from inline buffers stay valid however long user code keeps them."""
        self._recv_exact(memoryview(self._len))
        (body_len,) = _U32.unpack(self._len)
        if body_len < 4 or body_len > _MAX_BODY:
            raise PeerClosed("broken frame: body length {}".format(body_len))
        body = bytearray(body_len)
        self._recv_exact(memoryview(body))
        (header_len,) = _U32.unpack_from(body, 0)
        if 4 + header_len > body_len:
            raise PeerClosed("broken frame: header length {} in a body of {}"
                             .format(header_len, body_len))
        try:
            header = json.loads(body[4:4 + header_len])
        except ValueError as exc:
            raise PeerClosed("broken frame: header is not JSON ({})".format(exc))
        if not isinstance(header, dict):
            raise PeerClosed("broken frame: header is not a JSON object")
        return header, memoryview(body)[4 + header_len:]

    def send(self, header_bytes, payload=b""):
        # Scatter-gather: the payload (possibly large) is never concatenated with the header.
        views = [memoryview(_U32X2.pack(4 + len(header_bytes) + len(payload), len(header_bytes))),
                 memoryview(header_bytes)]
        if len(payload):
            views.append(memoryview(payload))
        while views:
            try:
                sent = self.sock.sendmsg(views)
            except InterruptedError:
                continue
            while views and sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]


# --------------------------------------------------------------------------------------
# Shared memory and buffers
# --------------------------------------------------------------------------------------

class SharedFile:
    """The --shm file: opened once (ferroserve unlinks the path later), mapped at the size
    each request announces. Old mappings are never closed, only dropped: numpy arrays that
    user code still holds may point into them, and mmap keeps itself alive for them."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR)
        self.size = 0
        self.mm = None
        self.view = None

    def sync(self, size):
        size = int(size)
        if size != self.size:
            self._map(size)

    def _map(self, size):
        self.mm = None
        self.view = None
        if size > 0:
            self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
            self.view = memoryview(self.mm)
        self.size = size

    def slice(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ProtocolError("shm reference [{}, {}] outside the {}-byte file"
                                .format(offset, length, self.size))
        return self.view[offset:offset + length]

    def ensure(self, end):
        """Grows the file (to at least twice its size) so that [0, end) is mapped."""
        if end <= self.size:
            return
        target = max(end, 2 * self.size)
        target = (target + 4095) // 4096 * 4096
        # Never shrink: the file might already be larger than what this side mapped.
        target = max(target, os.fstat(self.fd).st_size)
        os.ftruncate(self.fd, target)
        # Reserve the pages now: /dev/shm can be small (64 MiB in a container), and a write
        # into a page tmpfs cannot supply is a SIGBUS, where this is an exception.
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(self.fd, 0, target)
        self._map(target)


def _resolve(ref, payload, shm):
    try:
        where, offset, length = ref
        offset, length = int(offset), int(length)
    except (TypeError, ValueError):
        raise ProtocolError("bad buffer reference {!r}".format(ref))
    if where == "frame":
        if offset < 0 or length < 0 or offset + length > len(payload):
            raise ProtocolError("frame reference [{}, {}] outside the {}-byte payload"
                                .format(offset, length, len(payload)))
        return payload[offset:offset + length]
    if where == "shm":
        return shm.slice(offset, length)
    raise ProtocolError("bad buffer reference {!r}".format(ref))


def _align(n):
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class Outputs:
    """Places a reply's buffers: small ones inline in the frame payload, big ones in the
    shared file from shm_free on. shm offsets are decided as buffers are added; the copies
    happen in finish(), after the file has been grown once for all of them."""

    def __init__(self, shm, threshold, shm_free):
        self.shm = shm
        self.threshold = threshold
        self.cursor = int(shm_free)
        self.payload = bytearray()
        self.pending = []

    def _big(self, nbytes):
        return nbytes > 0 and nbytes >= self.threshold

    def add_bytes(self, data):
        view = memoryview(data).cast("B")
        nbytes = view.nbytes
        if self._big(nbytes):
            offset = _align(self.cursor)
            self.cursor = offset + nbytes
            self.pending.append((offset, view))
            return ["shm", offset, nbytes]
        offset = len(self.payload)
        self.payload += view
        return ["frame", offset, nbytes]

    def add_array(self, array):
        """A numeric array of any layout/byte order, written little-endian, row-major."""
        nbytes = array.nbytes
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        if self._big(nbytes):
            offset = _align(self.cursor)
            self.cursor = offset + nbytes
            self.pending.append((offset, array))
            return ["shm", offset, nbytes]
        offset = len(self.payload)
        if not array.flags.c_contiguous:
            array = _np().ascontiguousarray(array)
        # The array's buffer, not the array: `bytearray += ndarray` would be numpy addition.
        self.payload += array.data.cast("B") if array.ndim else array.tobytes()
        return ["frame", offset, nbytes]

    def finish(self):
        if self.pending:
            self.shm.ensure(self.cursor)
            np = None
            for offset, source in self.pending:
                if isinstance(source, memoryview):
                    self.shm.view[offset:offset + source.nbytes] = source
                elif source.flags.c_contiguous:
                    # One memcpy straight into the file.
                    self.shm.view[offset:offset + source.nbytes] = \
                        memoryview(source.reshape(-1).view("u1"))
                else:
                    # Strided source: numpy copies it into place element-wise, still once.
                    np = np or _np()
                    target = np.ndarray(source.shape, dtype=source.dtype, buffer=self.shm.mm,
                                        offset=offset)
                    target[...] = source
                    del target
            self.pending = []
        return self.payload


# --------------------------------------------------------------------------------------
# Tensors (Triton)
# --------------------------------------------------------------------------------------

_WIRE_DTYPES = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}


_NP_DTYPES = {}


def _count(shape):
    n = 1
    for dim in shape:
        if dim < 0:
            raise ProtocolError("negative dimension in shape {}".format(shape))
        n *= dim
    return n


def _decode_bytes(buf, count):
    np = _np()
    out = np.empty(count, dtype=np.object_)
    offset, end = 0, len(buf)
    for i in range(count):
        if offset + 4 > end:
            raise ProtocolError("BYTES tensor ends inside element {}".format(i))
        (length,) = _U32.unpack_from(buf, offset)
        offset += 4
        if offset + length > end:
            raise ProtocolError("BYTES tensor ends inside element {}".format(i))
        out[i] = bytes(buf[offset:offset + length])
        offset += length
    if offset != end:
        raise ProtocolError("BYTES tensor has {} bytes after its {} elements"
                            .format(end - offset, count))
    return out


def _decode_tensor(spec, payload, shm):
    np = _np()
    datatype = spec.get("datatype")
    shape = spec.get("shape", [])
    if not all(type(d) is int for d in shape):
        raise ProtocolError("shape {!r} is not whole numbers".format(shape))
    count = _count(shape)
    buf = _resolve(spec.get("data"), payload, shm)
    if datatype == "BYTES":
        return _decode_bytes(buf, count).reshape(shape)
    if datatype == "BF16":
        raise TypeError("BF16 is not supported by the Python backend")
    dtype = _NP_DTYPES.get(datatype)
    if dtype is None:
        code = _WIRE_DTYPES.get(datatype)
        if code is None:
            raise ProtocolError("unknown datatype {!r} for tensor {!r}"
                                .format(datatype, spec.get("name")))
        # Cached: building a dtype from its code costs more than the rest of a small tensor.
        dtype = _NP_DTYPES[datatype] = np.dtype(code)
    if len(buf) != count * dtype.itemsize:
        raise ProtocolError("tensor {!r}: {} bytes for shape {} of {}"
                            .format(spec.get("name"), len(buf), shape, datatype))
    if count == 0:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


def _encode_tensor(tensor, out, pb):
    np = _np()
    array = tensor.as_numpy()
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    # `pb` (triton_python_backend_utils) owns Triton's dtype names and BYTES serialisation;
    # its dtype lookup is cached.
    datatype = pb._triton_name_of_dtype(array.dtype)
    if datatype == "BYTES":
        ref = out.add_bytes(pb._serialize_bytes(array))
    else:
        ref = out.add_array(array)
    # str(): a non-str name would make the reply unserialisable after the file has grown.
    return {"name": str(tensor.name()), "datatype": datatype, "shape": list(array.shape),
            "data": ref}


# --------------------------------------------------------------------------------------
# Documents (Jina)
# --------------------------------------------------------------------------------------

def _as_float32(value, what):
    np = _np()
    if not isinstance(value, np.ndarray):
        if hasattr(value, "detach"):  # torch
            value = value.detach().cpu().numpy()
        elif hasattr(value, "toarray"):  # scipy.sparse
            value = value.toarray()
        elif callable(getattr(value, "numpy", None)):  # tensorflow, jax, paddle
            value = value.numpy()
        value = np.asarray(value)
    if value.dtype.kind not in "biuf":
        raise TypeError("{} has dtype {}, which cannot be sent as float32"
                        .format(what, value.dtype))
    return value.astype(np.float32, copy=False)


def _jsonable_tags(value, where):
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable_tags(v, "{}.{}".format(where, k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable_tags(v, "{}[{}]".format(where, i)) for i, v in enumerate(value)]
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return _jsonable_tags(value.item(), where)
    raise TypeError("tag {} is not JSON-serialisable ({})".format(where, type(value).__name__))


# --------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------

def _accepted_kwargs(fn):
    """Names a handler accepts by keyword, or None when it takes **kwargs."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    names = set()
    for p in params:
        if p.kind == p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
    return names


class Worker:
    def __init__(self, conn, shm):
        self.conn = conn
        self.shm = shm
        self.kind = None
        self.threshold = 65536
        self.model = None        # Triton: the TritonPythonModel instance
        self.pb = None           # Triton: triton_python_backend_utils
        self.executor = None     # Jina: the Executor instance
        self.handlers = {}       # Jina: endpoint -> handler function
        self.accepted = {}       # Jina: handler -> accepted keyword names (None: all)
        self.docarray = None     # Jina: the docarray module in use (real or shim)
        self._loop = None
        self._finalised = False
        self._ops = {"load": self.op_load, "execute": self.op_execute, "docs": self.op_docs}

    # -- lifecycle ---------------------------------------------------------------------
    def run_async(self, awaitable):
        # One loop for the worker's life: executors may create loop-bound state
        # (aiohttp sessions, asyncio locks) in one call and use it in the next.
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop.run_until_complete(awaitable)

    def finalise(self):
        if self._finalised:
            return
        self._finalised = True
        target = self.model if self.kind == "triton" else self.executor
        name = "finalize" if self.kind == "triton" else "close"
        fn = getattr(target, name, None) if target is not None else None
        if not callable(fn):
            return
        try:
            result = fn()
            if inspect.isawaitable(result):
                self.run_async(result)
        except Exception:
            _note("{}() raised:\n{}".format(name, traceback.format_exc()))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()

    def serve(self):
        self.conn.send(_dumps({"op": "hello", "pid": os.getpid(),
                               "python": sys.version.split()[0]}))
        while True:
            try:
                header, payload = self.conn.recv()
            except PeerClosed as exc:
                if str(exc) != "socket closed":
                    _note(str(exc))
                self.finalise()
                return 0
            op = header.get("op")
            if op == "stop":
                self.finalise()
                self._send_quietly(_dumps({"op": "stopped"}))
                return 0
            try:
                handler = self._ops.get(op)
                if handler is None:
                    raise ProtocolError("unknown op {!r}".format(op))
                reply, body = handler(header, payload)
                reply_bytes = _dumps(reply)
            except Exception as exc:
                reply_bytes, body = _dumps(_error_reply(exc)), b""
            del header, payload
            if not self._send_quietly(reply_bytes, body):
                self.finalise()
                return 0

    def _send_quietly(self, header_bytes, payload=b""):
        try:
            self.conn.send(header_bytes, payload)
            return True
        except OSError:
            return False

    # -- load --------------------------------------------------------------------------
    def op_load(self, h, payload):
        if self.kind is not None:
            raise ProtocolError("a model is already loaded")
        self.threshold = int(h.get("shm_threshold", 65536))
        kind = h.get("kind")
        if kind == "triton":
            return self._load_triton(h), b""
        if kind == "jina":
            return self._load_jina(h), b""
        if kind == "ray":
            self._serve_ray(h)
        raise ProtocolError("unknown load kind {!r}".format(kind))

    def _serve_ray(self, h):
        # A ray worker serves many requests at once on threads of its own, so it keeps the
        # connection for good: ferroserve_ray answers this load itself and ends the process.
        # It imports this module by name; that must be this running copy, not a second one.
        sys.modules.setdefault("ferroserve_worker", sys.modules[__name__])
        if _HERE not in sys.path:
            sys.path.append(_HERE)
        import ferroserve_ray

        ferroserve_ray.run(self.conn, h)

    def _load_triton(self, h):
        # Import the bundled utils before the model folder goes on sys.path, so that the
        # module in sys.modules (and the classes the worker checks against) is ours.
        if _HERE not in sys.path:
            sys.path.append(_HERE)
        import triton_python_backend_utils as pb

        model_py = os.path.abspath(h["model_py"])
        sys.path.insert(0, os.path.dirname(model_py))
        module = _import_path(model_py, "model")
        cls = getattr(module, "TritonPythonModel", None)
        if cls is None:
            raise AttributeError("{} defines no TritonPythonModel class".format(model_py))
        model = cls()
        initialize = getattr(model, "initialize", None)
        if callable(initialize):
            result = initialize(dict(h.get("args") or {}))
            if inspect.isawaitable(result):
                self.run_async(result)
        self.pb, self.model, self.kind = pb, model, "triton"
        return {"op": "ready"}

    def _load_jina(self, h):
        jina = self._import_jina()
        modules = []
        for path in h.get("py_modules") or []:
            path = os.path.abspath(path)
            folder = os.path.dirname(path)
            sys.path.insert(0, folder)
            if os.path.basename(path) == "__init__.py":
                # A package given by its __init__.py: its parent must be importable too.
                sys.path.insert(0, os.path.dirname(folder))
            modules.append(_import_py_module(path))
        cls = _find_executor_class(h["uses"], modules, jina.Executor)
        executor = cls(**dict(h.get("uses_with") or {}), metas=h.get("metas") or {},
                       runtime_args=h.get("runtime_args") or {}, requests=None)
        handlers, batching = _discover_handlers(executor, jina)
        self.executor, self.handlers, self.kind = executor, handlers, "jina"
        return {"op": "ready",
                "endpoints": [e for e in handlers if e != _DEFAULT_ENDPOINT],
                "default": _DEFAULT_ENDPOINT in handlers,
                "dynamic_batching": batching}

    def _import_jina(self):
        force_shim = os.environ.get("FERROSERVE_JINA_SHIM", "") not in ("", "0")
        if not force_shim:
            try:
                import docarray
                import jina

                if not hasattr(docarray, "Document"):
                    raise ImportError(
                        "docarray {} has no Document class; ferroserve needs DocArray 0.x "
                        "(the v1 API)".format(getattr(docarray, "__version__", "?")))
                self.docarray = docarray
                return jina
            except Exception as exc:
                if not isinstance(exc, ModuleNotFoundError):
                    _note("the installed jina/docarray do not import ({}: {}); using the "
                          "bundled subset".format(type(exc).__name__, exc))
                for name in list(sys.modules):
                    if name.split(".")[0] in ("jina", "docarray"):
                        del sys.modules[name]
        # docarray first: the jina shim imports it by name.
        self.docarray = _load_shim("docarray")
        return _load_shim("jina")

    # -- execute (Triton) --------------------------------------------------------------
    def op_execute(self, h, payload):
        if self.kind != "triton":
            raise ProtocolError("execute needs a loaded Triton model")
        pb, shm = self.pb, self.shm
        shm.sync(h.get("shm_size", 0))
        requests = []
        for r in h.get("requests", []):
            inputs = [pb.Tensor(t["name"], _decode_tensor(t, payload, shm))
                      for t in r.get("inputs", [])]
            parameters = r.get("parameters")
            requests.append(pb.InferenceRequest(
                request_id=r.get("id", ""), inputs=inputs,
                requested_output_names=r.get("outputs") or [],
                # Triton hands them over as JSON text; most requests have none.
                parameters=json.dumps(parameters) if parameters else "{}"))

        responses = self.model.execute(requests)
        if inspect.isawaitable(responses):
            responses = self.run_async(responses)
        if not isinstance(responses, (list, tuple)):
            raise pb.TritonModelException(
                "execute must return a list of InferenceResponse, got {}"
                .format(type(responses).__name__))
        if len(responses) != len(requests):
            raise pb.TritonModelException("execute returned {} responses for {} requests"
                                          .format(len(responses), len(requests)))

        out = Outputs(shm, self.threshold, h.get("shm_free", 0))
        wire = []
        for i, (request, response) in enumerate(zip(requests, responses)):
            if not isinstance(response, pb.InferenceResponse):
                raise pb.TritonModelException(
                    "execute returned a {} at position {}, not an InferenceResponse"
                    .format(type(response).__name__, i))
            if response.has_error():
                wire.append({"error": _error_message(response.error())})
                continue
            # As Triton does, only requested outputs go back; none requested means all.
            wanted = request.requested_output_names()
            wire.append({"outputs": [
                _encode_tensor(t, out, pb) for t in response.output_tensors()
                if not wanted or t.name() in wanted]})
        body = out.finish()
        return {"op": "result", "shm_size": shm.size, "responses": wire}, body

    # -- docs (Jina) -------------------------------------------------------------------
    def op_docs(self, h, payload):
        if self.kind != "jina":
            raise ProtocolError("docs needs a loaded executor")
        shm = self.shm
        shm.sync(h.get("shm_size", 0))
        DocumentArray = self.docarray.DocumentArray
        docs = DocumentArray([self._doc_in(d, payload) for d in h.get("docs", [])])
        endpoint = h.get("endpoint") or _DEFAULT_ENDPOINT
        fn = self.handlers.get(endpoint) or self.handlers.get(_DEFAULT_ENDPOINT)
        # As Jina: an endpoint nobody handles passes the documents through untouched.
        result = docs if fn is None else self._call_handler(fn, docs, h.get("parameters") or {})

        out = Outputs(shm, self.threshold, h.get("shm_free", 0))
        wire = [self._doc_out(d, out) for d in result]
        body = out.finish()
        return {"op": "docs", "docs": wire, "shm_size": shm.size}, body

    def _call_handler(self, fn, docs, parameters):
        kwargs = {"docs": docs, "parameters": parameters, "docs_matrix": [docs],
                  "docs_map": {}, "tracing_context": None}
        if fn not in self.accepted:
            self.accepted[fn] = _accepted_kwargs(fn)
        names = self.accepted[fn]
        if names is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in names}
        # Jina keeps handlers unbound and passes the executor itself.
        result = fn(**kwargs) if inspect.ismethod(fn) else fn(self.executor, **kwargs)
        if inspect.isawaitable(result):
            result = self.run_async(result)
        if result is None:
            return docs
        if isinstance(result, (self.docarray.DocumentArray, list, tuple)):
            return result
        if isinstance(result, dict):
            _note("handler {} returned a dict; it is ignored (documents are returned as "
                  "edited in place)".format(getattr(fn, "__name__", fn)))
            return docs
        raise TypeError("handler {} returned {}; expected a DocumentArray, a list of "
                        "Documents or None".format(getattr(fn, "__name__", fn),
                                                   type(result).__name__))

    def _doc_in(self, w, payload):
        kwargs = {"id": w.get("id")}
        for key in ("text", "uri"):
            if key in w:
                kwargs[key] = w[key]
        if "blob" in w:
            kwargs["blob"] = bytes(_resolve(w["blob"], payload, self.shm))
        for key in ("tensor", "embedding"):
            if key in w:
                kwargs[key] = self._array_in(w[key], payload)
        if w.get("tags"):
            kwargs["tags"] = w["tags"]
        for key in ("chunks", "matches"):
            if w.get(key):
                kwargs[key] = [self._doc_in(c, payload) for c in w[key]]
        doc = self.docarray.Document(**kwargs)
        for name, value in (w.get("scores") or {}).items():
            if value is not None:
                doc.scores[name].value = value
        return doc

    def _array_in(self, a, payload):
        np = _np()
        shape = [int(d) for d in a["shape"]]
        count = _count(shape)
        buf = _resolve(a["data"], payload, self.shm)
        if len(buf) != 4 * count:
            raise ProtocolError("array of shape {} with {} bytes".format(shape, len(buf)))
        if count == 0:
            return np.zeros(shape, dtype=np.float32)
        # A copy: executors may keep tensors and embeddings beyond the request, and shm
        # inputs are only valid during it.
        return np.frombuffer(buf, dtype="<f4", count=count).reshape(shape).astype(np.float32)

    def _doc_out(self, d, out):
        doc_id = getattr(d, "id", None)
        if doc_id is None:
            raise TypeError("handler returned a {} where a Document was expected"
                            .format(type(d).__name__))
        w = {"id": str(doc_id)}
        for key in ("text", "uri"):
            value = getattr(d, key, None)
            if value is not None:
                w[key] = str(value)
        blob = getattr(d, "blob", None)
        if blob is not None:
            if isinstance(blob, str):
                raise TypeError("blob of document {} is a str; blobs are bytes".format(doc_id))
            w["blob"] = out.add_bytes(blob)
        for key in ("tensor", "embedding"):
            value = getattr(d, key, None)
            if value is not None:
                array = _as_float32(value, "{} of document {}".format(key, doc_id))
                w[key] = {"shape": list(array.shape), "data": out.add_array(array)}
        tags = getattr(d, "tags", None)
        if tags:
            w["tags"] = {str(k): _jsonable_tags(v, "'{}' of document {}".format(k, doc_id))
                         for k, v in dict(tags).items()}
        scores = getattr(d, "scores", None)
        if scores:
            wire_scores = {}
            for name, score in scores.items():
                value = getattr(score, "value", score)
                if value is None:
                    continue
                value = float(value)
                if value == value and value not in (float("inf"), float("-inf")):
                    wire_scores[str(name)] = value
            if wire_scores:
                w["scores"] = wire_scores
        for key in ("chunks", "matches"):
            children = getattr(d, key, None)
            if children is not None and len(children):
                w[key] = [self._doc_out(c, out) for c in children]
        return w


def _error_message(err):
    message = getattr(err, "message", None)
    if callable(message):
        message = message()
    return str(err if message is None else message)


def _error_reply(exc):
    text = str(exc)
    return {"op": "error",
            "error": "{}: {}".format(type(exc).__name__, text) if text else type(exc).__name__,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def _import_path(path, name, package_dir=None):
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[package_dir] if package_dir else None)
    if spec is None or spec.loader is None:
        raise ImportError("cannot import {}".format(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_py_module(path):
    """Imports an executor file under its own name, as Jina's py_modules import does: a name
    already taken by another module becomes `jinahub.<name>`, a package's __init__.py
    becomes the package."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem == "__init__":
        folder = os.path.dirname(path)
        return _import_path(path, os.path.basename(folder), package_dir=folder)
    existing = sys.modules.get(stem)
    if existing is not None:
        if os.path.abspath(getattr(existing, "__file__", "") or "") == path:
            return existing
        _note("{} shadows the module {!r}; it is imported as 'jinahub.{}'"
              .format(path, stem, stem))
        stem = "jinahub." + stem
    return _import_path(path, stem)


def _find_executor_class(name, modules, executor_base):
    found = None
    for module in modules:
        candidate = getattr(module, name, None)
        if isinstance(candidate, type) and issubclass(candidate, executor_base):
            found = candidate  # the last definition wins, as in Jina's class registry
    if found is None:
        # Defined in a module the py_modules imported without re-exporting it.
        stack = list(executor_base.__subclasses__())
        while stack:
            cls = stack.pop()
            if cls.__name__ == name:
                found = cls
            stack.extend(cls.__subclasses__())
    if found is None:
        raise LookupError("no Executor subclass named {!r} in py_modules {}"
                          .format(name, [getattr(m, "__file__", m) for m in modules]))
    return found


def _discover_handlers(executor, jina):
    """endpoint -> handler and endpoint -> batching settings, from the shim's or real
    Jina's structures: `requests` maps endpoints to functions (or to objects with `.fn`,
    or to method names), `dynamic_batching` is keyed by endpoint or by function name."""
    raw = getattr(executor, "requests", None)
    batching_raw = getattr(executor, "dynamic_batching", None)
    if not isinstance(raw, dict):
        # The executor skipped super().__init__(); read the decorators off the class.
        collect = getattr(jina, "_collect_handlers", None)
        raw, shim_batching = collect(type(executor)) if collect else ({}, {})
        if not isinstance(batching_raw, dict):
            batching_raw = shim_batching
    handlers = {}
    for endpoint, entry in raw.items():
        if isinstance(entry, str):
            fn = getattr(executor, entry)
        elif callable(entry):
            fn = entry
        else:
            fn = getattr(entry, "fn", None)
        if fn is not None:
            handlers[endpoint] = fn

    by_function = {}
    for endpoint, fn in handlers.items():
        by_function.setdefault(getattr(fn, "__name__", None), []).append(endpoint)
    batching = {}
    for key, settings in (batching_raw if isinstance(batching_raw, dict) else {}).items():
        if not isinstance(settings, dict):
            settings = vars(settings)
        endpoints = [key] if str(key).startswith("/") else by_function.get(key, [])
        size = settings.get("preferred_batch_size")
        if size is None:
            if endpoints:
                _note("@dynamic_batching on {} has no preferred_batch_size; batching is off "
                      "for it".format(", ".join(endpoints)))
            continue
        timeout = settings.get("timeout")
        for endpoint in endpoints:
            batching[endpoint] = {"preferred_batch_size": int(size),
                                  "timeout": int(10_000 if timeout is None else timeout)}
    return handlers, batching


def _load_shim(name):
    folder = os.path.join(_HERE, "shim", name)
    return _import_path(os.path.join(folder, "__init__.py"), name, package_dir=folder)


def main(argv=None):
    parser = argparse.ArgumentParser(description="ferroserve Python worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--shm", required=True)
    args = parser.parse_args(argv)

    shm = SharedFile(args.shm)
    conn = Connection(args.socket)
    worker = Worker(conn, shm)

    def on_sigterm(signum, frame):
        worker.finalise()
        # os._exit rather than SystemExit: user code mid-execute could swallow the
        # exception (a bare `except:`) and keep the worker alive after ferroserve asked
        # it to go.
        os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C in ferroserve's terminal reaches the whole process group. ferroserve owns the
    # worker's lifetime (it sends stop, or its socket closes), so the worker must not die
    # mid-request with a KeyboardInterrupt and skip the finaliser.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return worker.serve()


if __name__ == "__main__":
    sys.exit(main())
