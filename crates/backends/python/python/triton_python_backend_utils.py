"""The part of Triton's `triton_python_backend_utils` that model.py files use.

ferroserve's Python worker puts this module on sys.path so that unmodified Triton
`model.py` files (`import triton_python_backend_utils as pb_utils`) run under ferroserve.
Names, signatures and return values follow Triton's python_backend; behaviour that only
makes sense inside Triton (BLS, decoupled response senders, GPU tensors) raises
`TritonModelException` with a message that says it is not supported.

numpy is imported lazily: the worker imports this module before any tensor exists, and the
ferroserve worker itself must start with the standard library only.
"""

import enum
import json
import struct
import sys

# Triton's TRITONSERVER_RequestFlag / TRITONSERVER_ResponseCompleteFlag values.
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

_np_module = None


def _np():
    global _np_module
    if _np_module is None:
        import numpy

        _np_module = numpy
    return _np_module


# Triton's TRITONSERVER_DataType enum values; numpy_to_triton_type / triton_to_numpy_type
# speak these integers, as in Triton.
_TRITON_TYPE_CODES = {
    "BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7,
    "INT32": 8, "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12, "BYTES": 13, "BF16": 14,
}

_TRITON_STRING_TO_NUMPY = None


def _string_to_numpy_table():
    global _TRITON_STRING_TO_NUMPY
    if _TRITON_STRING_TO_NUMPY is None:
        np = _np()
        _TRITON_STRING_TO_NUMPY = {
            # Triton maps TYPE_BOOL to the builtin bool, not np.bool_; keep it.
            "TYPE_BOOL": bool,
            "TYPE_UINT8": np.uint8,
            "TYPE_UINT16": np.uint16,
            "TYPE_UINT32": np.uint32,
            "TYPE_UINT64": np.uint64,
            "TYPE_INT8": np.int8,
            "TYPE_INT16": np.int16,
            "TYPE_INT32": np.int32,
            "TYPE_INT64": np.int64,
            "TYPE_FP16": np.float16,
            "TYPE_FP32": np.float32,
            "TYPE_FP64": np.float64,
            "TYPE_STRING": np.object_,
        }
    return _TRITON_STRING_TO_NUMPY


def __getattr__(name):
    # Module-level TRITON_STRING_TO_NUMPY exists in Triton; build it only when asked so that
    # importing this module does not import numpy.
    if name == "TRITON_STRING_TO_NUMPY":
        return _string_to_numpy_table()
    raise AttributeError("module {!r} has no attribute {!r}".format(__name__, name))


def triton_string_to_numpy(triton_type_string):
    return _string_to_numpy_table()[triton_type_string]


def triton_to_numpy_type(data_type):
    np = _np()
    table = {
        1: np.bool_, 2: np.uint8, 3: np.uint16, 4: np.uint32, 5: np.uint64, 6: np.int8,
        7: np.int16, 8: np.int32, 9: np.int64, 10: np.float16, 11: np.float32,
        12: np.float64, 13: np.object_,
    }
    return table.get(data_type)


def numpy_to_triton_type(data_type):
    np = _np()
    if data_type == np.object_ or data_type == np.bytes_:
        return 13
    try:
        name = _triton_name_of_dtype(np.dtype(data_type))
    except (TypeError, TritonModelException):
        return None
    return _TRITON_TYPE_CODES.get(name)


_DTYPE_NAME_CACHE = {}


def _triton_name_of_dtype(dt):
    """Triton datatype name (as on the wire) of a numpy dtype; raises for unsupported ones.
    Cached because every Tensor() built in execute() asks."""
    name = _DTYPE_NAME_CACHE.get(dt)
    if name is None:
        name = _DTYPE_NAME_CACHE[dt] = _compute_triton_name(dt)
    return name


def _compute_triton_name(dt):
    kind, size = dt.kind, dt.itemsize
    if kind == "b":
        return "BOOL"
    if kind == "u" and size in (1, 2, 4, 8):
        return "UINT%d" % (size * 8)
    if kind == "i" and size in (1, 2, 4, 8):
        return "INT%d" % (size * 8)
    if kind == "f" and size in (2, 4, 8):
        return "FP%d" % (size * 8)
    if kind in ("O", "S"):
        return "BYTES"
    if kind == "U":
        # Same refusal and wording as Triton: np.str_ arrays are not accepted.
        raise TritonModelException(
            "Tensor dtype used for numpy_array is not support by Python backend. "
            "Please use np.object_ instead."
        )
    if dt.name == "bfloat16":  # ml_dtypes' bfloat16 (kind 'V')
        raise TritonModelException("BF16 is not supported by the Python backend")
    raise TritonModelException(
        "numpy dtype {} is not supported by the Python backend".format(dt)
    )


def serialize_byte_tensor(input_tensor):
    """Triton's BYTES serialisation (u32 LE length + bytes per element, C order).

    Returns, like current Triton, a 0-d np.object_ array holding the bytes, or None for an
    empty tensor or a non-bytes dtype.
    """
    np = _np()
    if input_tensor.size == 0:
        return None
    if input_tensor.dtype != np.object_ and input_tensor.dtype.type != np.bytes_:
        return None
    return np.asarray(_serialize_bytes(input_tensor), dtype=np.object_)


def _serialize_bytes(array):
    pack = struct.Struct("<I").pack
    parts = []
    for item in array.ravel(order="C").tolist():
        if isinstance(item, bytes):
            data = item
        elif isinstance(item, (bytearray, memoryview)):
            data = bytes(item)
        else:
            # Triton encodes every non-bytes element through str().
            data = str(item).encode("utf-8")
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor):
    """Inverse of serialize_byte_tensor: a 1-D np.object_ array of bytes."""
    np = _np()
    unpack = struct.Struct("<I").unpack_from
    view = memoryview(encoded_tensor).cast("B")
    items = []
    offset = 0
    while offset < len(view):
        (length,) = unpack(view, offset)
        offset += 4
        items.append(bytes(view[offset:offset + length]))
        offset += length
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


class TritonModelException(Exception):
    """Raised by utilities (and by models) for non-success status, as in Triton."""

    def __init__(self, msg=None):
        super().__init__(msg)
        self._msg = msg

    def __str__(self):
        return super().__str__() if self._msg is None else str(self._msg)

    def message(self):
        return self._msg


class TritonError:
    """Error carried by an InferenceResponse; `code` defaults to INTERNAL as in Triton."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message, code=None):
        self._msg = message
        self._code = TritonError.INTERNAL if code is None else code

    def __str__(self):
        return str(self._msg)

    def __repr__(self):
        return "TritonError({!r}, code={})".format(self._msg, self._code)

    def message(self):
        return self._msg

    def code(self):
        return self._code


class _CapsuleHolder:
    """Lets np.from_dlpack accept a bare DLPack capsule (it wants an object with __dlpack__)."""

    def __init__(self, capsule):
        self._capsule = capsule

    def __dlpack__(self, stream=None):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU


class Tensor:
    """A named CPU tensor backed by a numpy array (ferroserve has no GPU tensors here)."""

    def __init__(self, name, numpy_array, triton_dtype=None):
        np = _np()
        if not isinstance(numpy_array, np.ndarray):
            numpy_array = np.asarray(numpy_array)
        if triton_dtype is not None:
            # Triton reinterprets the bytes when an explicit datatype code is given.
            wanted = triton_to_numpy_type(triton_dtype)
            if wanted is None:
                raise TritonModelException(
                    "BF16 is not supported by the Python backend"
                    if triton_dtype == 14 else "unknown Triton datatype {}".format(triton_dtype)
                )
            if numpy_array.dtype != wanted:
                numpy_array = numpy_array.view(wanted)
        # Validate now so that a bad dtype surfaces inside the user's execute(), as in Triton.
        self._datatype = _triton_name_of_dtype(numpy_array.dtype)
        self._name = name
        self._array = numpy_array

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array

    def triton_dtype(self):
        return _TRITON_TYPE_CODES[self._datatype]

    def shape(self):
        return list(self._array.shape)

    def is_cpu(self):
        return True

    def to_dlpack(self):
        if self._datatype == "BYTES":
            raise TritonModelException("DLPack does not support BYTES tensors")
        array = self._array
        if not hasattr(array, "__dlpack__"):
            raise TritonModelException("to_dlpack needs numpy >= 1.22")
        if not array.flags.writeable:
            # numpy refuses to export read-only arrays through DLPack.
            array = array.copy()
        return array.__dlpack__()

    @staticmethod
    def from_dlpack(name, dlpack_object):
        np = _np()
        obj = dlpack_object
        if type(obj).__name__ == "PyCapsule":
            obj = _CapsuleHolder(obj)
        try:
            array = np.from_dlpack(obj)
        except (AttributeError, BufferError, RuntimeError, TypeError):
            # e.g. a CUDA torch tensor: bring it to host memory the ordinary way.
            if hasattr(dlpack_object, "detach"):
                array = dlpack_object.detach().cpu().numpy()
            else:
                raise
        return Tensor(name, array)

    def __repr__(self):
        return "Tensor(name={!r}, datatype={}, shape={})".format(
            self._name, self._datatype, list(self._array.shape))


class InferenceRequest:
    """The request object handed to execute().

    The worker builds these; user code may construct one too, but executing it (BLS) is not
    supported by ferroserve.
    """

    def __init__(self, request_id="", correlation_id=0, inputs=None,
                 requested_output_names=None, model_name="", model_version=-1, flags=0,
                 timeout=0, preferred_memory=None, trace=None, parameters=None):
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._inputs = list(inputs) if inputs is not None else []
        self._requested_output_names = (
            list(requested_output_names) if requested_output_names is not None else [])
        self._model_name = model_name
        self._model_version = model_version
        self._flags = flags
        self._timeout = timeout
        # Triton hands parameters to the model as a JSON string.
        if parameters is None:
            parameters = "{}"
        elif not isinstance(parameters, str):
            parameters = json.dumps(parameters)
        self._parameters = parameters

    def inputs(self):
        return self._inputs

    def request_id(self):
        return self._request_id

    def correlation_id(self):
        return self._correlation_id

    def requested_output_names(self):
        return self._requested_output_names

    def flags(self):
        return self._flags

    def timeout(self):
        return self._timeout

    def parameters(self):
        return self._parameters

    def model_name(self):
        return self._model_name

    def is_cancelled(self):
        return False

    def get_response_sender(self):
        raise TritonModelException(
            "decoupled mode (get_response_sender) is not supported by ferroserve's "
            "Python backend; return one InferenceResponse per request from execute()")

    def set_release_flags(self, flags):
        raise TritonModelException(
            "request rescheduling is not supported by ferroserve's Python backend")

    def exec(self, *args, **kwargs):
        raise TritonModelException(
            "BLS (InferenceRequest.exec) is not supported by ferroserve's Python backend")

    async def async_exec(self, *args, **kwargs):
        self.exec()


class InferenceResponse:
    """One response per request: output tensors, or an error."""

    def __init__(self, output_tensors=None, error=None, parameters=None):
        if output_tensors is None:
            output_tensors = []
        if not isinstance(output_tensors, list):
            raise TritonModelException('"output_tensors" must be a list.')
        self._output_tensors = output_tensors
        self._err = error
        self._parameters = parameters

    def output_tensors(self):
        return self._output_tensors

    def has_error(self):
        return self._err is not None

    def error(self):
        return self._err


def get_input_tensor_by_name(inference_request, name):
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response, name):
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config, name):
    for props in model_config.get("input", ()):
        if props.get("name") == name:
            return props
    return None


def get_output_config_by_name(model_config, name):
    for props in model_config.get("output", ()):
        if props.get("name") == name:
            return props
    return None


class LogLevel(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


class Logger:
    """Triton's model logger; here every line goes to stderr, which ferroserve logs."""

    INFO = LogLevel.INFO
    WARNING = LogLevel.WARNING
    ERROR = LogLevel.ERROR
    VERBOSE = LogLevel.VERBOSE

    @staticmethod
    def log(message, level=LogLevel.INFO):
        try:
            label = LogLevel(level).name
        except ValueError:
            label = str(level)
        sys.stderr.write("[{}] {}\n".format(label, message))
        sys.stderr.flush()

    @staticmethod
    def log_info(message):
        Logger.log(message, LogLevel.INFO)

    @staticmethod
    def log_warn(message):
        Logger.log(message, LogLevel.WARNING)

    @staticmethod
    def log_error(message):
        Logger.log(message, LogLevel.ERROR)

    @staticmethod
    def log_verbose(message):
        Logger.log(message, LogLevel.VERBOSE)
