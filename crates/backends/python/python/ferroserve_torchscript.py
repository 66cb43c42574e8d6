"""ferroserve's TorchScript runner for Python workers.

ferroserve serves TorchScript models through ONNX Runtime when torchscript_export.py can export
them; a model it cannot export (an operator ONNX lacks, outputs ONNX Runtime answers
differently) runs here instead, in TorchScript itself, loaded by ferroserve's Python worker as a
Triton python-backend model.py (see ../PROTOCOL.md).

Configuration: Triton `parameters` in args["model_config"]:
  model_file  absolute path of the TorchScript file
  inputs      JSON list of input names, in the order forward() takes them
  outputs     JSON list of output names, in the order forward() returns them
  batched     "1": the model batches along dim 0, so the requests of a dynamic batch are
              concatenated, run once, and the outputs split back by each request's rows;
              "0": each request runs alone
  device      "cpu" or "cuda" (the worker's model_instance_device_id picks the GPU)
Outputs keep torch's dtype (float32 is FP32, int64 INT64, bool BOOL ...). forward() may
return a tensor or a tuple/list of tensors.
"""

import json

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


def _param(parameters, key, default=None):
    value = parameters.get(key)
    if isinstance(value, dict):
        value = value.get("string_value")
    return default if value is None else value


def _one_line(exc):
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and "TorchScript interpreter" in lines[0]:
        # Both tracebacks the interpreter prints precede the error itself, on the last line.
        return lines[-1]
    text = " ".join(lines)
    return "{}: {}".format(type(exc).__name__, text) if text else type(exc).__name__


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters") or {}
        model_file = _param(params, "model_file")
        if not model_file:
            raise ValueError("the torchscript runner needs the `model_file` parameter")
        self.input_names = json.loads(_param(params, "inputs", "[]"))
        self.output_names = json.loads(_param(params, "outputs", "[]"))
        if not self.input_names:
            raise ValueError("the torchscript runner needs the `inputs` parameter (JSON list)")
        self.batched = _param(params, "batched", "1") == "1"

        device = _param(params, "device", "cpu")
        if device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("the model is configured for cuda, but torch sees no GPU")
            device = "cuda:{}".format(int(args.get("model_instance_device_id") or 0))
        self.device = torch.device(device)

        self.model = torch.jit.load(model_file, map_location=self.device)
        # Served as Triton's libtorch backend and TorchServe serve it: dropout off, batch norm
        # on its running statistics.
        self.model.eval()

    # -- one forward ------------------------------------------------------------------------
    def _forward(self, tensors):
        """Runs the model on the given input tensors (on CPU); returns numpy outputs, one per
        output name."""
        with torch.inference_mode():
            result = self.model(*[t.to(self.device) for t in tensors])
        if isinstance(result, torch.Tensor):
            result = [result]
        elif not (isinstance(result, (tuple, list))
                  and all(isinstance(t, torch.Tensor) for t in result)):
            raise TypeError("the model returned {}; only a tensor or a tuple/list of tensors "
                            "can be served".format(type(result).__name__))
        if len(result) != len(self.output_names):
            raise ValueError("the model returned {} outputs for the {} declared ({})".format(
                len(result), len(self.output_names), ", ".join(self.output_names)))
        arrays = []
        for name, tensor in zip(self.output_names, result):
            tensor = tensor.detach().cpu()
            if tensor.dtype == torch.bfloat16:
                raise TypeError("output {} is bfloat16, which the Python backend cannot "
                                "return".format(name))
            arrays.append(tensor.numpy())
        return arrays

    def _inputs_of(self, request):
        tensors = []
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError("the request has no input {}".format(name))
            array = tensor.as_numpy()
            if array.dtype == np.object_:
                raise TypeError("input {} is BYTES, which a TorchScript model cannot take"
                                .format(name))
            # Inputs are read-only views of the request's buffers, which torch will not wrap
            # without a warning; a copy is needed anyway to hand them to the model.
            tensors.append(torch.from_numpy(np.array(array, copy=True)))
        return tensors

    @staticmethod
    def _respond(names, arrays):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(name, array) for name, array in zip(names, arrays)])

    @staticmethod
    def _error(exc):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(_one_line(exc)))

    # -- execute ----------------------------------------------------------------------------
    def execute(self, requests):
        responses = [None] * len(requests)
        inputs = {}
        for i, request in enumerate(requests):
            try:
                inputs[i] = self._inputs_of(request)
            except Exception as exc:
                responses[i] = self._error(exc)

        if not self.batched:
            for i, tensors in inputs.items():
                try:
                    responses[i] = self._respond(self.output_names, self._forward(tensors))
                except Exception as exc:
                    responses[i] = self._error(exc)
            return responses

        # Requests whose inputs agree on everything but the row count run together; a batch
        # whose requests differ (say, another sequence length) runs as several groups rather
        # than failing.
        groups = {}
        for i, tensors in inputs.items():
            if any(t.dim() == 0 for t in tensors) or \
                    len({t.shape[0] for t in tensors}) != 1:
                responses[i] = self._error(ValueError(
                    "a batched model's inputs need the same number of rows (dim 0); got "
                    "shapes {}".format(", ".join(str(list(t.shape)) for t in tensors))))
                continue
            key = tuple((tuple(t.shape[1:]), t.dtype) for t in tensors)
            groups.setdefault(key, []).append(i)

        for members in groups.values():
            rows = [inputs[i][0].shape[0] for i in members]
            try:
                if len(members) == 1:
                    joined = inputs[members[0]]
                else:
                    joined = [torch.cat([inputs[i][k] for i in members])
                              for k in range(len(self.input_names))]
                arrays = self._forward(joined)
                total = sum(rows)
                for name, array in zip(self.output_names, arrays):
                    if array.ndim == 0 or array.shape[0] != total:
                        raise ValueError(
                            "output {} has shape {} for {} input rows: the model does not "
                            "keep the batch dimension, so it cannot be served batched".format(
                                name, list(array.shape), total))
            except Exception as exc:
                for i in members:
                    responses[i] = self._error(exc)
                continue
            start = 0
            for i, count in zip(members, rows):
                responses[i] = self._respond(
                    self.output_names, [a[start:start + count] for a in arrays])
                start += count
        return responses
