"""NVIDIA's own Python client, tritonclient[http], against ferroserve: nobody here wrote it."""

import minilm
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(url=server)
    yield c
    c.close()


def test_server_and_model_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "ferroserve"
    assert "binary_tensor_data" in meta["extensions"]

    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    meta = client.get_model_metadata("simple")
    assert meta["platform"] == "onnxruntime_onnx"
    assert [i["name"] for i in meta["inputs"]] == ["INPUT0", "INPUT1"]
    assert meta["inputs"][0]["datatype"] == "INT32"
    assert meta["inputs"][0]["shape"] == [-1, 16]
    assert client.get_model_metadata("simple", "1")["versions"] == ["1"]

    index = client.get_model_repository_index()
    assert {m["name"] for m in index} == {"simple", "identity", "string_identity", "minilm", "tiny-bert-classifier"}
    assert all(m["state"] == "READY" for m in index)


@pytest.mark.parametrize("binary", [True, False])
def test_simple_infer(client, binary):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=not binary)]
    result = client.infer("simple", inputs, outputs=outputs, request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["id"] == "r1"


def test_infer_all_outputs_by_default_and_versioned(client):
    a = np.ones((2, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [2, 16], "INT32"), httpclient.InferInput("INPUT1", [2, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a * 5)
    result = client.infer("simple", inputs, model_version="1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 6)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a * -4)


@pytest.mark.parametrize("binary", [True, False])
def test_identity_fp32_and_async(client, binary):
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    inp = httpclient.InferInput("INPUT0", [4, 16], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
    np.testing.assert_array_equal(client.infer("identity", [inp], outputs=[out]).as_numpy("OUTPUT0"), x)
    pending = client.async_infer("identity", [inp], outputs=[out])
    np.testing.assert_array_equal(pending.get_result().as_numpy("OUTPUT0"), x)


@pytest.mark.parametrize("binary", [True, False])
def test_string_identity(client, binary):
    words = np.array([["ferroserve".encode()], ["ünïcode".encode()], [b""]], dtype=np.object_)
    inp = httpclient.InferInput("TEXT", [3, 1], "BYTES")
    inp.set_data_from_numpy(words, binary_data=binary)
    out = httpclient.InferRequestedOutput("TEXT_OUT", binary_data=binary)
    got = client.infer("string_identity", [inp], outputs=[out]).as_numpy("TEXT_OUT")
    got = [[w if isinstance(w, bytes) else w.encode() for w in row] for row in got]
    assert got == [[b"ferroserve"], ["ünïcode".encode()], [b""]]


def test_minilm_embeddings(client):
    arrays, expected = minilm.reference_batch()
    inputs = []
    for name, arr in arrays.items():
        t = httpclient.InferInput(name, list(arr.shape), "INT64")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    hidden = client.infer("minilm", inputs).as_numpy("last_hidden_state")
    cos = minilm.cosines(hidden, arrays, expected)
    assert cos.min() >= 0.999, cos


def test_errors_surface_as_exceptions(client):
    inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="expects INT32"):
        client.infer("simple", [inp, inp])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="unknown version"):
        client.get_model_metadata("simple", "7")


def test_model_config_and_statistics_over_http(client):
    config = client.get_model_config("simple")
    assert config["name"] == "simple"
    assert config["max_batch_size"] == 0
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    assert config["input"][0]["data_type"] == "TYPE_INT32"
    assert config["input"][0]["dims"] == [-1, 16]
    assert client.get_model_config("simple", "1") == config

    def successes():
        stats = client.get_inference_statistics("simple")["model_stats"]
        assert [s["name"] for s in stats] == ["simple"]
        return stats[0]["inference_stats"]["success"]["count"]

    before = successes()
    a = np.ones((1, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    for _ in range(4):
        client.infer("simple", inputs)
    assert successes() - before == 4
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} >= {"simple", "identity"}
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_inference_statistics("nope")


def test_text_classification_task_with_bytes_input(client):
    texts, probs, labels = minilm.tiny_bert_examples()
    meta = client.get_model_metadata("tiny-bert-classifier")
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("text", "BYTES")]
    inp = httpclient.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    result = client.infer("tiny-bert-classifier", [inp])
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, atol=1e-4)
    assert [l.decode() for l in result.as_numpy("label")] == labels
