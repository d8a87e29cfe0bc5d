"""`vitdeploy train`, `samples` and `import`: making a model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vitdeploy.cli.app import app, console, handle_errors, print_json
from vitdeploy.cli.options import BundleOption, Force, JsonFlag
from vitdeploy.core.config import DEFAULT_PRESET, PRESETS
from vitdeploy.errors import EXIT_INTERRUPTED
from vitdeploy.requests import ImportRequest, SamplesRequest, TrainRequest


@app.command()
@handle_errors
def train(
    preset: Annotated[Optional[str], typer.Option(help=f"Model preset: {', '.join(PRESETS)} (default: {DEFAULT_PRESET}).")] = None,
    data: Annotated[
        Optional[Path],
        typer.Option(help="Image folder, one subfolder per class (train/ and val/ inside when split). "
                     "Default: the embedded scikit-learn digits."),
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder; best/ and last/ bundles go inside. "
                                                "Default: models/<preset or data folder name>.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default: the preset's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch size (default: the preset's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the preset's).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for init, split, order and augmentation.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Override the preset's input size (pixels).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (cuda fails clearly when not usable).")] = TrainRequest.device,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a run from its last/ bundle (or any bundle).")] = None,
    init: Annotated[
        Optional[Path], typer.Option(help="Fine-tune from this bundle's weights (e.g. from vitdeploy import): new head "
                                     "when the data's classes differ, position embeddings interpolated for another "
                                     "--image-size, fine-tuning defaults (fewer epochs, lower learning rate).")
    ] = None,
    stop_after_steps: Annotated[
        Optional[int], typer.Option(help="Stop early after this many optimizer steps, as Ctrl-C would "
                                    "(the schedule still spans all epochs; --resume continues).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Threads decoding images of a --data folder.")] = TrainRequest.workers,
    tome_r: Annotated[
        Optional[int], typer.Option(help="Train and evaluate with token merging on, r tokens merged per block (for "
                                    "export --precision tome --tome-r R; see docs/token-merging.md).")
    ] = TrainRequest.tome_r,
    json_output: JsonFlag = False,
    force: Force = TrainRequest.force,
) -> None:
    """Train a ViT and write best/ and last/ model bundles.

    Example: vitdeploy train --epochs 30 --out models/digits
    Fine-tuning: vitdeploy train --init models/vit_tiny_patch16_224 --data photos/
    """
    import vitdeploy

    result = vitdeploy.train(TrainRequest(
        preset=preset, data=data, out=out, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        image_size=image_size, device=device, resume=resume, init=init, stop_after_steps=stop_after_steps,
        workers=workers, force=force, tome_r=tome_r,
    ))
    if json_output and result.main_process:
        print_json(result.to_dict())
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command()
@handle_errors
def samples(
    out: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="Folder to write the PNG files into.")] = SamplesRequest.out,
    bundle: BundleOption = None,
    count: Annotated[int, typer.Option(help="How many held-out images to write.")] = SamplesRequest.count,
    force: Force = SamplesRequest.force,
) -> None:
    """Write held-out images of a bundle's dataset as PNG files, named with their true label.

    Example: vitdeploy samples samples/ && vitdeploy predict samples/*.png
    """
    import vitdeploy

    written = vitdeploy.samples(SamplesRequest(out=out, bundle=bundle, count=count, force=force))
    console.print(f"wrote {len(written)} held-out images to {out}/ (never seen in training)")


@app.command("import")
@handle_errors
def import_(
    source: Annotated[
        Path, typer.Argument(help="A Hugging Face model folder (config.json + model.safetensors or pytorch_model.bin), "
                             "or a timm state dict (.safetensors, .pth, .bin).")
    ],
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Bundle folder to write. Default: models/<its name>.")
    ] = None,
    timm_model: Annotated[
        Optional[str], typer.Option(help="The timm model name of a state dict (e.g. vit_tiny_patch16_224) when "
                                    "timm's config.json is not beside it.")
    ] = None,
    labels: Annotated[
        Optional[Path], typer.Option(help="Class names, one per line (default: the checkpoint's own, else class_N).")
    ] = None,
    json_output: JsonFlag = False,
    force: Force = ImportRequest.force,
) -> None:
    """Import a timm or Hugging Face ViT checkpoint you already have as a bundle (no download, no timm or
    transformers needed); export, verify, predict, bench and train --init then work on it.

    Refused, naming what was found: anything that is not a plain ViT, tensors missing, extra or misshapen, pickles
    holding anything but tensors (the full list: docs/pretrained.md). Exit codes: 0 imported; 2 bad input.

    Example: vitdeploy import vit_tiny.safetensors --timm-model vit_tiny_patch16_224 -o models/vit-ti
    """
    import vitdeploy

    result = vitdeploy.import_model(ImportRequest(source, out=out, timm_model=timm_model, labels=labels,
                                                  force=force))
    spec = result.preprocess
    console.print(
        f"imported {result.format} {result.architecture}: {result.parameters / 1e6:.1f}M parameters, "
        f"{len(result.labels)} classes, {spec.image_size} px ({spec.resize_mode} resize to {spec.resize_size}, "
        f"crop fraction {spec.crop_fraction:.3g}, {spec.interpolation}, mean {spec.mean}, std {spec.std}) "
        f"-> {result.bundle}",
        highlight=False, soft_wrap=True,
    )
    if json_output:
        print_json(result.to_dict())
