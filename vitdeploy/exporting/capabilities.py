"""What this machine can build, gate and run, variant by variant: the variant tables (files/variants.py) read
against the machine record (runtimes.this_machine()). Export's refusals and `--precision auto`, bench's plan and
`vitdeploy doctor` all ask here, so which variant needs what is said once, by the tables themselves
(ExportVariant.computes: the precisions its runtime computes it in), never restated.

    export_problem(EXPORT["ov-bf16"])   # None, or why this machine cannot gate it and what would
    auto_variants()                     # (what export --precision auto builds here, {the rest: why not})
    bench_problem(VARIANTS["ov-cpu-int8-bf16"])
    machine_report()                    # `vitdeploy doctor`
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from vitdeploy.core.extras import EXTRAS, importable, missing_modules
from vitdeploy.core.strict_json import record
from vitdeploy.errors import MissingExtra, PrecisionError
from vitdeploy.files.variants import (
    EXPORT,
    EXPORT_VARIANTS,
    VARIANTS,
    ExportVariant,
    VariantSpec,
)
from vitdeploy.runtimes import Machine, runtime_spec, this_machine

TORCH_INSTALL = 'pip install "vitdeploy[train]"'
# The export variants --precision auto considers: the faster files (--precision's and --optimize's); --image-input
# changes what the file takes, not how fast it runs.
FASTER = ("precision", "optimize")


def gate_device(row: ExportVariant, machine: Machine) -> str:
    """Where the accuracy gate runs `row` here: its gate_device; "auto" is CUDA where its runtime has it."""
    if row.gate_device != "auto":
        return row.gate_device
    return "cuda" if "cuda" in machine.offer(row.runtime).devices else "cpu"


def export_problem(row: ExportVariant, machine: Machine | None = None, *, natively: bool = True) -> str | None:
    """Why this machine cannot build and gate `row`, ending with what would (an install line or the hardware);
    None when it can. natively=False (a variant named explicitly) also accepts a precision its runtime runs
    without computing in it: fp16 judged on ONNX Runtime's CPU provider, which casts it to fp32."""
    machine = machine or this_machine()
    extra = runtime_spec(row.runtime).extra
    missing = missing_modules(extra) if extra and row.builder else []
    if missing:  # its builder needs the whole extra (NNCF for OpenVINO's INT8)
        return (f"{row.name} needs {', '.join(missing)}, which this installation lacks: "
                f'pip install "vitdeploy[{extra}]"')
    device = gate_device(row, machine)
    for precision in row.computes:
        problem = machine.compute_problem(row.runtime, device, precision, emulated=not natively)
        if problem:
            return problem
    return None


def check_exportable(names: list[str] | tuple[str, ...], machine: Machine | None = None) -> None:
    """Refuse, before any work, a variant named explicitly that this machine cannot build and gate: MissingExtra
    where an install would do, PrecisionError where the hardware would (exit 2 either way)."""
    machine = machine or this_machine()
    for row in (EXPORT[name] for name in names):
        problem = export_problem(row, machine, natively=False)
        if problem:
            extra = runtime_spec(row.runtime).extra
            installed = machine.offer(row.runtime).installed and not (extra and missing_modules(extra))
            raise (PrecisionError if installed else MissingExtra)(f"export {row.export_flag}: {problem}")


def auto_variants(machine: Machine | None = None) -> tuple[list[str], dict[str, str]]:
    """`export --precision auto`: every variant built beside model.onnx that this machine computes natively and
    can gate, in table order; and each of the others with why not and what would build it."""
    machine = machine or this_machine()
    chosen, skipped = [], {}
    for row in (r for r in EXPORT_VARIANTS if r.builder and r.option in FASTER):
        problem = export_problem(row, machine)
        if problem:
            skipped[row.name] = problem
        else:
            chosen.append(row.name)
    return chosen, skipped


def bench_problem(spec: VariantSpec, machine: Machine | None = None) -> str | None:
    """Why this machine cannot time `spec` as it is meant to run (natively: an emulated precision would time the
    emulation), ending with what would; None when it can."""
    if spec.runtime == "torch":
        return torch_problem(spec.device)
    machine = machine or this_machine()
    for precision in spec.computes:
        problem = machine.compute_problem(spec.runtime, spec.device, precision)
        if problem:
            return problem
    return None


def torch_problem(device: str) -> str | None:
    """PyTorch eager needs torch installed, and on CUDA a GPU torch sees."""
    if not importable("torch"):
        return f"PyTorch is not installed: {TORCH_INSTALL}"
    return None if device == "cpu" or _torch_sees_cuda() else "torch sees no CUDA device (a CUDA build and a GPU)"


@functools.cache
def _torch_sees_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# ---------------------------------------------------------------------------------------------------- doctor


@dataclass
class MachineReport:
    """`vitdeploy doctor`: what this machine offers, and for every variant whether it can run here and, if not,
    why and what would (an install line or the hardware)."""

    machine: dict[str, Any]  # Machine.to_dict(): OS, CPU, ISA class and flags, every runtime's offer
    export: dict[str, str | None]  # export variant -> None (export --precision auto builds it) or why not
    bench: dict[str, str | None]  # bench variant -> None (bench times it by default, given its file) or why not
    extras: dict[str, list[str]]  # pip extra -> its modules missing here ([] when installed)
    recommendation: str

    def to_dict(self) -> dict[str, Any]:
        return record(self)


def machine_report(machine: Machine | None = None) -> MachineReport:
    machine = machine or this_machine()
    export = {row.name: export_problem(row, machine) for row in EXPORT_VARIANTS if row.builder and row.option in FASTER}
    bench = {name: bench_problem(spec, machine) for name, spec in VARIANTS.items()}
    return MachineReport(machine.to_dict(), export, bench, {extra: missing_modules(extra) for extra in EXTRAS},
                         recommendation(machine, export, bench))


def recommendation(machine: Machine, export: dict[str, str | None], bench: dict[str, str | None]) -> str:
    """What to do on this machine: build every variant it can gate, then let bench time them and name the fastest
    that passed (the ranking is measured, not assumed: it differs between CPUs of one ISA class)."""
    built = [name for name, problem in export.items() if problem is None]
    timed = [name for name, problem in bench.items() if problem is None and name != "torch"]
    return (f"vitdeploy export BUNDLE --precision auto (here: {', '.join(built) or 'fp32 only'}), then vitdeploy "
            f"bench, which times {', '.join(timed)} and names the fastest variant that passed its accuracy gate")


def cpu_variant_table(machines: dict[str, Machine]) -> str:
    """docs/runtimes.md's table "which CPU runs which variant": one row per machine (a title -> its record), a
    column per CPU bench variant (yes where bench times it there), and what export --precision auto builds."""
    columns = [name for name, spec in VARIANTS.items() if spec.device == "cpu" and spec.runtime != "torch"]
    lines = ["| CPU | " + " | ".join(f"`{c}`" for c in columns) + " | `export --precision auto` builds |",
             "|---|" + "---|" * len(columns) + "---|"]
    for title, machine in machines.items():
        cells = ["yes" if bench_problem(VARIANTS[c], machine) is None else "-" for c in columns]
        built, _ = auto_variants(machine)
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {', '.join(built)} |")
    return "\n".join(lines)
