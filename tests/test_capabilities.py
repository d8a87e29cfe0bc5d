"""The capability matrix: with the machine record faked (tests/machines.py), for each CPU family and install, what
bench plans and skips, what export --precision auto builds, which runtime serve and predict pick for each file,
what is recommended, and the docs' table "which CPU runs which variant" checked against the same code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from machines import FAMILIES, TITLES, fake_machine
from typer.testing import CliRunner

from vitdeploy.benchmark.artifacts import (
    ModelUnderTest,
    build_variant_files,
    plan_variants,
)
from vitdeploy.benchmark.variants import BenchSettings
from vitdeploy.cli import app
from vitdeploy.errors import EXIT_BAD_INPUT, ConfigError, MissingExtra, PrecisionError
from vitdeploy.exporting.capabilities import (
    auto_variants,
    cpu_variant_table,
    export_problem,
    machine_report,
)
from vitdeploy.exporting.ladder import check_request
from vitdeploy.files.variants import EXPORT
from vitdeploy.requests import ServeSettings
from vitdeploy.runtimes import assume, open_runtime, read_model_info, runtime_for_file

runner = CliRunner()
DOCS = Path(__file__).resolve().parent.parent / "docs" / "runtimes-and-precision.md"

GPU_ONLY = {"torch-cuda", "ort-cuda", "ort-cuda-graph", "ort-cuda-fp16", "ort-tensorrt"}
BF16 = {"ov-cpu-bf16", "ov-cpu-int8-bf16"}
OPENVINO = {"ov-cpu", "ov-cpu-int8"} | BF16
# family -> (bench variants the hardware skips, what export --precision auto builds)
MATRIX = {
    "avx2": (GPU_ONLY | BF16, ["fp32-opt", "int8", "ov-int8"]),
    "avx512_vnni": (GPU_ONLY | BF16, ["fp32-opt", "int8", "ov-int8"]),
    "avx512_bf16": (GPU_ONLY, ["fp32-opt", "int8", "ov-bf16", "ov-int8", "ov-int8-bf16"]),
    "amx": (GPU_ONLY, ["fp32-opt", "int8", "ov-bf16", "ov-int8", "ov-int8-bf16"]),
    "arm64": (GPU_ONLY | BF16, ["fp32-opt", "int8", "ov-int8"]),
}
CASES = {
    **{family: (fake_machine(family), *expected) for family, expected in MATRIX.items()},
    "avx2, OpenVINO not installed": (fake_machine("avx2", openvino=False), GPU_ONLY | OPENVINO, ["fp32-opt", "int8"]),
    "avx2, no browser": (fake_machine("avx2", browser=False), *MATRIX["avx2"]),
    "avx2 + a CUDA GPU": (fake_machine("avx2", cuda=True), (GPU_ONLY - {"ort-cuda", "ort-cuda-graph", "ort-cuda-fp16"})
                          | BF16, ["fp32-opt", "fp16", "int8", "ov-int8"]),
}


@pytest.fixture(scope="module")
def model_dir(tiny_onnx, tmp_path_factory) -> ModelUnderTest:
    """The tiny export with every variant file the hardware decides about beside it (made as export makes them,
    no accuracy gate): bf16 ones are the same graph, so no NNCF run is needed."""
    from vitdeploy.files.onnx_file import DEFAULT_FILE_NAME

    folder = tmp_path_factory.mktemp("variants")
    base = folder / DEFAULT_FILE_NAME
    base.write_bytes(tiny_onnx.read_bytes())
    config = read_model_info(base).model_config
    build_variant_files(base, config, ["fp32-opt", "int8", "ov-bf16"])
    return ModelUnderTest(base, config, str(base))


@pytest.mark.parametrize("case", list(CASES))
def test_bench_defaults_plan_what_the_machine_runs_and_skip_the_rest_saying_what_would(case, model_dir):
    machine, hardware_skipped, _ = CASES[case]
    with assume(machine):
        planned, skipped = plan_variants(BenchSettings(), model_dir)
    # PyTorch's variants need the weights, which this model lacks; the rest are skipped for a file or the machine.
    hardware = {name for name, why in skipped.items() if "beside" not in why and not name.startswith("torch")}
    assert hardware == hardware_skipped - {"torch-cuda"}
    assert set(planned) | set(skipped) == set(BenchSettings().requested) and not set(planned) & set(skipped)
    assert {"ort-cpu", "ort-cpu-fused", "ort-cpu-int8"} <= set(planned)  # ORT on the CPU runs everywhere
    for name in set() if "not installed" in case else hardware & BF16:
        assert re.search(r"bf16 natively on this CPU \(\w+\): bf16 needs a CPU with AVX512_BF16 or AMX", skipped[name])
    if "not installed" in case:
        assert all('pip install "vitdeploy[openvino]"' in skipped[name] for name in OPENVINO)
    for name in GPU_ONLY & hardware - {"torch-cuda"}:
        assert "NVIDIA GPU" in skipped[name]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bench_preset_builds_only_the_files_this_machine_runs(family):
    from vitdeploy.benchmark.run import preset_files

    with assume(fake_machine(family)):
        built = preset_files(BenchSettings())
    bf16 = ["ov-bf16", "ov-int8-bf16"] if family in ("avx512_bf16", "amx") else []
    assert sorted(built) == sorted(["fp32-opt", "int8", "ov-int8", *bf16])  # fp16 is for CUDA: not built on a CPU


def test_bench_on_avx2_never_plans_the_bf16_variant_the_issue_found_running(model_dir):
    """The bug of issue 25: ov-cpu-int8-bf16 (an int8 graph OpenVINO runs in bf16) was tested on its graph's
    precision and run on a CPU without bf16, killing the whole benchmark."""
    with assume(fake_machine("avx2")):
        planned, skipped = plan_variants(BenchSettings(), model_dir)
        assert "ov-cpu-int8-bf16" in skipped and "ov-cpu-int8-bf16" not in planned
        with pytest.raises(ConfigError, match="variant ov-cpu-int8-bf16 cannot run here.*AVX512_BF16 or AMX"):
            plan_variants(BenchSettings(variants=("ort-cpu", "ov-cpu-int8-bf16")), model_dir)


@pytest.mark.parametrize("case", list(CASES))
def test_export_precision_auto_builds_what_the_machine_computes_and_names_the_rest(case):
    machine, _, built = CASES[case]
    chosen, skipped = auto_variants(machine)
    assert chosen == built
    assert set(chosen) | set(skipped) == {name for name, row in EXPORT.items() if row.builder and row.option != "image"}
    assert all(("needs" in why or "lacks" in why) for why in skipped.values()), skipped


def test_a_variant_named_explicitly_that_cannot_run_here_is_exit_2():
    with assume(fake_machine("avx2")):
        with pytest.raises(PrecisionError, match="bf16 natively.*AVX512_BF16 or AMX"):
            check_request(["ov-bf16"], "static")
        check_request(["fp16", "int8", "ov-int8"], "static")  # fp16 judged on the CPU, as before: explicit only
        assert export_problem(EXPORT["fp16"]) is not None  # ... and never built by auto
    with assume(fake_machine("avx2", openvino=False)), pytest.raises(MissingExtra, match=r"vitdeploy\[openvino\]"):
        check_request(["ov-int8"], "static")


@pytest.mark.parametrize("case", list(CASES))
def test_the_recommendation_names_what_auto_builds_and_bench_times(case):
    machine, hardware_skipped, built = CASES[case]
    report = machine_report(machine)
    assert [name for name, problem in report.export.items() if problem is None] == built
    assert {name for name, problem in report.bench.items() if problem} >= hardware_skipped - {"torch-cuda"}
    assert f"--precision auto (here: {', '.join(built)})" in report.recommendation
    assert ("ov-cpu-int8-bf16" in report.recommendation) == ("ov-cpu-int8-bf16" not in hardware_skipped)


@pytest.fixture(scope="module")
def variant_files(model_dir) -> dict[str, Path]:
    """An OpenVINO INT8 file's contract (made for openvino, f32 for the rest) on the tiny graph: the rule reads
    the record, not the weights, so no NNCF run is needed."""
    import onnx

    from vitdeploy.exporting.ladder import describe_variant
    from vitdeploy.files.onnx_file import read_metadata, save_onnx

    base = model_dir.onnx_path
    ov_int8 = EXPORT["ov-int8"].path(base)
    proto = onnx.load(str(base))
    describe_variant(proto, read_metadata(base), "ov-int8", None, None)
    save_onnx(proto, ov_int8)
    return {"fp32": base, "int8": EXPORT["int8"].path(base), "ov-bf16": EXPORT["ov-bf16"].path(base),
            "ov-int8": ov_int8}


def test_serve_and_predict_pick_the_runtime_by_one_rule(variant_files):
    assert ServeSettings().runtime is None  # serve defaults to the rule, as predict does
    picked = {name: runtime_for_file(path) for name, path in variant_files.items()}
    assert picked == {"fp32": "ort", "int8": "ort", "ov-bf16": "openvino", "ov-int8": "openvino"}


@pytest.mark.parametrize("family", ["avx2", "avx512_vnni", "arm64"])
def test_a_file_this_machine_cannot_run_is_refused_saying_what_would(variant_files, family):
    with assume(fake_machine(family)), pytest.raises(PrecisionError, match="AVX512_BF16 or AMX"):
        open_runtime(None, variant_files["ov-bf16"])


def test_an_openvino_file_without_openvino_names_the_install(variant_files):
    with assume(fake_machine("avx2", openvino=False)), pytest.raises(MissingExtra, match=r"vitdeploy\[openvino\]"):
        open_runtime(None, variant_files["ov-int8"])


def test_serve_runs_an_openvino_file_on_openvino_as_predict_does(variant_files):
    pytest.importorskip("openvino")
    pytest.importorskip("uvicorn")
    from vitdeploy.serving.server import prepare

    prepared = prepare(variant_files["ov-int8"], ServeSettings(port=0))
    try:
        assert prepared.summary.provider == "CPU"  # OpenVINO's device name: ORT would say CPUExecutionProvider
    finally:
        prepared.sock.close()


def test_doctor_prints_what_runs_here_and_what_would_run_the_rest():
    with assume(fake_machine("avx2", openvino=False)):
        result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(result.stdout)
    assert report["machine"]["isa"] == "avx2" and report["export"]["int8"] is None
    assert 'pip install "vitdeploy[openvino]"' in report["export"]["ov-int8"]
    assert report["bench"]["ov-cpu-int8-bf16"] is not None


def test_the_docs_table_of_cpus_and_variants_is_the_code_s():
    table = cpu_variant_table({TITLES[family]: fake_machine(family) for family in FAMILIES})
    assert table in DOCS.read_text(encoding="utf-8"), f"docs/runtimes-and-precision.md should hold:\n{table}"


def test_an_explicit_bench_variant_that_cannot_run_here_exits_2(tiny_onnx):
    with assume(fake_machine("avx2")):
        result = runner.invoke(app, ["bench", str(tiny_onnx), "--variants", "ort-cpu,ov-cpu-bf16", "--batch-sizes",
                                     "1", "--warmup-iters", "0", "--min-iters", "1", "--min-seconds", "0"])
    assert result.exit_code == EXIT_BAD_INPUT and "AVX512_BF16 or AMX" in result.output


@pytest.mark.slow
def test_export_precision_auto_writes_what_passes_and_names_the_rest(digits_bundle, tmp_path):
    out = tmp_path / "model.onnx"
    with assume(fake_machine("avx2", openvino=False)):
        result = runner.invoke(app, ["export", str(digits_bundle), "--out", str(out), "--precision", "auto", "--json"])
    assert result.exit_code == 0, result.output  # a variant auto chose that fails its gate is named, not a failure
    import json

    report = json.loads(result.stdout)
    assert report["auto"] == ["fp32-opt", "int8"] and [v["variant"] for v in report["variants"]] == report["auto"]
    assert set(report["skipped"]) == {"fp16", "ov-bf16", "ov-int8", "ov-int8-bf16"}
    assert 'pip install "vitdeploy[openvino]"' in report["skipped"]["ov-int8"]
    for variant in report["variants"]:
        assert EXPORT[variant["variant"]].path(out).exists() == variant["written"]
    assert all(f"not built here: {name}" in result.stderr for name in report["skipped"])
