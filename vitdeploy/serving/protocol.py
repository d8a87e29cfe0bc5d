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
from vitdeploy.files.onnx_file import IMAGE_INPUT_NAME, INPUT_NAME, OUTPUT_NAME

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPE = "FP32"
IMAGE_DATATYPE = "UINT8"
ITEMSIZE = {DATATYPE: 4, IMAGE_DATATYPE: 1}
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
    item_shape: tuple[int, int, int]  # (C, H, W); a raw-image file's (H, W, C), each -1 (any)
    num_classes: int
    max_batch_size: int
    input_name: str = INPUT_NAME  # a raw-image file's: IMAGE_INPUT_NAME
    datatype: str = DATATYPE  # a raw-image file's: UINT8
    layout: str = "chw"  # a raw-image file's: "hwc" ([N, H, W, C], export --image-layout nhwc) or "chw" (nchw)

    def metadata(self) -> dict[str, Any]:
        """GET /v2/models/<name>: shapes with -1 for the batch axis, as Triton reports a batching model."""
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": PLATFORM,
            "inputs": [{"name": self.input_name, "datatype": self.datatype, "shape": [-1, *self.item_shape]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": [-1, self.num_classes]}],
        }


def image_signature(name: str, num_classes: int, max_batch_size: int, layout: str = "hwc") -> ModelSignature:
    """A raw-image file's (export --image-input): uint8 [N, H, W, C] (`layout` "hwc") or [N, C, H, W] ("chw") of
    any size, C 1-4; one size per request."""
    return ModelSignature(name, (-1, -1, -1), num_classes, max_batch_size, IMAGE_INPUT_NAME, IMAGE_DATATYPE, layout)


@dataclass
class InferRequest:
    pixel_values: np.ndarray  # (N, C, H, W) float32, finite; a raw-image file's uint8 (N, H, W, C) or (N, C, H, W)
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
    name, datatype = signature.input_name, signature.datatype
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, f"'inputs' must be a list with exactly one tensor, {name!r}")
    tensor = inputs[0]
    if tensor.get("name") != name:
        raise RequestError(400, f"unknown input {tensor.get('name')!r}; this model's input is {name!r}")
    shape = _check_shape(tensor.get("shape"), signature)
    if tensor.get("datatype") != datatype:
        raise RequestError(400, f"input {name!r} has datatype {tensor.get('datatype')!r}; expected {datatype!r}")
    params = _parameters(tensor, f"input {name!r}")
    if "shared_memory_region" in params:
        raise RequestError(400, "shared-memory tensors are not supported; send the data in the request")
    if "binary_data_size" in params:
        pixels, used = _binary_tensor(params["binary_data_size"], binary, shape, signature)
    elif "data" in tensor:
        pixels, used = _json_tensor(tensor["data"], shape, signature), 0
    else:
        raise RequestError(400, f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    if used != len(binary):
        raise RequestError(400, f"{len(binary) - used} bytes after the tensor data that no input claims")
    if not np.isfinite(pixels).all():
        raise RequestError(400, f"input {name!r} contains NaN or infinity")
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
    name, item = signature.input_name, signature.item_shape
    if signature.datatype == IMAGE_DATATYPE:
        axes = "height, width, channels" if signature.layout == "hwc" else "channels, height, width"
        expected = (f"[N, {axes}] with 1 <= N <= {signature.max_batch_size} and 1 to 4 channels "
                    "(grey, grey + alpha, RGB, RGBA; the images of one request share one size)")
    else:
        expected = f"[N, {', '.join(map(str, item))}] with 1 <= N <= {signature.max_batch_size}"
    if (not isinstance(shape, list) or len(shape) != 4
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise RequestError(400, f"input {name!r} has shape {shape!r}; expected {expected}")
    fits = all(want == -1 and got >= 1 for want, got in zip(item, shape[1:])) if -1 in item else \
        tuple(shape[1:]) == item
    if signature.datatype == IMAGE_DATATYPE:
        fits = fits and 1 <= shape[3 if signature.layout == "hwc" else 1] <= 4
    if not fits or not 1 <= shape[0] <= signature.max_batch_size:
        raise RequestError(400, f"input {name!r} has shape {shape}; expected {expected}")
    return tuple(shape)


def _binary_tensor(size: Any, binary: memoryview, shape: tuple[int, ...], signature: ModelSignature
                   ) -> tuple[np.ndarray, int]:
    name, datatype = signature.input_name, signature.datatype
    expected = math.prod(shape) * ITEMSIZE[datatype]
    if not isinstance(size, int) or isinstance(size, bool) or size != expected:
        raise RequestError(
            400, f"input {name!r}: binary_data_size is {size!r}; shape {list(shape)} of {datatype} takes {expected} "
            "bytes"
        )
    if len(binary) < size:
        raise RequestError(400, f"input {name!r}: {size} bytes announced, {len(binary)} sent")
    # A read-only view of the body (no copy where float32 is little-endian, as on x86 and ARM): the batcher's
    # concatenation is the one copy an image makes on its way to the model.
    dtype = np.dtype("<f4") if datatype == DATATYPE else np.dtype(np.uint8)
    values = np.frombuffer(binary, dtype=dtype, count=math.prod(shape))
    return values.astype(dtype.newbyteorder("="), copy=False).reshape(shape), size


def _json_tensor(data: Any, shape: tuple[int, ...], signature: ModelSignature) -> np.ndarray:
    name = signature.input_name
    try:
        values = np.asarray(data)
    except ValueError:  # ragged nested lists
        raise RequestError(400, f"input {name!r}: 'data' is a ragged nested list") from None
    if values.dtype.kind not in "fiu":
        raise RequestError(400, f"input {name!r}: 'data' must hold numbers only ({signature.datatype})")
    if values.size != math.prod(shape):
        raise RequestError(
            400, f"input {name!r}: {values.size} values in 'data' for shape {list(shape)} "
            f"({math.prod(shape)} values)"
        )
    if signature.datatype == IMAGE_DATATYPE:
        if values.size and (values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.round(values))):
            raise RequestError(400, f"input {name!r}: UINT8 'data' must hold whole numbers 0..255")
        return values.astype(np.uint8).reshape(shape)
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
    """A client's request body and headers (benchmarks and tests; Triton's client builds the same). A uint8 array
    is a raw-image file's input: decoded images [N, H, W, C] (or [N, C, H, W])."""
    image = pixel_values.dtype == np.uint8
    pixel_values = np.ascontiguousarray(pixel_values, dtype=np.uint8 if image else "<f4")
    tensor: dict[str, Any] = {"name": IMAGE_INPUT_NAME if image else INPUT_NAME, "shape": list(pixel_values.shape),
                              "datatype": IMAGE_DATATYPE if image else DATATYPE}
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
