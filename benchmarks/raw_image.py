"""THE preprocessing inside the graph (export --image-input, exporting/image_input.py), measured end to end.

    python benchmarks/raw_image.py --model models/digits/best/model.onnx --node-modules /tmp/tjs/node_modules \
        --output benchmarks/results/raw_image.json [--parts parity,node,chromium]

1. parity: the raw-image graph ("hwc", uint8) against images.preprocess + the fp32 model on real photos of many
   sizes and aspect ratios (scikit-image's and scikit-learn's photos, whole and cropped, 20-640 px, PNG and JPEG,
   grey and RGBA among them, some with an ICC profile: their own, or Adobe RGB built in code), for a bilinear and a
   bicubic preprocessing (the same weights; the file's metadata says which filter), on ONNX Runtime and OpenVINO
   (f32): max pixel difference after preprocessing (levels of 1/255), max |dlogit|, top-1 agreement; the graph fed
   what a colour-managed client decodes (images.to_srgb); and the channels-first file (export --image-layout nchw)
   against the channels-last one;
2. node: `vitdeploy web`'s folder in transformers.js (Node, offline, `pipeline('image-classification', folder)`
   with no options) against `vitdeploy predict` on the same files: the photos, and held-out digits written as
   64x64 PNGs: top-1 agreement, max |dprob|;
3. chromium: the same folder and files through transformers.js in headless Chromium (a canvas decodes there);
4. decoders: the pixels transformers.js's RawImage.read decodes (sharp in Node, createImageBitmap + a canvas in
   Chromium) against vitdeploy's decoder (images.decode_image), transparency composited on white as both do.

Figures with the CPU, load and versions: benchmarks/results/raw_image*.json; docs/web.md and
docs/export-and-verify.md quote them.

--node-modules: a folder where `ONNXRUNTIME_NODE_INSTALL=skip npm install @huggingface/transformers@4.3.2` ran
(onnxruntime-web's WebAssembly comes from its node_modules/onnxruntime-web/dist). Needs scikit-image (dev extra).
"""

from __future__ import annotations

import argparse
import base64
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

NODE_DECODE = """
import { RawImage } from '@huggingface/transformers';
import fs from 'node:fs';
const [out, ...files] = process.argv.slice(2);
const rows = {};
for (const file of files) {
  const image = await RawImage.read(file);
  rows[file.split('/').pop()] = { width: image.width, height: image.height, channels: image.channels,
                                  data: Buffer.from(image.data).toString('base64') };
}
fs.writeFileSync(out, JSON.stringify(rows));
"""

DECODE_PAGE = """<!doctype html><meta charset="utf-8"><script type="module">
import { RawImage } from './transformers.min.js';
window.rows = null;
try {
  const files = await (await fetch('/files.json')).json();
  const rows = {};
  for (const file of files) {
    const image = await RawImage.read('/images/' + file);
    let text = '';
    for (let i = 0; i < image.data.length; i += 8192) {
      text += String.fromCharCode.apply(null, image.data.subarray(i, i + 8192));
    }
    rows[file] = JSON.stringify({ width: image.width, height: image.height, channels: image.channels,
                                  data: btoa(text) });
  }
  window.decoded = rows;  // read one file at a time: all at once is too long an answer for DevTools
  window.rows = JSON.stringify(files);
} catch (e) { window.rows = JSON.stringify({ error: String(e && e.stack || e) }); }
</script>"""

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
    20-640 px, as PNG or JPEG, some grey, some RGBA with an alpha gradient (predict composites it on white), each
    with its source's ICC profile if it has one; and each colour source once more as a JPEG with an Adobe RGB
    profile (built in code, tests/icc_profiles.py), as cameras write them."""
    from icc_profiles import rgb_profile

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
        if source.mode == "RGB":
            image = variants[1][1]
            scale = int(rng.integers(20, 641)) / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.LANCZOS)
            path = folder / f"{name}-adobe-{image.width}x{image.height}-RGB.jpg"
            image.save(path, quality=92, icc_profile=rgb_profile())
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

    from vitdeploy.core.images import decode_image, preprocess, to_rgb, to_srgb
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
        planar = open_runtime("ort", with_image_input(onnx.load(os.fspath(plain_path)), spec, "chw")
                              .SerializeToString(), device="cpu")  # export --image-layout nchw
        planar_dlogit = 0.0
        compiled = ov.Core().compile_model(ov.Core().read_model(raw.SerializeToString(), b""), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        rows = {"ort": [], "openvino": []}
        for path in photos:
            with Image.open(path) as opened:
                opened.load()
                # what a colour-managed client sends: the decoded pixels in sRGB, channels as stored
                array = np.asarray(to_srgb(opened))
            if array.ndim == 2:
                array = array[..., None]
            expected_pixels = preprocess(to_rgb(decode_image(path)), spec)
            expected = plain.run(expected_pixels[None])[0]
            outputs = {"ort": ort_session.run_outputs(array[None], [OUTPUT_NAME, PIXELS_OUTPUT])}
            planar_dlogit = max(planar_dlogit, float(np.abs(
                planar.run(array.transpose(2, 0, 1)[None]) - outputs["ort"][OUTPUT_NAME]).max()))
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
        results[interpolation]["nchw_vs_nhwc_max_abs_dlogit"] = planar_dlogit
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


def agreement(reference: dict[str, dict[str, float]], client: list[dict[str, Any]],
              profiled: set[str] = frozenset()) -> dict[str, Any]:
    """Top-1 agreement and max |dprob| of a client against predict; again on the files that embed an ICC colour
    profile (`profiled`) and on the others."""
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
        result["with_icc_profile"] = summary([r for r in rows if r[0] in profiled])
        result["without_icc_profile"] = summary([r for r in rows if r[0] not in profiled])
    return result


def run_node(folder: Path, files: list[Path], node_modules: Path) -> list[dict[str, Any]]:
    script = node_modules.parent / "vitdeploy_raw_image_check.mjs"  # beside node_modules, so imports resolve
    script.write_text(NODE_SCRIPT)
    out = subprocess.run(["node", str(script), str(folder), *map(str, files)], capture_output=True, text=True,
                         check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_chromium(folder: Path, files: list[Path], node_modules: Path, work: Path) -> list[dict[str, Any]]:
    return _in_chromium(PAGE, files, node_modules, work, folder)


def _in_chromium(page_html: str, files: list[Path], node_modules: Path, work: Path, folder: Path | None = None,
                 per_file: str | None = None) -> Any:
    """Serve `page_html` with transformers.js, onnxruntime-web's WebAssembly, the files (and the web folder) from
    127.0.0.1, and read the page's window.rows when it is set; `per_file`: then read this expression of `name` for
    each file, as {file name: its JSON}."""
    from devtools_page import DevToolsPage

    from vitdeploy.runtimes.web.toolchain import find_browser

    site = work / "site"
    site.mkdir(parents=True)
    if folder is not None:
        shutil.copytree(folder, site / "folder")
    shutil.copyfile(node_modules / "@huggingface/transformers/dist/transformers.min.js", site / "transformers.min.js")
    shutil.copytree(node_modules / "onnxruntime-web/dist", site / "ortwasm")
    (site / "images").mkdir()
    for f in files:
        shutil.copyfile(f, site / "images" / f.name)
    (site / "files.json").write_text(json.dumps([f.name for f in files]))
    (site / "index.html").write_text(page_html)
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = DevToolsPage(find_browser(), f"http://127.0.0.1:{server.server_address[1]}/index.html", work / "profile")
    try:
        text = page.wait_for("typeof window.rows === 'string' ? 'done:' + window.rows : 'waiting'", "done:", 1800)
        if not text.startswith("done:"):
            raise TimeoutError(f"transformers.js in Chromium did not finish: {text[:300]}")
        rows = json.loads(text.removeprefix("done:"))
        if isinstance(rows, dict) and "error" in rows:
            raise RuntimeError(rows["error"])
        if per_file:
            return {f.name: json.loads(page.text(per_file.replace("name", json.dumps(f.name)))) for f in files}
        return rows
    finally:
        page.close()
        server.shutdown()


def decoded_by_clients(files: list[Path], node_modules: Path, work: Path, parts: list[str]) -> dict[str, Any]:
    """What RawImage.read decodes in Node (sharp) and in Chromium, against images.decode_image: per client, the max
    and mean difference in levels over all files, and the files more than one level apart."""
    from vitdeploy.core.images import decode_image

    decoded: dict[str, dict[str, Any]] = {}
    if "node" in parts:
        script = node_modules.parent / "vitdeploy_raw_image_decode.mjs"
        script.write_text(NODE_DECODE)
        out = work / "node-decoded.json"
        subprocess.run(["node", str(script), str(out), *map(str, files)], check=True, timeout=1800)
        decoded["node"] = json.loads(out.read_text())
    if "chromium" in parts:
        decoded["chromium"] = _in_chromium(DECODE_PAGE, files, node_modules, work / "decode",
                                           per_file="window.decoded[name]")
    results = {}
    for client, rows in decoded.items():
        worst, total, count, apart = 0, 0.0, 0, []
        for path in files:
            row = rows[path.name]
            pixels = np.frombuffer(base64.b64decode(row["data"]), np.uint8).reshape(
                row["height"], row["width"], row["channels"])
            got = _on_white(pixels)
            expected = np.asarray(decode_image(path), np.int16)
            if got.shape != expected.shape:
                apart.append((path.name, f"shape {got.shape} vs {expected.shape}"))
                continue
            diff = np.abs(got - expected)
            worst, total, count = max(worst, int(diff.max())), total + float(diff.sum()), count + diff.size
            if diff.max() > 1:
                apart.append((path.name, int(diff.max()), round(float(diff.mean()), 3)))
        results[client] = {"files": len(files), "max_levels": worst, "mean_levels": total / max(count, 1),
                           "files_more_than_one_level_apart": apart}
    return results


def _on_white(pixels: np.ndarray) -> np.ndarray:
    """A client's decoded pixels (1-4 channels) as RGB, transparency composited on white as the raw-image graph does
    (rounded as Pillow's paste)."""
    channels = pixels.shape[2]
    colour = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    alpha = pixels[..., -1:].astype(np.int32) if channels in (2, 4) else np.full(pixels.shape[:2] + (1,), 255)
    blended = colour.astype(np.int32) * alpha + 255 * (255 - alpha)
    return ((blended * 2 + 255) // 510).astype(np.int16)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm", ".js": "text/javascript"}

    def log_message(self, *args: object) -> None:
        pass


# ------------------------------------------------------------------------------------------------- main


def machine(node_modules: Path | None) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import onnxruntime
    from PIL import features

    from vitdeploy.runtimes.web.toolchain import find_browser

    def package(name: str) -> str | None:
        found = node_modules / name / "package.json" if node_modules else None
        return json.loads(found.read_text())["version"] if found and found.is_file() else None

    browser = find_browser()
    return {"cpu": cpu, "loadavg": Path("/proc/loadavg").read_text().split()[:3], "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "pillow": Image.__version__,
            "littlecms": features.version("littlecms2"),
            "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
            "transformers.js": package("@huggingface/transformers"), "sharp": package("sharp"),
            "chromium": subprocess.run([browser, "--version"], capture_output=True, text=True).stdout.strip()
            if browser else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="an exported model.onnx (its bundle beside it)")
    parser.add_argument("--node-modules", type=Path, help="node_modules holding @huggingface/transformers")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/raw_image.json")
    parser.add_argument("--parts", default="parity,node,chromium,decoders")
    args = parser.parse_args()
    parts = args.parts.split(",")
    results: dict[str, Any] = json.loads(args.output.read_text()) if args.output.exists() else {}
    results["machine"] = machine(args.node_modules)
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
            clients = {"node": lambda fs: run_node(folder, fs, args.node_modules),
                       "chromium": lambda fs: run_chromium(folder, fs, args.node_modules, work / f"c{len(fs)}")}
            for client in ("node", "chromium"):
                if client in parts:
                    rows = clients[client](photos)
                    results[client] = {"photos": agreement(reference, rows, profiled),
                                       "digits": agreement(reference, clients[client](digits))}
        if "decoders" in parts:
            results["decoders"] = decoded_by_clients(photos, args.node_modules, work, ["node", "chromium"])
        results["machine"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
