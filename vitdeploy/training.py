"""`vitdeploy train`: AdamW + warm-up/cosine, label smoothing, clipping, AMP on CUDA, DDP under torchrun.

The run is a pure function of (config, seed): data order comes from (seed, epoch), augmentation from
(seed, epoch, sample), and everything else that changes during training lives in train_state.pt. That is what
makes `--resume` continue bit-for-bit where a run stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vitdeploy import finetune, provenance
from vitdeploy.bundle import (
    DEFAULT_MODELS_DIR,
    BundleInfo,
    load_bundle,
    load_train_state,
    read_bundle_info,
    save_bundle,
)
from vitdeploy.config import ModelConfig, PreprocessSpec, TrainConfig, config_diff, get_preset
from vitdeploy.data import load_training_data
from vitdeploy.errors import ConfigError, DeviceError
from vitdeploy.model import VisionTransformer, build_model, cross_entropy

EVAL_BATCH = 256


@dataclass
class TrainRequest:
    """What the user asked for; None means "the preset's default" (or, with --resume, "the bundle's")."""

    preset: str | None = None
    data: Path | None = None
    out: Path | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    image_size: int | None = None
    device: str = "auto"
    resume: Path | None = None
    init: Path | None = None  # fine-tune from this bundle's weights (finetune.py)
    stop_after_steps: int | None = None  # stop like Ctrl-C after this many steps in this invocation
    workers: int = 2


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
        return {
            "bundle": str(self.best or self.last),
            "best": str(self.best) if self.best else None,
            "last": str(self.last),
            "val_accuracy": self.val_accuracy,
            "epochs": self.epochs,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "resume_command": self.resume_command,
        }


@dataclass(frozen=True)
class RunPlan:
    """The resolved configuration of a run."""

    preset: str
    model: ModelConfig
    train: TrainConfig
    spec: PreprocessSpec
    data: Path | None
    out: Path
    init: str | None = None  # the bundle a fine-tuning run started from


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
    preset = get_preset(request.preset or "digits")
    train_cfg = dataclasses.replace(preset.train, **overrides)
    model_cfg = preset.model
    if request.image_size:
        model_cfg = dataclasses.replace(model_cfg, image_size=request.image_size)
    spec = preset.preprocess_spec(model_cfg.image_size)
    out = request.out or DEFAULT_MODELS_DIR / (request.data.resolve().name if request.data else preset.name)
    _check_train_config(train_cfg)
    return RunPlan(preset.name, model_cfg, train_cfg, spec, request.data, Path(out))


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
    return RunPlan(saved.get("preset", "custom"), info.model, info.train, info.preprocess, data, run_dir,
                   saved.get("init"))


def _check_train_config(cfg: TrainConfig) -> None:
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise ConfigError(f"epochs, batch size and learning rate must be positive (got {cfg})")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {cfg.val_fraction}")


# ----------------------------------------------------------------------------------- device and processes


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise DeviceError(f"--device cuda requested, but {why} (torch {torch.__version__})")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def distributed(device_request: str) -> Iterator[Processes]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Processes()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_nccl = device_request != "cpu" and torch.cuda.is_available()
    if use_nccl:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    try:
        yield Processes(dist.get_rank(), dist.get_world_size(), local_rank)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ optimisation


def make_optimizer(model: VisionTransformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, the cls token and position embeddings (all 1-D or embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name in ("cls_token", "pos_embed") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


def warmup_cosine(total_steps: int, cfg: TrainConfig):
    """LR multiplier: linear warm-up to 1, then cosine decay to min_lr_ratio."""
    warmup = max(1, round(total_steps * cfg.warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def epoch_order(num_train: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a function of (seed, epoch) only, the same on every process."""
    return torch.randperm(num_train, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, float]:
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(x), EVAL_BATCH):
        xb, yb = x[i : i + EVAL_BATCH].to(device), y[i : i + EVAL_BATCH].to(device)
        logits = model(xb).float()
        loss_sum += float(cross_entropy(logits, yb)) * len(xb)
        correct += int((logits.argmax(1) == yb).sum())
    return {"val_accuracy": correct / len(x), "val_loss": loss_sum / len(x)}


class StopFlag:
    """Set by SIGINT (finish the step, save, exit 130) or by --stop-after-steps. A second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


# --------------------------------------------------------------------------------------------- training


def train(request: TrainRequest, console: Console | None = None) -> TrainResult:
    """Train per `request`; write <out>/best and <out>/last bundles; return what happened."""
    console = console or Console(stderr=True)
    plan = plan_run(request)
    with distributed(request.device) as procs:
        return _train(plan, request, procs, console if procs.is_main else Console(quiet=True))


def _train(plan: RunPlan, request: TrainRequest, procs: Processes, console: Console) -> TrainResult:
    started = time.perf_counter()
    cfg = plan.train
    device = resolve_device(request.device, procs.local_rank)
    if cfg.batch_size % procs.world:
        raise ConfigError(f"batch size {cfg.batch_size} must be divisible by the {procs.world} processes")
    data = load_training_data(plan.data, plan.spec, cfg.val_fraction, request.workers)
    model_cfg = dataclasses.replace(plan.model, num_classes=len(data.labels))
    if request.resume is None and plan.init is None and model_cfg.num_classes != plan.model.num_classes:
        console.print(f"head sized for the data: {len(data.labels)} classes")

    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    if request.resume is not None:
        model, info = load_bundle(request.resume)
        if info.labels != data.labels:
            raise ConfigError(f"cannot resume: the data's classes {data.labels} differ from the bundle's {info.labels}")
    elif plan.init is not None:
        model = finetune.initial_model(Path(plan.init), model_cfg, data.labels, console.print)
    else:
        model = build_model(model_cfg)
    model.to(device)
    steps_per_epoch = data.num_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch size {cfg.batch_size} is larger than the {data.num_train} training images")
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, cfg))

    start_epoch, start_step, best_acc, history = 0, 0, -1.0, []
    resumed_loss = (0.0, 0)
    if request.resume is not None:
        state = load_train_state(request.resume)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
        best_acc, history = float(state["best_val_accuracy"]), list(state["history"])
        resumed_loss = (float(state["epoch_loss_sum"]), int(state["epoch_loss_count"]))
        console.print(f"resuming {request.resume} at epoch {start_epoch + 1}, step {start_step}")

    ddp_model: torch.nn.Module = model
    if procs.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    amp_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp_dtype == torch.float16)
    per_process = cfg.batch_size // procs.world
    run_dir = plan.out
    best_dir, last_dir = run_dir / "best", run_dir / "last"
    steps_this_run = 0

    def bundle_info(metrics: dict[str, Any]) -> BundleInfo:
        return BundleInfo(
            model=model_cfg, preprocess=plan.spec, labels=data.labels, train=cfg, metrics=metrics,
            dataset=data.info,
            provenance={
                "created_at": provenance.now_iso(),
                "versions": provenance.package_versions(("torch", "numpy", "pillow", "scikit-learn")),
                "git_commit": provenance.git_commit(),
                "seed": cfg.seed,
                "device": str(device),
                "processes": procs.world,
                "run": {"preset": plan.preset, "data": str(plan.data.resolve()) if plan.data else None,
                        "init": plan.init},
            },
        )

    def save_last(epoch: int, step_in_epoch: int, metrics: dict[str, Any], partial_loss=(0.0, 0)) -> None:
        state = {
            "epoch_loss_sum": partial_loss[0],  # so the resumed epoch reports the same train_loss
            "epoch_loss_count": partial_loss[1],
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "best_val_accuracy": best_acc,
            "history": history,
            "torch_rng": torch.get_rng_state(),
        }
        save_bundle(last_dir, model, bundle_info(metrics), train_state=state)

    columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}  val acc {task.fields[acc]}"), TimeElapsedColumn())
    interrupted = False
    epoch = start_epoch
    step_in_epoch = start_step
    with StopFlag() as stop, Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=total_steps, completed=start_epoch * steps_per_epoch + start_step,
                                 epoch=f"{start_epoch + 1}/{cfg.epochs}", loss=float("nan"), acc="-")
        for epoch in range(start_epoch, cfg.epochs):
            order = epoch_order(data.num_train, cfg.seed, epoch)
            ddp_model.train()
            loss_sum, loss_count = resumed_loss if epoch == start_epoch else (0.0, 0)
            first = start_step if epoch == start_epoch else 0
            for step_in_epoch in range(first, steps_per_epoch):
                batch = order[step_in_epoch * cfg.batch_size : (step_in_epoch + 1) * cfg.batch_size]
                mine = batch[procs.rank * per_process : (procs.rank + 1) * per_process]
                x, y = data.train_batch(mine, epoch, cfg.seed)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=device.type == "cuda"):
                    loss = cross_entropy(ddp_model(x).float(), y, cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                steps_this_run += 1
                loss_sum, loss_count = loss_sum + float(loss.detach()), loss_count + 1
                progress.update(task, advance=1, loss=loss_sum / loss_count, epoch=f"{epoch + 1}/{cfg.epochs}")
                wants_stop = stop.requested or (
                    request.stop_after_steps is not None and steps_this_run >= request.stop_after_steps
                )
                if _any_process(wants_stop, procs, device):
                    interrupted = True
                    step_in_epoch += 1  # this step is done
                    break
            if interrupted:
                break
            step_in_epoch = 0
            metrics = evaluate(model, data.val_x, data.val_y, device)
            metrics.update(epoch=epoch + 1, step=(epoch + 1) * steps_per_epoch,
                           train_loss=loss_sum / max(1, loss_count))
            history.append({k: float(v) for k, v in metrics.items()})
            progress.update(task, acc=f"{metrics['val_accuracy']:.2%}")
            if not console.is_terminal:  # logs (CI, files) get one line per epoch instead of a live bar
                console.print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {metrics['train_loss']:.4f}, "
                              f"val loss {metrics['val_loss']:.4f}, val acc {metrics['val_accuracy']:.2%}")
            improved = metrics["val_accuracy"] > best_acc
            if improved:
                best_acc = metrics["val_accuracy"]
            if procs.is_main:
                if improved:
                    save_bundle(best_dir, model, bundle_info(_metrics_for_bundle(metrics, best_acc, history)))
                save_last(epoch + 1, 0, _metrics_for_bundle(metrics, best_acc, history))
            _barrier(procs)

    steps_done = epoch * steps_per_epoch + step_in_epoch if interrupted else cfg.epochs * steps_per_epoch
    resume_command = None
    if interrupted:
        metrics = evaluate(model, data.val_x, data.val_y, device)
        metrics.update(epoch=epoch, step=steps_done)
        if procs.is_main:
            save_last(epoch, step_in_epoch, _metrics_for_bundle(metrics, best_acc, history), (loss_sum, loss_count))
        _barrier(procs)
        resume_command = f"vitdeploy train --resume {shlex.quote(str(last_dir))}"
        console.print(f"[yellow]stopped after step {steps_done} of {total_steps}; saved {last_dir}[/]")
        console.print(f"resume with: [bold]{resume_command}[/]")
    best = best_dir if (best_dir / "config.json").is_file() and best_acc >= 0 else None
    final_acc = best_acc if best_acc >= 0 else metrics["val_accuracy"]
    seconds = time.perf_counter() - started
    if not interrupted:
        console.print(f"best held-out accuracy {final_acc:.2%}; bundle: {best}  ({seconds:.1f} s)")
    return TrainResult(run_dir, best, last_dir, final_acc, len(history), steps_done, seconds, interrupted,
                       resume_command, history, procs.is_main)


def _metrics_for_bundle(metrics: dict[str, Any], best_acc: float, history: list[dict[str, float]]) -> dict[str, Any]:
    return {**metrics, "best_val_accuracy": best_acc, "history": history}


def _any_process(flag: bool, procs: Processes, device: torch.device) -> bool:
    """All processes must stop at the same step, or DDP's next all-reduce would hang."""
    if procs.world == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _barrier(procs: Processes) -> None:
    if procs.world > 1:
        dist.barrier()

