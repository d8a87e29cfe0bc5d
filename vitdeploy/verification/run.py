"""`vitdeploy verify`: the parity report of an .onnx file against the bundle it came from.

    .onnx + bundle -> do they belong together? -> inputs: real held-out images (or --images) through THE
    preprocessing, plus random ones -> parity.check_parity at every batch size, on every runtime asked for (default:
    every one installed and usable here) and every device it really has -> report (and, when it fails, the first
    block whose output diverges, and on which runtime)

export runs the same comparison (export_parity) on its staged file before it moves the file into place, on every
installed runtime but the reference (whose speed does not suit large models).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdeploy.core.config import PreprocessSpec
from vitdeploy.core.notes import Notes
from vitdeploy.errors import BundleError, ConfigError, DataError, ModelFileError
from vitdeploy.files.bundle import CONFIG_FILE, BundleInfo, load_bundle, read_bundle_info
from vitdeploy.files.discovery import find_latest_bundle
from vitdeploy.files.onnx_file import DEFAULT_FILE_NAME, INPUT_NAME, META_INTERMEDIATES, OnnxModelInfo, load_onnx
from vitdeploy.requests import VerifyRequest
from vitdeploy.runtimes import foreign_setting, runtime_specs, runtime_status, select_runtimes
from vitdeploy.verification.parity import ParityReport, Target, check_parity, default_targets, resolve_tolerance

if TYPE_CHECKING:
    import onnx

DEFAULT_REAL_IMAGES = 64
DEFAULT_RANDOM_INPUTS = 32
# Export checks a few samples at batch 1 and 7: odd and unlike the traced batch (2), which catches a batch size
# baked into a Reshape.
EXPORT_BATCH_SIZES = (1, 7)
EXPORT_REAL_IMAGES = 4
EXPORT_RANDOM_INPUTS = 4
RANDOM_SEED = 0  # of the random inputs


def check_matches_bundle(proto: onnx.ModelProto, meta: OnnxModelInfo, info: BundleInfo, bundle_dir: Path) -> None:
    """The .onnx must come from this bundle: same input shape, labels, config and weights."""
    if meta.image_input:  # its parity was judged at export, on raw images (exporting/gate.judge_image_input)
        raise ConfigError(f"{meta.path} takes decoded images (export --image-input): verify compares tensors; "
                          "verify the model.onnx it was built from")
    model_input = next(i for i in proto.graph.input if i.name == INPUT_NAME)
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in model_input.type.tensor_type.shape.dim]
    expected = [info.model.in_channels, info.model.image_size, info.model.image_size]
    problems = []
    if len(dims) != 4 or dims[1:] != expected or isinstance(dims[0], int):
        shape = ", ".join(map(str, dims))
        problems.append(f"input {INPUT_NAME} is ({shape}), the bundle needs (batch, {', '.join(map(str, expected))})")
    if meta.labels != list(info.labels):
        problems.append(f"labels {meta.labels} differ from the bundle's {info.labels}")
    if meta.model_config is not None and meta.model_config != info.model:
        problems.append("the model config differs from the bundle's")
    sha = meta.export.get("weights_sha256")
    if sha and info.weights_sha256 and sha != info.weights_sha256:
        problems.append("it was exported from other weights (weights sha256 differs)")
    if problems:
        raise BundleError(f"{meta.path} does not match the bundle {bundle_dir}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------- inputs


def parity_inputs(
    info: BundleInfo,
    spec: PreprocessSpec,
    images_dir: Path | None,
    num_real: int,
    num_random: int,
    min_total: int,
    require_real: bool,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], list[str]]:
    """Real images (the bundle's held-out split, or `images_dir`) through THE preprocessing, then random inputs.

    Returns (inputs, labels of the leading real samples or None, counts, notes). Random inputs are standard
    normal, the range of normalized pixels, and top up the total to `min_total` so the largest batch is full.
    """
    from vitdeploy.core.images import preprocess

    notes = Notes()
    labels: np.ndarray | None = None
    if images_dir is not None:
        pictures, source = _folder_images(images_dir, num_real), str(images_dir)
    else:
        pictures, labels, source = _heldout(info, num_real, require_real, notes)
    real = [preprocess(img, spec) for img in pictures]
    num_random = max(num_random, min_total - len(real))
    rng = np.random.default_rng(RANDOM_SEED)
    shape = (num_random, info.model.in_channels, spec.image_size, spec.image_size)
    batch = np.concatenate([np.stack(real) if real else np.zeros((0, *shape[1:]), np.float32),
                            rng.standard_normal(shape, dtype=np.float32)])
    counts = {"real": len(real), "real_source": source, "random": num_random}
    return np.ascontiguousarray(batch, dtype=np.float32), labels, counts, notes


def _heldout(info: BundleInfo, limit: int, require: bool, notes: Notes) -> tuple[list, np.ndarray | None, str]:
    if not info.dataset:
        hint = " (pass --images DIR for real images)" if require else ""  # verify takes --images; export does not
        notes.add(f"the bundle records no dataset: random inputs only{hint}")
        return [], None, "none"
    from vitdeploy.training.data import heldout_images

    try:
        pairs = heldout_images(info.dataset, info.labels, limit, info.preprocess)
    except DataError as e:
        if require:
            raise DataError(f"{e} (pass --images DIR to verify on other real images)") from None
        notes.add(f"held-out images unavailable ({e}): random inputs only")
        return [], None, "none"
    source = f"held-out split of {info.dataset.get('source', 'the bundle dataset')}"
    return [img for img, _ in pairs], np.array([y for _, y in pairs], dtype=np.int64), source


def _folder_images(folder: Path, limit: int) -> list:
    from vitdeploy.core.images import decode_image, is_image_file

    if not folder.is_dir():
        raise DataError(f"--images {folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))[:limit]
    if not files:
        raise DataError(f"--images {folder}: no image files found")
    return [decode_image(p) for p in files]


def export_parity(model: Any, info: BundleInfo, onnx_path: Path) -> ParityReport:
    """The quick check that export runs on its staged file before moving it into place."""
    _, meta = load_onnx(onnx_path)
    inputs, labels, counts, notes = parity_inputs(
        info, meta.preprocess, None, EXPORT_REAL_IMAGES, EXPORT_RANDOM_INPUTS, max(EXPORT_BATCH_SIZES),
        require_real=False,
    )
    # intermediates=None: find each block's output tensor by value (on ONNX Runtime, the first target); export
    # records what was found.
    runtimes = ["ort"] + [name for name in ("openvino",) if runtime_status(name).usable]
    from vitdeploy.model import tome

    # A model merging tokens: the tome variant's tolerance, and no per-block comparison (a near-tied match merges
    # another, nearly identical token: the blocks' tokens differ one by one where the logits agree).
    merging = "tome" if tome.active(model) else None
    report = check_parity(
        model, onnx_path, inputs, EXPORT_BATCH_SIZES, resolve_tolerance(meta.precision, None, None, merging),
        {} if merging else None, meta.precision, labels, counts, default_targets(runtimes), layers_on_first_only=True,
    )
    report.notes[:0] = notes
    return report


def verify(
    request: VerifyRequest,
    num_real: int = DEFAULT_REAL_IMAGES,
    num_random: int = DEFAULT_RANDOM_INPUTS,
) -> ParityReport:
    """The standalone parity report for a .onnx file (default: model.onnx in the latest bundle under models/).

    The bundle defaults to the folder holding the file when that is a bundle, else the one recorded at export.
    `runtimes` (ort, openvino, reference): each must be usable here (else exit 2); None: every one installed and
    usable, the reference only on models small enough for it (one log line for each left out).
    Returns the report whether or not parity holds (report.passed); bad input raises exit-2 errors.
    """
    model_path, bundle, images, batch_sizes = request.model, request.bundle, request.images, request.batch_sizes
    atol, rtol, runtimes = request.atol, request.rtol, request.runtime
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    path = Path(model_path) if model_path is not None else find_latest_bundle() / DEFAULT_FILE_NAME
    if model_path is None and not path.is_file():
        raise ModelFileError(f"{path}: no such model file; export the bundle first: vitdeploy export")
    if path.is_dir():
        inside = path / DEFAULT_FILE_NAME
        raise ModelFileError(f"{path} is a folder; verify takes the model file" + (
            f": {inside}" if inside.is_file() else ", e.g. vitdeploy export's model.onnx"))
    proto, meta = load_onnx(path)
    bundle_dir = Path(bundle) if bundle is not None else _bundle_for(path, meta)
    info = read_bundle_info(bundle_dir)
    check_matches_bundle(proto, meta, info, bundle_dir)
    from vitdeploy.core.flops import count_macs

    gmacs = count_macs(info.model).gmacs
    too_slow = tuple(spec.name for spec in runtime_specs()  # each runtime's parity policy
                     if spec.default_max_gmacs is not None and gmacs > spec.default_max_gmacs)
    targets = runtime_targets(select_runtimes(runtimes, exclude_by_default=too_slow), meta,
                              optional=runtimes is None)
    model, info = load_bundle(bundle_dir)
    merging = meta.export.get("token_merging")
    if merging:  # a token merging variant: compared with PyTorch merging the same tokens
        from vitdeploy.model import tome

        tome.apply(model, tome.MergeSchedule.from_dict(merging))
    precision = meta.precision
    tolerance = resolve_tolerance(precision, atol, rtol, meta.export.get("variant"))
    inputs, labels, counts, notes = parity_inputs(
        info, meta.preprocess, Path(images) if images else None, num_real, num_random, max(batch_sizes),
        require_real=True,
    )
    # A file exported without the parity check records no intermediates: an fp32 one is searched by value here.
    # (Variants record an empty set on purpose: fusion renamed or removed the tensors.)
    recorded = META_INTERMEDIATES in meta.raw
    intermediates = meta.intermediates if recorded else None if precision == "fp32" else {}
    report = check_parity(model, path, inputs, batch_sizes, tolerance, intermediates, precision, labels, counts,
                          targets)
    report.notes[:0] = notes
    report.bundle = str(bundle_dir)
    return report


def runtime_targets(runtimes: list[str], meta: OnnxModelInfo, optional: bool = False) -> list[Target]:
    """The targets for these runtimes (`optional`: chosen by default, so each may be skipped where it cannot run
    the file); a file made for one runtime (an OpenVINO variant whose precision is a setting of that runtime, such
    as ov-bf16) is checked on that runtime only."""
    refused = {name: foreign_setting(name, meta.export) for name in runtimes}
    runtimes = [name for name in runtimes if refused[name] is None]
    if not runtimes:
        raise ConfigError(f"{meta.path}: {next(iter(refused.values()))}")
    return default_targets(runtimes, optional)


def _bundle_for(path: Path, meta: OnnxModelInfo) -> Path:
    if (path.parent / CONFIG_FILE).is_file():
        return path.parent
    recorded = meta.export.get("bundle")
    if recorded and (Path(recorded) / CONFIG_FILE).is_file():
        return Path(recorded)
    raise BundleError(f"cannot tell which bundle {path} came from: pass --bundle DIR")
