"""ferroserve's TorchServe adapter: runs a TorchServe handler inside a ferroserve Python worker.

ferroserve loads this file as a Triton python-backend model.py (see ../PROTOCOL.md) for models
that come from a TorchServe archive (.mar). It reproduces what TorchServe 0.12's Python worker
does (ts/model_service_worker.py, ts/model_loader.py, ts/service.py and
ts/protocol/otf_message_handler.py): the handler string is resolved the same way, the handler
gets the same Context, request data is decoded by content type the same way, and each row's
answer is serialised the same way. When the `ts` package imports, its own Context, Service and
metrics classes are used, so handlers see exactly the objects TorchServe gives them; when it
does not (a handler module with a plain `handle(data, context)` and no `ts` import), small
stand-ins with the same attributes are used.

Configuration: Triton `parameters` in args["model_config"]:
  handler                 the manifest's handler ("image_classifier", "x.py", "x.py:fn",
                          "module:fn", "dir/x.py")
  model_dir               absolute path of the unpacked archive
  manifest                JSON text of MAR-INF/MANIFEST.json (read from model_dir when absent)
  batch_size              the model's batchSize (int text, default 1)
  gpu_id                  "" for CPU, else the GPU index
  model_name, model_version
  limit_max_image_pixels  "true"/"false" (default true)

Every request is one TorchServe row, carried by two BYTES [1] inputs:
  body  the raw HTTP body (or the concatenated values, see `meta`)
  meta  JSON {"headers": [[name, value], ...],
              "parameters": [{"name", "content_type" (str or null), "offset", "length"}]}
        each parameter's value is body[offset:offset + length]
and answered with:
  output        BYTES [1]  the row's answer, serialised as TorchServe does
  content_type  BYTES [1]  the handler's content type, else "application/json" (TorchServe's
                           frontend default)
  status        INT32 [1]  the row's HTTP status (200 unless the handler set one)
  headers       BYTES [1]  JSON object of the response headers the handler set, in order
A failure of the whole batch (what TorchServe answers with one code for every row) is a
per-request error "[CODE] MESSAGE", e.g. "[503] Prediction failed (ValueError: bad input)";
a request whose body/meta cannot be read fails alone, with "[500] ...".
"""

import importlib
import importlib.util
import inspect
import io
import json
import logging
import os
import sys
import time
import types
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

# Content type TorchServe's frontend answers with when the handler set none
# (RestJob.responseInference: HttpHeaderValues.APPLICATION_JSON).
DEFAULT_CONTENT_TYPE = "application/json"
# The TorchServe release whose behaviour this file reproduces; reported as server_version when
# the `ts` package itself is not installed.
TORCHSERVE_VERSION = "0.12.0"


def _note(message):
    sys.stderr.write("[ferroserve-torchserve] {}\n".format(message))
    sys.stderr.flush()


# --------------------------------------------------------------------------------------
# TorchServe's own pieces when they import, stand-ins otherwise
# --------------------------------------------------------------------------------------

def _import_ts():
    """(Service, PredictionException, MetricsCacheYamlImpl, ts version) or None."""
    try:
        import ts
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
        from ts.service import Service
        from ts.utils.util import PredictionException
    except ImportError:
        return None
    return Service, PredictionException, MetricsCacheYamlImpl, ts.__version__


class _RequestProcessor:
    """ts.context.RequestProcessor: one row's request headers and response status/headers."""

    def __init__(self, request_header):
        self._status_code = 200
        self._reason_phrase = None
        self._response_header = {}
        self._request_header = request_header

    def get_request_property(self, key):
        return self._request_header.get(key)

    def report_status(self, code, reason_phrase=None):
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self):
        return self._status_code

    def get_response_status_phrase(self):
        return self._reason_phrase

    def add_response_property(self, key, value):
        self._response_header[key] = value

    def get_response_headers(self):
        return self._response_header

    def get_response_header(self, key):
        return self._response_header.get(key)

    def get_request_properties(self):
        return self._request_header


class _Context:
    """ts.context.Context's attributes and methods, for handlers run without `ts`."""

    def __init__(self, model_name, model_dir, manifest, batch_size, gpu, server_version,
                 limit_max_image_pixels=True, metrics=None, model_yaml_config=None):
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": "MMS",
            "server_version": server_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids = None
        self.request_processor = None
        self._limit_max_image_pixels = True
        self.metrics = metrics
        self.model_yaml_config = model_yaml_config
        self.stopping_criteria = None
        self.header_key_sequence_id = os.getenv(
            "TS_REQUEST_SEQUENCE_ID", "ts_request_sequence_id")
        self.header_key_sequence_start = os.getenv(
            "TS_REQUEST_SEQUENCE_START", "ts_request_sequence_start")
        self.header_key_sequence_end = os.getenv(
            "TS_REQUEST_SEQUENCE_END", "ts_request_sequence_end")

    @property
    def system_properties(self):
        return self._system_properties

    def get_request_id(self, idx=0):
        if self.request_ids is None:
            return None
        return self.request_ids.get(idx)

    def get_request_header(self, idx, key):
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx):
        return self.request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx, value):
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx):
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx):
        return (self.request_processor[idx].get_response_status_code(),
                self.request_processor[idx].get_response_status_phrase())

    def set_response_status(self, code=200, phrase="", idx=0):
        if self.request_processor is not None and self.request_processor[idx] is not None:
            self.request_processor[idx].report_status(code, reason_phrase=phrase)

    def set_all_response_status(self, code=200, phrase=""):
        for processor in self.request_processor:
            processor.report_status(code, reason_phrase=phrase)

    def get_response_headers(self, idx):
        return self.request_processor[idx].get_response_headers()

    def set_response_header(self, idx, key, value):
        self.request_processor[idx].add_response_property(key, value)

    def get_sequence_id(self, idx):
        return self.request_processor[idx].get_request_property(self.header_key_sequence_id)

    def __eq__(self, other):
        return isinstance(other, _Context) and self.__dict__ == other.__dict__


class _NoMetrics:
    """Accepts every metrics call TorchServe's metrics cache accepts (add_time, add_counter,
    add_size, add_percent, add_error, add_metric, get_metric(...).add_or_update ...) and
    records nothing: ferroserve has its own metrics, and a handler must not fail for lack of
    TorchServe's."""

    request_ids = None
    model_name = None

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ignore

    def _ignore(self, *args, **kwargs):
        return self


class _NoStreaming:
    """Stands for the frontend socket (context.cl_socket) that TorchServe's streaming helper
    (send_intermediate_predict_response) writes to; ferroserve answers each request once."""

    def sendall(self, data):
        raise RuntimeError(
            "intermediate (streaming) responses are not supported by ferroserve: return the "
            "whole answer from handle()")


def _list_classes_from_module(module):
    """ts.utils.util.list_classes_from_module: the classes defined by the module itself."""
    return [member for _, member in inspect.getmembers(
        module, lambda m: inspect.isclass(m) and m.__module__ == module.__name__)]


# --------------------------------------------------------------------------------------
# captum: TorchServe's vision handlers import it at module level, only to explain
# --------------------------------------------------------------------------------------

_CAPTUM_HINT = ("TorchServe explanations (the 'explain' request header or /explanations) need "
                "captum, which is not installed in this Python: pip install captum")


def _missing_captum(exc):
    """True when an import failed, directly or through the errors it chained, because captum
    is not installed."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "captum":
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _install_captum_stand_in():
    """`pip install torchserve` does not bring captum, yet ts.torch_handler.vision_handler
    (the base of image_classifier, image_segmenter, object_detector) imports it. Its
    classes are only used for explanations, so a stand-in lets those handlers load and
    predict; anything that would actually use captum fails with an error saying so."""

    class _Missing:
        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, name):
            raise ModuleNotFoundError(_CAPTUM_HINT, name="captum")

    def module_getattr(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (_Missing,), {})

    for name in ("captum", "captum.attr"):
        module = types.ModuleType(name, "ferroserve stand-in: captum is not installed")
        module.__getattr__ = module_getattr
        module.__path__ = []
        module.__ferroserve_stand_in__ = True
        sys.modules[name] = module
    sys.modules["captum"].attr = sys.modules["captum.attr"]
    _note("captum is not installed: TorchServe's handlers load without it, explanations "
          "will fail")


# --------------------------------------------------------------------------------------
# Handler resolution (ts/model_loader.py, TsModelLoader.load)
# --------------------------------------------------------------------------------------

def _import_handler_module(handler):
    """(module, function name or None), as TsModelLoader does: first the handler as a module
    of its own ("x.py" → x, "dir/x.py:fn" → x, fn), then as one of TorchServe's built-in
    handlers (ts.torch_handler.<handler>)."""
    module_part, _, function_name = handler.partition(":")
    module_name = module_part[:-3] if module_part.endswith(".py") else module_part
    module_name = module_name.split("/")[-1]
    try:
        return importlib.import_module(module_name), (function_name if ":" in handler
                                                      else None)
    except ImportError as own_error:
        try:
            return importlib.import_module("." + handler, "ts.torch_handler"), None
        except ImportError as builtin_error:
            if _missing_captum(own_error) or _missing_captum(builtin_error):
                raise
            # TorchServe would report only the second failure ("No module named
            # 'ts.torch_handler.x'"), which hides why the handler's own module did not import.
            raise ImportError(
                "cannot load TorchServe handler {!r}: importing module {!r} failed ({}: {}), "
                "and it is not one of TorchServe's built-in handlers ({}: {})".format(
                    handler, module_name, type(own_error).__name__, own_error,
                    type(builtin_error).__name__, builtin_error)) from own_error


def _resolve_handler(handler):
    """(entry point, initialize function), as TsModelLoader.load: a module function (the
    named one, else `handle`) is called with (None, context) to initialise; otherwise the
    module's only class is instantiated and its handle/initialize are used."""
    try:
        module, function_name = _import_handler_module(handler)
    except ImportError as exc:
        if not _missing_captum(exc) or "captum" in sys.modules:
            raise
        _install_captum_stand_in()
        module, function_name = _import_handler_module(handler)
    function_name = function_name or "handle"

    if hasattr(module, function_name):
        entry_point = getattr(module, function_name)
        return entry_point, lambda context: entry_point(None, context)

    classes = _list_classes_from_module(module)
    if len(classes) != 1:
        raise ValueError(
            "TorchServe handler {!r}: module {} has no function {!r} and {} classes {}; "
            "expected one handler class or a function entry point".format(
                handler, module.__name__, function_name, len(classes),
                [c.__name__ for c in classes]))
    service = classes[0]()
    if not hasattr(service, "handle"):
        raise ValueError("TorchServe handler {!r}: class {} has no handle method".format(
            handler, classes[0].__name__))
    return service.handle, service.initialize


# --------------------------------------------------------------------------------------
# Request decoding (otf_message_handler._retrieve_input_data, Service.retrieve_data_for_inference)
# --------------------------------------------------------------------------------------

def _decode_value(value, content_type):
    """A parameter's value as TorchServe's worker hands it to the handler: JSON for exactly
    "application/json", text for "text*", the raw bytearray otherwise (and whenever decoding
    fails, or TS_DECODE_INPUT_REQUEST is set to something other than "true")."""
    decode = os.environ.get("TS_DECODE_INPUT_REQUEST")
    decode = decode is None or decode == "true"
    if decode and content_type == "application/json":
        try:
            return json.loads(value.decode("utf-8"))
        except Exception:
            logging.warning("Failed json decoding of input data. Forwarding encoded payload",
                            exc_info=True)
    elif decode and content_type.startswith("text"):
        try:
            return value.decode("utf-8")
        except Exception:
            logging.warning("Failed utf-8 decoding of input data. Forwarding encoded payload",
                            exc_info=True)
    return value


def _ts_request(request_id, body, meta):
    """One row in the form TorchServe's worker decodes from its frontend (requestId, headers,
    parameters with decoded values), from the `body` and `meta` inputs."""
    meta = json.loads(meta.decode("utf-8")) if meta else {}
    headers = []
    for pair in meta.get("headers") or []:
        name, value = pair
        headers.append({"name": str(name).encode("utf-8"),
                        "value": str(value).encode("utf-8")})
    parameters = []
    for p in meta.get("parameters") or []:
        offset, length = int(p.get("offset", 0)), int(p.get("length", 0))
        if offset < 0 or length < 0 or offset + length > len(body):
            raise ValueError("parameter {!r}: bytes [{}, {}) outside the {}-byte body".format(
                p.get("name"), offset, offset + length, len(body)))
        # The frontend sends a missing content type as an empty string.
        content_type = p.get("content_type") or ""
        # bytearray, not bytes: that is what TorchServe's worker reads off its socket, and
        # handlers test for it.
        value = bytearray(body[offset:offset + length])
        parameters.append({"name": str(p["name"]), "contentType": content_type,
                           "value": _decode_value(value, content_type)})
    return {"requestId": request_id.encode("utf-8"), "headers": headers,
            "parameters": parameters}


class _Headers(dict):
    """Request headers as TorchServe keeps them (exact names first), but found whatever their
    case: HTTP servers lowercase header names, while TorchServe hands them over as the client
    wrote them, so a handler asking for "X-Tag" must still find "x-tag"."""

    def get(self, key, default=None):
        if key in self:
            return self[key]
        if isinstance(key, str):
            lower = key.lower()
            for name, value in self.items():
                if isinstance(name, str) and name.lower() == lower:
                    return value
        return default


def _retrieve_data_for_inference(batch, processor_class):
    """Service.retrieve_data_for_inference for the stand-in context."""
    req_to_id_map, headers, input_batch = {}, [], []
    for batch_idx, request in enumerate(batch):
        model_in, model_in_headers = {}, {}
        for parameter in request["parameters"]:
            model_in[parameter["name"]] = parameter["value"]
            model_in_headers[parameter["name"]] = {"content-type": parameter["contentType"]}
        for h in request["headers"]:
            model_in_headers[h["name"].decode("utf-8")] = h["value"].decode("utf-8")
        headers.append(processor_class(_Headers(model_in_headers)))
        input_batch.append(model_in)
        req_to_id_map[batch_idx] = request["requestId"].decode("utf-8")
    return headers, input_batch, req_to_id_map


# --------------------------------------------------------------------------------------
# Response serialisation (otf_message_handler.create_predict_response)
# --------------------------------------------------------------------------------------

def _serialise(value):
    """One row's answer as TorchServe's worker sends it: bytes as they are, str as UTF-8, a
    torch.Tensor through torch.save, anything else as json.dumps(value, indent=2). Raises
    TypeError for what JSON cannot carry."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    if torch is not None and isinstance(value, torch.Tensor):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()
    return json.dumps(value, indent=2).encode("utf-8")


class _BatchFailure(Exception):
    """A TorchServe answer with one code for every row of the batch."""

    def __init__(self, code, message):
        super().__init__("[{}] {}".format(code, message))
        self.code = code


def _bytes_tensor(name, data):
    array = np.empty(1, dtype=np.object_)
    array[0] = data
    return pb_utils.Tensor(name, array)


def _param(parameters, key, default=None):
    value = parameters.get(key)
    if isinstance(value, dict):
        value = value.get("string_value")
    return default if value is None else value


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------

class TritonPythonModel:
    def initialize(self, args):
        # The worker imported this file as module "model"; TorchServe archives often carry
        # their own model.py (the manifest's modelFile), which BaseHandler imports by that
        # name. This module keeps working without its sys.modules entry.
        if sys.modules.get("model") is sys.modules.get(__name__):
            sys.modules.pop("model", None)

        config = json.loads(args["model_config"])
        params = config.get("parameters") or {}
        handler = _param(params, "handler")
        if not handler:
            raise ValueError("the torchserve adapter needs the `handler` parameter")
        model_dir = os.path.abspath(_param(params, "model_dir") or os.getcwd())
        self.model_name = (_param(params, "model_name") or args.get("model_name")
                           or config.get("name") or "model")
        batch_size = int(_param(params, "batch_size", "1") or 1)
        gpu_text = _param(params, "gpu_id", "")
        gpu = int(gpu_text) if gpu_text != "" else None
        limit_pixels = _param(params, "limit_max_image_pixels", "true").lower() != "false"

        manifest_text = _param(params, "manifest")
        if manifest_text:
            manifest = json.loads(manifest_text)
        else:
            manifest_file = os.path.join(model_dir, "MAR-INF", "MANIFEST.json")
            manifest = None
            if os.path.exists(manifest_file):
                with open(manifest_file) as f:
                    manifest = json.load(f)

        # TorchServe's frontend starts the worker in the model directory with
        # PYTHONPATH=<handler's folder, when the handler names one>:$PYTHONPATH:<model dir>;
        # the model directory goes first here so that the archive's modules win over
        # anything of the same name next to this adapter.
        os.chdir(model_dir)
        handler_dir = os.path.dirname(handler.split(":", 1)[0])
        for folder in ([model_dir] + ([os.path.join(model_dir, handler_dir)]
                                       if handler_dir else []))[::-1]:
            if folder in sys.path:
                sys.path.remove(folder)
            sys.path.insert(0, folder)

        _configure_logging()

        entry_point, initialize_fn = _resolve_handler(handler)

        ts_pieces = _import_ts()
        if ts_pieces is not None:
            Service, self.prediction_exception, MetricsCache, _ = ts_pieces
            metrics = _ts_metrics(MetricsCache, self.model_name)
            service = Service(self.model_name, model_dir, manifest, entry_point, gpu,
                              batch_size, limit_pixels, metrics)
            self.context = service.context
            self.retrieve = Service.retrieve_data_for_inference
        else:
            self.prediction_exception = None
            self.context = _Context(self.model_name, model_dir, manifest, batch_size, gpu,
                                    TORCHSERVE_VERSION, limit_pixels, _NoMetrics(),
                                    _model_yaml_config(model_dir, manifest))
            self.retrieve = lambda batch: _retrieve_data_for_inference(batch,
                                                                       _RequestProcessor)
        self.context.cl_socket = _NoStreaming()
        self.entry_point = entry_point
        self.handler = handler
        initialize_fn(self.context)

    def execute(self, requests):
        responses = [None] * len(requests)
        batch, rows = [], []
        for i, request in enumerate(requests):
            try:
                body = pb_utils.get_input_tensor_by_name(request, "body")
                meta = pb_utils.get_input_tensor_by_name(request, "meta")
                if body is None:
                    raise ValueError("the request has no `body` input")
                body = body.as_numpy().reshape(-1)[0]
                meta = meta.as_numpy().reshape(-1)[0] if meta is not None else b""
                request_id = request.request_id() or str(uuid.uuid4())
                batch.append(_ts_request(request_id, bytes(body), bytes(meta)))
                rows.append(i)
            except Exception as exc:
                # body/meta are built by ferroserve, not by the client: a server fault.
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    "[500] malformed request for the torchserve adapter ({})".format(
                        _one_line(exc))))
        if batch:
            try:
                answers = self._predict(batch)
            except _BatchFailure as failure:
                error = str(failure)
                answers = [pb_utils.InferenceResponse(error=pb_utils.TritonError(error))
                           for _ in batch]
            for i, answer in zip(rows, answers):
                responses[i] = answer
        return responses

    def _predict(self, batch):
        """Service.predict: run the handler on the whole batch, then one answer per row."""
        headers, input_batch, req_id_map = self.retrieve(batch)
        for processor in headers:
            # ts's RequestProcessor keeps a plain dict; ours finds lowercased names too.
            for attr in ("_request_header", "_request_property"):
                props = getattr(processor, attr, None)
                if isinstance(props, dict) and not isinstance(props, _Headers):
                    setattr(processor, attr, _Headers(props))
        context = self.context
        context.request_ids = req_id_map
        context.request_processor = headers
        metrics = context.metrics
        metrics.request_ids = req_id_map

        start = time.time()
        try:
            ret = self.entry_point(input_batch, context)
        except MemoryError:
            logging.error("System out of memory", exc_info=True)
            raise _BatchFailure(507, "Out of resources")
        except Exception as exc:
            if self.prediction_exception is not None and \
                    isinstance(exc, self.prediction_exception):
                logging.error("Prediction error", exc_info=True)
                raise _BatchFailure(exc.error_code, exc.message)
            detail = _one_line(exc)
            if "CUDA" in str(exc):
                # TorchServe's reading of "CUDA" errors: out of memory, or close to it.
                logging.error("CUDA out of memory", exc_info=True)
                raise _BatchFailure(507, "Out of resources ({})".format(detail))
            logging.warning("Invoking custom service failed (handler %r).", self.handler,
                            exc_info=True)
            raise _BatchFailure(503, "Prediction failed ({})".format(detail))

        if not isinstance(ret, list):
            raise _BatchFailure(503, "Invalid model predict output: handler {!r} returned {} "
                                     "for a batch of {}, not a list".format(
                                         self.handler, type(ret).__name__, len(input_batch)))
        if len(ret) != len(input_batch):
            raise _BatchFailure(503, "number of batch response mismatched: handler {!r} "
                                     "returned {} answers for {} requests".format(
                                         self.handler, len(ret), len(input_batch)))
        metrics.add_time("PredictionTime", round((time.time() - start) * 1000, 2))

        answers = []
        for idx in range(len(ret)):
            try:
                output = _serialise(ret[idx])
            except TypeError as exc:
                logging.warning("Unable to serialize model output.", exc_info=True)
                raise _BatchFailure(503, "Unsupported model output data type. (row {}: {})"
                                    .format(idx, exc))
            content_type = context.get_response_content_type(idx)
            code, _phrase = context.get_response_status(idx)
            response_headers = {str(k): str(v)
                                for k, v in context.get_response_headers(idx).items()}
            answers.append(pb_utils.InferenceResponse(output_tensors=[
                _bytes_tensor("output", output),
                _bytes_tensor("content_type",
                              (content_type or DEFAULT_CONTENT_TYPE).encode("utf-8")),
                pb_utils.Tensor("status", np.array([200 if code is None else int(code)],
                                                   dtype=np.int32)),
                _bytes_tensor("headers", json.dumps(response_headers).encode("utf-8")),
            ]))
        return answers


def _one_line(exc):
    text = " ".join(str(exc).split())
    return "{}: {}".format(type(exc).__name__, text) if text else type(exc).__name__


def _configure_logging():
    """TorchServe's worker logs INFO and up to stdout, message only; handlers rely on
    logger.info being seen. Its per-request metric lines (for TorchServe's frontend to
    collect) would only be noise in ferroserve's log, so that logger is kept to warnings."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stdout, format="%(message)s", level=logging.INFO)
    logging.getLogger("ts.metrics.caching_metric").setLevel(logging.WARNING)


def _ts_metrics(metrics_cache_class, model_name):
    """TorchServe's metrics cache, configured from ts/configs/metrics.yaml as its frontend
    does by default; a no-op one if that file is missing."""
    import ts

    path = os.path.join(os.path.dirname(ts.__file__), "configs", "metrics.yaml")
    if not os.path.exists(path):
        return _NoMetrics()
    metrics = metrics_cache_class(config_file_path=path)
    metrics.initialize_cache()
    metrics.model_name = model_name
    # TsModelLoader gives load-time metrics a request id of their own.
    metrics.set_request_ids(str(uuid.uuid4()))
    return metrics


def _model_yaml_config(model_dir, manifest):
    """context.model_yaml_config as ts.service.Service reads it: the manifest's configFile."""
    config_file = ((manifest or {}).get("model") or {}).get("configFile")
    if not config_file:
        return {}
    import yaml  # TorchServe depends on PyYAML; the archive's config cannot be read without it

    with open(os.path.join(model_dir, config_file)) as f:
        return yaml.safe_load(f) or {}
