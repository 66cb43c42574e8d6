"""GET /metrics, read by the Prometheus project's own OpenMetrics parser."""
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException


def scrape(server):
    with urllib.request.urlopen(f"http://{server}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):  # raises on malformed text
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_counters_match_requests(server):
    before = scrape(server)
    client = httpclient.InferenceServerClient(url=server)
    x = np.ones((1, 16), dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(5):
        client.infer("identity", [inp])
    bad = httpclient.InferInput("INPUT0", [1, 16], "INT32")
    bad.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
    for _ in range(2):
        with pytest.raises(InferenceServerException):
            client.infer("identity", [bad])
    after = scrape(server)

    labels = {"model": "identity", "version": "1"}
    ok = value(after, "ferroserve_requests_total", result="success", **labels) - value(before, "ferroserve_requests_total", result="success", **labels)
    failed = value(after, "ferroserve_requests_total", result="failure", **labels) - value(before, "ferroserve_requests_total", result="failure", **labels)
    assert (ok, failed) == (5, 2)
    assert value(after, "ferroserve_request_duration_seconds_count", **labels) - value(before, "ferroserve_request_duration_seconds_count", **labels) == 7
    assert value(after, "ferroserve_batch_size_count", **labels) - value(before, "ferroserve_batch_size_count", **labels) == 5
    assert value(after, "ferroserve_replicas", **labels) == 1
    assert value(after, "ferroserve_queue_depth", **labels) == 0
    assert value(after, "ferroserve_process_resident_memory_bytes") > 10_000_000
    assert value(after, "ferroserve_process_cpu_seconds_total") > 0
