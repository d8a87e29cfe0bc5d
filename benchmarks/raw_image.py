"""THE preprocessing inside the graph (export --image-input, exporting/image_input.py), measured end to end.

    python benchmarks/raw_image.py --model models/digits/best/model.onnx --node-modules /tmp/tjs/node_modules \
        --output benchmarks/results/raw_image.json [--parts parity,node,chromium]

1. parity: the raw-image graph ("hwc", uint8) against images.preprocess + the fp32 model on real photos of many
   sizes and aspect ratios (scikit-image's and scikit-learn's photos, whole and cropped, 20-640 px, PNG and JPEG,
   grey and RGBA among them), for a bilinear and a bicubic preprocessing (the same weights; the file's metadata says
   which filter), on ONNX Runtime and OpenVINO (f32): max pixel difference after preprocessing (levels of 1/255),
   max |dlogit|, top-1 agreement;
2. node: `vitdeploy web`'s folder in transformers.js (Node, offline, `pipeline('image-classification', folder)`
   with no options) against `vitdeploy predict` on the same files: the photos, and held-out digits written as
   64x64 PNGs: top-1 agreement, max |dprob|;
3. chromium: the same folder and files through transformers.js in headless Chromium (a canvas decodes there).

--node-modules: a folder where `ONNXRUNTIME_NODE_INSTALL=skip npm install @huggingface/transformers@4.3.2` ran
(onnxruntime-web's WebAssembly comes from its node_modules/onnxruntime-web/dist). Needs scikit-image (dev extra).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

NODE_SCRIPT = """
import { pipeline, env } from '@huggingface/transformers';
import path from 'node:path';
const [folder, ...files] = process.argv.slice(2);
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(folder)) + '/';
const classify = await pipeline('image-classification', path.basename(folder));
const rows = [];
for (const file of files) {
  const top = await classify(file, { top_k: 1000 });
  rows.push({ file, scores: Object.fromEntries(top.map((t) => [t.label, t.score])) });
}
console.log(JSON.stringify(rows));
"""

PAGE = """<!doctype html><meta charset="utf-8"><script type="module">
import { pipeline, env } from './transformers.min.js';
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = '/';
env.backends.onnx.wasm.wasmPaths = '/ortwasm/';
env.backends.onnx.wasm.numThreads = 1;
window.rows = null;
try {
  const classify = await pipeline('image-classification', 'folder');
  const files = await (await fetch('/files.json')).json();
  const rows = [];
  for (const file of files) {
    const top = await classify('/images/' + file, { top_k: 1000 });
    rows.push({ file, scores: Object.fromEntries(top.map((t) => [t.label, t.score])) });
  }
  window.rows = JSON.stringify(rows);
} catch (e) { window.rows = JSON.stringify({ error: String(e && e.stack || e) }); }
</script>"""


# ------------------------------------------------------------------------------------------------- images


def photo_sources() -> dict[str, Image.Image]:
    """Real photos shipped inside scikit-image and scikit-learn (no download), as Pillow opens them."""
    import skimage
    from sklearn.datasets import load_sample_images

    folder = Path(skimage.__file__).parent / "data"
    names = ("astronaut.png", "coffee.png", "chelsea.png", "camera.png", "coins.png", "hubble_deep_field.jpg",
             "retina.jpg", "rocket.jpg", "motorcycle_left.png", "color.png", "ihc.png", "logo.png", "page.png",
             "moon.png", "grass.png", "brick.png", "gravel.png", "text.png")
    sources = {name.split(".")[0]: Image.open(folder / name) for name in names}
    for name, array in zip(("china", "flower"), load_sample_images().images):
        sources[name] = Image.fromarray(array)
    for image in sources.values():
        image.load()
    return sources


def write_photos(folder: Path, seed: int = 0) -> list[Path]:
    """Each source whole (longer side 640) and three crops of random aspect ratio (1:4 to 4:1) and longer side
    20-640 px, as PNG or JPEG, some grey, some RGBA with an alpha gradient (predict composites it on white)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, source in photo_sources().items():
        source = source.convert("RGBA") if source.mode in ("RGBA", "LA", "P") else source.convert(
            "L" if source.mode in ("L", "I", "I;16", "1") else "RGB")
        variants = [("whole", source, 640)]
        for k in range(3):
            ratio = float(np.exp(rng.uniform(np.log(0.25), np.log(4.0))))
            w, h = source.size
            cw = int(min(w, h * ratio) * rng.uniform(0.3, 1.0))
            ch = max(1, int(cw / ratio))
            cw, ch = max(1, min(cw, w)), min(ch, h)
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            variants.append((f"crop{k}", source.crop((left, top, left + cw, top + ch)), int(rng.integers(20, 641))))
        for index, (tag, image, longer) in enumerate(variants):
            scale = longer / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
            kind = int(rng.integers(0, 4))
            if kind == 1 and image.mode == "RGB":
                image = image.convert("L")
            if kind == 2 and image.mode != "RGBA":
                image = image.convert("RGBA")
                alpha = np.linspace(96, 255, image.width * image.height).reshape(image.height, image.width)
                image.putalpha(Image.fromarray(alpha.astype(np.uint8)))
            jpeg = image.mode in ("RGB", "L") and index % 2 == 1
            path = folder / f"{name}-{tag}-{image.width}x{image.height}-{image.mode}.{'jpg' if jpeg else 'png'}"
            image.save(path, quality=92) if jpeg else image.save(path)  # an ICC profile travels along
            files.append(path)
    return files


def icc_profiled(files: list[Path]) -> set[str]:
    profiled = set()
    for path in files:
        with Image.open(path) as image:
            if image.info.get("icc_profile"):
                profiled.add(path.name)
    return profiled


def write_digits(folder: Path, bundle: Path, count: int = 60) -> list[Path]:
    """Held-out digits of the bundle's split (an imported bundle has none: scikit-learn's first digits), written as
    64x64 PNGs (nearest: the 8x8 strokes as blocks)."""
    from vitdeploy.files.bundle import read_bundle_info
    from vitdeploy.training.data import digit_images, heldout_images

    info = read_bundle_info(bundle)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    if info.dataset:
        pairs = heldout_images(info.dataset, info.labels, count, info.preprocess)
    else:  # an imported model: the first digits of scikit-learn's set
        images, labels = digit_images()
        pairs = list(zip(images[:count], labels[:count].tolist()))
    for index, (image, label) in enumerate(pairs):
        path = folder / f"digit-{index:03d}-label{label}.png"
        image.resize((64, 64), Image.Resampling.NEAREST).save(path)
        files.append(path)
    return files


# ------------------------------------------------------------------------------------------------- parity


def with_interpolation(model: Path, interpolation: str, out: Path) -> Path:
    """The same file with another filter in its preprocessing metadata (a bicubic model to check the bicubic graph)."""
    import onnx

    from vitdeploy.files.onnx_file import META_PREPROCESS, set_metadata

    proto = onnx.load(os.fspath(model))
    spec = json.loads(next(p.value for p in proto.metadata_props if p.key == META_PREPROCESS))
    set_metadata(proto, {META_PREPROCESS: {**spec, "interpolation": interpolation}})
    onnx.save(proto, os.fspath(out))
    return out


def parity(model: Path, photos: list[Path], work: Path) -> dict[str, Any]:
    import onnx
    import openvino as ov

    from vitdeploy.core.images import decode_image, preprocess, to_rgb
    from vitdeploy.exporting.image_input import PIXELS_OUTPUT, pixel_levels, with_image_input, with_pixels_output
    from vitdeploy.files.onnx_file import OUTPUT_NAME
    from vitdeploy.runtimes import open_runtime

    results = {}
    for interpolation in ("bilinear", "bicubic"):
        plain_path = with_interpolation(model, interpolation, work / f"model-{interpolation}.onnx")
        plain = open_runtime("ort", plain_path, device="cpu")
        spec = plain.preprocess
        raw = with_pixels_output(with_image_input(onnx.load(os.fspath(plain_path)), spec, "hwc"))
        ort_session = open_runtime("ort", raw.SerializeToString(), device="cpu")
        compiled = ov.Core().compile_model(ov.Core().read_model(raw.SerializeToString(), b""), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        rows = {"ort": [], "openvino": []}
        for path in photos:
            with Image.open(path) as opened:
                opened.load()
                array = np.asarray(opened)  # what a client sends: the decoded pixels, channels as stored
            if array.ndim == 2:
                array = array[..., None]
            expected_pixels = preprocess(to_rgb(decode_image(path)), spec)
            expected = plain.run(expected_pixels[None])[0]
            outputs = {"ort": ort_session.run_outputs(array[None], [OUTPUT_NAME, PIXELS_OUTPUT])}
            got = compiled({"image": array[None]})
            outputs["openvino"] = {OUTPUT_NAME: got[OUTPUT_NAME], PIXELS_OUTPUT: got[PIXELS_OUTPUT]}
            for runtime, out in outputs.items():
                rows[runtime].append({
                    "levels": pixel_levels(out[PIXELS_OUTPUT][0], expected_pixels, spec),
                    "values_off": int((np.abs(out[PIXELS_OUTPUT][0] - expected_pixels) > 1e-6).sum()),
                    "values": int(expected_pixels.size),
                    "dlogit": float(np.abs(out[OUTPUT_NAME][0] - expected).max()),
                    "same_top1": bool(out[OUTPUT_NAME][0].argmax() == expected.argmax()),
                })
        results[interpolation] = {runtime: summarize_parity(r) for runtime, r in rows.items()}
        results[interpolation]["spec"] = spec.to_dict()
    return results


def summarize_parity(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"images": len(rows), "max_pixel_levels": max(r["levels"] for r in rows),
            "values_off_by_a_level": sum(r["values_off"] for r in rows), "values": sum(r["values"] for r in rows),
            "max_abs_dlogit": max(r["dlogit"] for r in rows),
            "top1_agreement": float(np.mean([r["same_top1"] for r in rows]))}


# ------------------------------------------------------------------------------------------------- clients


def predict_scores(model: Path, files: list[Path]) -> dict[str, dict[str, float]]:
    import vitdeploy

    summary = vitdeploy.predict([str(f) for f in files], model=model, top_k=1000)
    by_path = {Path(row["path"]).name: row for row in summary.rows}
    return {f.name: {t["label"]: t["probability"] for t in by_path[f.name]["top_k"]} for f in files}


def full_decode_scores(model: Path, files: list[Path]) -> dict[str, dict[str, float]]:
    """predict's answers without its JPEG draft shortcut (images.decode_for_preprocess decodes a JPEG whose shorter
    side is >= 2x resize_size at 1/2-1/8 scale in the DCT): model.onnx on images.preprocess of the full decode."""
    from vitdeploy.core.images import decode_image, preprocess
    from vitdeploy.prediction.rows import softmax
    from vitdeploy.runtimes import open_runtime

    session = open_runtime("ort", model, device="cpu")
    scores = {}
    for path in files:
        probabilities = softmax(session.run(preprocess(decode_image(path), session.preprocess)[None]))[0]
        scores[path.name] = dict(zip(session.labels, map(float, probabilities)))
    return scores


def agreement(reference: dict[str, dict[str, float]], client: list[dict[str, Any]],
              profiled: set[str] = frozenset()) -> dict[str, Any]:
    """Top-1 agreement and max |dprob| of a client against predict; again without the files that embed an ICC
    colour profile (`profiled`): sharp and Chromium convert those to sRGB when they decode, Pillow does not."""
    rows = []
    for row in client:
        name = Path(row["file"]).name
        expected, got = reference[name], row["scores"]
        rows.append((name, max(expected, key=expected.get) == max(got, key=got.get),
                     max(abs(expected[label] - got.get(label, 0.0)) for label in expected)))

    def summary(subset: list[tuple[str, bool, float]]) -> dict[str, Any]:
        worst = sorted(subset, key=lambda r: -r[2])
        return {"images": len(subset), "top1_agreement": float(np.mean([r[1] for r in subset])) if subset else None,
                "max_abs_dprob": worst[0][2] if subset else None,
                "largest_dprob": [(name, round(d, 6)) for name, _, d in worst[:4]],
                "disagreeing": [name for name, same, _ in subset if not same]}

    result = summary(rows)
    if profiled:
        result["without_icc_profile"] = summary([r for r in rows if r[0] not in profiled])
    return result


def run_node(folder: Path, files: list[Path], node_modules: Path) -> list[dict[str, Any]]:
    script = node_modules.parent / "vitdeploy_raw_image_check.mjs"  # beside node_modules, so imports resolve
    script.write_text(NODE_SCRIPT)
    out = subprocess.run(["node", str(script), str(folder), *map(str, files)], capture_output=True, text=True,
                         check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_chromium(folder: Path, files: list[Path], node_modules: Path, work: Path) -> list[dict[str, Any]]:
    from devtools_page import DevToolsPage

    from vitdeploy.runtimes.web.toolchain import find_browser

    site = work / "site"
    shutil.copytree(folder, site / "folder")
    shutil.copyfile(node_modules / "@huggingface/transformers/dist/transformers.min.js", site / "transformers.min.js")
    shutil.copytree(node_modules / "onnxruntime-web/dist", site / "ortwasm")
    (site / "images").mkdir()
    for f in files:
        shutil.copyfile(f, site / "images" / f.name)
    (site / "files.json").write_text(json.dumps([f.name for f in files]))
    (site / "index.html").write_text(PAGE)
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = DevToolsPage(find_browser(), f"http://127.0.0.1:{server.server_address[1]}/index.html", work / "profile")
    try:
        text = page.wait_for("typeof window.rows === 'string' ? 'done:' + window.rows : 'waiting'", "done:", 1800)
        if not text.startswith("done:"):
            raise TimeoutError(f"transformers.js in Chromium did not finish: {text[:300]}")
        rows = json.loads(text.removeprefix("done:"))
        if isinstance(rows, dict):
            raise RuntimeError(rows["error"])
        return rows
    finally:
        page.close()
        server.shutdown()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm", ".js": "text/javascript"}

    def log_message(self, *args: object) -> None:
        pass


# ------------------------------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import onnxruntime

    return {"cpu": cpu, "loadavg": Path("/proc/loadavg").read_text().split()[:3], "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "pillow": Image.__version__,
            "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="an exported model.onnx (its bundle beside it)")
    parser.add_argument("--node-modules", type=Path, help="node_modules holding @huggingface/transformers")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/raw_image.json")
    parser.add_argument("--parts", default="parity,node,chromium")
    args = parser.parse_args()
    parts = args.parts.split(",")
    results: dict[str, Any] = json.loads(args.output.read_text()) if args.output.exists() else {}
    results["machine"] = machine()
    with tempfile.TemporaryDirectory(prefix="raw-image-") as tmp:
        work = Path(tmp)
        photos = write_photos(work / "photos")
        digits = write_digits(work / "digits", args.model.parent)
        profiled = icc_profiled(photos)
        results["images"] = {"photos": len(photos), "photo_sizes": sorted({f.name.split("-")[-2] for f in photos}),
                             "photos_with_icc_profile": sorted(profiled), "digits": len(digits)}
        if "parity" in parts:
            import openvino

            results["parity"] = {"openvino": openvino.__version__, **parity(args.model, photos, work)}
        if "node" in parts or "chromium" in parts:
            import vitdeploy

            folder = work / "web"
            vitdeploy.web(args.model, out=folder)
            reference = {**predict_scores(args.model, photos), **predict_scores(args.model, digits)}
            full = full_decode_scores(args.model, photos)
            clients = {"node": lambda fs: run_node(folder, fs, args.node_modules),
                       "chromium": lambda fs: run_chromium(folder, fs, args.node_modules, work / f"c{len(fs)}")}
            for client in ("node", "chromium"):
                if client in parts:
                    rows = clients[client](photos)
                    results[client] = {"photos": agreement(reference, rows, profiled),
                                       "photos_vs_full_decode": agreement(full, rows, profiled),
                                       "digits": agreement(reference, clients[client](digits))}
        results["machine"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
