"""INT8 that is right on every CPU class (issue 25, section 5): the recipe follows the ISA class, each file records
the class it was gated on, a file run on another class says so once and verify re-gates it, and OpenVINO reports the
precision it really compiled.

The saturation itself is shown on this machine's own kernels: tests/native/cpuid_mask.c hides AVX-512, VNNI and AMX
from CPUID, so ONNX Runtime and OpenVINO pick the INT8 kernels an AVX2 CPU runs (skipped where CPUID faulting or a C
compiler is missing)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from builders import captured_notes, make_bundle
from machines import fake_machine

from vitdeploy.core.config import ModelConfig
from vitdeploy.core.cpu import ISA_CLASSES, int8_saturates
from vitdeploy.exporting import gate as accuracy_gate
from vitdeploy.exporting import graphs
from vitdeploy.exporting import ladder
from vitdeploy.files.onnx_file import META_EXPORT, META_PARITY, read_metadata, set_metadata
from vitdeploy.runtimes import base as runtime_base
from vitdeploy.runtimes import open_runtime
from vitdeploy.training.data import DIGITS_NAME

NATIVE = Path(__file__).parent / "native" / "cpuid_mask.c"
DIGITS = {"source": DIGITS_NAME, "split": "seeded-permutation", "split_seed": 0, "val_fraction": 0.2}
DIGITS_CFG = ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=10)
# The reproducer: a random-init ViT whose Linear layers keep PyTorch's default init (uniform: many weights near
# each output channel's largest, the pairs VPMADDUBSW sums are large), small enough to quantize in a few seconds.
UNIFORM_CFG = ModelConfig(image_size=32, patch_size=4, dim=128, depth=2, num_heads=2, num_classes=10)


# ------------------------------------------------------------------------------------------------ the recipe


@pytest.mark.parametrize("isa", ISA_CLASSES)
def test_the_recipe_takes_7_bit_weights_exactly_where_int8_can_saturate(isa):
    recipe = graphs.int8_recipe(isa)
    assert recipe.isa == isa
    assert recipe.reduce_range is int8_saturates(isa)
    assert recipe.overflow_fix == ("enable" if int8_saturates(isa) else "first_layer")
    assert recipe.to_dict()["isa_class"] == isa


def test_the_saturating_classes_are_the_ones_without_vnni_or_amx():
    assert [isa for isa in ISA_CLASSES if int8_saturates(isa)] == ["avx512", "avx2", "generic"]


def _weight_codes(proto) -> list[np.ndarray]:
    """The int8 weight tensors a QDQ graph dequantizes (initializers of type int8)."""
    import onnx
    from onnx import numpy_helper

    return [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)


def test_static_int8_stores_7_bit_weights_on_a_saturating_class_only(tiny_onnx, calibration, tmp_path):
    full, full_settings = graphs.to_int8_static(tiny_onnx, calibration, tmp_path, graphs.int8_recipe("avx512_vnni"))
    reduced, reduced_settings = graphs.to_int8_static(tiny_onnx, calibration, tmp_path, graphs.int8_recipe("avx2"))
    assert max(int(np.abs(w).max()) for w in _weight_codes(full)) == 127
    assert max(int(np.abs(w).max()) for w in _weight_codes(reduced)) <= 64  # |w| * 255 * 2 < 2^15: no saturation
    assert reduced_settings["recipe"] == {**graphs.int8_recipe("avx2").to_dict()}
    assert reduced_settings["weights"] == "int8 per channel, 7-bit range"
    assert full_settings["weights"] == "int8 per channel" and not full_settings["recipe"]["weights_7_bit"]


def test_nncf_fixes_overflow_in_every_layer_on_a_saturating_class(tiny_onnx, calibration, tmp_path):
    pytest.importorskip("nncf")
    first, first_settings = graphs.to_ov_int8(tiny_onnx, calibration, tmp_path, kept=[],
                                              recipe=graphs.int8_recipe("amx"))
    every, every_settings = graphs.to_ov_int8(tiny_onnx, calibration, tmp_path, kept=[],
                                              recipe=graphs.int8_recipe("avx2"))
    assert first_settings["overflow_fix"] == "first_layer" and every_settings["overflow_fix"] == "enable"
    # NNCF's default halves the first layer's range only; ENABLE halves every layer's.
    assert sorted(int(np.abs(w).max()) for w in _weight_codes(first))[-1] == 127
    assert max(int(np.abs(w).max()) for w in _weight_codes(every)) <= 64


# ------------------------------------------------------------------------------------- recorded, noted, re-gated


@pytest.fixture(scope="module")
def gated_elsewhere(tmp_path_factory):
    """A digits bundle and its int8 file, built and gated as if on an AVX2 CPU: (bundle, fp32 path, int8 result)."""
    from vitdeploy.exporting.exporter import export_onnx

    bundle = make_bundle(tmp_path_factory.mktemp("isa") / "b", DIGITS_CFG, dataset=DIGITS)
    base = export_onnx(bundle, verify=False).path
    from vitdeploy.files.bundle import load_bundle

    model, info = load_bundle(bundle)
    (result,) = ladder.export_variants(model, info, base, ["int8"], isa="avx2")
    assert result.written
    return bundle, base, result


def test_a_variant_records_the_class_it_was_built_and_gated_for(gated_elsewhere):
    _, _, result = gated_elsewhere
    meta = read_metadata(result.path)
    export, parity = json.loads(meta[META_EXPORT]), json.loads(meta[META_PARITY])
    assert export["isa_class"] == "avx2" and parity["isa_class"] == "avx2"
    assert export["quantization"]["recipe"]["weights_7_bit"] is True
    assert result.gate.summary()["isa_class"] == "avx2"


def test_the_note_names_both_classes_the_risk_and_the_command():
    record = {"precision": "int8", "variant": "int8", "isa_class": "avx512_vnni"}
    note = runtime_base.other_isa_note("m.int8.onnx", record, here="avx2")
    assert "avx512_vnni" in note and "this CPU is avx2" in note and "saturate" in note
    assert "vitdeploy export BUNDLE --precision int8" in note and "vitdeploy verify m.int8.onnx" in note
    # The other way round nothing can saturate, but the gate's verdict still belongs to the other class.
    assert "saturate" not in runtime_base.other_isa_note("m", {**record, "isa_class": "avx2"}, here="amx")
    assert runtime_base.other_isa_note("m", record, here="avx512_vnni") is None  # gated here
    assert runtime_base.other_isa_note("m", {"precision": "fp32", "isa_class": "avx2"}, here="amx") is None
    assert runtime_base.other_isa_note("m", {"precision": "int8"}, here="amx") is None  # an older file: verify says
    assert "vitdeploy export models/b --precision int8" in runtime_base.other_isa_note(
        "m", {**record, "bundle": "models/b"}, here="avx2")


def test_a_file_opened_on_another_class_says_so_once(gated_elsewhere, monkeypatch):
    _, _, result = gated_elsewhere

    from vitdeploy.runtimes import assume

    monkeypatch.setattr(runtime_base, "_ISA_NOTED", set())
    with assume(fake_machine("avx512_vnni")), captured_notes() as notes:  # the machine record says which class
        open_runtime("ort", result.path, "cpu")
        open_runtime("ort", result.path, "cpu")
    noted = [n for n in notes if "accuracy-gated on a avx2 CPU" in n]
    assert len(noted) == 1 and "this CPU is avx512_vnni" in noted[0]


def test_verify_regates_a_file_gated_on_another_class(gated_elsewhere, monkeypatch):
    import vitdeploy

    bundle, _, result = gated_elsewhere
    here = "amx" if accuracy_gate.this_machine().isa != "amx" else "avx512_vnni"
    monkeypatch.setattr(accuracy_gate, "this_machine", lambda: fake_machine(here))  # the gate reads the record
    report = vitdeploy.verify(result.path, bundle=bundle, batch_sizes=(4,))
    assert report.regate is not None and report.regate["isa_class"] == here and report.passed
    assert report.regate["samples"]["real"] == 359  # every held-out digit, as at export
    assert any(f"accuracy gate re-run on this {here} CPU (the file was gated on avx2)" in n for n in report.notes)
    assert report.to_dict()["regate"]["passed"] is True


def test_a_failed_regate_fails_verify(gated_elsewhere, tmp_path, monkeypatch):
    import onnx

    import vitdeploy

    bundle, _, result = gated_elsewhere
    proto = onnx.load(str(result.path))
    recorded = json.loads(read_metadata(result.path)[META_PARITY])
    # The same file, its recorded gate made strict enough that INT8 cannot pass it (logits equal to 1e-9).
    set_metadata(proto, {META_PARITY: {**recorded, "gate": {**recorded["gate"], "max_abs": 1e-9}}})
    strict = tmp_path / "model.int8.onnx"
    onnx.save(proto, str(strict))
    monkeypatch.setattr(accuracy_gate, "this_machine", lambda: fake_machine("amx"))  # the gate reads the record
    report = vitdeploy.verify(strict, bundle=bundle, batch_sizes=(4,))
    assert not report.passed and report.regate["passed"] is False
    assert any(line.startswith("accuracy gate re-run on this amx CPU: max |diff|") for line in report.failures())


def test_verify_leaves_a_file_gated_here_alone(gated_elsewhere, monkeypatch):
    import vitdeploy

    bundle, _, result = gated_elsewhere
    monkeypatch.setattr(accuracy_gate, "this_machine", lambda: fake_machine("avx2"))  # the gate reads the record
    assert vitdeploy.verify(result.path, bundle=bundle, batch_sizes=(4,)).regate is None


# ----------------------------------------------------------------------- OpenVINO: what was compiled, not asked


def test_openvino_reports_the_precision_it_compiled_not_the_hint(tiny_onnx, monkeypatch):
    pytest.importorskip("openvino")
    from vitdeploy.runtimes import openvino as ov_runtime

    capabilities = ov_runtime.capabilities()
    if "FP16" in capabilities:
        pytest.skip("this CPU runs f16 natively: the hint is honoured")
    # Without native f16 the plugin falls back to the next precision it computes natively: bf16 where the CPU has it
    # (AMD Zen 4: AVX512_BF16 without AVX512_FP16), else f32 (AVX2 CPUs, Ice Lake).
    fallback = "bf16" if "BF16" in capabilities else "fp32"
    compiled = ov_runtime.core().compile_model(str(tiny_onnx), "CPU", {"INFERENCE_PRECISION_HINT": "f16"})
    assert ov_runtime.compiled_precision(compiled) == fallback
    # A session asked for fp16 (the capability check passed, as it would where the plugin claims FP16) says what ran.
    monkeypatch.setattr(ov_runtime, "check_precision", lambda precision, device="CPU", machine=None: None)
    with captured_notes() as notes:
        session = ov_runtime.OpenVinoSession(tiny_onnx, "cpu", "fp16", static_batch=False, throughput=False)
    assert session.describe()["inference_precision"] == fallback and session.describe()["precision"] == fallback
    assert any(f"asked for fp16 and compiled the model in {fallback}" in n for n in notes)


def test_openvino_reads_bf16_from_the_execution_graph(tiny_onnx):
    pytest.importorskip("openvino")
    from vitdeploy.runtimes import openvino as ov_runtime

    compiled = ov_runtime.core().compile_model(str(tiny_onnx), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert ov_runtime.compiled_precision(compiled) == "fp32"
    hinted = ov_runtime.core().compile_model(str(tiny_onnx), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    ran = ov_runtime.compiled_precision(hinted)
    # bf16 where the plugin really runs bf16 layers (native, or AVX-512 emulation), else what it fell back to.
    assert ran == ("bf16" if hinted.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16" else "fp32")


# ------------------------------------------------------------------ the saturation, on this CPU's AVX2 kernels


@pytest.fixture(scope="module")
def cpuid_mask(tmp_path_factory) -> Path:
    """tests/native/cpuid_mask.c compiled; skipped without x86-64, a C compiler or CPUID faulting."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if platform.machine() not in ("x86_64", "AMD64") or compiler is None:
        pytest.skip("needs x86-64 and a C compiler")
    library = tmp_path_factory.mktemp("native") / "cpuid_mask.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(NATIVE)], check=True)
    probe = subprocess.run([sys.executable, "-c", "pass"], env=_masked(library, "avx2"), capture_output=True)
    if probe.returncode == 3:
        pytest.skip("no CPUID faulting on this machine (ARCH_SET_CPUID)")
    assert probe.returncode == 0, probe.stderr
    return library


def _masked(library: Path | None, isa: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "CPUID_MASK")}
    return env if library is None else {**env, "LD_PRELOAD": str(library), "CPUID_MASK": isa}


# Runs in a subprocess (the mask must be loaded before the runtime): each file on ORT or OpenVINO, one thread.
_RUN = """
import sys, numpy as np
inputs, out, runtime = np.load(sys.argv[1]), sys.argv[2], sys.argv[3]
logits = {}
for path in sys.argv[4:]:
    if runtime == "ort":
        import onnxruntime as ort
        options = ort.SessionOptions(); options.intra_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        logits[path] = np.concatenate([session.run(None, {"pixel_values": inputs[i:i + 32]})[0]
                                       for i in range(0, len(inputs), 32)])
    else:
        import openvino as ov
        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
        request = compiled.create_infer_request()
        logits[path] = np.concatenate([request.infer({0: inputs[i:i + 32]})[0].copy()
                                       for i in range(0, len(inputs), 32)])
np.savez(out, *[logits[p] for p in sys.argv[4:]])
"""


def _run(files: list[Path], inputs: Path, runtime: str, library: Path | None, isa: str, out: Path) -> list[np.ndarray]:
    subprocess.run([sys.executable, "-c", _RUN, str(inputs), str(out), runtime, *map(str, files)],
                   env=_masked(library, isa), check=True, capture_output=True)
    with np.load(out) as saved:
        return [saved[f"arr_{i}"] for i in range(len(files))]


def test_the_mask_makes_onnx_runtime_run_its_saturating_kernel(cpuid_mask, tmp_path):
    """MatMulInteger 255 x 127 over K=64: exact with VNNI, pairs clipped to 32767 with VPMADDUBSW (AVX2 and
    AVX-512 without VNNI alike)."""
    import onnx
    from onnx import TensorProto, helper

    k = 64
    weights = helper.make_tensor("B", TensorProto.INT8, [k, 4], np.full((k, 4), 127, np.int8).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "g",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [None, 4])], [weights])
    model = tmp_path / "mmi.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(model))
    code = ("import sys, numpy as np, onnxruntime as ort; s = ort.InferenceSession(sys.argv[1], "
            "providers=['CPUExecutionProvider']); "
            "print(int(s.run(None, {'A': np.full((8, 64), 255, np.uint8)})[0][0, 0]))")
    answers = {isa: int(subprocess.run([sys.executable, "-c", code, str(model)], env=_masked(library, isa), check=True,
                                       capture_output=True, text=True).stdout)
               for isa, library in (("native", None), ("avx2", cpuid_mask), ("avx512", cpuid_mask))}
    assert answers["native"] == 255 * 127 * k or not _has_vnni()
    assert answers["avx2"] == answers["avx512"] == 32767 * (k // 2)


def _has_vnni() -> bool:
    from vitdeploy.core.provenance import cpu_flags

    return "avx512_vnni" in cpu_flags() or "avx_vnni" in cpu_flags()


@pytest.fixture(scope="module")
def uniform_vit(tmp_path_factory):
    """The reproducer's fp32 file, calibration and test inputs (seeded normal noise, the range of normalized pixels)."""
    import torch

    from vitdeploy.exporting.exporter import export_onnx
    from vitdeploy.files.bundle import BundleInfo, save_bundle
    from vitdeploy.model.vit import build_model

    folder = tmp_path_factory.mktemp("uniform")
    torch.manual_seed(0)
    model = build_model(UNIFORM_CFG)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()  # PyTorch's default: kaiming-uniform weights
    from builders import SPEC

    spec = SPEC.resized(UNIFORM_CFG.image_size)
    bundle = save_bundle(folder / "bundle", model, BundleInfo(model=UNIFORM_CFG, preprocess=spec,
                                                              labels=[str(i) for i in range(10)]))
    base = export_onnx(bundle, folder / "model.onnx", verify=False).path
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    inputs = folder / "inputs.npy"
    np.save(inputs, rng.standard_normal((200, 3, 32, 32)).astype(np.float32))
    return base, calibration, inputs


def _agreement(reference: np.ndarray, logits: np.ndarray) -> float:
    return float(np.mean(reference.argmax(1) == logits.argmax(1)))


@pytest.mark.slow
def test_u8s8_saturates_on_avx2_kernels_and_the_avx2_recipe_does_not(uniform_vit, cpuid_mask, tmp_path):
    import onnx

    base, calibration, inputs = uniform_vit
    files = [base]
    for isa in ("avx512_vnni", "avx2"):  # today's recipe, and the recipe for a CPU without VNNI
        proto, _ = graphs.to_int8_static(base, calibration, tmp_path, graphs.int8_recipe(isa))
        files.append(tmp_path / f"int8-{isa}.onnx")
        onnx.save(proto, str(files[-1]))
    fp32, full, reduced = _run(files, inputs, "ort", None, "native", tmp_path / "native.npz")
    _, full_avx2, reduced_avx2 = _run(files, inputs, "ort", cpuid_mask, "avx2", tmp_path / "avx2.npz")
    # Measured here (Ice Lake): 97.0% on the VNNI kernel, 74.5% on the AVX2 kernel (max |dlogit| 0.07 -> 0.48);
    # 7-bit weights 95.5% on both.
    assert _agreement(fp32, full_avx2) < _agreement(fp32, full) - 0.1
    assert np.abs(full_avx2 - fp32).max() > 3 * np.abs(full - fp32).max()
    # 7-bit weights cannot saturate: the AVX2 kernel gives the VNNI kernel's integers (float rounding aside).
    np.testing.assert_allclose(reduced_avx2, reduced, atol=1e-4)
    assert _agreement(fp32, reduced_avx2) >= _agreement(fp32, full) - 0.02


@pytest.mark.slow
def test_openvino_saturates_without_vnni_unless_nncf_fixes_overflow_everywhere(uniform_vit, cpuid_mask, tmp_path):
    pytest.importorskip("nncf")
    import onnx

    base, calibration, inputs = uniform_vit
    files = [base]
    for isa in ("avx512_vnni", "avx2"):  # NNCF's default overflow fix (first layer), and OverflowFix.ENABLE
        proto, _ = graphs.to_ov_int8(base, calibration, tmp_path, recipe=graphs.int8_recipe(isa))
        files.append(tmp_path / f"ov-int8-{isa}.onnx")
        onnx.save(proto, str(files[-1]))
    fp32, first, every = _run(files, inputs, "openvino", None, "native", tmp_path / "native.npz")
    _, first_avx2, every_avx2 = _run(files, inputs, "openvino", cpuid_mask, "avx2", tmp_path / "avx2.npz")
    # Measured here (Ice Lake): first layer only 96.5% on the VNNI kernels, 84.5% on the AVX2 ones (max |dlogit|
    # 0.06 -> 0.30); every layer 95.5% on both.
    assert _agreement(fp32, first_avx2) < _agreement(fp32, first) - 0.06
    assert np.abs(first_avx2 - fp32).max() > 3 * np.abs(first - fp32).max()
    # OpenVINO's AVX2 kernels do not give the VNNI kernels' results to the bit (12 of 200 samples differed by up to
    # 0.017 here), but nothing of the saturation's size.
    assert np.abs(every_avx2 - every).max() < 0.2 * np.abs(first_avx2 - fp32).max()
    assert abs(_agreement(fp32, every_avx2) - _agreement(fp32, every)) <= 0.01
    assert _agreement(fp32, every_avx2) >= _agreement(fp32, first) - 0.03


def test_the_mask_makes_openvino_compile_its_avx2_kernels(cpuid_mask, tiny_onnx):
    """What the AVX2 speed measurements (benchmarks/avx2_speed.md) rest on: under the mask OpenVINO's oneDNN JIT
    kernels are its AVX2 ones, none AVX-512, and WINOGRAD (an AVX-512-only capability) is gone."""
    pytest.importorskip("openvino")
    from vitdeploy.core.provenance import cpu_flags

    code = ("import sys, json, numpy as np, openvino as ov; core = ov.Core(); "
            "c = core.compile_model(sys.argv[1], 'CPU', {'PERF_COUNT': True, 'INFERENCE_PRECISION_HINT': 'f32'}); "
            "r = c.create_infer_request(); r.infer({0: np.zeros((1, 3, 16, 16), np.float32)}); "
            "print(json.dumps([sorted({p.exec_type for p in r.profiling_info}), "
            "core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')]))")
    kernels = {isa: json.loads(subprocess.run([sys.executable, "-c", code, str(tiny_onnx)], env=_masked(library, isa),
                                              check=True, capture_output=True, text=True).stdout.splitlines()[-1])
               for isa, library in (("native", None), ("avx2", cpuid_mask))}
    masked_types, masked_capabilities = kernels["avx2"]
    assert not [t for t in masked_types if "avx512" in t] and [t for t in masked_types if "avx2" in t]
    assert "WINOGRAD" not in masked_capabilities
    if "avx512f" in cpu_flags():
        assert [t for t in kernels["native"][0] if "avx512" in t]
