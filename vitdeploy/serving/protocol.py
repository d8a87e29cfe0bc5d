"""The Open Inference Protocol ("v2", spoken by Triton, KServe and MLServer) over HTTP: the parts a vitdeploy model
needs, as pure functions from bytes to arrays and back, so they are tested without a server.

    request:  {"id": .., "parameters": {"binary_data_output": ..}, "inputs": [{"name", "shape", "datatype",
               "data" | "parameters": {"binary_data_size": N}}], "outputs": [{"name", "parameters": {"binary_data"}}]}
    binary tensor extension: the JSON header is followed by the raw little-endian tensor bytes, in input order; the
              header's length travels in the Inference-Header-Content-Length HTTP header (both directions).
    response: {"model_name", "model_version", "id", "outputs": [{"name", "datatype", "shape", "data" | "parameters":
               {"binary_data_size": N}}]}
    errors:   {"error": "message"} with a 4xx status (what Triton's clients read)

Every malformed request raises RequestError with its HTTP status and a message that says what to send instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitdeploy.errors import ModelFileError, RequestError
from vitdeploy.files.onnx_file import INPUT_NAME, OUTPUT_NAME

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPE = "FP32"
PLATFORM = "onnxruntime_onnx"
VERSION = "1"


# ------------------------------------------------------------------------------------------- the served input


def check_dynamic_batch(path: object, shape: tuple[int | str | None, ...]) -> None:
    """Refuse a graph whose first axis is a fixed size: neither Triton's batcher nor serve's could batch it
    (Triton refuses it at load: the first dimension must be -1)."""
    if shape and isinstance(shape[0], int):
        raise ModelFileError(
            f"{path}: input {INPUT_NAME!r} has a fixed batch axis ({list(shape)}); batching needs a dynamic one "
            "(-1). Export it with vitdeploy export, which makes the batch axis dynamic"
        )


def item_shape(path: object, shape: tuple[int | str | None, ...]) -> tuple[int, ...]:
    """[batch, C, H, W] -> (C, H, W); every one of them must be a fixed size."""
    item = shape[1:]
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in item):
        raise ModelFileError(f"{path}: input {INPUT_NAME!r} must be [batch, C, H, W] with fixed C, H, W; got {list(shape)}")
    return tuple(int(d) for d in item)  # type: ignore[arg-type]




@dataclass(frozen=True)
class ModelSignature:
    """What the served model takes and gives, as the protocol describes it."""

    name: str
    item_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    max_batch_size: int

    def metadata(self) -> dict[str, Any]:
        """GET /v2/models/<name>: shapes with -1 for the batch axis, as Triton reports a batching model."""
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, *self.item_shape]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": [-1, self.num_classes]}],
        }


@dataclass
class InferRequest:
    pixel_values: np.ndarray  # (N, C, H, W) float32, finite
    id: str | None = None
    binary_output: bool = False


# ------------------------------------------------------------------------------------------- requests


def parse_infer_request(body: bytes, header_length: str | None, signature: ModelSignature) -> InferRequest:
    """POST /v2/models/<name>/infer body (+ its Inference-Header-Content-Length, if any) -> the validated tensor."""
    if not body:
        raise RequestError(400, "empty request body: send a JSON inference request (Open Inference Protocol v2)")
    header, binary = _split(body, header_length)
    try:
        request = json.loads(bytes(header))  # the header is small; json takes no memoryview
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"malformed JSON in the inference request: {e}") from None
    except RecursionError:  # json's decoder recurses once per [ or {: a hostile body is not a server error
        raise RequestError(400, "the inference request's JSON is nested too deeply (a tensor's data nests at most "
                                "as deep as its shape)") from None
    if not isinstance(request, dict):
        raise RequestError(400, "the inference request must be a JSON object with an 'inputs' list")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, f"'inputs' must be a list with exactly one tensor, {INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise RequestError(400, f"unknown input {tensor.get('name')!r}; this model's input is {INPUT_NAME!r}")
    shape = _check_shape(tensor.get("shape"), signature)
    if tensor.get("datatype") != DATATYPE:
        raise RequestError(400, f"input {INPUT_NAME!r} has datatype {tensor.get('datatype')!r}; expected {DATATYPE!r}")
    params = _parameters(tensor, f"input {INPUT_NAME!r}")
    if "shared_memory_region" in params:
        raise RequestError(400, "shared-memory tensors are not supported; send the data in the request")
    if "binary_data_size" in params:
        pixels, used = _binary_tensor(params["binary_data_size"], binary, shape)
    elif "data" in tensor:
        pixels, used = _json_tensor(tensor["data"], shape), 0
    else:
        raise RequestError(400, f"input {INPUT_NAME!r} has neither 'data' nor parameters.binary_data_size")
    if used != len(binary):
        raise RequestError(400, f"{len(binary) - used} bytes after the tensor data that no input claims")
    if not np.isfinite(pixels).all():
        raise RequestError(400, f"input {INPUT_NAME!r} contains NaN or infinity")
    request_id = request.get("id")
    return InferRequest(pixels, str(request_id) if request_id is not None else None,
                        _wants_binary(request))


def _split(body: bytes, header_length: str | None) -> tuple[bytes | memoryview, memoryview]:
    """The JSON header and the binary part, as views of the body (a 600 KB image is not copied to be split)."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise RequestError(
            400, f"{HEADER_LENGTH} is {header_length!r}; it must be the JSON header's length, 1..{len(body)} bytes"
        )
    view = memoryview(body)
    return view[:n], view[n:]


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise RequestError(400, f"{what}: 'parameters' must be a JSON object")
    return params


def _check_shape(shape: Any, signature: ModelSignature) -> tuple[int, ...]:
    expected = f"[N, {', '.join(map(str, signature.item_shape))}] with 1 <= N <= {signature.max_batch_size}"
    if (not isinstance(shape, list) or len(shape) != 4
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise RequestError(400, f"input {INPUT_NAME!r} has shape {shape!r}; expected {expected}")
    if tuple(shape[1:]) != signature.item_shape or not 1 <= shape[0] <= signature.max_batch_size:
        raise RequestError(400, f"input {INPUT_NAME!r} has shape {shape}; expected {expected}")
    return tuple(shape)


def _binary_tensor(size: Any, binary: memoryview, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    expected = math.prod(shape) * 4
    if not isinstance(size, int) or isinstance(size, bool) or size != expected:
        raise RequestError(
            400, f"input {INPUT_NAME!r}: binary_data_size is {size!r}; shape {list(shape)} of FP32 takes {expected} bytes"
        )
    if len(binary) < size:
        raise RequestError(400, f"input {INPUT_NAME!r}: {size} bytes announced, {len(binary)} sent")
    # A read-only view of the body (no copy where float32 is little-endian, as on x86 and ARM): the batcher's
    # concatenation is the one copy an image makes on its way to the model.
    return np.frombuffer(binary, dtype="<f4", count=size // 4).astype(np.float32, copy=False).reshape(shape), size


def _json_tensor(data: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        values = np.asarray(data)
    except ValueError:  # ragged nested lists
        raise RequestError(400, f"input {INPUT_NAME!r}: 'data' is a ragged nested list") from None
    if values.dtype.kind not in "fiu":
        raise RequestError(400, f"input {INPUT_NAME!r}: 'data' must hold numbers only (FP32)")
    if values.size != math.prod(shape):
        raise RequestError(
            400, f"input {INPUT_NAME!r}: {values.size} values in 'data' for shape {list(shape)} "
            f"({math.prod(shape)} values)"
        )
    return values.astype(np.float32).reshape(shape)


def _wants_binary(request: dict[str, Any]) -> bool:
    """Binary output when an output asks for it, or (no outputs listed) the request's binary_data_output does."""
    outputs = request.get("outputs")
    if outputs is None:
        return bool(_parameters(request, "the request").get("binary_data_output", False))
    if not isinstance(outputs, list):
        raise RequestError(400, "'outputs' must be a list")
    binary = False
    for output in outputs:
        if not isinstance(output, dict) or output.get("name") != OUTPUT_NAME:
            name = output.get("name") if isinstance(output, dict) else output
            raise RequestError(400, f"unknown output {name!r}; this model's output is {OUTPUT_NAME!r}")
        params = _parameters(output, f"output {OUTPUT_NAME!r}")
        if "classification" in params or "shared_memory_region" in params:
            raise RequestError(400, "classification and shared-memory outputs are not supported; "
                               "POST images to /classify for labels")
        binary = binary or bool(params.get("binary_data", False))
    return binary


# ------------------------------------------------------------------------------------------ responses


def encode_infer_response(request: InferRequest, logits: np.ndarray, model_name: str) -> tuple[bytes, dict[str, str]]:
    """Response body and the headers it needs (content type; the header length for a binary response)."""
    logits = np.ascontiguousarray(logits, dtype="<f4")
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": list(logits.shape)}
    if request.binary_output:
        output["parameters"] = {"binary_data_size": logits.nbytes}
    else:
        output["data"] = logits.ravel().tolist()
    response: dict[str, Any] = {"model_name": model_name, "model_version": VERSION, "outputs": [output]}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not request.binary_output:
        return header, {"content-type": "application/json"}
    return header + logits.tobytes(), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def build_infer_request(pixel_values: np.ndarray, binary: bool = True, request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A client's request body and headers (benchmarks and tests; Triton's client builds the same)."""
    pixel_values = np.ascontiguousarray(pixel_values, dtype="<f4")
    tensor: dict[str, Any] = {"name": INPUT_NAME, "shape": list(pixel_values.shape), "datatype": DATATYPE}
    if binary:
        tensor["parameters"] = {"binary_data_size": pixel_values.nbytes}
    else:
        tensor["data"] = pixel_values.ravel().tolist()
    request: dict[str, Any] = {"inputs": [tensor], "outputs": [{"name": OUTPUT_NAME, "parameters": {"binary_data": binary}}]}
    if request_id is not None:
        request["id"] = request_id
    header = json.dumps(request).encode()
    if not binary:
        return header, {"content-type": "application/json"}
    return header + pixel_values.tobytes(), {"content-type": "application/octet-stream",
                                             HEADER_LENGTH: str(len(header))}


def parse_infer_response(body: bytes, header_length: str | None) -> np.ndarray:
    """A response body -> the logits (the inverse of encode_infer_response)."""
    header, binary = (body, b"") if header_length is None else (body[: int(header_length)], body[int(header_length):])
    output = json.loads(header)["outputs"][0]
    if "data" in output:
        return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    return np.frombuffer(binary, dtype="<f4").reshape(output["shape"])
