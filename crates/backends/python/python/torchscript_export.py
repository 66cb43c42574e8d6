"""Exports a TorchScript model to ONNX for ferroserve, with samples to check the export.

    python torchscript_export.py --model M.pt --out DIR \\
        --input NAME:DTYPE:D1,D2,... [--input ...] [--output NAME ...] [--opset 17]

DTYPE is a Triton datatype (FP32, FP16, FP64, BF16, INT64, INT32, INT16, INT8, UINT8, BOOL, ...);
dims leave out the batch dimension, and -1 dims become 8 in the samples. Without --output the
outputs are named OUTPUT__0, OUTPUT__1, ... (Triton's pytorch_libtorch convention).

ferroserve runs this once when it loads a TorchScript model. It writes
  DIR/model.onnx                 the model, batch dimension dynamic on every input and output
  DIR/samples/<k>/<name>.bin     two sample batches (2 and 3 rows): the inputs and what
                                 TorchScript answers, raw little-endian, row-major
  DIR/report.json                {"ok", "reason" (when not ok), "opset", "inputs", "outputs",
                                  "samples": [{"inputs": [...], "outputs": [...]}]}
and exits 0 whenever report.json was written: a model that cannot be exported is ok=false
with the reason, and ferroserve then runs it with TorchScript itself. ferroserve runs the
samples through ONNX Runtime and compares; this script does not judge the numbers.
"""

import argparse
import json
import os
import sys
import traceback
import warnings

# torch announces deprecations (torch.jit.*, the TorchScript-based ONNX exporter) on stderr,
# which ferroserve logs; they say nothing about this model.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
# The exporter's note that a scripted forward has no Python signature to read: expected for
# every TorchScript model, as the inputs are given positionally.
warnings.filterwarnings("ignore", message="no signature found for")

SAMPLE_BATCHES = (2, 3)
FREE_DIM = 8  # what a -1 dim becomes in the samples
SEED = 0


class ExportFailure(Exception):
    """The model cannot be served through ONNX; the message goes into the report."""


def _torch_dtypes(torch):
    return {
        "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8, "INT16": torch.int16,
        "INT32": torch.int32, "INT64": torch.int64, "FP16": torch.float16,
        "FP32": torch.float32, "FP64": torch.float64, "BF16": torch.bfloat16,
        "UINT16": getattr(torch, "uint16", None), "UINT32": getattr(torch, "uint32", None),
        "UINT64": getattr(torch, "uint64", None),
    }


def _triton_name(torch, dtype):
    for name, candidate in _torch_dtypes(torch).items():
        if candidate is not None and candidate == dtype:
            return name
    raise ExportFailure("output dtype {} has no Triton datatype".format(dtype))


def _parse_input(text):
    parts = text.split(":")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(
            "--input wants NAME:DTYPE:D1,D2,... (got {!r})".format(text))
    name, datatype, dims_text = parts
    try:
        dims = [int(d) for d in dims_text.split(",") if d.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError("--input {!r}: dims are not integers".format(text))
    if any(d == 0 or d < -1 for d in dims):
        raise argparse.ArgumentTypeError(
            "--input {!r}: dims must be positive or -1".format(text))
    return {"name": name, "datatype": datatype.upper(), "dims": dims}


def _one_line(exc, limit=1000):
    """The exception as one line for the report (ferroserve logs it in a WARN line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and "TorchScript interpreter" in lines[0]:
        # The interpreter prints both tracebacks (serialised and original code) before the
        # error itself, which is the last line and carries its own type.
        text = lines[-1]
        return text if len(text) <= limit else text[:limit] + "..."
    text = " ".join(lines)
    if len(text) > limit:
        text = text[:limit] + "..."
    return "{}: {}".format(type(exc).__name__, text) if text else type(exc).__name__


def _sample_inputs(torch, inputs, batch, generator):
    """Seeded sample tensors: floats ~N(0, 1), integers in [0, 10), booleans at random."""
    tensors = []
    dtypes = _torch_dtypes(torch)
    for spec in inputs:
        dtype = dtypes.get(spec["datatype"])
        if dtype is None:
            raise ExportFailure("input {}: datatype {} cannot be a TorchScript tensor".format(
                spec["name"], spec["datatype"]))
        shape = [batch] + [FREE_DIM if d == -1 else d for d in spec["dims"]]
        if dtype.is_floating_point:
            t = torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)
        elif dtype == torch.bool:
            t = torch.randint(0, 2, shape, generator=generator) == 1
        else:
            t = torch.randint(0, 10, shape, generator=generator, dtype=torch.int64).to(dtype)
        tensors.append(t)
    return tensors


def _flatten_outputs(torch, result):
    """The model's answer as a list of tensors: a tensor, or a tuple/list of them."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in result):
        return list(result)
    raise ExportFailure("the model returns {}; only a tensor or a tuple/list of tensors can be "
                        "served".format(type(result).__name__))


def _write_raw(torch, tensor, path):
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        # numpy has no bfloat16: write the same two bytes per element through int16.
        data = tensor.view(torch.int16).numpy()
    else:
        data = tensor.numpy()
    # astype('<…') makes the bytes little-endian whatever the host's byte order.
    with open(path, "wb") as f:
        f.write(data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes())


def _export(args, report):
    import torch

    torch.manual_seed(SEED)
    try:
        model = torch.jit.load(args.model, map_location="cpu")
    except Exception as exc:
        raise ExportFailure("cannot load {} as TorchScript: {}".format(args.model,
                                                                       _one_line(exc)))
    # TorchServe and Triton serve models in eval mode (dropout off, batch norm frozen).
    model.eval()

    # Run TorchScript on both sample batches first: the reference answers, the output count
    # when --output is absent, and a check that every output keeps the batch dimension
    # (ferroserve batches requests along it).
    generator = torch.Generator().manual_seed(SEED)
    samples = []
    for batch in SAMPLE_BATCHES:
        inputs = _sample_inputs(torch, args.input, batch, generator)
        try:
            with torch.inference_mode():
                outputs = _flatten_outputs(torch, model(*inputs))
        except ExportFailure:
            raise
        except Exception as exc:
            raise ExportFailure("TorchScript fails on a sample batch of {}: {}".format(
                batch, _one_line(exc)))
        samples.append((batch, inputs, outputs))

    names = args.output or ["OUTPUT__{}".format(i) for i in range(len(samples[0][2]))]
    for batch, _, outputs in samples:
        if len(outputs) != len(names):
            raise ExportFailure("the model returns {} outputs, {} are declared ({})".format(
                len(outputs), len(names), ", ".join(names)))
        for name, tensor in zip(names, outputs):
            if tensor.dim() == 0 or tensor.shape[0] != batch:
                raise ExportFailure(
                    "output {} has shape {} for a batch of {}: it does not keep the batch "
                    "dimension".format(name, list(tensor.shape), batch))
    report["outputs"] = [{"name": n, "datatype": _triton_name(torch, t.dtype)}
                         for n, t in zip(names, samples[0][2])]

    input_names = [spec["name"] for spec in args.input]
    onnx_path = os.path.join(args.out, "model.onnx")
    try:
        with torch.no_grad():
            torch.onnx.export(
                model, tuple(samples[0][1]), onnx_path, dynamo=False,
                input_names=input_names, output_names=names,
                dynamic_axes={n: {0: "batch"} for n in input_names + names},
                opset_version=args.opset, do_constant_folding=True)
    except Exception as exc:
        raise ExportFailure("torch.onnx.export failed: {}".format(_one_line(exc)))
    _check_onnx(onnx_path)

    report["samples"] = []
    for k, (batch, inputs, outputs) in enumerate(samples):
        folder = os.path.join(args.out, "samples", str(k))
        os.makedirs(folder, exist_ok=True)
        entry = {"inputs": [], "outputs": []}
        for kind, tensors, tensor_names in (("inputs", inputs, input_names),
                                            ("outputs", outputs, names)):
            for name, tensor in zip(tensor_names, tensors):
                file_name = "{}.{}.bin".format(kind[:-1], _safe(name))
                _write_raw(torch, tensor, os.path.join(folder, file_name))
                entry[kind].append({"name": name,
                                    "datatype": _triton_name(torch, tensor.dtype),
                                    "shape": list(tensor.shape),
                                    "file": os.path.join("samples", str(k), file_name)})
        report["samples"].append(entry)


def _check_onnx(path):
    """onnx's structural check, when onnx is installed: a graph ONNX Runtime would refuse is
    better reported here, with the reason."""
    try:
        import onnx
    except ImportError:
        return
    try:
        onnx.checker.check_model(path)
    except Exception as exc:
        raise ExportFailure("the exported model is not valid ONNX: {}".format(_one_line(exc)))


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="TorchScript file (.pt)")
    parser.add_argument("--out", required=True, help="folder for model.onnx, samples, report")
    parser.add_argument("--input", action="append", type=_parse_input, required=True,
                        help="NAME:DTYPE:D1,D2,... (no batch dim; repeat in the model's order)")
    parser.add_argument("--output", action="append", default=[],
                        help="output name, in the model's order (repeatable)")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)

    try:
        import torch  # noqa: F401
    except ImportError as exc:
        # The interpreter's fault, not the model's: no report, so ferroserve tries again on
        # the next load instead of remembering a failed export.
        print("torchscript_export: this Python has no torch ({})".format(_one_line(exc)),
              file=sys.stderr)
        return 3

    os.makedirs(args.out, exist_ok=True)
    report = {"ok": False, "opset": args.opset, "inputs": args.input, "outputs": [],
              "samples": []}
    try:
        _export(args, report)
        report["ok"] = True
    except ExportFailure as exc:
        report["reason"] = str(exc)
    except Exception as exc:
        # Anything else is a bug here or in torch; the model can still run in TorchScript.
        traceback.print_exc()
        report["reason"] = _one_line(exc)
    if not report["ok"]:
        report["samples"] = []
        # A failed export may leave a partial file behind; it must not be mistaken for one.
        for leftover in ("model.onnx",):
            path = os.path.join(args.out, leftover)
            if os.path.exists(path):
                os.remove(path)
    # Written last and renamed into place: a report.json that exists is complete.
    tmp = os.path.join(args.out, "report.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, os.path.join(args.out, "report.json"))
    print("torchscript_export: {}".format("ok" if report["ok"] else
                                          "not exported: " + report["reason"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
