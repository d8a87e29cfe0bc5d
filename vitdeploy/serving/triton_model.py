"""The `model.py` of a Triton Python-backend repository (`vitdeploy triton --backend python` copies this file into
DIR/<name>/1/): Triton's Python backend runs the .onnx beside it through vitdeploy's runtime layer, so the file runs
on the runtime it was made for, in its own precision, exactly as `vitdeploy predict` and `vitdeploy serve` run it.

Triton loads this file in its own embedded interpreter (triton_python_backend_stub), which ignores PYTHONPATH and the
virtual environment vitdeploy lives in, and which imports triton_python_backend_utils (and with it numpy) right
after importing this file, before `initialize` is given the configuration. So on import, this file reads the
parameter `python_path` of the config.pbtxt above its folder (written by `vitdeploy triton`: the folders vitdeploy
and its libraries were imported from; edit it for another machine) and puts those folders first on sys.path, as site
folders, so that the .pth files of an editable install work too.

Tensors cross the stub through DLPack in both directions (`np.from_dlpack(input)`, `Tensor.from_dlpack(output)`),
not through `as_numpy()` / `Tensor(name, ndarray)`: those go through the pybind11 numpy support compiled into the
stub, which reads numpy's C structures as the numpy it was built against laid them out, and numpy 2 changed that
layout (one session saw every response fail with "output tensor shape does not match size of output" under numpy 2;
stub 2.51 with numpy 2.4.6 happened to work here). DLPack hands over a C struct fixed by its own standard (data
pointer, shape, strides, type code), so the stub and any numpy agree without pinning numpy < 2 for the stub. Each
request's rows are copied out of the batch's logits into an array of their own: the stub takes only C-contiguous
DLPack tensors, and the copy stays valid whatever happens to the batch's array. One wart: the stub renames a
capsule it consumed "used_dlpack" where the DLPack standard says "used_dltensor", so numpy's capsule destructor
takes it for unconsumed, fails to read it and reports "PyCapsule_GetPointer called with incorrect name" through
sys.unraisablehook, once per output, then leaves the tensor alone (the stub frees it: nothing leaks or is freed
twice). `quiet_renamed_capsules` drops exactly that report and passes every other one on.
"""

from __future__ import annotations

import json
import os
import re
import site
import sys
from pathlib import Path
from typing import Any

# parameters { key: "python_path" value: { string_value: "..." } }, as vitdeploy writes it (one quoted string)
PYTHON_PATH = re.compile(r'key:\s*"python_path"\s*value:\s*\{\s*string_value:\s*"((?:[^"\\]|\\.)*)"')
pb_utils: Any = None  # triton_python_backend_utils, imported in initialize
np: Any = None


def extend_sys_path(entries: list[str]) -> None:
    """Put `entries` (and what their .pth files add) first on sys.path, in order, each once."""
    before = list(sys.path)
    for entry in entries:
        if entry:
            site.addsitedir(entry)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + [p for p in before if p not in added]


def configured_python_path(config_file: Path) -> list[str]:
    """The python_path parameter of a config.pbtxt ([] when it has none, or there is no such file)."""
    try:
        found = PYTHON_PATH.search(config_file.read_text(encoding="utf-8"))
    except OSError:
        return []
    return json.loads(f'"{found.group(1)}"').split(os.pathsep) if found else []


if Path(__file__).parent.name.isdigit():  # a copy in a repository's version folder, loaded by Triton
    extend_sys_path(configured_python_path(Path(__file__).resolve().parents[1] / "config.pbtxt"))


def quiet_renamed_capsules(previous: Any) -> Any:
    """An unraisablehook that drops numpy's report on a capsule the stub renamed (above), else calls `previous`."""

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if not (isinstance(value, ValueError) and str(value) == "PyCapsule_GetPointer called with incorrect name"):
            previous(unraisable)

    return hook


class TritonPythonModel:
    """One model instance: one vitdeploy runtime session; every batch Triton's dynamic batcher forms is one run."""

    def initialize(self, args: dict[str, Any]) -> None:
        global pb_utils, np
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        import numpy
        import triton_python_backend_utils

        from vitdeploy.runtimes import open_runtime

        pb_utils, np = triton_python_backend_utils, numpy
        sys.unraisablehook = quiet_renamed_capsules(sys.unraisablehook)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        # spin=False: ORT's idle threads sleep between batches instead of taking the cores from Triton's own threads.
        self.session = open_runtime(parameters.get("runtime") or None, version_dir / "model.onnx", "cpu",
                                    spin=False)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        """One model run for every request Triton batched together; each request gets its own rows back."""
        arrays = [np.from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input_name)) for request in requests]
        try:
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            outputs = self.session.run_outputs(batch, [self.output_name])[self.output_name]
        except Exception as e:  # the model failed on this batch: every request in it gets the error, not the server
            error = pb_utils.TritonError(f"{type(e).__name__}: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for array in arrays:
            rows = np.array(outputs[start : start + len(array)], copy=True, order="C")
            start += len(array)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor.from_dlpack(self.output_name, rows)]))
        return responses

    def finalize(self) -> None:
        session = getattr(self, "session", None)
        if session is not None and hasattr(session, "close"):  # not every runtime's session holds resources
            session.close()
