"""Where the time goes from image file to logits: decode, preprocess and model, per image, on ONNX Runtime CPU.

The stages are predict's (images.decode_image, then images.preprocess, then one session run per batch),
run one after another here so that each can be timed alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from vitdeploy.runtimes import open_runtime


def end_to_end(onnx_path: Path, paths: list[Path], batch_size: int, threads: int) -> dict[str, Any]:
    from vitdeploy.core import images

    session = open_runtime("ort", onnx_path, "cpu", threads=threads)
    spec = session.preprocess
    seconds = {"decode": 0.0, "preprocess": 0.0, "model": 0.0}
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        started = time.perf_counter()
        decoded = [images.decode_image(path) for path in chunk]
        after_decode = time.perf_counter()
        pixels = np.stack([images.preprocess(image, spec) for image in decoded])
        after_preprocess = time.perf_counter()
        session.run(pixels)
        seconds["decode"] += after_decode - started
        seconds["preprocess"] += after_preprocess - after_decode
        seconds["model"] += time.perf_counter() - after_preprocess
    session.close()
    total = sum(seconds.values())
    return {
        "images": len(paths),
        "batch_size": batch_size,
        "provider": session.provider,
        "per_image_ms": {stage: round(s / len(paths) * 1e3, 3) for stage, s in seconds.items()},
        "share": {stage: round(s / total, 4) for stage, s in seconds.items()},
        "images_per_s": round(len(paths) / total, 3),
    }
