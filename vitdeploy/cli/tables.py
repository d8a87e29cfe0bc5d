"""Every table the command line prints, and the one way they are printed: no number is ever cut short.

The domain modules return reports (BenchReport, ParityReport, VariantResult, prediction rows); here they become
Tables of plain strings, and print_table writes them:
  - not on a terminal (piped, redirected, captured): plain text, each column as wide as its widest cell, whatever
    the width Rich would assume (80 columns), so that a file or a script gets every figure whole;
  - on a terminal: Rich's rendering, folded when the table is wider than the terminal: the columns are split into
    several tables, each repeating the first (key) column, so that every figure stays on one line. Text columns (a
    path, the top-k labels) may wrap onto several lines; numeric columns never do. A terminal too narrow for even
    one numeric column beside the key gets the plain text, which the terminal wraps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console

from vitdeploy.runtimes import short_provider_name

if TYPE_CHECKING:
    from vitdeploy.benchmark.report import BenchReport
    from vitdeploy.exporting.capabilities import MachineReport
    from vitdeploy.exporting.ladder import VariantResult
    from vitdeploy.verification.parity import ParityReport

GAP = 2  # spaces between columns in plain text
RICH_GAP = 3  # what Rich's SIMPLE_HEAD puts beside each column: a padding of 1 on each side and a separator


@dataclass(frozen=True)
class Cell:
    """A cell's text and, on a terminal, its style (e.g. "red"): the text alone is what a file gets."""

    text: str
    style: str | None = None


@dataclass
class Table:
    title: str
    columns: Sequence[str]
    right: frozenset[int] = frozenset()  # indices of right-aligned (numeric) columns
    rows: list[list[Cell]] = field(default_factory=list)

    def add_row(self, *cells: str | Cell) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([c if isinstance(c, Cell) else Cell(c) for c in cells])

    def widths(self) -> list[int]:
        return [max([len(name)] + [len(row[i].text) for row in self.rows]) for i, name in enumerate(self.columns)]


def numeric(columns: Sequence[str], *left: str) -> frozenset[int]:
    """Every column right-aligned but those named in `left`."""
    return frozenset(i for i, name in enumerate(columns) if name not in left)


# ------------------------------------------------------------------------------------------------------ output


def plain_text(table: Table) -> str:
    """The table as fixed-width text: every cell whole, no styles, no width limit."""
    widths = table.widths()

    def line(cells: Sequence[str]) -> str:
        return (" " * GAP).join(c.rjust(w) if i in table.right else c.ljust(w)
                                for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [table.title] if table.title else []
    lines += [line(table.columns), line(["-" * w for w in widths])]
    lines += [line([cell.text for cell in row]) for row in table.rows]
    return "\n".join(lines)


KEY_SHARE = 3  # a wrappable key column takes at most 1/KEY_SHARE of the width when the table is folded


def column_groups(widths: Sequence[int], width: int) -> list[list[int]]:
    """The columns after the first, in order, split into groups that fit `width` beside the first column (each
    column costs its width + RICH_GAP; the first at most width / KEY_SHARE, as it may wrap). A column too wide
    for any group gets one of its own."""
    key = min(widths[0], width // KEY_SHARE) + RICH_GAP
    groups: list[list[int]] = [[]]
    used = key
    for i, w in enumerate(widths[1:], start=1):
        if groups[-1] and used + w + RICH_GAP > width:
            groups.append([])
            used = key
        groups[-1].append(i)
        used += w + RICH_GAP
    return groups


def print_table(console: Console, table: Table) -> None:
    """Plain text when `console` is not a terminal; Rich's table, folded into several to fit the terminal's
    width, when it is. Numbers are written whole either way."""
    if not console.is_terminal:
        console.print(plain_text(table), markup=False, highlight=False, soft_wrap=True)
        return
    widths = table.widths()
    key = min(widths[0], console.width // KEY_SHARE) + RICH_GAP
    if any(key + w + RICH_GAP > console.width for i, w in enumerate(widths) if i in table.right):
        console.print(plain_text(table), markup=False, highlight=False, soft_wrap=True)
        return
    groups = column_groups(widths, console.width) if len(widths) > 1 else [[]]
    for n, group in enumerate(groups):
        title = table.title + (f" ({n + 1}/{len(groups)})" if len(groups) > 1 else "")
        console.print(_rich_table(table, [0, *group], widths, title))


def _rich_table(table: Table, columns: list[int], widths: list[int], title: str) -> Any:
    from rich import box
    from rich.table import Table as RichTable
    from rich.text import Text

    rich = RichTable(title=title or None, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i in columns:
        # Numbers keep their full width on one line; text may wrap (a long path, the top-k labels).
        number = i in table.right
        rich.add_column(table.columns[i], justify="right" if number else "left", overflow="fold", no_wrap=number,
                        min_width=widths[i] if number else None)
    for row in table.rows:
        rich.add_row(*(Text(row[i].text, style=row[i].style or "") for i in columns))
    return rich


# ------------------------------------------------------------------------------------------------------ tables


def _passed(ok: bool) -> Cell:
    return Cell("ok", "green") if ok else Cell("FAIL", "red")


def bench_table(report: BenchReport) -> Table:
    """bench's figures, grouped by batch size."""
    columns = ("variant", "batch", "p50", "p90", "p99", "mean", "std", "img/s", "×eager", "×ORT fp32", "MFU")
    table = Table(f"{report.model['source']}: {report.model['macs_per_image']['gmacs']:.3f} GMACs/image, "
                  f"{report.settings.thread_count} threads; latencies in ms", columns, numeric(columns, "variant"))
    for point in sorted(report.points, key=lambda p: (p.batch_size, list(report.variants).index(p.variant))):
        row = point.to_dict()
        table.add_row(
            point.variant, str(point.batch_size), f"{row['p50_ms']:.1f}", f"{row['p90_ms']:.1f}",
            f"{row['p99_ms']:.1f}", f"{row['mean_ms']:.1f}", f"{row['std_ms']:.1f}", f"{row['images_per_s']:.1f}",
            f"{row['speedup_vs_eager']:.2f}" if row["speedup_vs_eager"] else "-",
            f"{row['speedup_vs_ort_fp32']:.2f}" if row["speedup_vs_ort_fp32"] else "-",
            f"{row['mfu']:.1%}" if row["mfu"] is not None else "-",
        )
    return table


def parity_tables(report: ParityReport) -> list[Table]:
    """verify's (and export's) parity report: one row per runtime and batch size; runtime against runtime;
    where parity failed, each intermediate."""
    tolerance = f"{report.precision}, atol {report.tolerance.atol:g}, rtol {report.tolerance.rtol:g}"
    columns = ("runtime", "batch", "samples", "max |diff|", "max rel", "min cosine", "top-1 agree", "vs batch 1", "")
    cases = Table(f"parity with PyTorch: {report.model_path} ({tolerance})", columns, numeric(columns, "runtime", ""))
    for c in report.cases:
        cases.add_row(
            _target_name(c.target), str(c.batch_size), str(c.samples), f"{c.max_abs:.2e}", f"{c.max_rel:.2e}",
            f"{c.min_cosine:.7f}", f"{c.top1_agreement:.1%}", f"{c.batch_invariance_max_abs:.2e}", _passed(c.passed),
        )
    tables = [cases]
    if report.cross:
        columns = ("runtime", "against", "samples", "max |diff|", "max rel", "min cosine", "top-1 agree", "")
        cross = Table("runtime against runtime on the same file (batch 1)", columns,
                      numeric(columns, "runtime", "against", ""))
        for x in report.cross:
            cross.add_row(_target_name(x.a), _target_name(x.b), str(x.samples), f"{x.max_abs:.2e}",
                          f"{x.max_rel:.2e}", f"{x.min_cosine:.7f}", f"{x.top1_agreement:.1%}", _passed(x.passed))
        tables.append(cross)
    for provider in report.first_divergence():
        columns = ("intermediate", "ONNX tensor", "max |diff|", "tolerance", "")
        layers = Table(f"where it diverges ({short_provider_name(provider)})", columns,
                       numeric(columns, "intermediate", "ONNX tensor", ""))
        for d in report.layers[provider]:
            layers.add_row(d.name, d.tensor, f"{d.max_abs:.2e}", f"{d.tolerance:.2e}", _passed(d.passed))
        tables.append(layers)
    return tables


def _target_name(key: str) -> str:
    """A report key for people: ort CPU, ort CUDA, openvino:CPU:fp32, reference."""
    return f"ort {short_provider_name(key)}" if key.endswith("ExecutionProvider") else key


def variants_table(results: Sequence[VariantResult]) -> Table:
    """export --precision's accuracy gate: one row per variant; fusion counts, and any that fell short."""
    columns = ("variant", "on", "images", "accuracy", "change", "top-1 agree", "max |diff|", "fusions", "file")
    table = Table("precision variants vs PyTorch fp32", columns, numeric(columns, "variant", "on", "fusions", "file"))
    for r in results:
        g = r.gate
        short = r.fusions.shortfalls() if r.fusions else {}
        fusions = ("-" if r.fusions is None else "all" if not short
                   else ", ".join(f"{op} {n}" for op, n in short.items()))
        ran = g.runtime or {}
        on = f"{ran.get('runtime', 'ort')} {short_provider_name(g.provider)}" + (
            f" {ran['inference_precision']}" if ran.get("inference_precision") else "")
        table.add_row(
            r.variant, on, str(g.images), f"{g.accuracy:.2%}",
            f"{100 * (g.accuracy - g.reference_accuracy):+.2f} pt", f"{g.top1_agreement:.1%}", f"{g.max_abs:.1e}",
            Cell(fusions, "yellow" if short else None),
            Cell(r.path.name, "green") if r.written else Cell("FAIL: not written", "red"),
        )
    return table


def prediction_table(rows: list[dict[str, Any]]) -> Table:
    """predict's rows: each file's best label and probability, the other top-k, or its error."""
    columns = ("path", "label", "probability", "top-k")
    table = Table("", columns, frozenset({2}))
    for row in rows:
        if row["ok"]:
            others = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top_k"][1:])
            table.add_row(row["path"], str(row["label"]), f"{row['probability']:.3f}", others)
        else:
            table.add_row(row["path"], Cell(row["error"], "red"), "", row["message"])
    return table


def doctor_tables(report: MachineReport) -> list[Table]:
    """`vitdeploy doctor`: the runtimes here, then every export and bench variant: here, or why not and what would."""
    machine = report.machine
    runtimes = Table(f"{machine['cpu']} ({machine['arch']}, ISA class {machine['isa']}; flags: "
                     f"{', '.join(machine['cpu_flags']) or 'none'}): runtimes", ["runtime", "here", "computes natively"])
    for name, offer in machine["runtimes"].items():
        computes = "; ".join(f"{device}: {', '.join(precisions)}" for device, precisions in offer["precisions"].items())
        runtimes.add_row(name, "yes" if offer["usable"] else "no", computes or offer["reason"])
    tables = [runtimes]
    for title, problems in (("export variants (--precision auto builds those here)", report.export),
                            ("bench variants (timed by default where their file exists)", report.bench)):
        table = Table(title, ["variant", "here", "why not, and what would run it"])
        for name, problem in problems.items():
            table.add_row(name, "no" if problem else "yes", Cell(problem or "", "yellow" if problem else None))
        tables.append(table)
    return tables
