"""One training step of the default digits model, two ways stepped alternately in one process (one sitting, one load):

    python benchmarks/train_step.py optimizer   # clip + optimizer + schedule: torch.optim's against engine.AdamW
    python benchmarks/train_step.py threads     # a whole step on one intra-op thread against two

Prints the median CPU time (optimizer) or wall time (threads) of each, and for `optimizer` the largest difference
between the two models' weights afterwards (0.0: bit-identical). Record the CPU and the load average beside them.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time

import torch

from vitdeploy.core.config import get_preset
from vitdeploy.model.vit import build_model, cross_entropy
from vitdeploy.training.data import load_digits_data
from vitdeploy.training.engine import AdamW, warmup_cosine

STEPS, SKIP = 400, 20
PRESET = get_preset("digits")
CFG = PRESET.train
DATA = load_digits_data(PRESET.preprocess_spec(), CFG.val_fraction)
ORDER = torch.randperm(DATA.num_train, generator=torch.Generator().manual_seed(0))


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    per_epoch = DATA.num_train // CFG.batch_size
    return DATA.train_batch(ORDER[(i % per_epoch) * CFG.batch_size:(i % per_epoch + 1) * CFG.batch_size], 0, 0)


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(dataclasses.replace(PRESET.model, num_classes=10))


def torch_optim(m: torch.nn.Module):
    decay = [p for n, p in m.named_parameters() if p.ndim >= 2 and n not in ("cls_token", "pos_embed")]
    no_decay = [p for n, p in m.named_parameters() if p.ndim < 2 or n in ("cls_token", "pos_embed")]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": CFG.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=CFG.lr, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(STEPS, CFG))

    def step() -> None:
        torch.nn.utils.clip_grad_norm_(m.parameters(), CFG.grad_clip)
        optimizer.step()
        schedule.step()

    return step


def compare_optimizers() -> None:
    torch.set_num_threads(1)
    models = {"torch.optim": model(), "engine.AdamW": model()}
    steps = {"torch.optim": torch_optim(models["torch.optim"]), "engine.AdamW": AdamW(models["engine.AdamW"], CFG,
                                                                                      STEPS).step}
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(STEPS):
        x, y = batch(i)
        for name in (list(models) if i % 2 else list(models)[::-1]):
            m = models[name]
            m.zero_grad(set_to_none=True)
            cross_entropy(m(x), y, CFG.label_smoothing).backward()
            start = time.process_time()
            steps[name]()
            if i >= SKIP:
                times[name].append(time.process_time() - start)
    for name, values in times.items():
        print(f"{name}: clip + optimizer + schedule, median {1000 * statistics.median(values):.2f} ms of CPU a step")
    a, b = models.values()
    print("largest weight difference after", STEPS, "steps:",
          max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())))


def compare_threads() -> None:
    m = model()
    optimizer = AdamW(m, CFG, STEPS)
    times: dict[int, list[float]] = {1: [], 2: []}
    for i in range(STEPS // 2):
        for threads in ((1, 2) if i % 2 else (2, 1)):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            x, y = batch(i)
            loss = cross_entropy(m(x), y, CFG.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i >= SKIP // 2:
                times[threads].append(time.perf_counter() - start)
    for threads, values in times.items():
        print(f"{threads} thread(s): median {1000 * statistics.median(values):.1f} ms a step (wall)")


if __name__ == "__main__":
    {"optimizer": compare_optimizers, "threads": compare_threads}[sys.argv[1] if len(sys.argv) > 1 else "optimizer"]()
