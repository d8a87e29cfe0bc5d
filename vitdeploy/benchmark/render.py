"""For people: one plain line per fact beside the results table (vitdeploy.cli.tables), the plot, and the live
progress of a run on a terminal."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from vitdeploy.benchmark.protocol import Blocks
from vitdeploy.benchmark.report import BenchReport
from vitdeploy.benchmark.variants import BenchSettings
from vitdeploy.errors import ConfigError


def summary_lines(report: BenchReport) -> list[str]:
    """Per variant its cold start, file and accuracy check; then peaks and the end-to-end split, one plain line each."""
    env = report.environment
    lines = [f"machine: {env.get('cpu')}, ISA class {env.get('isa')} ({', '.join(env.get('cpu_flags') or [])})"
             + (f"; not timed here: {', '.join(report.skipped)} (why, and what would run them: `skipped` in "
                "--json, or vitdeploy doctor)" if report.skipped else "")]
    lines += [_variant_line(name, v) for name, v in report.variants.items()]
    lines += [f"{precision} peak ({device}): {peak['gflops']:.1f} GFLOP/s, from {peak['source']} (of "
              + ", ".join(f"{k} {v:.0f}" for k, v in peak["candidates"].items()) + ")"
              for device, by_precision in report.peaks.items() for precision, peak in by_precision.items()]
    lines += _best_variant_lines(report.best_variant)
    if report.end_to_end:
        e2e = report.end_to_end
        split = ", ".join(f"{stage} {ms:.2f} ms ({e2e['share'][stage]:.0%})" for stage, ms in e2e["per_image_ms"].items())
        lines.append(f"end to end, {e2e['images']} images in batches of {e2e['batch_size']}: {split} per image; "
                     f"{e2e['images_per_s']:.1f} images/s")
    if report.recommendation:
        best = report.recommendation["best"]
        lines.append(
            f"p99 budget {report.recommendation['p99_budget_ms']} ms: "
            + (f"batch {best['batch_size']} on {best['variant']} ({best['images_per_s']:.1f} images/s, "
               f"p99 {best['p99_ms']:.1f} ms)" if best else "no variant meets it at any batch size tried")
        )
    if report.regression:
        regressed = report.regression["regressed"]
        lines.append(
            f"against the baseline ({len(report.regression['compared'])} points compared, max "
            f"{report.regression['max_regress_pct']}%): " + ("; ".join(regressed) if regressed else "no regression")
        )
    return lines


def _best_variant_lines(best: dict[str, Any] | None) -> list[str]:
    """The fastest variant that passed its accuracy check, per batch size; which variants could not be chosen."""
    if not best:
        return []
    lines = []
    for batch_size, pick in best["per_batch_size"].items():
        if pick is None:
            lines.append(f"batch {batch_size}: no variant passed an accuracy check on its runtime")
            continue
        speedup = f"{pick['speedup_vs_ort_fp32']:.2f}x ORT fp32" if pick["speedup_vs_ort_fp32"] else "no ORT fp32 run"
        lines.append(f"batch {batch_size}: fastest variant that passed its accuracy check: {pick['variant']} "
                     f"({pick['runtime']} {pick['provider']} {pick['precision']}), {pick['images_per_s']:.1f} "
                     f"images/s, {speedup}, accuracy drop {pick['accuracy_drop_pt']:.2f} pt ({pick['check']})")
    unchecked = [f"{name} ({best['gate'][name]})" for name in best["never_recommended"]]
    if unchecked:
        lines.append(f"never recommended (no passing accuracy check on their runtime): {', '.join(unchecked)}")
    return lines


def _variant_line(name: str, v: dict[str, Any]) -> str:
    line = (f"{name}: {v['providers'][0]}, create {v['cold_start']['create_ms']:.0f} ms, "
            f"first run {v['cold_start']['first_run_ms']:.1f} ms (batch {v['cold_start']['first_batch_size']})")
    if v.get("accuracy"):  # an ONNX file: which one, and what export's accuracy check said of it
        quantization = v.get("quantization")
        method = f", {quantization['method']} INT8" if quantization else ""
        line += f"; {Path(v['file']).name}{method}: {v['accuracy']['note']}"
    if v["cold_start"].get("finite_outputs") is False:
        line += "; NON-FINITE logits (NaN or Inf) on the benchmark's inputs: never recommended"
    return line


def plot_report(report: BenchReport, path: Path) -> Path:
    """Latency (p50, with the p90 band) and throughput against batch size, one line per variant."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'vitdeploy[plot]'") from None
    from vitdeploy.core.atomic import atomic_write

    figure, (latency_axis, throughput_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in report.variants:
        points = sorted((p for p in report.points if p.variant == name), key=lambda p: p.batch_size)
        sizes = [p.batch_size for p in points]
        line, = latency_axis.plot(sizes, [p.percentile_ms(50) for p in points], marker="o", label=name)
        latency_axis.fill_between(sizes, [p.percentile_ms(50) for p in points],
                                  [p.percentile_ms(90) for p in points], color=line.get_color(), alpha=0.15)
        throughput_axis.plot(sizes, [p.images_per_s for p in points], marker="o", label=name)
    for axis, label in ((latency_axis, "latency per batch, ms (p50; band to p90)"),
                        (throughput_axis, "throughput, images/s")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(report.settings.batch_sizes), [str(b) for b in report.settings.batch_sizes])
        axis.set_xlabel("batch size")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    latency_axis.set_yscale("log")
    throughput_axis.legend(fontsize=8)
    figure.suptitle(f"{report.model['source']} - {report.environment.get('cpu')}, {report.settings.thread_count} threads",
                    fontsize=9)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    plt.close(figure)
    return path


def progress_wanted(enabled: bool, stream: IO[str]) -> bool:
    """A live display only for a person watching: asked for (not with --json) and `stream` is a terminal."""
    return enabled and stream.isatty()


@contextlib.contextmanager
def progress_display(
    console: Console, settings: BenchSettings, enabled: bool
) -> Iterator[Callable[[int, list[str]], None] | None]:
    """A TerminalProgress on `console` while the block runs, when progress_wanted; else nothing (None)."""
    if not progress_wanted(enabled, console.file):
        yield None
        return
    with TerminalProgress(console, settings, blocks=Blocks.for_settings(settings)) as progress:
        yield progress


@dataclass(frozen=True)
class TimeLeft:
    """The estimate made as a point starts, counted down until the next one starts."""

    started: float  # clock time the current point started
    point_s: float  # expected duration of one point
    points_after: int  # points still to come after the current one
    at_least: bool  # point_s is only the protocol's minimum

    def at(self, now: float) -> tuple[float, bool]:
        """(seconds left at `now`, whether that is a lower bound). A point that lasts longer than expected
        raises the estimate for the points after it."""
        elapsed = now - self.started
        point_s = max(self.point_s, elapsed)
        return point_s - elapsed + point_s * self.points_after, self.at_least or elapsed > self.point_s


class TerminalProgress:
    """Which batch size and variants are being measured, and the time left, on a rich Progress that vanishes when
    done. Called as each point starts (benchmark's on_point).

    A point is expected to last the protocol's minimum, (warmup_seconds + min_seconds) per variant plus the idle
    time before its blocks, until one has finished; then the mean of the finished points (min_iters, and the
    matmul peak's blocks, make points last longer than the minimum).
    """

    def __init__(self, console: Console, settings: BenchSettings, clock: Callable[[], float] = time.monotonic,
                 blocks: Blocks = Blocks()):
        self.settings = settings
        self.idle_s = blocks.idle_s * (blocks.count + 1)  # before the warm-up block and each timed block
        self.clock = clock
        self.finished_s: list[float] = []
        self.time_left: TimeLeft | None = None
        # One refresh a second: the display's thread competes for the CPU with the runs it reports on. stdout is
        # left alone: it carries data, never the display.
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 _TimeLeftColumn(clock), console=console, transient=True, refresh_per_second=1,
                                 redirect_stdout=False)
        self.task = self.progress.add_task("preparing", total=len(settings.batch_sizes), time_left=None)

    def __enter__(self) -> TerminalProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, batch_size: int, names: list[str]) -> None:
        now = self.clock()
        if self.time_left is not None:
            self.finished_s.append(now - self.time_left.started)
        minimum = len(names) * (self.settings.warmup_seconds + self.settings.min_seconds + self.idle_s)
        mean = sum(self.finished_s) / len(self.finished_s) if self.finished_s else 0.0
        points_after = len(self.settings.batch_sizes) - len(self.finished_s) - 1
        self.time_left = TimeLeft(now, max(minimum, mean), points_after, at_least=not self.finished_s)
        self.progress.update(self.task, completed=len(self.finished_s), time_left=self.time_left,
                             description=f"batch {batch_size}: {', '.join(names)}")


class _TimeLeftColumn(ProgressColumn):
    """Counts the task's TimeLeft down between updates."""

    def __init__(self, clock: Callable[[], float]):
        super().__init__()
        self.clock = clock

    def render(self, task: Task) -> Text:
        time_left = task.fields.get("time_left")
        if time_left is None:
            return Text("")
        seconds, at_least = time_left.at(self.clock())
        left = round(seconds)
        return Text(f"{'at least' if at_least else 'about'} {left // 60}:{left % 60:02d} left")
