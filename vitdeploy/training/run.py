"""`vitdeploy train`: plan the run, resume it, and wire data, model, devices and the epoch loop into bundles.

AdamW + warm-up/cosine, label smoothing, clipping, AMP on CUDA, DDP under torchrun. The per-epoch work lives in
vitdeploy.training.engine, devices and torchrun processes in vitdeploy.training.distributed.

The run is a pure function of (config, seed): data order comes from (seed, epoch), augmentation from
(seed, epoch, sample), and everything else that changes during training lives in train_state.pt. That is what
makes `--resume` continue bit-for-bit where a run stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitdeploy.core import provenance
from vitdeploy.core.config import (
    DEFAULT_MODELS_DIR,
    DEFAULT_PRESET,
    PRESETS,
    RunPlan,
    TrainConfig,
    config_diff,
    get_preset,
)
from vitdeploy.core.strict_json import record
from vitdeploy.errors import BundleError, ConfigError
from vitdeploy.files.bundle import (
    CONFIG_FILE,
    BundleInfo,
    load_bundle,
    load_train_state,
    read_bundle_info,
    save_bundle,
)
from vitdeploy.files.outputs import BUNDLE, RUN, check_output_folder
from vitdeploy.model import tome
from vitdeploy.model.vit import VisionTransformer, build_model
from vitdeploy.requests import TrainRequest
from vitdeploy.training import finetune
from vitdeploy.training.data import TrainingData, load_training_data
from vitdeploy.training.distributed import Processes, distributed, intra_op_threads
from vitdeploy.training.engine import (
    AdamW,
    EpochResult,
    MixedPrecision,
    StopFlag,
    TrainProgress,
    evaluate,
    train_one_epoch,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    best: Path | None  # None if interrupted before the first evaluation
    last: Path
    val_accuracy: float  # of the best bundle (or of last when there is no best yet)
    epochs: int  # epochs completed
    steps: int  # optimizer steps completed in total (across resumes)
    seconds: float  # wall time of this invocation
    interrupted: bool = False
    resume_command: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    main_process: bool = True  # False on torchrun ranks > 0, which print nothing

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.best or self.last),
                **record(self, exclude=("run_dir", "history", "main_process"), seconds=round(self.seconds, 3))}


# ------------------------------------------------------------------------------------------------ planning


def plan_run(request: TrainRequest) -> RunPlan:
    """Resolve preset defaults and overrides; for --resume, start from the bundle and refuse a different config."""
    if request.resume is not None:
        if request.init is not None:
            raise ConfigError("--resume continues a run; --init starts one: pass only one of them")
        return _plan_resume(request)
    overrides = {k: v for k, v in (("epochs", request.epochs), ("batch_size", request.batch_size),
                                   ("lr", request.lr), ("seed", request.seed)) if v is not None}
    if request.init is not None:
        return finetune.plan_init(request, overrides)
    preset = get_preset(request.preset or DEFAULT_PRESET)
    train_cfg = dataclasses.replace(preset.train, **overrides)
    model_cfg = preset.model
    if request.image_size:
        model_cfg = dataclasses.replace(model_cfg, image_size=request.image_size)
    spec = preset.preprocess_spec(model_cfg.image_size)
    out = request.out or DEFAULT_MODELS_DIR / (request.data.resolve().name if request.data else preset.name)
    _check_train_config(train_cfg)
    return RunPlan(preset.name, model_cfg, train_cfg, spec, request.data, Path(out), threads=preset.threads)


def _plan_resume(request: TrainRequest) -> RunPlan:
    info = read_bundle_info(request.resume)
    if info.train is None:
        raise ConfigError(f"{request.resume} has no training config; it cannot be resumed")
    saved = info.provenance.get("run", {})
    requested: dict[str, Any] = {}
    if request.preset is not None:
        preset = get_preset(request.preset)
        model = dataclasses.replace(preset.model, num_classes=info.model.num_classes)
        if request.image_size:
            model = dataclasses.replace(model, image_size=request.image_size)
        requested.update({f"model.{k}": v for k, v in model.to_dict().items()})
    elif request.image_size:
        requested["model.image_size"] = request.image_size
    for name in ("epochs", "batch_size", "lr", "seed"):
        if getattr(request, name) is not None:
            requested[f"train.{name}"] = getattr(request, name)
    if request.data is not None:
        requested["data"] = str(request.data.resolve())
    have = {f"model.{k}": v for k, v in info.model.to_dict().items()}
    have.update({f"train.{k}": v for k, v in info.train.to_dict().items()})
    have["data"] = saved.get("data")
    diff = config_diff({k: have.get(k) for k in requested}, requested)
    if diff:
        raise ConfigError(
            f"cannot resume {request.resume}: the requested config differs from the bundle's\n  "
            + "\n  ".join(diff) + "\n(omit these options to continue with the bundle's config)"
        )
    run_dir = Path(request.out) if request.out else Path(request.resume).resolve().parent
    data = Path(saved["data"]) if saved.get("data") else None
    preset_name = saved.get("preset", "custom")
    threads = PRESETS[preset_name].threads if preset_name in PRESETS else None
    return RunPlan(preset_name, info.model, info.train, info.preprocess, data, run_dir, saved.get("init"), threads)


def _check_out(plan: RunPlan, request: TrainRequest) -> None:
    """The run folder (new, empty or a run's), unless --resume continues where its bundle is; best/ and last/ in
    any case (new, empty or bundles): never a folder vitdeploy did not write, unless --force."""
    if request.resume is None or request.out is not None:
        check_output_folder(plan.out, RUN, force=request.force, option="--out")
    for bundle in (plan.out / "best", plan.out / "last"):
        check_output_folder(bundle, BUNDLE, force=request.force, option="--out")


def _check_train_config(cfg: TrainConfig) -> None:
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise ConfigError(f"epochs, batch size and learning rate must be positive (got {cfg})")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {cfg.val_fraction}")


# ---------------------------------------------------------------------------------------- resume state


@dataclass
class TrainState:
    """Everything --resume needs besides the weights and the config; train_state.pt holds its to_dict().

    The run keeps the position, best accuracy, history and partial-epoch loss current as it goes; the optimizer
    (with its place on the learning-rate schedule) and torch RNG snapshots are taken by capture() just before a
    save and applied by restore().
    """

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps done in epoch `epoch` (0 at an epoch boundary)
    best_val_accuracy: float = -1.0  # -1 until the first evaluation
    history: list[dict[str, float]] = field(default_factory=list)  # metrics of each completed epoch
    epoch_loss_sum: float = 0.0  # loss of the partial epoch's steps, so a resumed epoch reports the same train_loss
    epoch_loss_count: int = 0
    optimizer: dict[str, Any] = field(default_factory=dict)
    torch_rng: torch.Tensor | None = None  # None until capture()

    def end_epoch(self, metrics: dict[str, Any]) -> bool:
        """Record the metrics of the completed epoch `self.epoch`; return whether its accuracy is the best yet."""
        self.history.append({k: float(v) for k, v in metrics.items()})
        self.epoch, self.step_in_epoch, self.epoch_loss_sum, self.epoch_loss_count = self.epoch + 1, 0, 0.0, 0
        improved = metrics["val_accuracy"] > self.best_val_accuracy
        if improved:
            self.best_val_accuracy = metrics["val_accuracy"]
        return improved

    def record_stop(self, ran: EpochResult) -> None:
        """Record how far the epoch `self.epoch` got before the stop flag ended it, and the loss of its steps."""
        self.step_in_epoch, self.epoch_loss_sum, self.epoch_loss_count = ran.steps, ran.loss_sum, ran.loss_count

    def steps_done(self, steps_per_epoch: int) -> int:
        """Optimizer steps done since the run began, across resumes."""
        return self.epoch * steps_per_epoch + self.step_in_epoch

    def capture(self, optimizer: AdamW) -> None:
        self.optimizer = optimizer.state_dict()
        self.torch_rng = torch.get_rng_state()

    def restore(self, optimizer: AdamW) -> None:
        try:
            optimizer.load_state_dict(self.optimizer)
        except (KeyError, ValueError, TypeError) as e:
            raise BundleError(
                f"the optimizer state in the bundle's train_state file does not fit this run: {e!r}"
            ) from None
        torch.set_rng_state(self.torch_rng)

    def to_dict(self) -> dict[str, Any]:
        """Tensors and plain containers only, so that torch.load(weights_only=True) reads it back."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Any, folder: Path) -> TrainState:
        """Check what torch.load read from `folder`/train_state.pt; refuse any other structure with a BundleError."""
        if isinstance(d, dict) and isinstance(d.get("scheduler"), dict):  # written before engine.AdamW: the
            d = {k: v for k, v in d.items() if k != "scheduler"}  # optimizer's state holds the schedule's step
        if not isinstance(d, dict):
            problems = [f"it holds a {type(d).__name__}, not a dict"]
        else:
            problems = [f"{k!r} is missing" for k in _STATE_TYPES if k not in d]
            problems += [f"unexpected {k!r}" for k in d if k not in _STATE_TYPES]
            problems += [f"{k!r} is {type(d[k]).__name__} {d[k]!r:.40}, not {_STATE_TYPES[k][1]}"
                         for k in _STATE_TYPES if k in d and not _STATE_TYPES[k][0](d[k])]
        if problems:
            raise BundleError(f"cannot resume from {folder}: its train_state file is not a training state: "
                              + "; ".join(problems))
        return cls(**d)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# train_state.pt's keys: (check, what the check wants)
_STATE_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epoch": (_is_count, "a count"),
    "step_in_epoch": (_is_count, "a count"),
    "best_val_accuracy": (_is_number, "a number"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v), "a list of metric dicts"),
    "epoch_loss_sum": (_is_number, "a number"),
    "epoch_loss_count": (_is_count, "a count"),
    "optimizer": (lambda v: isinstance(v, dict), "a state dict"),
    "torch_rng": (lambda v: isinstance(v, torch.Tensor) and v.dtype == torch.uint8, "a uint8 tensor"),
}


# -------------------------------------------------------------------------------------------- bundles


@dataclass
class RunBundles:
    """Writes the run's bundles: best/ (best held-out accuracy so far) and last/ (with train_state.pt, for
    --resume). Under torchrun only the main process writes, and every process waits until it has."""

    plan: RunPlan
    data: TrainingData
    procs: Processes
    model: VisionTransformer
    optimizer: AdamW

    @property
    def best_dir(self) -> Path:
        return self.plan.out / "best"

    @property
    def last_dir(self) -> Path:
        return self.plan.out / "last"

    def save(self, state: TrainState, metrics: dict[str, Any], *, best: bool) -> None:
        """Write last/ from `state` and `metrics`; with `best`, best/ too."""
        if self.procs.is_main:
            metrics = {**metrics, "best_val_accuracy": state.best_val_accuracy, "history": state.history}
            if best:
                save_bundle(self.best_dir, self.model, self._info(metrics))
            state.capture(self.optimizer)
            save_bundle(self.last_dir, self.model, self._info(metrics), train_state=state.to_dict())
        self.procs.barrier()

    def _info(self, metrics: dict[str, Any]) -> BundleInfo:
        plan = self.plan
        return BundleInfo(
            model=self.model.cfg, preprocess=plan.spec, labels=self.data.labels, train=plan.train, metrics=metrics,
            dataset=self.data.info,
            provenance={"created_at": provenance.now_iso(), **self._origin},
        )

    @functools.cached_property
    def _origin(self) -> dict[str, Any]:
        """What every save of the run records the same: looked up once (package versions and the git commit
        cost ~20 ms a save, two saves an epoch)."""
        plan = self.plan
        return {
            "versions": provenance.package_versions(("torch", "numpy", "pillow", "scikit-learn")),
            "git_commit": provenance.git_commit(),
            "seed": plan.train.seed,
            "device": str(self.procs.device),
            "processes": self.procs.world,
            "run": {"preset": plan.preset, "data": str(plan.data.resolve()) if plan.data else None, "init": plan.init,
                    "token_merging": _merging(self.model)},
        }


def _merging(model: VisionTransformer) -> dict[str, Any] | None:
    """The token merging a run trained with (train --tome-r), for the bundle's provenance; None: none."""
    merge = tome.active(model)
    return merge.to_dict() if merge else None


# -------------------------------------------------------------------------------------------- training


def _silent(*args: object) -> None:
    """Processes other than the main one say nothing (torchrun runs one per device)."""


def train(request: TrainRequest) -> TrainResult:
    """Train per `request`; write <out>/best and <out>/last bundles; return what happened. Notes go to this
    module's logger and the progress bar to stderr, from the main process only."""
    plan = plan_run(request)
    _check_out(plan, request)
    with distributed(request.device) as procs, intra_op_threads(plan.threads):
        return _train(plan, request, procs)


def _train(plan: RunPlan, request: TrainRequest, procs: Processes) -> TrainResult:
    say = logger.info if procs.is_main else _silent
    started = time.perf_counter()
    cfg = plan.train
    if cfg.batch_size % procs.world:
        raise ConfigError(f"batch size {cfg.batch_size} must be divisible by the {procs.world} processes")
    data = load_training_data(plan.data, plan.spec, cfg.val_fraction, request.workers)
    model, state = _initial_model_and_state(plan, request, data, say)
    if request.tome_r is not None:  # the weights learn to work on merged tokens; the bundle stores weights only
        merge = tome.schedule(model.cfg, request.tome_r)
        tome.apply(model, merge)
        say("token merging on: %d tokens per block, %d tokens leave the last block", request.tome_r,
            merge.tokens(model.cfg)[-1])
    model.to(procs.device)
    steps_per_epoch = data.num_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch size {cfg.batch_size} is larger than the {data.num_train} training images")
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = AdamW(model, cfg, total_steps)
    if request.resume is not None:
        state.restore(optimizer)
        if state.epoch >= cfg.epochs:  # the loop below runs no epoch: nothing is trained or written
            say("nothing left to train: %s finished all %d epochs of its run (nothing was changed); to train it "
                "further, start a new run from its weights: vitdeploy train --init %s --epochs N --out NEW_FOLDER",
                request.resume, cfg.epochs, shlex.quote(str(request.resume)))
        else:
            say("resuming %s at epoch %d, step %d", request.resume, state.epoch + 1, state.step_in_epoch)
    trained = procs.wrap(model)
    precision = MixedPrecision(procs.device)
    bundles = RunBundles(plan, data, procs, model, optimizer)

    progress = TrainProgress(procs.is_main, cfg.epochs, total_steps, state.steps_done(steps_per_epoch), state.epoch)
    with StopFlag(request.stop_after_steps) as stop, progress:
        for epoch in range(state.epoch, cfg.epochs):
            ran = train_one_epoch(
                trained, data, cfg, epoch, optimizer=optimizer, precision=precision,
                procs=procs, stop=stop, progress=progress,
                first_step=state.step_in_epoch, loss_sum=state.epoch_loss_sum, loss_count=state.epoch_loss_count,
            )
            if ran.stopped:
                state.record_stop(ran)
                break
            metrics = evaluate(model, data.val_x, data.val_y, procs.device)
            metrics.update(epoch=epoch + 1, step=(epoch + 1) * steps_per_epoch, train_loss=ran.train_loss)
            improved = state.end_epoch(metrics)
            progress.epoch_done(epoch, metrics)
            bundles.save(state, metrics, best=improved)

    steps_done = state.steps_done(steps_per_epoch)
    interrupted = state.epoch < cfg.epochs  # every completed epoch advanced state.epoch
    resume_command = None
    if interrupted:
        metrics = evaluate(model, data.val_x, data.val_y, procs.device)
        metrics.update(epoch=state.epoch, step=steps_done)
        bundles.save(state, metrics, best=False)
        resume_command = f"vitdeploy train --resume {shlex.quote(str(bundles.last_dir))}"
        say("stopped after step %d of %d; saved %s", steps_done, total_steps, bundles.last_dir)
        say("resume with: %s", resume_command)
    have_best = (bundles.best_dir / CONFIG_FILE).is_file() and state.best_val_accuracy >= 0
    best = bundles.best_dir if have_best else None
    final_acc = state.best_val_accuracy if state.best_val_accuracy >= 0 else metrics["val_accuracy"]
    seconds = time.perf_counter() - started
    if not interrupted:
        say("best held-out accuracy %.2f%%; bundle: %s  (%.1f s)", 100 * final_acc, best, seconds)
    return TrainResult(plan.out, best, bundles.last_dir, final_acc, len(state.history), steps_done, seconds,
                       interrupted, resume_command, state.history, procs.is_main)


def _initial_model_and_state(
    plan: RunPlan, request: TrainRequest, data: TrainingData, say: Callable[..., None]
) -> tuple[VisionTransformer, TrainState]:
    """A new model with its head sized for the data and a fresh state, or with --resume the bundle's model and
    train_state.pt."""
    torch.manual_seed(plan.train.seed)  # identical initial weights on every process
    if request.resume is None:
        model_cfg = dataclasses.replace(plan.model, num_classes=len(data.labels))
        if plan.init is not None:  # fine-tuning: the imported weights, the head re-initialised if classes differ
            return finetune.initial_model(Path(plan.init), model_cfg, data.labels), TrainState()
        if model_cfg.num_classes != plan.model.num_classes:
            say("head sized for the data: %d classes", len(data.labels))
        return build_model(model_cfg), TrainState()
    model, info = load_bundle(request.resume)
    if info.labels != data.labels:
        raise ConfigError(f"cannot resume: the data's classes {data.labels} differ from the bundle's {info.labels}")
    return model, TrainState.from_dict(load_train_state(request.resume), request.resume)
