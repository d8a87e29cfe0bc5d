"""Tables never cut a number short: piped (not a terminal), every command's table is plain text with each figure
whole whatever COLUMNS says; on a terminal narrower than the table, it folds into several tables and each figure
stays whole on one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from builders import make_bundle
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.cli.tables import Cell, Table, column_groups, numeric, plain_text, print_table
from vitdeploy.core.config import ModelConfig
from vitdeploy.training.data import DIGITS_NAME

NARROW = {"COLUMNS": "40"}  # Rich would lay a table out in 40 columns, cutting cells short with "…"
QUICK = ["--warmup-iters", "1", "--warmup-seconds", "0", "--min-iters", "2", "--min-seconds", "0", "--threads", "1",
         "--block-idle", "0"]
DIGITS = {"source": DIGITS_NAME, "split": "seeded-permutation", "split_seed": 0, "val_fraction": 0.2}
CFG = ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=10)


def row_of(text: str, *first: str) -> list[str]:
    """The words of the one line of `text` whose first words are `first`."""
    rows = [line.split() for line in text.splitlines() if line.split()[: len(first)] == list(first)]
    assert len(rows) == 1, (first, text)
    return rows[0]


def wide_table() -> Table:
    columns = ("name", *(f"figure {i}" for i in range(8)))
    table = Table("figures", columns, numeric(columns, "name"))
    for r in range(3):
        table.add_row(f"row-{r}", *(f"{123456.789 * (r + 1) * (i + 1):.3f}" for i in range(8)))
    table.add_row("styled", *(Cell("0.000001", "red") for _ in range(8)))
    return table


def test_not_on_a_terminal_the_table_is_plain_text_with_every_cell_whole() -> None:
    out = io.StringIO()
    print_table(Console(file=out, width=40), wide_table())  # a file is not a terminal
    text = out.getvalue()
    assert text.rstrip("\n") == plain_text(wide_table())
    assert "…" not in text and "\x1b[" not in text
    for row in wide_table().rows:
        assert row_of(text, row[0].text) == [cell.text for cell in row]


def test_a_narrow_terminal_folds_the_table_and_keeps_every_number_on_one_line() -> None:
    out = io.StringIO()
    print_table(Console(file=out, width=40, force_terminal=True, color_system=None), wide_table())
    text = out.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 40
    assert "figures (1/" in text  # folded into several tables, each led by the key column
    for row in wide_table().rows:
        words = [w for line in text.splitlines() if line.split()[:1] == [row[0].text] for w in line.split()[1:]]
        assert words == [cell.text for cell in row[1:]]  # every figure, whole and in order


def test_columns_are_grouped_to_fit_beside_the_key() -> None:
    assert column_groups([5, 10, 10, 10], width=40) == [[1, 2], [3]]  # 8 + 13 + 13 = 34; + 13 > 40
    assert column_groups([5, 10, 10, 10], width=200) == [[1, 2, 3]]
    assert column_groups([5, 60, 3], width=40) == [[1], [2]]  # too wide for any group: a group of its own


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitdeploy.exporting.exporter import export_onnx

    bundle = make_bundle(tmp_path_factory.mktemp("tables") / "bundle", CFG, dataset=DIGITS)
    export_onnx(bundle, verify=False)
    return bundle


def test_bench_piped_prints_every_number_whole(digits_bundle: Path) -> None:
    result = CliRunner().invoke(app, ["bench", str(digits_bundle / "model.onnx"), "--variants", "ort-cpu",
                                      "--batch-sizes", "1,3", *QUICK, "--json"], env=NARROW)
    assert result.exit_code == 0, result.output
    assert "…" not in result.stderr
    for row in json.loads(result.stdout)["results"]:
        words = row_of(result.stderr, row["variant"], str(row["batch_size"]))
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "images_per_s"):
            assert f"{row[key]:.1f}" in words, key
        assert f"{row['speedup_vs_ort_fp32']:.2f}" in words


def test_verify_piped_prints_every_number_whole(digits_bundle: Path) -> None:
    result = CliRunner().invoke(app, ["verify", str(digits_bundle / "model.onnx"), "--runtime", "ort",
                                      "--batch-sizes", "1,3", "--json"], env=NARROW)
    assert result.exit_code == 0, result.output
    assert "…" not in result.stderr
    for case in json.loads(result.stdout)["cases"]:
        words = row_of(result.stderr, "ort", "CPU", str(case["batch_size"]))
        assert words[3:] == [str(case["samples"]), f"{case['max_abs']:.2e}", f"{case['max_rel']:.2e}",
                             f"{case['min_cosine']:.7f}", f"{case['top1_agreement']:.1%}",
                             f"{case['batch_invariance_max_abs']:.2e}", "ok"]


@pytest.mark.slow
def test_export_precision_piped_prints_every_number_whole(digits_bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(digits_bundle), "-o", str(tmp_path / "model.onnx"),
                                      "--no-verify", "--precision", "int8", "--json"], env=NARROW)
    assert result.exit_code == 0, result.output
    assert "…" not in result.stderr
    (variant,) = json.loads(result.stdout)["variants"]
    gate = variant["gate"]
    words = row_of(result.stderr, "int8")
    for figure in (str(gate["samples"]["real"]), f"{gate['accuracy']:.2%}", f"{gate['top1_agreement']:.1%}",
                   f"{gate['max_abs']:.1e}", "model.int8.onnx"):
        assert figure in words, figure


def test_predict_piped_prints_every_probability_and_path_whole(tiny_onnx: Path, tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"a-rather-long-file-name-for-a-narrow-table-{i}.png")
        Image.new("RGB", (20, 20), (40 * i, 90, 200 - 30 * i)).save(paths[-1])
    args = ["predict", *map(str, paths), "--model", str(tiny_onnx), "--top-k", "3"]
    table = CliRunner().invoke(app, args, env=NARROW)
    rows = CliRunner().invoke(app, [*args, "--format", "jsonl"], env=NARROW)
    assert table.exit_code == rows.exit_code == 0, table.output
    assert "…" not in table.stdout
    for row in map(json.loads, rows.stdout.splitlines()):
        words = row_of(table.stdout, row["path"])
        assert words[1:3] == [row["label"], f"{row['probability']:.3f}"]
        assert " ".join(words[3:]) == ", ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top_k"][1:])
