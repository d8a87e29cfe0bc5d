"""`vitdeploy triton`: a Triton Inference Server model repository for a vitdeploy .onnx, loadable the first time.

    DIR/<name>/config.pbtxt   platform onnxruntime_onnx (or backend python), max_batch_size, dims WITHOUT the
                              batch axis, dynamic_batching, instance_group, GPU accelerators only when asked for
    DIR/<name>/1/model.onnx   the exported file, byte for byte (its external .data file beside it, if any)
    DIR/<name>/1/model.py     --backend python only: vitdeploy.serving.triton_model, which runs the file through
                              vitdeploy's runtimes (the runtime and precision it was made for)
    DIR/<name>/labels.txt     one label per line, named by the output's label_filename
    DIR/README.md             the tritonserver and client commands, and the preprocessing clients must apply
    DIR/inferenceservice.yaml KServe's InferenceService for DIR (vitdeploy.serving.kserve)

What was written is then checked against the .onnx it holds (vitdeploy.serving.repository_check).

Core install only: the model is described through ONNX Runtime (no torch, no onnx package) and the file is copied.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdeploy.core.atomic import atomic_folder, atomic_write_many, remove_stale_staging
from vitdeploy.core.config import PreprocessSpec
from vitdeploy.core.notes import Notes
from vitdeploy.errors import ConfigError, InputError, VitDeployError
from vitdeploy.files.discovery import resolve_model
from vitdeploy.files.onnx_file import IMAGE_INPUT_NAME, INPUT_NAME, OUTPUT_NAME, OnnxModelInfo, external_data_path
from vitdeploy.files.outputs import TRITON, check_output_folder, files_below
from vitdeploy.requests import MAX_QUEUE_DELAY_MS, TRITON_MAX_BATCH, TritonOptions
from vitdeploy.runtimes import open_to_read
from vitdeploy.serving import kserve, triton_model
from vitdeploy.serving.protocol import PLATFORM, check_dynamic_batch, item_shape
from vitdeploy.serving.repository_check import check_model_folder

DEVICES = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
BACKENDS = ("onnxruntime", "python")
TENSORRT_PRECISIONS = ("fp32", "fp16")
# bench variant whose --p99-budget recommendation sizes the batches, per --device
BENCH_VARIANT = {"cpu": "ort-cpu", "gpu": "ort-cuda"}
# A name Triton, a file system and a URL path all take as it is.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
LABELS_FILE = "labels.txt"
# What write_model_folder writes into <out>/<name>/: a folder holding anything else is not replaced.
MODEL_FOLDER_FILE = re.compile(r"config\.pbtxt|labels\.txt|1/model\.onnx|1/[^/]+\.onnx\.data")
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.01-py3"
# The PyPI wheel that holds a tritonserver with the Python backend (README, docs/serve.md, .ci/run)
PYTRITON_VERSION, PYTRITON_SERVER = "0.7.0", "2.51"


class Enum(str):
    """A protobuf enum value: written without quotes."""


@dataclass
class TritonRepository:
    root: Path
    model_dir: Path
    name: str
    config_text: str
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    inference_service: dict[str, Any] = field(default_factory=dict)  # KServe's, written to DIR/kserve.FILE_NAME

    def to_dict(self) -> dict[str, Any]:
        return {"repository": str(self.root), "model": str(self.model_dir), "name": self.name,
                "config": self.config, "notes": self.notes, "inference_service": self.inference_service}


# ------------------------------------------------------------------------------------------ the config


def render_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """A nested dict as protobuf text format: lists of messages in [ ], scalars quoted unless numbers or Enum,
    map fields given as {"__map__": {key: value}} written as repeated key/value entries."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if isinstance(value, dict) and "__map__" in value:
            for k, v in value["__map__"].items():
                lines.append(f"{pad}{key} {{ key: {_scalar(k)} value: {_value(v, indent + 1)} }}")
        elif isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{render_pbtxt(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join(f"{pad}  {{\n{render_pbtxt(v, indent + 2)}{pad}  }}" for v in value)
            lines.append(f"{pad}{key} [\n{items}\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def _value(value: Any, indent: int) -> str:
    return f"{{ {render_pbtxt(value, 0).strip()} }}" if isinstance(value, dict) else _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Enum)):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)  # quoted; names and parameters are checked to be plain


def build_config(name: str, info: OnnxModelInfo, shape: tuple, options: TritonOptions,
                 batching: dict[str, Any]) -> dict[str, Any]:
    """The model configuration as a dict in the shape of Triton's ModelConfig message."""
    if info.image_input:  # export --image-input: the decoded image, any size; Triton batches equal sizes only
        if options.tensorrt or options.cuda_graphs:
            raise ConfigError(f"{info.path} takes images of any size: TensorRT profiles and CUDA graphs need fixed "
                              "shapes; leave out --tensorrt and --cuda-graphs")
        item: tuple[int, int, int] = (-1, -1, -1)
        model_input = {"name": IMAGE_INPUT_NAME, "data_type": Enum("TYPE_UINT8"), "dims": list(item)}
    else:
        item = item_shape(info.path, shape)
        model_input = {"name": INPUT_NAME, "data_type": Enum("TYPE_FP32"), "format": Enum("FORMAT_NCHW"),
                       "dims": list(item)}
    # The ONNX Runtime backend runs the file itself; the Python backend runs model.py (vitdeploy.serving.triton_model)
    runs_it = {"platform": PLATFORM} if options.backend == "onnxruntime" else {"backend": "python"}
    config: dict[str, Any] = {
        "name": name,
        **runs_it,
        "max_batch_size": batching["max_batch_size"],
        # dims leave out the batch axis: with max_batch_size > 0 Triton adds it ([-1, 3, H, W] in metadata)
        "input": [model_input],
        "output": [{"name": OUTPUT_NAME, "data_type": Enum("TYPE_FP32"), "dims": [len(info.labels)],
                    "label_filename": LABELS_FILE}],
    }
    if options.dynamic_batching and not info.batch_dependence:
        dynamic: dict[str, Any] = {}
        if batching["preferred_batch_sizes"]:
            dynamic["preferred_batch_size"] = list(batching["preferred_batch_sizes"])
        dynamic["max_queue_delay_microseconds"] = batching["max_queue_delay_us"]
        config["dynamic_batching"] = dynamic
    config["instance_group"] = [{"count": options.instances, "kind": Enum(DEVICES[options.device])}]
    accelerator = gpu_accelerator(options, batching["max_batch_size"], item)
    if accelerator:
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}
    if options.backend == "python":
        config["parameters"] = {"__map__": {key: {"string_value": value}
                                            for key, value in python_parameters(info.path).items()}}
    return config


def python_parameters(model: Path) -> dict[str, str]:
    """model.py's settings: the runtime the file was made for, and python_path, the folders this vitdeploy and its
    libraries are imported from (Triton's stub ignores PYTHONPATH and virtual environments; edit it for another
    machine)."""
    from vitdeploy.runtimes.registry import runtime_for_file

    package_root = str(Path(triton_model.__file__).resolve().parents[2])  # the folder that holds vitdeploy/
    folders = [package_root] + [p for p in site.getsitepackages() if p != package_root]
    return {"runtime": runtime_for_file(model), "python_path": os.pathsep.join(folders)}


def gpu_accelerator(options: TritonOptions, max_batch: int, item: tuple[int, int, int]) -> dict[str, Any] | None:
    """ONNX Runtime's TensorRT (or CUDA) execution accelerator with the parameters asked for, else None."""
    params: dict[str, str] = {}
    if options.tensorrt:
        dims = "x".join(str(d) for d in item)
        params = {
            "precision_mode": options.tensorrt.upper(),
            "max_workspace_size_bytes": str(1 << 30),
            # One engine for every batch size the batcher forms, built once and cached across restarts.
            "trt_profile_min_shapes": f"{INPUT_NAME}:1x{dims}",
            "trt_profile_opt_shapes": f"{INPUT_NAME}:{max_batch}x{dims}",
            "trt_profile_max_shapes": f"{INPUT_NAME}:{max_batch}x{dims}",
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": "/tmp/vitdeploy-trt-cache",
        }
        if options.cuda_graphs:
            params["trt_cuda_graph_enable"] = "1"
        return {"name": "tensorrt", "parameters": {"__map__": params}}
    if options.cuda_graphs:
        return {"name": "cuda", "parameters": {"__map__": {"enable_cuda_graph": "1"}}}
    return None


# ------------------------------------------------------------------------------------- batching policy


def batching_policy(options: TritonOptions, info: OnnxModelInfo) -> tuple[dict[str, Any], Notes]:
    """max_batch_size, preferred sizes and queue delay: explicit options first, then a bench report, then defaults.

    From a report made with `vitdeploy bench --p99-budget MS`: the recommended batch size (the largest whose p99
    meets the budget) becomes the preferred and the largest batch, and the queue delay is what the budget leaves
    after that batch's p99, so that waiting plus running stays within it.
    """
    notes = Notes()
    max_batch, preferred, delay_ms = TRITON_MAX_BATCH, (), MAX_QUEUE_DELAY_MS
    if options.from_bench is not None:
        rec = bench_recommendation(options.from_bench, BENCH_VARIANT[options.device], info)
        max_batch, preferred = rec["batch_size"], (rec["batch_size"],)
        delay_ms = max(0.0, rec["p99_budget_ms"] - rec["p99_ms"])
        notes.add(
            f"from {options.from_bench}: batch {rec['batch_size']} meets the p99 budget of {rec['p99_budget_ms']} ms "
            f"on {BENCH_VARIANT[options.device]} (p99 {rec['p99_ms']} ms), leaving {delay_ms:.3f} ms of queue delay"
        )
    if options.max_batch_size is not None:
        max_batch = options.max_batch_size
    if options.preferred_batch_sizes:
        preferred = tuple(options.preferred_batch_sizes)
    if options.max_queue_delay_ms is not None:
        delay_ms = options.max_queue_delay_ms
    if max_batch < 1:  # Triton's 0 means "no batch axis"; a vitdeploy model always has one
        raise ConfigError(f"--max-batch-size must be at least 1, got {max_batch}")
    if delay_ms < 0:
        raise ConfigError(f"--max-queue-delay-ms must not be negative, got {delay_ms}")
    if any(b < 1 or b > max_batch for b in preferred):
        raise ConfigError(f"--preferred-batch-sizes must be at least 1 and at most --max-batch-size ({max_batch}); "
                          f"got {', '.join(map(str, preferred))}")
    return {"max_batch_size": max_batch, "preferred_batch_sizes": preferred,
            "max_queue_delay_us": round(delay_ms * 1000)}, notes


def bench_recommendation(path: Path, variant: str, info: OnnxModelInfo) -> dict[str, Any]:
    from vitdeploy.benchmark.report import load_report

    report = load_report(path)
    measured = (report.get("model") or {}).get("config")
    if measured and info.model_config is not None and measured != info.model_config.to_dict():
        raise ConfigError(f"{path} measured a different model (its config differs from {info.path}'s)")
    recommendation = report.get("recommendation") or {}
    per_variant = recommendation.get("per_variant") or {}
    rec = per_variant.get(variant)
    if not rec:
        have = [name for name, r in per_variant.items() if r]
        raise ConfigError(
            f"{path} has no batch size recommendation for {variant}"
            + (f" (it has one for: {', '.join(have)})" if have else "")
            + f"; run `vitdeploy bench MODEL --variants {variant} --p99-budget MS --output {path.name}`"
        )
    return {**rec, "p99_budget_ms": recommendation["p99_budget_ms"]}


# ------------------------------------------------------------------------------------------- checks


def check_options(options: TritonOptions) -> None:
    if options.device not in DEVICES:
        raise ConfigError(f"unknown --device {options.device!r}; choose one of: {', '.join(DEVICES)}")
    if options.backend not in BACKENDS:
        raise ConfigError(f"unknown --backend {options.backend!r}; choose one of: {', '.join(BACKENDS)}")
    if options.backend == "python" and options.device != "cpu":
        raise ConfigError("--backend python runs the model on the server's CPU through vitdeploy's runtimes; for a "
                          "GPU server use --backend onnxruntime")
    if options.instances < 1:
        raise ConfigError("--instances must be at least 1")
    if options.storage_uri is not None:
        kserve.check_storage_uri(options.storage_uri)
    if options.tensorrt is not None and options.tensorrt not in TENSORRT_PRECISIONS:
        raise ConfigError(f"unknown --tensorrt {options.tensorrt!r}; choose one of: {', '.join(TENSORRT_PRECISIONS)}")
    if options.device == "cpu" and (options.tensorrt or options.cuda_graphs):
        raise ConfigError("--tensorrt and --cuda-graphs are GPU accelerators; add --device gpu")
    if options.cuda_graphs and options.dynamic_batching:
        raise ConfigError(
            "--cuda-graphs: ONNX Runtime replays a captured CUDA graph only for the input shape it was captured "
            "with, and dynamic batching changes the batch size from call to call; add --no-dynamic-batching "
            "(and have every client send the same batch size)"
        )


def check_model_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"model name {name!r} is not a valid repository directory name: use letters, digits, '_', '-' and "
            "'.', starting with a letter or digit, at most 128 characters (--name)"
        )
    return name


def default_name(model: Path) -> str:
    """The file name without .onnx: model.int8.onnx -> model.int8."""
    return model.name.removesuffix(".onnx")


# ------------------------------------------------------------------------------------------- writing


def write_triton_repository(model: Path | None, out: Path, options: TritonOptions) -> TritonRepository:
    """Write (or replace) DIR/<name>/ for `model` and DIR/README.md. Refuses, before writing anything, a model
    whose batch axis is fixed, a bad name, a model folder already there that is not a Triton model folder, and an
    `out` that is not a new or empty folder or a repository vitdeploy wrote (unless options.force; outputs.py)."""
    check_options(options)
    check_output_folder(out, TRITON, force=options.force, option="--out")
    path = resolve_model(model)
    name = check_model_name(options.name or default_name(path))
    with open_to_read(path) as session:  # ONNX Runtime reads it: the file is Triton's onnxruntime backend's to run
        info, shape = session.info, session.input_shape
    check_dynamic_batch(path, shape)
    if any("\n" in label or "\r" in label for label in info.labels):
        raise ConfigError(f"{path}: a label contains a line break, which labels.txt cannot hold")
    batching, notes = batching_policy(options, info)
    if options.dynamic_batching and info.batch_dependence:
        notes.add(f"{path.name}: no dynamic_batching: {info.batch_dependence}, so Triton must not put one "
                     "client's images in a batch with another's; each request runs alone")
    config = build_config(name, info, shape, options, batching)
    text = f"# Written by vitdeploy triton from {path.name}\n" + render_pbtxt(config)
    storage_uri = options.storage_uri or kserve.PLACEHOLDER_URI.format(folder=out.resolve().name)
    if options.storage_uri is None:
        notes.add(f"{kserve.FILE_NAME}: storageUri is a placeholder; upload {out} and pass --storage-uri")
    service = kserve.inference_service(name, storage_uri, options.device)

    model_dir = out / name
    if model_dir.exists() and not (model_dir / "config.pbtxt").is_file():
        raise ConfigError(f"{model_dir} exists and is not a Triton model folder; choose another --out or --name")
    added = ([name for name in files_below(model_dir) if not MODEL_FOLDER_FILE.fullmatch(name)]
             if model_dir.is_dir() else [])
    if added:  # the folder is replaced whole: never over files vitdeploy did not write, --force or not
        raise InputError(f"{model_dir} holds files vitdeploy triton did not write: {', '.join(added[:5])}; move them "
                         "or choose another --out or --name")
    readme = repository_readme(name, info, config, out) + kserve.readme_section(
        name, service, options.storage_uri is None, OUTPUT_NAME)
    # The model folder is written and checked under a temporary name, then renamed over the old one: Triton (or a
    # second run) never sees a half-copied model, and a folder that fails the check is never put in place. The
    # README (which marks the folder as vitdeploy's) is in place before the model folder.
    remove_stale_staging(model_dir)
    with atomic_folder(model_dir, replace=True) as staging:
        write_model_folder(staging, path, info.labels, text, python_model=options.backend == "python")
        check_model_folder(staging, final=model_dir)  # what Triton will load, against the file it holds
        atomic_write_many({
            out / "README.md": lambda tmp: tmp.write_text(readme, encoding="utf-8"),
            out / kserve.FILE_NAME: lambda tmp: tmp.write_text(
                f"# Written by vitdeploy triton for {name}\n" + kserve.render_yaml(service), encoding="utf-8"),
        })
    return TritonRepository(out, model_dir, name, text, config, notes, service)


def write_model_folder(folder: Path, model: Path, labels: list[str], config_text: str, python_model: bool = False
                       ) -> None:
    """One Triton model folder: 1/model.onnx (and its .onnx.data), labels.txt, config.pbtxt; 1/model.py for the
    Python backend."""
    try:
        (folder / "1").mkdir()
        shutil.copyfile(model, folder / "1" / "model.onnx")
        if python_model:
            shutil.copyfile(triton_model.__file__, folder / "1" / "model.py")
        external = external_data_path(model)
        if external.is_file():  # the graph names its weights file; it keeps its name beside the copy
            shutil.copyfile(external, folder / "1" / external.name)
        (folder / LABELS_FILE).write_text("".join(label + "\n" for label in labels), encoding="utf-8")
        (folder / "config.pbtxt").write_text(config_text, encoding="utf-8")
    except OSError as e:
        raise VitDeployError(f"cannot write the Triton repository under {folder.parent}: {e}") from None


def _infer_batch(name: str, input_name: str, datatype: str) -> str:
    """The client's request: `batch` to model `name`, and the top label of its first image."""
    return f"""client = httpclient.InferenceServerClient("localhost:8000")
pixels = httpclient.InferInput("{input_name}", list(batch.shape), "{datatype}")
pixels.set_data_from_numpy(batch)
logits = client.infer("{name}", [pixels]).as_numpy("{OUTPUT_NAME}")
labels = open("{name}/{LABELS_FILE}").read().splitlines()
print(labels[int(logits[0].argmax())])"""


def tensor_client(name: str, spec: PreprocessSpec, steps: str) -> str:
    return f"""## Client

The server takes preprocessed tensors. Preprocess exactly as vitdeploy does:

{steps}

With vitdeploy installed, `vitdeploy.prediction.local.load_model_input(path, spec)` is that function. A client:

```python
import numpy as np
import tritonclient.http as httpclient
from vitdeploy.core.config import PreprocessSpec
from vitdeploy.prediction.local import load_model_input

spec = PreprocessSpec.from_dict({json.dumps(spec.to_dict())})
batch = np.stack([load_model_input("cat.jpg", spec)])
{_infer_batch(name, INPUT_NAME, "FP32")}
```

"""


def image_client(name: str, spec: PreprocessSpec, layout: str = "hwc") -> str:
    planar = "" if layout == "hwc" else "\nbatch = batch.transpose(0, 3, 1, 2)  # the file takes [1, channels, height, width]"
    return f"""## Client

The model takes the decoded image itself, of any size: its graph resizes ({spec.interpolation}), crops and
normalizes as vitdeploy does (Pillow's arithmetic, within one level of 1/255 of `vitdeploy predict`'s pixels). Send
what Pillow decodes: 8-bit grey, grey + alpha, RGB or RGBA, EXIF orientation applied, an embedded colour profile
converted to sRGB as browsers and `vitdeploy predict` convert it (transparency is composited on white inside the
graph). One image per request, or a batch of images of one size:

```python
import io

import numpy as np
import tritonclient.http as httpclient
from PIL import Image, ImageCms, ImageOps

image = ImageOps.exif_transpose(Image.open("cat.jpg"))
if image.info.get("icc_profile") and image.mode in ("RGB", "RGBA"):  # e.g. Adobe RGB: to sRGB
    image = ImageCms.profileToProfile(image, io.BytesIO(image.info["icc_profile"]), ImageCms.createProfile("sRGB"))
image = np.asarray(image)  # uint8 [height, width, channels]
if image.ndim == 2:
    image = image[..., None]  # grey: one channel
batch = image[None]  # [1, height, width, channels]{planar}
{_infer_batch(name, IMAGE_INPUT_NAME, "UINT8")}
```

"""


def preprocessing_steps(spec: PreprocessSpec) -> list[str]:
    order = "BGR (channels reversed)" if spec.channel_order == "BGR" else "RGB"
    return [
        ("decode to 8-bit RGB (EXIF orientation applied, an embedded colour profile converted to sRGB, "
         "transparency composited on white)"),
        f"resize the shorter side to {spec.resize_size} px ({spec.interpolation}), keeping the aspect ratio",
        f"center-crop {spec.image_size}x{spec.image_size}",
        f"scale to [0, 1], subtract mean {list(spec.mean)}, divide by std {list(spec.std)}, channel order {order}",
        f"float32, NCHW: [batch, 3, {spec.image_size}, {spec.image_size}]",
    ]


def docker_serve_section(config: dict[str, Any], opset: Any) -> str:
    gpus = " --gpus all" if config["instance_group"][0]["kind"] == "KIND_GPU" else ""
    return f"""From the folder that holds this README (any Triton release whose ONNX Runtime reads opset {opset or "?"} will do):

```
docker run --rm{gpus} -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD":/models \\
    {TRITON_IMAGE} tritonserver --model-repository=/models
```
"""


def python_serve_section(config: dict[str, Any]) -> str:
    parameters = config["parameters"]["__map__"]
    return f"""Triton's Python backend runs `1/model.py`, which opens `1/model.onnx` with vitdeploy's
`{parameters["runtime"]["string_value"]}` runtime. Any Triton with the Python backend will do; without Docker, the
`nvidia-pytriton` wheel holds one (tritonserver {PYTRITON_SERVER}, Python backend only, CPU is enough). Its
`requirements` pin numpy < 2, so install it without them, beside (not into) vitdeploy's environment, then put the
Python backend's stub for your Python version where the backend looks for it:

```
pip install --no-deps --target ~/.cache/vitdeploy/tritonserver nvidia-pytriton=={PYTRITON_VERSION}
T=~/.cache/vitdeploy/tritonserver/pytriton/tritonserver
cp $T/python_backend_stubs/$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')/triton_python_backend_stub $T/backends/python/
$T/bin/tritonserver --model-repository "$PWD" --backend-directory $T/backends --allow-metrics false
```

The stub ignores PYTHONPATH and virtual environments: config.pbtxt's `python_path` parameter names the folders
model.py imports vitdeploy, numpy and the runtime from (this machine's, as written); edit it for another machine.
The stub links the system's `libpython3.X.so.1.0` (Debian: `apt-get install libpython3.11`).
"""


def repository_readme(name: str, info: OnnxModelInfo, config: dict[str, Any], out: Path) -> str:
    spec = info.preprocess
    steps = "\n".join(f"{i}. {step}" for i, step in enumerate(preprocessing_steps(spec), 1))
    if info.image_input:
        layout = info.image_input.get("layout", "hwc")
        axes = "height, width, channels" if layout == "hwc" else "channels, height, width"
        input_line = (f"Input `{IMAGE_INPUT_NAME}` UINT8 [batch, {axes}]: the decoded image itself, "
                      "any size, 1-4 channels (THE preprocessing is inside the graph; the images of one request share "
                      "one size)")
        client = image_client(name, spec, layout)
    else:
        input_line = (f"Input `{INPUT_NAME}` FP32 [batch, 3, {spec.image_size}, {spec.image_size}] "
                      "(already preprocessed)")
        client = tensor_client(name, spec, steps)
    opset = info.export.get("opset")
    batching = config.get("dynamic_batching")
    python = config.get("backend") == "python"
    runs = "backend python (1/model.py)" if python else f"platform {PLATFORM}"
    model_py = "\n    1/model.py       runs 1/model.onnx through vitdeploy's runtimes (vitdeploy.serving.triton_model)" \
        if python else ""
    return f"""# Triton model repository: {name}

Written by `vitdeploy triton` from `{info.path}`.

```
{out.name}/
  {name}/
    config.pbtxt     {runs}, max_batch_size {config['max_batch_size']}, {len(info.labels)} classes
    labels.txt       one label per line (the output's label_filename)
    1/model.onnx     the exported file, unchanged{model_py}
```

{input_line}, output `{OUTPUT_NAME}` FP32
[batch, {len(info.labels)}]. Dynamic batching: {json.dumps(batching) if batching else "off"}.

## Serve it

{python_serve_section(config) if python else docker_serve_section(config, opset)}
Then:

```
curl -sf localhost:8000/v2/health/ready && echo ready
curl -s localhost:8000/v2/models/{name}
```

`vitdeploy serve {name}/1/model.onnx --name {name}` (from this folder) serves the same file with the same
protocol on a laptop, on the same port, so the client below talks to either unchanged.

{client}
(`pip install "vitdeploy[serve]"` brings tritonclient.)
"""
