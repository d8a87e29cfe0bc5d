"""The web runtime measured: the same .onnx in headless Chromium (onnxruntime-web, WebAssembly) against PyTorch and
ONNX Runtime in Python, and the page's JavaScript preprocessing against images.preprocess.

    python benchmarks/web.py --digits models/digits/best/model.onnx --output benchmarks/results/web.json
    (--parts preprocessing,digits,vit,speed: measure some now, keep the rest of --output)

1. verify --runtime web (PyTorch vs the browser, batch 1 and 7) on the digits model and on ViT-Ti/16 imported from a
   Hugging Face and a timm checkpoint (random weights: no download here; tests/checkpoints.py makes them);
2. predict through the page (decoding and preprocessing in JavaScript) on 12 real photos (scikit-learn's two, whole,
   cropped and shrunk, PNG and JPEG) against `vitdeploy predict`: top-1 agreement, max logit difference;
3. the preprocessing bound: the page's crop against images.preprocess's, over the photos, both resize modes, three
   filters, four sizes, and 30 random crops of random sizes;
4. speed at batch 1 on ViT-Ti/16: ORT in Python vs onnxruntime-web, 1 and 2 threads each, interleaved in blocks.

Needs the web runtime (Chromium, onnxruntime-web) and the dev extra (transformers, for the checkpoints).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from checkpoints import (
    VIT_TI16,
    hf_vit,
    sample_photos,
    save_hf,
    save_timm,
    timm_state_dict,
)

import vitdeploy
from vitdeploy.core import images
from vitdeploy.core.atomic import atomic_write_json
from vitdeploy.core.config import PreprocessSpec
from vitdeploy.core.provenance import machine, now_iso, package_versions
from vitdeploy.runtimes import open_runtime

LABELS = [f"class_{i}" for i in range(10)]


def load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def imported_vit(fmt: str, work: Path) -> Path:
    """A random-init ViT-Ti/16 as a Hugging Face folder (stretch, bilinear) or a timm file (shorter side, bicubic,
    crop 0.9), imported and exported."""
    model = hf_vit(LABELS, **VIT_TI16)
    source = save_hf(model, work / f"{fmt}-hf")
    timm_name = None
    if fmt == "timm":
        source = save_timm(timm_state_dict(source), work / "timm" / "model.safetensors")
        timm_name = "vit_tiny_patch16_224"
    imported = vitdeploy.import_model(source, work / f"{fmt}-bundle", timm_model=timm_name)
    return vitdeploy.export(imported.bundle, opset=17).path


def parity(path: Path, photos: Path | None) -> dict[str, Any]:
    report = vitdeploy.verify(path, images=photos, batch_sizes=(1, 7), runtime="web")
    cases = {str(c.batch_size): {"max_abs": c.max_abs, "top1_agreement": c.top1_agreement, "samples": c.samples}
             for c in report.cases}
    return {"passed": report.passed, "inputs": report.inputs, "cases": cases, "runtimes": report.runtimes}


def through_the_page(path: Path, photos: list[Path]) -> dict[str, Any]:
    """Each photo decoded and preprocessed by the page's JavaScript and run there, against the same file run by ORT
    on images.preprocess (full decode), and against `vitdeploy predict`'s top-1 (which drafts large JPEGs)."""
    rows = {Path(r["path"]).name: r for r in vitdeploy.predict([str(p) for p in photos], model=path, top_k=1).rows}
    ort = open_runtime("ort", path, threads=1)
    info = ort.info
    per_photo, worst_logit, worst_input, agree = {}, 0.0, 0.0, 0
    with open_runtime("web", path, threads=1) as web:
        for photo in photos:
            pixels, logits = web.predict_image(photo.read_bytes())
            python = images.preprocess(images.decode_image(photo), info.preprocess)
            expected = ort.run(python[None])[0]
            label = info.labels[int(logits.argmax())]
            same = label == rows[photo.name]["label"]
            agree += same
            diff, input_diff = float(np.abs(logits - expected).max()), float(np.abs(pixels - python).max())
            worst_logit, worst_input = max(worst_logit, diff), max(worst_input, input_diff)
            per_photo[photo.name] = {"page_top1": label, "predict_top1": rows[photo.name]["label"],
                                     "max_logit_diff": diff, "max_input_diff": input_diff}
    return {"photos": len(photos), "top1_agree_with_predict": agree, "max_logit_diff": worst_logit,
            "max_input_diff": worst_input, "per_photo": per_photo}


def preprocessing_bound(photos: list[Path], work: Path, seed: int = 0) -> dict[str, Any]:
    """The page's uint8 crop vs images.py's, on every case: the max pixel difference (0 means bit-identical)."""
    rng = np.random.default_rng(seed)
    specs = [PreprocessSpec(image_size=size, resize_size=resize, interpolation=interpolation, resize_mode=mode)
             for mode in ("shorter_side", "stretch") for interpolation in ("bilinear", "bicubic", "nearest")
             for size, resize in ((224, 256), (224, 224), (16, 18), (384, 438))]
    cases = [(photo.name, photo.read_bytes(), spec) for photo in photos for spec in specs]
    sources = [Image.open(photo).convert("RGB") for photo in photos if photo.suffix == ".png"]
    for i in range(30):  # random crops of random sizes, random specs, PNG so the pixels are the file's
        src = sources[i % len(sources)]
        w, h = (int(v) for v in rng.integers(20, min(src.size), 2))
        left, top = int(rng.integers(0, src.width - w + 1)), int(rng.integers(0, src.height - h + 1))
        buffer = io.BytesIO()
        src.crop((left, top, left + w, top + h)).save(buffer, "PNG")
        size = int(rng.integers(8, 300))
        spec = PreprocessSpec(image_size=size, resize_size=size + int(rng.integers(0, 40)),
                              interpolation=str(rng.choice(["bilinear", "bicubic", "nearest"])),
                              resize_mode=str(rng.choice(["shorter_side", "stretch"])))
        cases.append((f"random-{i}-{w}x{h}.png", buffer.getvalue(), spec))
    worst, differing, values = 0, 0, 0
    with open_runtime("web", tiny_model(work)) as web:
        for name, data, spec in cases:
            _, crop = web.preprocess_image(data, spec.to_dict())
            decoded = images.decode_image(name, data=data)
            resize = images.stretched_center_crop if spec.resize_mode == "stretch" else images.resized_center_crop
            expected = np.asarray(resize(decoded, spec.resize_size, spec.image_size, spec.interpolation))
            diff = np.abs(crop.astype(int) - expected.astype(int))
            worst, differing, values = max(worst, int(diff.max())), differing + int((diff > 0).sum()), values + diff.size
    return {"cases": len(cases), "max_pixel_diff": worst, "differing_values": differing, "values": values}


def tiny_model(work: Path) -> Path:
    """Any model serves the preprocessing jobs (the spec comes with each job): the test suite's tiny one."""
    from builders import export_tiny_onnx

    return export_tiny_onnx(work / "tiny.onnx")


def speed(path: Path, blocks: int = 3, seconds: float = 3.0) -> dict[str, Any]:
    """Batch 1 latency, ORT in Python (session.run) vs onnxruntime-web on the page (session.run, timed with
    performance.now in the page, no transfer), 1 and 2 threads each, interleaved in blocks of ~`seconds`."""
    sessions = {f"ort-python-{t}t": open_runtime("ort", path, threads=t) for t in (1, 2)}
    size = sessions["ort-python-1t"].info.preprocess.image_size
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    sessions.update({f"web-wasm-{t}t": open_runtime("web", path, threads=t) for t in (1, 2)})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for name, session in sessions.items():  # warm-up
        session.time_runs(x, 3, 1) if name.startswith("web") else [session.run(x) for _ in range(3)]
    for _ in range(blocks):
        for name, session in sessions.items():
            if name.startswith("web"):
                first = session.time_runs(x, 1, 3)
                runs = max(3, int(seconds / (np.median(first) / 1000)))
                times[name] += session.time_runs(x, 0, runs)
            else:
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:
                    start = time.perf_counter()
                    session.run(x)
                    times[name].append((time.perf_counter() - start) * 1000)
    for name, session in sessions.items():
        if name.startswith("web"):
            session.close()
    p50 = {name: float(np.percentile(v, 50)) for name, v in times.items()}
    return {name: {"runs": len(v), "p50_ms": p50[name], "p90_ms": float(np.percentile(v, 90)),
                   "x_ort_python_1t": p50[name] / p50["ort-python-1t"]} for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", type=Path, help="the exported digits model (its bundle beside it)")
    parser.add_argument("--parts", default="preprocessing,digits,vit,speed",
                        help="what to measure now; the others are kept from --output when it exists")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "web.json")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    result: dict[str, Any] = json.loads(args.output.read_text()) if args.output.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with open_runtime("web", args.digits or tiny_model(work)) as web:
            result.update(when=now_iso(), machine=machine(), versions=package_versions(), browser=web.versions)
        photos = sample_photos(work / "photos")
        if "preprocessing" in parts:
            result["preprocessing"] = {**preprocessing_bound(photos, work), "load": load()}
            print(json.dumps({"preprocessing": result["preprocessing"]}), flush=True)
        models = {"digits": args.digits} if args.digits else {}
        if parts & {"vit", "speed"}:
            models.update({f"vit-ti16-{fmt}": imported_vit(fmt, work) for fmt in ("huggingface", "timm")})
        for name, path in models.items():
            if ("digits" if name == "digits" else "vit") not in parts:
                continue
            result[name] = {"parity": parity(path, None if name == "digits" else work / "photos"),
                            "page": through_the_page(path, photos), "load": load()}
            print(json.dumps({name: result[name]}, default=str)[:1500], flush=True)
        if "speed" in parts:
            started = load()
            result["speed_vit_ti16_batch1"] = {**speed(models["vit-ti16-timm"]), "load_before": started,
                                               "load_after": load()}
            print(json.dumps(result["speed_vit_ti16_batch1"], indent=2), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, result)


if __name__ == "__main__":
    main()
