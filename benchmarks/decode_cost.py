"""What THE decoder's full JPEG decode and colour-profile conversion cost, and what the JPEG draft it replaced changed.

    python benchmarks/decode_cost.py --output benchmarks/results/decode_cost.json

1. pixels: the draft (Image.draft at 1/2-1/8 scale in the DCT when a JPEG's shorter side is at least MARGIN x the
   resize size, then the box resize vitdeploy used until issue 27) against a full decode (neither converting colour
   profiles), after THE preprocessing, on the photo JPEGs of benchmarks/raw_image.py (21-640 px): max difference in levels of 1/255
   and the share of values apart, for 16, 64 and 256 px shorter-side models and margins 2 (what vitdeploy used), 4, 8;
2. time: decode + preprocess of one image on one thread, the draft against the full decode, on 4032x3024 and
   1920x1080 JPEGs (a photo upscaled, sensor-like grain added) without a profile, with an sRGB one and with Adobe RGB,
   for a 16 px and a 224 px (resize 256) model; rounds interleaved, the median of each.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from vitdeploy.core import images  # noqa: E402
from vitdeploy.core.config import PreprocessSpec  # noqa: E402


def drafted(path: Path, spec: PreprocessSpec, margin: int = 2) -> np.ndarray:
    """THE preprocessing of the drafted decode, as vitdeploy did it before (no colour conversion either)."""
    with Image.open(path) as img:
        full = img.size
        box = None
        if min(full) >= margin * spec.resize_size:
            target = margin * spec.resize_size
            answer = img.draft("RGB", (target, target))
            box = answer[1] if answer and img.size != full else None
        img.load()
        rgb = img.convert("RGB")
    if box is not None:
        rgb = images.resample(rgb, images.shorter_side_size(full, spec.resize_size), spec.interpolation, box)
    return images.preprocess(rgb, spec)


def full(path: Path, spec: PreprocessSpec) -> np.ndarray:
    return images.preprocess(images.decode_image(path), spec)


def pixels(work: Path) -> dict[str, Any]:
    """The draft against the full decode, per resize size and margin (shorter side >= margin x resize: drafted)."""
    from raw_image import write_photos

    jpegs = [p for p in write_photos(work / "photos") if p.suffix == ".jpg"]
    results: dict[str, Any] = {"jpegs": len(jpegs)}
    for resize in (16, 64, 256):
        spec = PreprocessSpec(image_size=resize, resize_size=resize)
        std = np.asarray(spec.std, np.float32)[:, None, None] * 255
        for margin in (2, 4, 8):
            worst, apart, total, drafted_count = 0.0, 0, 0, 0
            for path in jpegs:
                with Image.open(path) as opened:
                    if min(opened.size) < margin * resize:
                        continue
                drafted_count += 1
                # both without the colour conversion: only the draft differs
                levels = np.abs(drafted(path, spec, margin) - drafted(path, spec, margin=10**9)) * std
                worst, apart, total = max(worst, float(levels.max())), apart + int((levels > 0.5).sum()), total + levels.size
            results[f"resize {resize}, margin {margin}"] = {
                "drafted_jpegs": drafted_count, "max_levels": round(worst, 2),
                "values_apart": apart, "values": total}
    return results


def large_jpegs(folder: Path) -> list[Path]:
    import skimage
    from icc_profiles import rgb_profile

    data = Path(skimage.__file__).parent / "data"
    source = Image.open(data / "chelsea.png").convert("RGB")
    srgb = Image.open(data / "astronaut.png").info["icc_profile"]  # sRGB IEC61966-2.1, as cameras embed it
    rng = np.random.default_rng(0)
    files = []
    for width, height in ((4032, 3024), (1920, 1080)):
        grain = rng.normal(0, 6, (height, width, 3))
        array = np.clip(np.asarray(source.resize((width, height), Image.Resampling.BICUBIC)) + grain, 0, 255)
        image = Image.fromarray(array.astype(np.uint8))
        for tag, profile in (("", None), ("-srgb", srgb), ("-adobe", rgb_profile())):
            path = folder / f"{width}x{height}{tag}.jpg"
            image.save(path, quality=90, **({"icc_profile": profile} if profile else {}))
            files.append(path)
    return files


def timing(work: Path, rounds: int) -> dict[str, Any]:
    files = large_jpegs(work)
    specs = {"16 px": PreprocessSpec(image_size=16, resize_size=16),
             "224 px": PreprocessSpec(image_size=224, resize_size=256)}
    times: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(rounds):
        for path in files:
            for name, spec in specs.items():
                for variant, run in (("draft (before)", drafted), ("full decode (now)", full)):
                    started = time.perf_counter()
                    run(path, spec)
                    times.setdefault((path.name, name, variant), []).append(time.perf_counter() - started)
    rows = []
    for path in files:
        for name in specs:
            before = statistics.median(times[(path.name, name, "draft (before)")]) * 1e3
            now = statistics.median(times[(path.name, name, "full decode (now)")]) * 1e3
            rows.append({"jpeg": path.name, "model": name, "draft_ms": round(before, 1), "full_ms": round(now, 1),
                         "ratio": round(now / before, 2)})
    return {"rounds": rounds, "rows": rows}


def machine() -> dict[str, Any]:
    from PIL import features

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return {"cpu": cpu, "avx512": "avx512f" in flags, "vnni": "avx512_vnni" in flags,
            "loadavg": Path("/proc/loadavg").read_text().split()[:3], "python": platform.python_version(),
            "pillow": Image.__version__, "littlecms": features.version("littlecms2"),
            "libjpeg_turbo": features.version("libjpeg_turbo")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/decode_cost.json")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "threads": "one (decode and preprocess run on the caller)"}
    with tempfile.TemporaryDirectory(prefix="decode-cost-") as tmp:
        results["pixels"] = pixels(Path(tmp))
        results["time"] = timing(Path(tmp), args.rounds)
    results["machine"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
