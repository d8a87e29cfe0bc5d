"""INT8 and fp32 candidates on AVX2 kernels (issue 25, the AVX2 speed target): built with the AVX2 recipe, gated on
the AVX2 kernels, and timed against ONNX Runtime fp32 with the bench protocol (vitdeploy.benchmark.protocol:
interleaved blocks, idle before each block), natively and under the CPUID mask (tests/native/cpuid_mask.c).

    python benchmarks/avx2_speed.py build BUNDLE --work /tmp/avx2w          # build + gate, under the avx2 mask
    python benchmarks/avx2_speed.py time --work /tmp/avx2w --isas avx2,native --runs 3
    python benchmarks/avx2_speed.py kernels --work /tmp/avx2w                # what the mask changes (evidence)
    python benchmarks/avx2_speed.py profile --work /tmp/avx2w --isa avx2     # per-op, ORT profiler + OV perf counts

`build` and `time` re-run themselves in a child process with LD_PRELOAD=cpuid_mask.so CPUID_MASK=<isa> where the
ISA is masked, so the mask is in place before any runtime loads. Writes benchmarks/avx2_speed/<name>.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "avx2_speed"
MASK_SOURCE = ROOT / "tests" / "native" / "cpuid_mask.c"
THREADS = 2

# name -> (file in the work folder, runtime, session options, what)
CANDIDATES: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "ort-fp32": ("model.onnx", "ort", {}, "ONNX Runtime fp32, the plain export (the reference)"),
    "ort-fused": ("fused.onnx", "ort", {}, "ONNX Runtime fp32, transformer fusions (fp32-opt)"),
    "ort-int8": ("int8.onnx", "ort", {}, "static QDQ u8s8 7-bit weights, unfused graph (today's int8 on AVX2)"),
    "ort-int8-dyn": ("int8-dyn.onnx", "ort", {}, "dynamic INT8 of the fused graph: QAttention + MatMulInteger"),
    "ort-int8-dyn-mm": ("int8-dyn-mm.onnx", "ort", {},
                        "dynamic INT8 of the fused graph, MatMuls only (attention fused fp32)"),
    "ort-int8-fqdq": ("int8-fused-qdq.onnx", "ort", {},
                      "static QDQ on the fused graph: proj, fc1, fc2 (attention fused fp32)"),
    "ort-int8-fqdq-mlp": ("int8-fused-qdq-mlp.onnx", "ort", {}, "static QDQ on the fused graph: fc1, fc2 only"),
    "ov-fp32": ("model.onnx", "openvino", {"static_batch": False, "throughput": False},
                "OpenVINO f32, one dynamic LATENCY compilation"),
    "ov-fp32-default": ("model.onnx", "openvino", {}, "OpenVINO f32, OpenVinoSession defaults (static + THROUGHPUT)"),
    "ov-fp32-static": ("model.onnx", "openvino", {"throughput": False}, "OpenVINO f32, static shapes, LATENCY"),
    "ov-int8": ("ov-int8.onnx", "openvino", {}, "NNCF INT8 (OverflowFix.ENABLE), f32 for the rest, defaults"),
}
GATED = {"fused.onnx": ("fp32-opt", "fp32", "ort"), "int8.onnx": ("int8", "int8", "ort"),
         "int8-dyn.onnx": ("int8", "int8", "ort"), "int8-dyn-mm.onnx": ("int8", "int8", "ort"),
         "int8-fused-qdq.onnx": ("int8", "int8", "ort"), "int8-fused-qdq-mlp.onnx": ("int8", "int8", "ort"),
         "ov-int8.onnx": ("ov-int8", "int8", "openvino")}


def mask_library(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    library = work / "cpuid_mask.so"
    if not library.is_file():
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(MASK_SOURCE)], check=True)
    return library


def in_child(args: list[str], isa: str, work: Path) -> str:
    """Run this script again with `args`, masked to `isa` unless native; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if isa != "native":
        env.update(LD_PRELOAD=str(mask_library(work)), CPUID_MASK=isa)
    child = subprocess.run([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, check=True, text=True)
    return child.stdout


# ---------------------------------------------------------------------------------------------------- building


def build(bundle: Path, work: Path) -> dict[str, Any]:
    """Every candidate file (AVX2 recipe: 7-bit weights), then the gate on each, on this process's kernels."""
    import onnx

    from vitdeploy.exporting import exporter, graphs, ladder
    from vitdeploy.exporting import gate as accuracy_gate
    from vitdeploy.files.bundle import load_bundle
    from vitdeploy.files.onnx_file import read_metadata, save_onnx

    work.mkdir(parents=True, exist_ok=True)
    model, info = load_bundle(bundle)
    base = work / "model.onnx"
    if not base.is_file():
        exporter.export_onnx(bundle, out=base)
    recipe = graphs.int8_recipe("avx2")
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    source = graphs.VariantSource(base, info.model, tmp, lambda: ladder.calibration_inputs(info), isa="avx2")
    meta = read_metadata(base)
    facts: dict[str, Any] = {}

    def save(proto: Any, file: str, variant: str, fusions: Any, quantization: dict[str, Any] | None) -> None:
        ladder.describe_variant(proto, meta, variant, fusions, quantization, isa="avx2")
        save_onnx(proto, work / file)

    def timed(file: str, make: Any) -> None:
        if (work / file).is_file():
            return
        started = time.perf_counter()
        make()
        facts[file] = {"build_seconds": round(time.perf_counter() - started, 1)}
        print(f"built {file} in {facts[file]['build_seconds']} s", file=sys.stderr, flush=True)

    fused, report = source.fused()
    timed("fused.onnx", lambda: save(graphs.copy_proto(fused), "fused.onnx", "fp32-opt", report, None))
    timed("int8.onnx", lambda: save(*graphs.to_int8_static(base, source.calibration_inputs(), tmp, recipe)[:1],
                                     "int8.onnx", "int8", None, {"method": "static", "recipe": recipe.to_dict()}))
    timed("int8-dyn.onnx", lambda: save(graphs.to_int8_dynamic(fused, tmp, recipe)[0], "int8-dyn.onnx", "int8",
                                        report, {"method": "dynamic", "recipe": recipe.to_dict()}))
    timed("int8-dyn-mm.onnx", lambda: save(_dynamic_matmuls_only(fused, tmp, recipe), "int8-dyn-mm.onnx", "int8",
                                           report, {"method": "dynamic", "recipe": recipe.to_dict()}))
    for file, only_mlp in (("int8-fused-qdq.onnx", False), ("int8-fused-qdq-mlp.onnx", True)):
        timed(file, lambda file=file, only_mlp=only_mlp: save(
            _int8_static_fused(fused, source.calibration_inputs(), tmp, recipe, only_mlp=only_mlp)[0],
            file, "int8", report, {"method": "static", "fused": True, "recipe": recipe.to_dict()}))
    timed("ov-int8.onnx", lambda: save(graphs.to_ov_int8(base, source.calibration_inputs(), tmp, recipe=recipe)[0],
                                       "ov-int8.onnx", "ov-int8", None, {"method": "nncf",
                                                                         "recipe": recipe.to_dict()}))
    data = accuracy_gate.gate_data(model, info)
    gates = {}
    for file, (variant, precision, runtime) in GATED.items():
        verdict = accuracy_gate.judge(variant, precision, work / file, data, accuracy_gate.AccuracyGate(), "cpu",
                                      None, runtime, isa="avx2")
        gates[file] = verdict.summary()
        print(f"gate {file}: {gates[file]}", file=sys.stderr, flush=True)
    del onnx
    return {"built": facts, "gates": gates, "gate_images": len(data.inputs)}


def _dynamic_matmuls_only(fused: Any, tmp: Path, recipe: Any) -> Any:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, out = tmp / "fused-mm.onnx", tmp / "int8-dyn-mm.onnx"
    onnx.save_model(fused, os.fspath(source))
    quantize_dynamic(os.fspath(source), os.fspath(out), weight_type=QuantType.QInt8, reduce_range=recipe.reduce_range,
                     op_types_to_quantize=["MatMul"], extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return onnx.load(os.fspath(out))


def _mlp_matmuls(fused: Any) -> list[str]:
    """The fused graph's MLP MatMuls: fc1 (its output feeds a Gelu, directly or through a bias Add) and fc2 (it
    reads a Gelu's output)."""
    gelus = {"Gelu", "BiasGelu", "FastGelu"}
    consumers: dict[str, list[Any]] = {}
    for node in fused.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    gelu_outputs = {o for n in fused.graph.node if n.op_type in gelus for o in n.output}

    def feeds_gelu(name: str, hops: int = 2) -> bool:
        return any(c.op_type in gelus or (hops > 1 and c.op_type == "Add" and feeds_gelu(c.output[0], hops - 1))
                   for c in consumers.get(name, []))

    return [n.name for n in fused.graph.node if n.op_type == "MatMul"
            and (feeds_gelu(n.output[0]) or any(i in gelu_outputs for i in n.input))]


def _int8_static_fused(fused: Any, calibration: np.ndarray, workdir: Path, recipe: Any,
                       only_mlp: bool = False) -> tuple[Any, dict[str, Any]]:
    """Static QDQ INT8 of the fused graph's Linear MatMuls (attention's projection and the MLP; `only_mlp`: fc1 and
    fc2 alone), attention left to the fused fp32 Attention op. Same per-channel u8s8 scheme and recipe as
    graphs.to_int8_static."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from vitdeploy.exporting.graphs import _quiet_root_logger, calibration_reader, linear_matmuls
    from vitdeploy.files.onnx_file import copy_proto, save_onnx

    chosen = _mlp_matmuls(fused) if only_mlp else linear_matmuls(fused)[0]
    source, out = workdir / "fused-for-static.onnx", workdir / "int8-static-fused.onnx"
    # NOTE: onnx's shape inference does not know ORT's contrib ops (Attention, SkipLayerNormalization), so the
    # fused graph has no value_info and quantize_static, which calibrates only tensors it knows to be float,
    # quantizes the weights alone (ORT then runs them as MatMulNBits, in fp32). ORT's symbolic inference knows them.
    save_onnx(SymbolicShapeInference.infer_shapes(copy_proto(fused), auto_merge=True), source)
    with _quiet_root_logger():
        quantize_static(
            os.fspath(source), os.fspath(out), calibration_reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=recipe.reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"], nodes_to_quantize=chosen,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return onnx.load(os.fspath(out)), {"quantized_matmuls": len(chosen)}


# ---------------------------------------------------------------------------------------------------- timing


class FileRunner:
    """A bench-protocol runner (benchmark.timing.Runner's interface) over a vitdeploy session."""

    def __init__(self, name: str, work: Path) -> None:
        from types import SimpleNamespace

        self.spec = SimpleNamespace(name=name)
        self.work = work

    def create(self) -> None:
        from vitdeploy.benchmark.timing import WallClock
        from vitdeploy.runtimes import open_runtime

        file, runtime, options, _ = CANDIDATES[self.spec.name]
        self.session = open_runtime(runtime, self.work / file, "cpu", threads=THREADS, **options)
        self.timer = WallClock()

    def stage(self, batch: np.ndarray) -> None:
        self.batch = batch

    def run(self) -> float:
        return self.timer.time(lambda: self.session.run(self.batch))


def time_here(work: Path, names: list[str], batch_sizes: list[int], seconds: float) -> dict[str, Any]:
    """One interleaved run of the bench protocol over `names`, in this process; p50 per variant and batch size."""
    import statistics

    from vitdeploy.benchmark.protocol import Blocks, measure
    from vitdeploy.benchmark.variants import BenchSettings

    runners = [FileRunner(name, work) for name in names]
    for runner in runners:
        runner.create()
    points: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for batch_size in batch_sizes:
        batch = rng.standard_normal((batch_size, 3, 224, 224), dtype=np.float32)
        for runner in runners:
            runner.stage(batch)
        settings = BenchSettings(batch_sizes=(batch_size,), min_iters=6, min_seconds=seconds, warmup_iters=1,
                                 warmup_seconds=0.5, threads=THREADS)
        load_before = os.getloadavg()
        timed = measure(runners, settings, blocks=Blocks(count=3))
        p50 = {name: statistics.median(t) for name, t in timed.items()}
        points[str(batch_size)] = {
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
            "variants": {name: {"p50_ms": round(1e3 * p, 2), "calls": len(timed[name]),
                                "x_ort_fp32": round(p50["ort-fp32"] / p, 3)} for name, p in p50.items()}}
        print(f"b{batch_size}: " + ", ".join(f"{n} {p50['ort-fp32'] / p:.2f}x" for n, p in p50.items()),
              file=sys.stderr, flush=True)
    return points


# ---------------------------------------------------------------------------------------------------- evidence


def kernels_here(work: Path) -> dict[str, Any]:
    """What this process's kernels are: OpenVINO's capabilities and the exec types of its heaviest ops, ORT's
    MatMulInteger on 255 x 127 (saturates on VPMADDUBSW), and ORT's fp32 MatMul GFLOP/s."""
    import onnx
    import onnxruntime as ort
    import openvino as ov
    from onnx import TensorProto, helper

    core = ov.Core()
    compiled = core.compile_model(core.read_model(work / "model.onnx"), "CPU",
                                  {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": THREADS,
                                   "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    request.infer({0: x})
    exec_types = collections.Counter(f"{p.node_type}:{p.exec_type}" for p in request.profiling_info
                                     if p.exec_type not in ("undef", "unknown_f32"))
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "mmi",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 64]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [64, 1])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])])
    mmi = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    sess = ort.InferenceSession(mmi.SerializeToString(), providers=["CPUExecutionProvider"])
    product = int(sess.run(None, {"a": np.full((1, 64), 255, np.uint8),
                                  "b": np.full((64, 1), 127, np.int8)})[0].item())
    n = 1024
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "mm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])])
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                                  ir_version=8).SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    sess.run(None, {"a": a, "b": a})
    best = min(_seconds(lambda: sess.run(None, {"a": a, "b": a})) for _ in range(10))
    del onnx
    return {"openvino_capabilities": core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
            "openvino_exec_types": dict(exec_types.most_common()),
            "ort_matmulinteger_255x127_k64": product, "ort_matmulinteger_exact": 255 * 127 * 64,
            "ort_sgemm_1024_gflops": round(2 * n**3 / best / 1e9, 1), "load": os.getloadavg()}


def _seconds(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def profile_here(work: Path, batch_sizes: list[int]) -> dict[str, Any]:
    """Per op type: ORT's profiler (fp32, today's int8, the fused dynamic int8) and OpenVINO's perf counts (f32,
    int8), ms per call, averaged over 3 calls after 2 untimed."""
    import onnxruntime as ort
    import openvino as ov

    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for batch_size in batch_sizes:
        x = rng.standard_normal((batch_size, 3, 224, 224), dtype=np.float32)
        per: dict[str, Any] = {}
        for name in ("ort-fp32", "ort-fused", "ort-int8", "ort-int8-dyn", "ort-int8-fqdq"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = THREADS
            options.enable_profiling = True
            options.profile_file_prefix = str(work / f"prof-{name}-{batch_size}")
            sess = ort.InferenceSession(os.fspath(work / CANDIDATES[name][0]), options,
                                        providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            for _ in range(2):
                sess.run(None, feed)
            started = time.perf_counter()
            for _ in range(3):
                sess.run(None, feed)
            wall = (time.perf_counter() - started) / 3
            events = json.loads(Path(sess.end_profiling()).read_text())
            ops: collections.Counter[str] = collections.Counter()
            for event in events[-0:]:
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    ops[event["args"]["op_name"]] += event["dur"] / 1e3 / 5
            per[name] = {"wall_ms": round(1e3 * wall, 1),
                         "ops_ms": {k: round(v, 2) for k, v in ops.most_common(12)}}
        core = ov.Core()
        for name, file in (("ov-fp32", "model.onnx"), ("ov-int8", "ov-int8.onnx")):
            compiled = core.compile_model(core.read_model(work / file), "CPU",
                                          {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": THREADS,
                                           "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            for _ in range(2):
                request.infer({0: x})
            ops = collections.Counter()
            started = time.perf_counter()
            for _ in range(3):
                request.infer({0: x})
                for p in request.profiling_info:
                    ops[f"{p.node_type}:{p.exec_type}"] += p.real_time.total_seconds() * 1e3 / 3
            wall = (time.perf_counter() - started) / 3
            per[name] = {"wall_ms": round(1e3 * wall, 1),
                         "ops_ms": {k: round(v, 2) for k, v in ops.most_common(12)}}
        out[str(batch_size)] = per
    out["load"] = [round(x, 2) for x in os.getloadavg()]
    return out


# ---------------------------------------------------------------------------------------------------- main


def environment() -> dict[str, Any]:
    import importlib

    from vitdeploy.core.cpu import cpu_model, isa_class

    return {"cpu": cpu_model(), "isa_class": isa_class(), "cores": os.cpu_count(), "python": platform.python_version(),
            "versions": {p: importlib.import_module(p).__version__ for p in ("onnxruntime", "openvino", "nncf", "torch", "numpy")},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def summary(report: dict[str, Any]) -> str:
    """Markdown: per ISA and batch size, each variant's ratio to ORT fp32 in every run, and their median."""
    import statistics

    lines = []
    runs = report["runs"]
    for isa in dict.fromkeys(r["isa"] for r in runs):
        mine = [r for r in runs if r["isa"] == isa]
        for batch_size in mine[0]["points"]:
            names = list(mine[0]["points"][batch_size]["variants"])
            loads = ", ".join(f"{r['points'][batch_size]['load_before'][0]:.1f}" for r in mine)
            lines += [f"**{isa}, batch {batch_size}** (1-min load before each run: {loads})", "",
                      "| variant | " + " | ".join(f"run {r['run'] + 1}" for r in mine) + " | median | p50 ms (run 1) |",
                      "|---|" + "---|" * (len(mine) + 2)]
            for name in names:
                ratios = [r["points"][batch_size]["variants"][name]["x_ort_fp32"] for r in mine]
                p50 = mine[0]["points"][batch_size]["variants"][name]["p50_ms"]
                lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in ratios)
                             + f" | **{statistics.median(ratios):.2f}** | {p50:.1f} |")
            lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "time", "kernels", "profile", "summary", "_build", "_time", "_kernels",
                                            "_profile"])
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitdeploy-avx2-speed"))
    parser.add_argument("--isas", default="avx2,native")
    parser.add_argument("--isa", default="avx2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", default=",".join(CANDIDATES))
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--seconds", type=float, default=3.0, help="min_seconds of timed calls per variant/point")
    parser.add_argument("--name", default="vit-ti16-regions")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.command.startswith("_"):  # the child: the mask (if any) is loaded
        result = {"_build": lambda: build(args.bundle, args.work),
                  "_time": lambda: time_here(args.work, args.variants.split(","), batch_sizes, args.seconds),
                  "_kernels": lambda: kernels_here(args.work),
                  "_profile": lambda: profile_here(args.work, batch_sizes)}[args.command]()
        print(json.dumps(result))
        return 0
    if args.command == "summary":
        print(summary(json.loads((RESULTS / f"{args.name}-time.json").read_text())))
        return 0
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name}-{args.command}.json"
    report: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    report.update(environment=environment(), command=f"python benchmarks/avx2_speed.py {' '.join(sys.argv[1:])}")
    if args.command == "build":
        report["build"] = json.loads(in_child(["_build", str(args.bundle), "--work", str(args.work)], args.isa,
                                              args.work).splitlines()[-1])
    elif args.command in ("kernels", "profile"):
        for isa in args.isas.split(","):
            child = ["_" + args.command, "--work", str(args.work), "--batch-sizes", args.batch_sizes]
            report[isa] = json.loads(in_child(child, isa, args.work).splitlines()[-1])
    else:
        runs = report.setdefault("runs", [])
        for run in range(args.runs):
            for isa in args.isas.split(","):
                child = ["_time", "--work", str(args.work), "--variants", args.variants, "--batch-sizes",
                         args.batch_sizes, "--seconds", str(args.seconds)]
                print(f"run {run} {isa}", file=sys.stderr, flush=True)
                points = json.loads(in_child(child, isa, args.work).splitlines()[-1])
                runs.append({"run": run, "isa": isa, "points": points})
                out.write_text(json.dumps(report, indent=1))
    out.write_text(json.dumps(report, indent=1))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
