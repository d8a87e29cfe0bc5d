"""The v2 codec without a server: requests in JSON and binary form, responses, and every malformed request refused
with a 4xx and a message."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vitdeploy.errors import RequestError
from vitdeploy.serving.protocol import (
    HEADER_LENGTH,
    ModelSignature,
    build_infer_request,
    encode_infer_response,
    parse_infer_request,
    parse_infer_response,
)

SIGNATURE = ModelSignature("tiny", (3, 4, 4), num_classes=3, max_batch_size=8)
PIXELS = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)


def json_request(**tensor_changes) -> bytes:
    tensor = {"name": "pixel_values", "shape": [2, 3, 4, 4], "datatype": "FP32", "data": PIXELS.ravel().tolist()}
    tensor.update(tensor_changes)
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.mark.parametrize("binary", [True, False])
def test_a_request_round_trips_in_json_and_binary_form(binary: bool) -> None:
    body, headers = build_infer_request(PIXELS, binary=binary, request_id="r1")
    parsed = parse_infer_request(body, headers.get(HEADER_LENGTH), SIGNATURE)
    assert np.array_equal(parsed.pixel_values, PIXELS) and parsed.id == "r1" and parsed.binary_output is binary

    logits = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    content, out_headers = encode_infer_response(parsed, logits, "tiny")
    assert np.array_equal(parse_infer_response(content, out_headers.get(HEADER_LENGTH)), logits)
    header = json.loads(content[: int(out_headers.get(HEADER_LENGTH, len(content)))])
    assert header["model_name"] == "tiny" and header["id"] == "r1" and header["outputs"][0]["shape"] == [2, 3]


def test_nested_json_data_and_binary_data_output_are_accepted() -> None:
    body = json.dumps({"inputs": [{"name": "pixel_values", "shape": [2, 3, 4, 4], "datatype": "FP32",
                                   "data": PIXELS.tolist()}], "parameters": {"binary_data_output": True}}).encode()
    parsed = parse_infer_request(body, None, SIGNATURE)
    assert np.array_equal(parsed.pixel_values, PIXELS) and parsed.binary_output


def _binary(size_change: int = 0, extra: bytes = b"") -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": "pixel_values", "shape": [2, 3, 4, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": PIXELS.nbytes + size_change}}]}).encode()
    return header + PIXELS.tobytes() + extra, str(len(header))


@pytest.mark.parametrize("body, header_length, fragment", [
    (b"", None, "empty request body"),
    (b"{not json", None, "malformed JSON"),
    (b"\xff\xfe", None, "malformed JSON"),
    (b"[1, 2]", None, "JSON object"),
    (b'{"inputs": []}', None, "exactly one tensor"),
    (json_request(name="image"), None, "unknown input 'image'"),
    (json_request(shape=[2, 3, 4, 5]), None, "expected [N, 3, 4, 4]"),
    (json_request(shape=[9, 3, 4, 4]), None, "1 <= N <= 8"),
    (json_request(shape=[0, 3, 4, 4]), None, "1 <= N <= 8"),
    (json_request(shape="2x3x4x4"), None, "expected [N, 3, 4, 4]"),
    (json_request(datatype="FP16"), None, "expected 'FP32'"),
    (json_request(data=[0.0] * 95), None, "95 values"),
    (json_request(data=["a"] * 96), None, "numbers only"),
    (json_request(data=[[0.0] * 3, [0.0] * 2]), None, "ragged"),
    (json_request(data=[float("nan")] * 96), None, "NaN or infinity"),
    (json_request(data=None, parameters={"shared_memory_region": "r"}), None, "shared-memory"),
    (json.dumps({"inputs": [{"name": "pixel_values", "shape": [2, 3, 4, 4], "datatype": "FP32"}]}).encode(), None,
     "neither 'data'"),
    (json.dumps({"inputs": json.loads(json_request())["inputs"], "outputs": [{"name": "probs"}]}).encode(), None,
     "unknown output 'probs'"),
    (json.dumps({"inputs": json.loads(json_request())["inputs"],
                 "outputs": [{"name": "logits", "parameters": {"classification": 2}}]}).encode(), None,
     "classification"),
    (*_binary(size_change=-4), "binary_data_size"),
    (_binary(extra=b"\0" * 8)[0], _binary()[1], "8 bytes after"),
    (_binary()[0][:-10], _binary()[1], "announced"),
    (_binary()[0], "abc", HEADER_LENGTH),
    (_binary()[0], "99999999", HEADER_LENGTH),
])
def test_malformed_requests_are_refused_with_400_and_a_reason(body: bytes, header_length: str | None,
                                                               fragment: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_infer_request(body, header_length, SIGNATURE)
    assert caught.value.status == 400
    assert fragment in caught.value.message


def test_model_metadata_reports_a_dynamic_batch_axis() -> None:
    meta = SIGNATURE.metadata()
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 4, 4]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
