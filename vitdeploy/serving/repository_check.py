"""Check a Triton model folder against the .onnx it holds, as Triton would at load time, and a little more.

    config.pbtxt name        = the folder's name (Triton serves the folder under its config's name)
    inputs / outputs         names, data types, and dims without the batch axis equal the graph's
    max_batch_size > 0       the graph's batch axis is dynamic (else Triton refuses every batch but one)
    label_filename           exists, and holds one label per output class
    backend python           the version folder holds model.py

check_model_folder raises ModelFileError (exit code 2) naming every mismatch; `vitdeploy triton` runs it on what it
wrote, and tests run it on tampered copies. config.pbtxt is read with a small parser of protobuf text format (the
subset Triton configs use), so no protobuf or tritonclient is needed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vitdeploy.errors import ModelFileError
from vitdeploy.runtimes import open_runtime

# ONNX Runtime's type names -> Triton's data_type
TRITON_TYPES = {
    "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16", "tensor(int8)": "TYPE_INT8", "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64", "tensor(uint8)": "TYPE_UINT8",
    "tensor(bool)": "TYPE_BOOL", "tensor(string)": "TYPE_STRING",
}
# Fields that are lists even when the file has one entry.
REPEATED = {"input", "output", "dims", "instance_group", "preferred_batch_size", "gpu_execution_accelerator",
            "parameters"}
TOKEN = re.compile(r'\s*(?:#[^\n]*\n?)*\s*("(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"#]+)')


# ------------------------------------------------------------------------------------- protobuf text format


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Protobuf text format as a dict: messages as dicts, repeated fields (REPEATED, or written twice) as lists,
    numbers as int/float, quoted strings unquoted, enum values as str."""
    tokens = [t for t in TOKEN.findall(text) if t]
    message, end = _message(tokens, 0, closing=None)
    if end != len(tokens):
        raise ValueError(f"unexpected {tokens[end]!r}")
    return message


def _message(tokens: list[str], i: int, closing: str | None) -> tuple[dict[str, Any], int]:
    message: dict[str, Any] = {}
    while i < len(tokens) and tokens[i] != closing:
        key = tokens[i]
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        value, i = _value(tokens, i)
        values = value if isinstance(value, list) else [value]
        if key in REPEATED or key in message:
            message.setdefault(key, [])
            if not isinstance(message[key], list):
                message[key] = [message[key]]
            message[key].extend(values)
        else:
            message[key] = value
    if closing is not None:
        if i >= len(tokens):
            raise ValueError(f"missing {closing!r}")
        i += 1
    return message, i


def _value(tokens: list[str], i: int) -> tuple[Any, int]:
    token = tokens[i]
    if token == "{":
        return _message(tokens, i + 1, "}")
    if token == "[":
        items: list[Any] = []
        i += 1
        while tokens[i] != "]":
            item, i = _value(tokens, i)
            items.append(item)
            if tokens[i] == ",":
                i += 1
        return items, i + 1
    return _scalar(token), i + 1


def _scalar(token: str) -> Any:
    if token.startswith('"'):
        try:
            return json.loads(token)  # the escapes vitdeploy writes (json.dumps) are JSON's
        except ValueError:
            return token[1:-1]
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token


# ----------------------------------------------------------------------------------------------- the check


def check_model_folder(model_dir: Path, version: str = "1", final: Path | None = None) -> None:
    """Refuse (ModelFileError, exit code 2) a Triton model folder whose config.pbtxt or labels do not match the
    .onnx in its version folder, naming each mismatch. `final`: where a folder written under a temporary name will
    be (the model name must be its name; messages name it)."""
    shown = final or model_dir
    config_path = model_dir / "config.pbtxt"
    model_path = model_dir / version / "model.onnx"
    for required in (config_path, model_path):
        if not required.is_file():
            raise ModelFileError(f"{shown}: no {required.relative_to(model_dir)}; not a Triton model folder")
    try:
        config = parse_pbtxt(config_path.read_text(encoding="utf-8"))
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{shown / config_path.name}: not a readable model configuration ({e})") from None
    problems = config_mismatches(config, model_dir, graph_signature(model_path), shown.name)
    if config.get("backend") == "python" and not (model_dir / version / "model.py").is_file():
        problems.append(f"backend python but no {version}/model.py")
    if problems:
        raise ModelFileError(f"{shown} does not match {model_path.name}:\n  - " + "\n  - ".join(problems))


def graph_signature(path: Path) -> dict[str, dict[str, tuple[str, list]]]:
    """{"input"|"output": {name: (Triton data type, shape with None or a name for dynamic axes)}}, through ONNX
    Runtime (optimizations off, CPU)."""
    with open_runtime("ort", path, "cpu", graph_optimization="disabled") as opened:
        session = opened.session  # ORT's own: its type strings are what TRITON_TYPES maps
        return {
            "input": {t.name: (TRITON_TYPES.get(t.type, t.type), list(t.shape)) for t in session.get_inputs()},
            "output": {t.name: (TRITON_TYPES.get(t.type, t.type), list(t.shape)) for t in session.get_outputs()},
        }


def config_mismatches(config: dict[str, Any], model_dir: Path, graph: dict[str, dict[str, tuple[str, list]]],
                      folder_name: str | None = None) -> list[str]:
    problems = []
    folder_name = folder_name or model_dir.name
    if config.get("name", folder_name) != folder_name:
        problems.append(f"name {config.get('name')!r} is not the folder's name {folder_name!r}")
    max_batch = int(config.get("max_batch_size", 0))
    for kind in ("input", "output"):
        declared = {entry.get("name"): entry for entry in config.get(kind, [])}
        for name in graph[kind].keys() - declared.keys():
            problems.append(f"{kind} {name!r} of the graph is not in config.pbtxt")
        for name, entry in declared.items():
            if name not in graph[kind]:
                problems.append(f"{kind} {name!r} is not a graph {kind} (it has {sorted(graph[kind])})")
                continue
            problems += tensor_mismatches(kind, name, entry, *graph[kind][name], max_batch)
    problems += label_mismatches(config, model_dir)
    return problems


def tensor_mismatches(kind: str, name: str, entry: dict[str, Any], dtype: str, shape: list, max_batch: int
                      ) -> list[str]:
    problems = []
    if entry.get("data_type") != dtype:
        problems.append(f"{kind} {name!r}: data_type {entry.get('data_type')} but the graph has {dtype}")
    item = shape[1:] if max_batch > 0 else shape
    dims = [int(d) for d in entry.get("dims", [])]
    graph_dims = [d if isinstance(d, int) else -1 for d in item]
    if dims != graph_dims:
        what = "without the batch axis " if max_batch > 0 else ""
        problems.append(f"{kind} {name!r}: dims {dims} but the graph's {what}are {graph_dims}")
    if max_batch > 0 and shape and isinstance(shape[0], int):
        problems.append(f"{kind} {name!r}: max_batch_size {max_batch} needs a dynamic batch axis, but the graph "
                        f"fixes it at {shape[0]}")
    return problems


def label_mismatches(config: dict[str, Any], model_dir: Path) -> list[str]:
    problems = []
    for output in config.get("output", []):
        filename = output.get("label_filename")
        if not filename:
            continue
        labels_path = model_dir / filename
        if not labels_path.is_file():
            problems.append(f"output {output.get('name')!r}: label_filename {filename!r} is missing")
            continue
        count = len(labels_path.read_text(encoding="utf-8").splitlines())
        classes = 1
        for d in output.get("dims", []):
            classes *= int(d)
        if count != classes:
            problems.append(f"{filename} has {count} labels but output {output.get('name')!r} has {classes} classes")
    return problems
