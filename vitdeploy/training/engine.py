"""The training engine: one epoch of optimizer steps (`train_one_epoch`) and held-out evaluation (`evaluate`).

Also what those two use: AdamW with its warm-up/cosine schedule, each epoch's sample order, mixed precision,
the stop flag (Ctrl-C, --stop-after-steps) and the progress display. `vitdeploy.training.run` wires them into a run.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from dataclasses import dataclass
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from vitdeploy.core.config import TrainConfig
from vitdeploy.core.progress import live_progress, stderr_is_terminal
from vitdeploy.model.vit import cross_entropy
from vitdeploy.training.data import TrainingData
from vitdeploy.training.distributed import Processes

logger = logging.getLogger(__name__)

EVAL_BATCH = 256


# ------------------------------------------------------------------------------------------ optimisation


class AdamW:
    """AdamW on the warm-up/cosine schedule, with the global gradient-norm clip: torch's fused AdamW kernel, called
    directly, once per parameter group a step.

    Why not torch.optim.AdamW + LambdaLR + clip_grad_norm_: torch.optim's first use imports torch._dynamo (~1.5 s
    of CPU, 5% of the default `vitdeploy train`), and its per-step machinery (hooks, grouping by device, two ops
    per tensor to clip, a scheduler) cost ~1.4 ms of the digits model's ~20 ms step. The arithmetic is theirs, op
    for op: the weights after any number of steps are bit-identical to those three's (benchmarks/train_speed.md).

    No weight decay on biases, norms, the cls token and position embeddings (all 1-D or embeddings).
    `param_groups` is what torch's GradScaler reads to unscale fp16 gradients on CUDA.
    """

    BETAS = (0.9, 0.999)
    EPS = 1e-8

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, total_steps: int) -> None:
        named = list(getattr(model, "module", model).named_parameters())
        decay = [p for name, p in named if p.ndim >= 2 and name not in ("cls_token", "pos_embed")]
        no_decay = [p for name, p in named if p.ndim < 2 or name in ("cls_token", "pos_embed")]
        # The model's order, not the groups': the global norm sums the per-tensor norms in clip_grad_norm_'s order.
        self.params = [p for _, p in named]
        self.param_groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}]
        for group in self.param_groups:
            group["exp_avg"] = [torch.zeros_like(p) for p in group["params"]]
            group["exp_avg_sq"] = [torch.zeros_like(p) for p in group["params"]]
        self.lr, self.grad_clip = cfg.lr, cfg.grad_clip
        self.schedule = warmup_cosine(total_steps, cfg)
        self.steps = 0  # optimizer steps taken
        # the kernel reads the step (1-based, for bias correction) from a tensor on the parameters' device
        self._step = torch.zeros((), device=self.params[0].device)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None  # backward then stores its gradient instead of adding to a zeroed one

    def step(self) -> None:
        lr = self.lr * self.schedule(self.steps)
        self.steps += 1
        self._step += 1
        if self.grad_clip > 0:  # clip_grad_norm_'s arithmetic, in two foreach calls instead of two ops per tensor
            grads = [p.grad for p in self.params]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_mul_(grads, (self.grad_clip / (norm + 1e-6)).clamp_(max=1.0))
        for group in self.param_groups:
            if group["params"]:
                torch._fused_adamw_(
                    group["params"], [p.grad for p in group["params"]], group["exp_avg"], group["exp_avg_sq"], [],
                    [self._step] * len(group["params"]), lr=lr, beta1=self.BETAS[0], beta2=self.BETAS[1],
                    weight_decay=group["weight_decay"], eps=self.EPS, amsgrad=False, maximize=False,
                )

    def state_dict(self) -> dict[str, Any]:
        """The step count and both moments, each as one flat tensor (a few tensors for --resume to save)."""
        return {"steps": self.steps, **{moment: _flat([t for g in self.param_groups for t in g[moment]])
                                        for moment in ("exp_avg", "exp_avg_sq")}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Raises ValueError or KeyError when `state` is not a state of this optimizer's parameters."""
        if "param_groups" in state:  # torch.optim.AdamW's, in train states written before this class
            per_tensor = [state["state"][i] for group in state["param_groups"] for i in group["params"]]
            state = {"steps": int(per_tensor[0]["step"]), **{moment: _flat([t[moment] for t in per_tensor])
                                                               for moment in ("exp_avg", "exp_avg_sq")}}
        size = sum(p.numel() for p in self.params)
        if not isinstance(state["steps"], int) or any(
            not isinstance(state[m], torch.Tensor) or state[m].shape != (size,) for m in ("exp_avg", "exp_avg_sq")
        ):
            raise ValueError(f"expected a step count and two moments of {size} values")
        self.steps = state["steps"]
        self._step.fill_(self.steps)
        for moment in ("exp_avg", "exp_avg_sq"):
            mine = [t for g in self.param_groups for t in g[moment]]
            saved = state[moment].split([t.numel() for t in mine])
            torch._foreach_copy_(mine, [s.view_as(t).to(t.device) for s, t in zip(saved, mine)])


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).cpu() for t in tensors])


def warmup_cosine(total_steps: int, cfg: TrainConfig):
    """LR multiplier: linear warm-up to 1, then cosine decay to min_lr_ratio."""
    warmup = max(1, round(total_steps * cfg.warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class MixedPrecision:
    """Autocast and loss scaling. On CUDA: bf16 autocast where the GPU supports it, else fp16 autocast with a grad
    scaler. Elsewhere both are disabled and their calls leave the fp32 step unchanged."""

    def __init__(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.device_type = device.type
        self.dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        self.enabled = cuda
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and self.dtype == torch.float16)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


def epoch_order(num_train: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a function of (seed, epoch) only, the same on every process."""
    return torch.randperm(num_train, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


# ------------------------------------------------------------------------------------ stopping and progress


class StopFlag:
    """Whether to stop after the current step: Ctrl-C was pressed (a second Ctrl-C aborts at once), or
    `after_steps` steps (--stop-after-steps) are done in this invocation."""

    def __init__(self, after_steps: int | None = None) -> None:
        self.after_steps = after_steps
        self.steps = 0
        self.requested = False
        self._previous: Any = None

    def step_done(self) -> bool:
        """Count one finished step; return whether to stop now."""
        self.steps += 1
        return self.requested or (self.after_steps is not None and self.steps >= self.after_steps)

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


class TrainProgress:
    """On a terminal, a live bar over all steps (progress.live_progress, as predict and bench draw theirs);
    elsewhere (CI, log files) one log line per epoch."""

    COLUMNS = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}  val acc {task.fields[acc]}"), TimeElapsedColumn())

    def __init__(self, enabled: bool, epochs: int, total_steps: int, steps_done: int, epoch: int) -> None:
        self.enabled, self.epochs = enabled, epochs
        self._start = {"total": total_steps, "completed": steps_done, "epoch": f"{epoch + 1}/{epochs}"}
        self._live = live_progress(enabled, *self.COLUMNS)

    def __enter__(self) -> TrainProgress:
        self._bar = self._live.__enter__()
        self._task = self._bar.add_task("train", loss=float("nan"), acc="-", **self._start)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    def step(self, epoch: int, train_loss: float) -> None:
        self._bar.update(self._task, advance=1, loss=train_loss, epoch=f"{epoch + 1}/{self.epochs}")

    def epoch_done(self, epoch: int, metrics: dict[str, float]) -> None:
        self._bar.update(self._task, acc=f"{metrics['val_accuracy']:.2%}")
        if self.enabled and not stderr_is_terminal():  # a line written under a live bar would garble it
            logger.info("epoch %d/%d: train loss %.4f, val loss %.4f, val acc %.2f%%", epoch + 1, self.epochs,
                        metrics["train_loss"], metrics["val_loss"], 100 * metrics["val_accuracy"])


# ---------------------------------------------------------------------------------------- epoch and eval


@dataclass(frozen=True)
class EpochResult:
    """What `train_one_epoch` did."""

    loss_sum: float  # training loss summed over the epoch's steps, including those before a resume
    loss_count: int
    steps: int  # steps of the epoch done, including those before a resume (all of them unless stopped)
    stopped: bool  # the stop flag was set on some process; the last step finished

    @property
    def train_loss(self) -> float:
        return self.loss_sum / max(1, self.loss_count)


def train_one_epoch(
    model: torch.nn.Module,
    data: TrainingData,
    cfg: TrainConfig,
    epoch: int,
    *,
    optimizer: AdamW,
    precision: MixedPrecision,
    procs: Processes,
    stop: StopFlag,
    progress: TrainProgress,
    first_step: int = 0,
    loss_sum: float = 0.0,
    loss_count: int = 0,
) -> EpochResult:
    """Steps `first_step`.. of `epoch`, or up to the step after which `stop` asks to stop.

    Every process takes its own slice of each global batch of cfg.batch_size samples; `model` is DDP-wrapped
    when there are several processes. `loss_sum`/`loss_count` carry the loss of a resumed epoch's earlier steps.
    """
    steps_per_epoch = data.num_train // cfg.batch_size
    per_process = cfg.batch_size // procs.world
    order = epoch_order(data.num_train, cfg.seed, epoch)
    model.train()
    for step in range(first_step, steps_per_epoch):
        batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        mine = batch[procs.rank * per_process : (procs.rank + 1) * per_process]
        x, y = data.train_batch(mine, epoch, cfg.seed)
        x, y = x.to(procs.device, non_blocking=True), y.to(procs.device, non_blocking=True)
        with precision.autocast():
            loss = cross_entropy(model(x).float(), y, cfg.label_smoothing)
        optimizer.zero_grad()
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)  # unscales fp16 gradients first; AdamW.step clips them
        precision.scaler.update()
        loss_sum, loss_count = loss_sum + float(loss.detach()), loss_count + 1
        progress.step(epoch, loss_sum / loss_count)
        if procs.any(stop.step_done()):
            return EpochResult(loss_sum, loss_count, step + 1, stopped=True)
    return EpochResult(loss_sum, loss_count, steps_per_epoch, stopped=False)


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
