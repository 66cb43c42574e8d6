"""NVIDIA's tritonclient[grpc] against ferroserve's gRPC service: nobody here wrote the client."""
import queue

import grpc
import minilm
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException


@pytest.fixture
def client(grpc_server):
    c = grpcclient.InferenceServerClient(url=grpc_server)
    yield c
    c.close()


def simple_inputs(a, b):
    inputs = [grpcclient.InferInput("INPUT0", list(a.shape), "INT32"), grpcclient.InferInput("INPUT1", list(b.shape), "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def test_metadata_config_and_index(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "ferroserve"
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    meta = client.get_model_metadata("simple", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert [i["name"] for i in meta["inputs"]] == ["INPUT0", "INPUT1"]
    assert meta["inputs"][0]["datatype"] == "INT32"
    assert [int(d) for d in meta["inputs"][0]["shape"]] == [-1, 16]

    config = client.get_model_config("simple", as_json=True)["config"]
    assert config["name"] == "simple"
    assert config["input"][0]["data_type"] == "TYPE_INT32"
    assert [int(d) for d in config["input"][0]["dims"]] == [-1, 16]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"

    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} == {"simple", "identity", "string_identity", "minilm", "tiny-bert-classifier"}
    assert all(m["state"] == "READY" for m in index)


def test_simple_infer_raw_contents_and_output_subset(client):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    result = client.infer("simple", simple_inputs(a, b), request_id="g1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response().id == "g1"

    only = client.infer("simple", simple_inputs(a, b), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")], model_version="1")
    assert only.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(only.as_numpy("OUTPUT1"), a - b)


def test_typed_contents_through_the_raw_stub(grpc_server):
    """tritonclient always sends raw_input_contents; its generated stub sends typed contents."""
    with grpc.insecure_channel(grpc_server) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = service_pb2.ModelInferRequest(model_name="simple", id="typed")
        for name, values in [("INPUT0", list(range(16))), ("INPUT1", [2] * 16)]:
            t = req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            t.contents.int_contents.extend(values)
        resp = stub.ModelInfer(req)
        assert resp.id == "typed"
        out = {o.name: np.frombuffer(raw, dtype=np.int32) for o, raw in zip(resp.outputs, resp.raw_output_contents)}
        np.testing.assert_array_equal(out["OUTPUT0"], np.arange(16) + 2)

        bad = service_pb2.ModelInferRequest(model_name="simple")
        t = bad.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
        t.contents.int_contents.extend([1] * 15)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs 16 elements but int_contents holds 15" in e.value.details()


def test_identity_fp32_async(client):
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    inp = grpcclient.InferInput("INPUT0", [4, 16], "FP32")
    inp.set_data_from_numpy(x)
    done = queue.Queue()
    client.async_infer("identity", [inp], callback=lambda result, error: done.put((result, error)))
    result, error = done.get(timeout=30)
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_string_identity(client):
    words = np.array([["ferroserve".encode()], ["ünïcode".encode()], [b""]], dtype=np.object_)
    inp = grpcclient.InferInput("TEXT", [3, 1], "BYTES")
    inp.set_data_from_numpy(words)
    got = client.infer("string_identity", [inp]).as_numpy("TEXT_OUT")
    assert [[w for w in row] for row in got] == [[b"ferroserve"], ["ünïcode".encode()], [b""]]


def test_streaming_several_requests_and_an_error_on_one_stream(client):
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(5):
            a = np.full((1, 16), i, dtype=np.int32)
            client.async_stream_infer("simple", simple_inputs(a, a), request_id=f"s{i}")
        bad = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
        client.async_stream_infer("simple", [bad, bad], request_id="bad")
        got, errors = {}, []
        for _ in range(6):
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(str(error))
            else:
                got[result.get_response().id] = result.as_numpy("OUTPUT0")
        assert sorted(got) == [f"s{i}" for i in range(5)]
        for i in range(5):
            np.testing.assert_array_equal(got[f"s{i}"], np.full((1, 16), 2 * i))
        assert len(errors) == 1 and "expects INT32" in errors[0], errors
    finally:
        client.stop_stream()


def test_minilm_embeddings(client):
    arrays, expected = minilm.reference_batch()
    inputs = []
    for name, arr in arrays.items():
        t = grpcclient.InferInput(name, list(arr.shape), "INT64")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    hidden = client.infer("minilm", inputs).as_numpy("last_hidden_state")
    cos = minilm.cosines(hidden, arrays, expected)
    assert cos.min() >= 0.999, cos


def test_statistics_count_requests(client):
    before = client.get_inference_statistics("identity", as_json=True)["model_stats"][0]
    x = np.ones((2, 16), dtype=np.float32)
    inp = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(3):
        client.infer("identity", [inp])
    after = client.get_inference_statistics("identity", as_json=True)["model_stats"][0]
    count = lambda s, k: int(s.get("inference_stats", {}).get(k, {}).get("count", 0))
    assert count(after, "success") - count(before, "success") == 3
    # identity is not batched by the server (max_batch_size 0): each request is one inference,
    # whatever its first dimension, as Triton counts it.
    assert int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)) == 3
    assert int(after.get("execution_count", 0)) - int(before.get("execution_count", 0)) == 3
    assert int(after["last_inference"]) > 0


@pytest.mark.parametrize("call,code,needle", [
    (lambda c: c.get_model_metadata("nope"), "StatusCode.NOT_FOUND", "unknown model"),
    (lambda c: c.get_model_config("simple", "9"), "StatusCode.NOT_FOUND", "unknown version"),
    (lambda c: c.infer("simple", simple_inputs(np.zeros((1, 8), np.int32), np.zeros((1, 8), np.int32))),
     "StatusCode.INVALID_ARGUMENT", "dimension 1 is 8"),
])
def test_errors_map_to_grpc_status_codes(client, call, code, needle):
    with pytest.raises(InferenceServerException) as e:
        call(client)
    assert e.value.status() == code
    assert needle in e.value.message()


def test_unload_and_load_over_grpc(client):
    client.unload_model("identity")
    assert not client.is_model_ready("identity")
    with pytest.raises(InferenceServerException) as e:
        client.load_model("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    client.load_model("identity")
    assert client.is_model_ready("identity")


def test_text_classification_task_with_bytes_input(client):
    texts, probs, labels = minilm.tiny_bert_examples()
    inp = grpcclient.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    result = client.infer("tiny-bert-classifier", [inp], outputs=[grpcclient.InferRequestedOutput("label"),
                                                                  grpcclient.InferRequestedOutput("probabilities")])
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, atol=1e-4)
    assert [l.decode() for l in result.as_numpy("label")] == labels
    # Not UTF-8: a clear INVALID_ARGUMENT, not a crash.
    bad = grpcclient.InferInput("text", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as e:
        client.infer("tiny-bert-classifier", [bad])
    assert "UTF-8" in str(e.value)
    assert "INVALID_ARGUMENT" in str(e.value.status())
