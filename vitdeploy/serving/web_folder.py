"""`vitdeploy web`: a static folder that runs a vitdeploy .onnx in the browser, for any web server.

    OUT/index.html                 a page: pick an image, see the top-5 (vitdeploy.js does the work)
    OUT/vitdeploy.js               decode, THE preprocessing (bit-identical with images.py), onnxruntime-web, top-k
    OUT/model.onnx                 the model, byte for byte
    OUT/ort/                       onnxruntime-web's module and WebAssembly (nothing is fetched from a CDN)
    OUT/config.json, OUT/preprocessor_config.json, OUT/onnx/model.onnx
                                   what transformers.js reads: id2label, and the model with THE preprocessing in
                                   its graph (exporting/image_input.py, layout "chw"), which takes the decoded
                                   image as transformers.js hands it over when preprocessor_config.json turns every
                                   step off; transformers.js's own resize (sharp in Node, a canvas in browsers) is
                                   not Pillow's and changed up to a quarter of the answers
    OUT/serve.py, OUT/README.md    a server that sends the isolation headers; how to serve it

The folder is staged beside OUT and renamed into place. OUT follows outputs.py's rule: new, empty, or a folder this
command wrote (its .vitdeploy marker says "web"), which is then replaced; with --force, a folder of other files,
which are kept (and no marker: the folder stays the user's).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vitdeploy.core.atomic import reported_as
from vitdeploy.core.config import PreprocessSpec
from vitdeploy.core.extras import importable
from vitdeploy.errors import MissingExtra
from vitdeploy.files.discovery import resolve_model
from vitdeploy.files.onnx_file import OnnxModelInfo, parse_metadata
from vitdeploy.files.onnx_wire import metadata_props_from_bytes
from vitdeploy.files.outputs import (
    MARKER,
    FolderKind,
    check_output_folder,
    entries,
    marked,
    write_marker,
)
from vitdeploy.runtimes.base import check_model_file
from vitdeploy.runtimes import WEB_ASSETS as ASSETS
from vitdeploy.runtimes import check_web_file, check_web_size
from vitdeploy.runtimes import check_web_variant as check_variant
from vitdeploy.runtimes import web_toolchain as toolchain

PAGE_FILES = ("index.html", "vitdeploy.js", "serve.py")
WEB_KIND = "web"  # the kind in the folder's .vitdeploy marker (outputs.py's rule for -o)
WEB = FolderKind("web folder", "vitdeploy web", marked(WEB_KIND))
# Hugging Face's resample codes (PIL's): what transformers.js and transformers read from preprocessor_config.json.
HF_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}


@dataclass(frozen=True)
class WebFolder:
    path: Path
    model: Path
    files: tuple[str, ...]  # relative paths, sorted
    size_bytes: int


def write_web_folder(model: Path | None, out: Path, force: bool = False) -> WebFolder:
    path = resolve_model(model)
    check_model_file(path)
    check_web_size(path, path.stat().st_size)
    data = path.read_bytes()
    check_web_file(path, data)
    metadata = metadata_props_from_bytes(data)
    info = parse_metadata(path, metadata)
    check_variant(path, metadata, "wasm", info.precision)
    out = check_output_folder(out, WEB, force=force)
    dist = toolchain.ensure_ort_web()
    out.parent.mkdir(parents=True, exist_ok=True)
    with reported_as(out), tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as staging:
        stage = Path(staging) / "folder"
        _write(stage, path, info, dist)
        write_marker(stage, WEB_KIND)
        files = tuple(sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file()))
        size = sum((stage / f).stat().st_size for f in files)
        _place(stage, out, Path(staging))
    return WebFolder(out, path, files, size)


def _write(stage: Path, model: Path, info: OnnxModelInfo, dist: Path) -> None:
    (stage / "ort").mkdir(parents=True)
    (stage / "onnx").mkdir()
    for name in PAGE_FILES:
        shutil.copyfile(ASSETS / name, stage / name)
    for name in toolchain.ORT_WEB_FILES:
        shutil.copyfile(dist / name, stage / "ort" / name)
    shutil.copyfile(model, stage / "model.onnx")
    raw = raw_image_model(model, info)
    (stage / "onnx" / "model.onnx").write_bytes(raw if raw is not None else model.read_bytes())
    _write_json(stage / "config.json", transformers_config(info))
    _write_json(stage / "preprocessor_config.json",
                RAW_IMAGE_PREPROCESSOR if raw is not None else preprocessor_config(info.preprocess))
    (stage / "README.md").write_text(readme(model, info), encoding="utf-8")


def raw_image_model(model: Path, info: OnnxModelInfo) -> bytes | None:
    """The model with THE preprocessing in its graph, taking pixel_values float32 [1, C, H, W] of 0..255 as
    transformers.js hands them over: checked (image_input.check_pixels) before it is written. None for a nearest
    model: onnxruntime-web has no float64, and Pillow's nearest positions need it (float32 ones pick other pixels);
    its folder keeps the model itself and the preprocessing steps in preprocessor_config.json."""
    if info.preprocess.interpolation == "nearest":
        return None
    if not importable("onnx"):
        raise MissingExtra("vitdeploy web builds the transformers.js model with onnx, which this installation lacks: "
                           "pip install \"vitdeploy[train]\" (or pip install onnx)")
    import onnx

    from vitdeploy.exporting.image_input import check_pixels, with_image_input

    proto = with_image_input(onnx.load(os.fspath(model)), info.preprocess, "chw", wide=False,  # onnxruntime-web
                             dtype="float32")
    check_pixels(proto, info.preprocess, "chw", dtype="float32")
    return proto.SerializeToString()


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _place(stage: Path, out: Path, staging: Path) -> None:
    """Rename the staged folder into place; a previous web folder (every file in it one this command wrote) goes into
    the staging area (removed with it). A folder of other files (--force) keeps them: the folder's files are moved
    in beside them, replacing namesakes, and no marker: it stays the user's folder, never replaced whole later."""
    if out.is_dir() and entries(out) and not WEB.recognise(out):
        for file in sorted(p for p in stage.rglob("*") if p.is_file() and p.name != MARKER):
            target = out / file.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
        return
    if out.exists():
        os.replace(out, staging / "previous")
    os.replace(stage, out)


def transformers_config(info: OnnxModelInfo) -> dict:
    """config.json as transformers.js reads it: a ViT image classifier, its labels, and fp32 (it would otherwise
    look for a q8 file on WebAssembly)."""
    cfg = info.model_config
    config: dict = {
        "model_type": "vit",
        "architectures": ["ViTForImageClassification"],
        "id2label": {str(i): label for i, label in enumerate(info.labels)},
        "label2id": {label: i for i, label in enumerate(info.labels)},
        "num_labels": len(info.labels),
        "image_size": info.preprocess.image_size,
        "num_channels": 3,
        "transformers.js_config": {"dtype": "fp32"},
    }
    if cfg is not None:
        config.update(patch_size=cfg.patch_size, hidden_size=cfg.dim, num_hidden_layers=cfg.depth,
                      num_attention_heads=cfg.num_heads, intermediate_size=int(cfg.dim * cfg.mlp_ratio),
                      layer_norm_eps=cfg.layer_norm_eps, qkv_bias=cfg.qkv_bias)
    return config


# transformers.js (and Python transformers) hand the decoded image to the model as it is: the model's graph does THE
# preprocessing. Channels as decoded (do_convert_rgb off): the graph composites transparency on white and copies grey
# to RGB as vitdeploy's decoder does, where transformers.js's rgb() would drop alpha and refuse grey + alpha.
RAW_IMAGE_PREPROCESSOR = {
    "image_processor_type": "ViTImageProcessor",
    "do_convert_rgb": False,
    "do_resize": False,
    "do_center_crop": False,
    "do_rescale": False,
    "do_normalize": False,
    "do_pad": False,
    "do_flip_channel_order": False,
}


def preprocessor_config(spec: PreprocessSpec) -> dict:
    """Every field explicit, in the Hugging Face image processor whose steps are the spec's: shorter side then
    crop (CLIPImageProcessor: shortest_edge, truncated like images.shorter_side_size), or a square resize (ViT),
    then a crop where the spec has one (DeiT)."""
    crop = spec.resize_size != spec.image_size
    if spec.resize_mode == "shorter_side":
        processor, size = "CLIPImageProcessor", {"shortest_edge": spec.resize_size}
    else:
        processor = "DeiTImageProcessor" if crop else "ViTImageProcessor"
        size = {"height": spec.resize_size, "width": spec.resize_size}
    return {
        "image_processor_type": processor,
        "do_convert_rgb": True,
        "do_resize": True,
        "size": size,
        "resample": HF_RESAMPLE[spec.interpolation],
        "do_center_crop": crop or spec.resize_mode == "shorter_side",
        "crop_size": {"height": spec.image_size, "width": spec.image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(spec.mean),
        "image_std": list(spec.std),
        "do_flip_channel_order": spec.channel_order == "BGR",
        "do_pad": False,
    }


def readme(model: Path, info: OnnxModelInfo) -> str:
    spec = info.preprocess
    transformers_js = (
        "`onnx/model.onnx` is this model with its preprocessing (below) inside the graph: transformers.js hands it "
        "the decoded image as it is (preprocessor_config.json turns its resize, crop and normalization off: its "
        "resize is not Pillow's), and the graph does the rest, within one level of 1/255 of vitdeploy's pixels."
        if spec.interpolation != "nearest" else
        "`onnx/model.onnx` is the model itself and preprocessor_config.json states each step; transformers.js "
        "resizes with its own filters (sharp in Node, a canvas in browsers), which are not Pillow's.")
    return f"""# {model.name} in the browser

Written by `vitdeploy web` from `{model}` ({len(info.labels)} classes, {info.precision},
input {spec.image_size}x{spec.image_size}). Everything the page needs is in this folder: nothing is fetched from
a CDN.

## Serve it

    python3 serve.py 8000        # then open http://127.0.0.1:8000/

Any static web server works if it sends these headers on every file. Without them the page still runs, on
one WebAssembly thread: more threads need a cross-origin isolated page (SharedArrayBuffer).

    Cross-Origin-Opener-Policy: same-origin
    Cross-Origin-Embedder-Policy: require-corp

nginx: `add_header Cross-Origin-Opener-Policy same-origin always;` and the same for
`Cross-Origin-Embedder-Policy require-corp`; serve `.mjs` as `text/javascript` and `.wasm` as `application/wasm`.
Opening `index.html` as a `file://` URL does not work (the browser refuses to fetch the model and WebAssembly).

## Files

- `index.html`: pick an image, see the top 5. `vitdeploy.js`: the module it uses; your own page can too:

      import {{ loadModel, decodeImage, preprocess, topK }} from './vitdeploy.js';
      const model = await loadModel('model.onnx', {{device: 'wasm', threads: 2}});
      const logits = await model.run(preprocess(await decodeImage(file), model.spec));
      console.log(topK(logits, model.labels, 5));

- `model.onnx`: the model, byte for byte, with its labels and preprocessing in its metadata.
- `ort/`: onnxruntime-web {toolchain.ORT_WEB_VERSION} (`ort.min.mjs` and its WebAssembly, also used for WebGPU).
- `config.json`, `preprocessor_config.json`, `onnx/model.onnx`: the layout transformers.js loads, offline and
  with no options (`env.allowRemoteModels = false; env.localModelPath = '<parent folder>/'`, then
  `pipeline('image-classification', '<this folder>')`). {transformers_js}

  Measured with transformers.js 4.3.2 against `vitdeploy predict` (docs/web.md in vitdeploy; Intel Xeon, load
  15-18), in Node and in headless Chromium: on 60 digits written as 64x64 PNGs, top-1 100% and max |dprob| 1e-6;
  on 91 real photos (PNG and JPEG, 23-640 px, grey, RGBA, 25 with an ICC colour profile, which vitdeploy converts
  to sRGB as browsers and sharp do), top-1 100% in both; max |dprob| 0.0021 on the photos without a profile (a 16
  px model; 1e-6 with a 64 px one), 0.0053 in Chromium on those with one. In Node, grey images with a colour
  profile differ more: sharp leaves them as stored where Chromium and vitdeploy convert them (up to 0.148 with the
  16 px model on 3 of the 91 photos). Node users: `ONNXRUNTIME_NODE_INSTALL=skip npm install
  @huggingface/transformers` (offline, its install script would fetch CUDA libraries).

## Preprocessing (the model's own, from its metadata)

1. decode to 8-bit RGB (EXIF orientation applied, an embedded colour profile converted to sRGB,
   transparency composited on white)
2. {"resize the shorter side to " + str(spec.resize_size) + " px, keeping the aspect ratio" if spec.resize_mode == "shorter_side" else "resize to " + str(spec.resize_size) + "x" + str(spec.resize_size) + " (aspect ratio not kept)"} ({spec.interpolation})
3. center-crop {spec.image_size}x{spec.image_size}
4. scale to [0, 1], subtract mean {list(spec.mean)}, divide by std {list(spec.std)} ({spec.channel_order})

`vitdeploy.js` computes this as vitdeploy's Python code does (Pillow's resampling, reproduced in fixed point), and
gives the same pixels, bit for bit, on 8-bit JPEG, PNG, WebP, GIF and BMP files (measured in headless Chromium;
see docs/web.md in vitdeploy). 16-bit PNGs differ by up to 2 levels: the browser decodes them to 8 bits itself.
"""
