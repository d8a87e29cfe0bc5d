"""Imported ViTs end to end: Hugging Face and timm checkpoints -> import -> export --opset 17 -> verify -> predict,
against each source library's own preprocessing and model; then a short fine-tuning run from an imported ViT-Ti.

No weights can be downloaded here, so the "pretrained" models are randomly initialised transformers ViTs
(tests/checkpoints.py: saved with save_pretrained, and the same weights in timm's state-dict layout). They test
that vitdeploy computes the source's function; they are not pretrained, and fine-tuning them is training from a
random start with fine-tuning settings.

    python benchmarks/pretrained.py deploy --arch vit-ti16 --output benchmarks/results/pretrained-vit-ti16.json
    python benchmarks/pretrained.py deploy --arch vit-b16 --formats huggingface --output benchmarks/results/pretrained-vit-b16.json
    python benchmarks/pretrained.py finetune --per-class 40 --epochs 5 --output benchmarks/results/pretrained-finetune.json

Needs transformers (pip install "vitdeploy[dev]"); vitdeploy itself imports neither transformers nor timm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from checkpoints import (  # noqa: E402  (the test suite's checkpoint builders)
    TIMM_SETTINGS,
    VIT_B16,
    VIT_TI16,
    hf_logits,
    hf_vit,
    predict_against_reference,
    sample_photos,
    save_hf,
    save_timm,
    timm_eval_transform,
    timm_state_dict,
)

import vitdeploy  # noqa: E402
from vitdeploy.core.atomic import atomic_write_json  # noqa: E402
from vitdeploy.core.provenance import machine, now_iso, package_versions  # noqa: E402

ARCHS = {"vit-ti16": VIT_TI16, "vit-b16": VIT_B16}
LABELS = [f"class_{i}" for i in range(10)]
TIMM_CROP_PCT = 0.9  # timm's documented data config for vit_*_224 (its default pretrained_cfg)


def quiet(_: str) -> None:
    pass


def deploy(arch: str, formats: list[str], work: Path) -> dict[str, Any]:
    photos = sample_photos(work / "photos")
    results: dict[str, Any] = {"arch": arch, "photos": [p.name for p in photos]}
    for fmt in formats:
        settings = TIMM_SETTINGS if fmt == "timm" else {}
        model = hf_vit(LABELS, **ARCHS[arch], **settings)
        source = save_hf(model, work / f"{fmt}-hf")
        if fmt == "timm":
            source = save_timm(timm_state_dict(source), work / f"{fmt}-timm" / "model.safetensors")
        started = time.perf_counter()
        name = {"vit-ti16": "vit_tiny_patch16_224", "vit-b16": "vit_base_patch16_224"}[arch]
        imported = vitdeploy.import_model(source, work / f"{fmt}-bundle", timm_model=name if fmt == "timm" else None)
        import_seconds = time.perf_counter() - started
        exported = vitdeploy.export(imported.bundle, opset=17)
        report = vitdeploy.verify(exported.path, images=work / "photos", batch_sizes=(1, 7))
        if fmt == "timm":
            spec = imported.preprocess
            pixels = np.stack([timm_eval_transform(Image.open(p), spec.image_size, TIMM_CROP_PCT, spec.mean, spec.std)
                               for p in photos])
        else:
            from transformers import ViTImageProcessor

            processor = ViTImageProcessor.from_pretrained(source)
            pixels = processor(images=[Image.open(p).convert("RGB") for p in photos], return_tensors="np")["pixel_values"]
        results[fmt] = {
            "import_seconds": round(import_seconds, 2),
            "parameters": imported.parameters,
            "preprocess": imported.preprocess.to_dict(),
            "export_seconds": round(exported.export_seconds, 2),
            "export_parity": exported.parity.summary() if exported.parity else None,
            "export_verify_seconds": round(exported.verify_seconds, 2),
            "onnx_megabytes": round(exported.size_bytes / 1e6, 1),
            "verify_passed": report.passed,
            "verify": report.summary(),
            "against_reference": predict_against_reference(exported.path, photos, hf_logits(model, pixels)),
        }
        print(json.dumps({fmt: results[fmt]}, indent=2, default=str), flush=True)
    return results


def finetune(per_class: int, epochs: int, work: Path) -> dict[str, Any]:
    """Import a random-init ViT-Ti (timm layout, timm preprocessing), measure held-out accuracy with the new head
    before any step, fine-tune with the defaults (epochs as given), measure again."""
    from photo_regions import write_folder

    from vitdeploy.training.data import load_training_data
    from vitdeploy.training.finetune import FINETUNE, initial_model
    from vitdeploy.training.run import TrainRequest, evaluate, plan_run

    write_folder(work / "regions", per_class)
    model = hf_vit([f"imagenet_{i}" for i in range(1000)], **VIT_TI16, **TIMM_SETTINGS)
    source = save_timm(timm_state_dict(save_hf(model, work / "hf")), work / "timm" / "vit_tiny.safetensors")
    bundle = vitdeploy.import_model(source, work / "imported", timm_model="vit_tiny_patch16_224").bundle
    request = TrainRequest(init=bundle, data=work / "regions", epochs=epochs, out=work / "run", device="cpu")
    plan = plan_run(request)
    data = load_training_data(plan.data, plan.spec, plan.train.val_fraction, request.workers)
    torch.manual_seed(plan.train.seed)  # as the run seeds it: the same new head
    start = initial_model(bundle, dataclasses.replace(plan.model, num_classes=len(data.labels)), data.labels, quiet)
    before = evaluate(start, data.val_x, data.val_y, torch.device("cpu"))
    result = vitdeploy.train(init=bundle, data=work / "regions", epochs=epochs, out=work / "run", device="cpu")
    return {
        "data": {"per_class": per_class, "classes": len(data.labels), "train": data.num_train, "val": len(data.val_y)},
        "train": dataclasses.asdict(plan.train), "defaults": dataclasses.asdict(FINETUNE),
        "val_accuracy_before": before["val_accuracy"], "val_accuracy_after": result.val_accuracy,
        "history": result.history, "seconds": round(result.seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("deploy", "finetune"))
    parser.add_argument("--arch", choices=sorted(ARCHS), default="vit-ti16")
    parser.add_argument("--formats", default="huggingface,timm")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vitdeploy-pretrained-") as tmp:
        if args.phase == "deploy":
            figures = deploy(args.arch, args.formats.split(","), Path(tmp))
        else:
            figures = finetune(args.per_class, args.epochs, Path(tmp))
    report = {"created_at": now_iso(), "machine": machine(), "versions": package_versions(
        ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "transformers", "numpy", "pillow")), **figures}
    print(json.dumps(report, indent=2, default=str))
    if args.output:
        atomic_write_json(args.output, report)


if __name__ == "__main__":
    main()
