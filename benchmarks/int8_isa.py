"""INT8 per CPU class (issue 25, section 5): accuracy and speed of the INT8 recipes on this CPU's own kernels and on
the kernels an AVX2 CPU runs, shown here by hiding AVX-512, VNNI and AMX from CPUID (tests/native/cpuid_mask.c).

    python benchmarks/int8_isa.py --work /tmp/int8_isa                 # build once, then measure natively and masked
    python benchmarks/int8_isa.py --work /tmp/int8_isa --rounds 5 --isas native,avx2,avx512

Model: ViT-Ti/16 at 224 px (the vit-ti16 preset's config, 10 classes), random init with PyTorch's default Linear init
(kaiming-uniform: many weights near each channel's largest, where u8 x s8 pairs overflow 16 bits). Files, each with
vitdeploy's own builders (exporting/graphs.py): model.onnx; ORT static QDQ with today's recipe (8-bit weights, what
VNNI / AMX CPUs keep) and with the saturating classes' recipe (7-bit weights, reduce_range); u8u8 (the alternative
ORT's docs name); NNCF INT8 with its default overflow fix (first layer) and with OverflowFix.ENABLE (every layer).
Accuracy: top-1 agreement with ORT fp32 and max |dlogit| on seeded normal inputs (normalized-pixel range). Speed:
per batch size, blocks of --block-seconds alternate over the variants for --rounds rounds, a pause before each
block (DESIGN.md fact 12); p50 per variant, ratio to ORT fp32 from the same process. Each ISA runs in its own process
(the mask is loaded before the runtimes). Writes benchmarks/int8_isa/<name>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MASK_SOURCE = ROOT / "tests" / "native" / "cpuid_mask.c"
PAUSE_S = 0.3
FILES = {  # name -> (file, runtime, what)
    "ort-fp32": ("model.onnx", "ort", "ONNX Runtime fp32 (the reference)"),
    "ort-int8-8bit": ("int8-8bit.onnx", "ort", "static QDQ u8s8, 8-bit weights (today's recipe; kept on VNNI/AMX)"),
    "ort-int8-7bit": ("int8-7bit.onnx", "ort", "static QDQ u8s8, 7-bit weights (reduce_range; AVX2/AVX-512 recipe)"),
    "ort-int8-u8u8": ("int8-u8u8.onnx", "ort", "static QDQ u8u8 (the alternative, not chosen)"),
    "ov-fp32": ("model.onnx", "openvino", "OpenVINO f32"),
    "ov-int8-first": ("ov-int8-first.onnx", "openvino", "NNCF INT8, overflow fix on the first layer (NNCF default)"),
    "ov-int8-every": ("ov-int8-every.onnx", "openvino", "NNCF INT8, OverflowFix.ENABLE (AVX2/AVX-512 recipe)"),
}


def build(work: Path, calibration_images: int) -> None:
    """model.onnx and every INT8 file, with vitdeploy's exporter and builders (skipped when already there)."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from vitdeploy.core.config import PreprocessSpec, get_preset
    from vitdeploy.exporting import graphs
    from vitdeploy.exporting.exporter import export_onnx
    from vitdeploy.files.bundle import BundleInfo, save_bundle
    from vitdeploy.model.vit import build_model

    if all((work / f).exists() for f, _, _ in FILES.values()):
        return
    work.mkdir(parents=True, exist_ok=True)
    preset = get_preset("vit-ti16")
    config = preset.model
    torch.manual_seed(0)
    model = build_model(config)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    spec = PreprocessSpec(image_size=config.image_size, resize_size=config.image_size)
    bundle = save_bundle(work / "bundle", model, BundleInfo(model=config, preprocess=spec,
                                                            labels=[str(i) for i in range(config.num_classes)]))
    base = export_onnx(bundle, work / "model.onnx", verify=False).path
    calibration = np.random.default_rng(1).standard_normal(
        (calibration_images, 3, config.image_size, config.image_size)).astype(np.float32)
    for name, isa in (("int8-8bit", "avx512_vnni"), ("int8-7bit", "avx2")):
        proto, _ = graphs.to_int8_static(base, calibration, work, graphs.int8_recipe(isa))
        onnx.save(proto, str(work / f"{name}.onnx"))
    for name, isa in (("ov-int8-first", "avx512_vnni"), ("ov-int8-every", "avx2")):
        proto, _ = graphs.to_ov_int8(base, calibration, work, recipe=graphs.int8_recipe(isa))
        onnx.save(proto, str(work / f"{name}.onnx"))

    # u8u8: the same settings as to_int8_static but uint8 weights
    _, products = graphs.linear_matmuls(onnx.load(str(base)))
    quantize_static(str(base), str(work / "int8-u8u8.onnx"), graphs.calibration_reader(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8,
                    op_types_to_quantize=["MatMul"], nodes_to_exclude=products,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def measure(work: Path, threads: int, rounds: int, block: float, images: int, batch_sizes: list[int]) -> dict:
    """In this process (masked or not): accuracy on `images` seeded inputs, then interleaved timing."""
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()

    def open_file(file: str, runtime: str):
        if runtime == "ort":
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.log_severity_level = 3
            session = ort.InferenceSession(str(work / file), options, providers=["CPUExecutionProvider"])
            return lambda x: session.run(None, {"pixel_values": x})[0]
        compiled = core.compile_model(str(work / file), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                "INFERENCE_NUM_THREADS": threads,
                                                                "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        return lambda x: request.infer({0: x})[0].copy()

    runners = {name: open_file(file, runtime) for name, (file, runtime, _) in FILES.items()}
    inputs = np.random.default_rng(2).standard_normal((images, 3, 224, 224)).astype(np.float32)
    logits = {name: np.concatenate([run(inputs[i:i + 32]) for i in range(0, images, 32)])
              for name, run in runners.items()}
    reference = logits["ort-fp32"]
    accuracy = {name: {"top1_agreement": float(np.mean(out.argmax(1) == reference.argmax(1))),
                       "max_abs": float(np.abs(out - reference).max())} for name, out in logits.items()}
    speed = {}
    for batch_size in batch_sizes:
        x = inputs[:batch_size] if batch_size <= images else np.resize(inputs, (batch_size, *inputs.shape[1:]))
        times: dict[str, list[float]] = {name: [] for name in runners}
        load_before = os.getloadavg()
        for _ in range(rounds):
            for name, run in runners.items():
                time.sleep(PAUSE_S)
                run(x)  # one untimed call per block
                end = time.perf_counter() + block
                while time.perf_counter() < end:
                    started = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - started)
        p50 = {name: statistics.median(t) for name, t in times.items()}
        speed[str(batch_size)] = {
            name: {"p50_ms": round(1e3 * p50[name], 2), "calls": len(times[name]),
                   "x_ort_fp32": round(p50["ort-fp32"] / p50[name], 3)} for name in runners}
        speed[str(batch_size)]["load_average"] = {"before": load_before, "after": os.getloadavg()}
    return {"accuracy": accuracy, "speed": speed}


def mask_library(work: Path) -> Path:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise SystemExit("a C compiler is needed for the masked runs (apt-get install gcc)")
    library = work / "cpuid_mask.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(MASK_SOURCE)], check=True)
    return library


def environment() -> dict:
    import onnxruntime
    import openvino

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("flags"))
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
    versions = {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}
    try:
        import nncf
        import torch

        versions.update(nncf=nncf.__version__, torch=torch.__version__)
    except ImportError:
        pass
    return {"cpu": cpu, "flags": [f for f in wanted if f in flags], "cores": os.cpu_count(), "versions": versions}


def table(result: dict) -> str:
    isas = list(result["runs"])
    head = ["variant", "what"] + [f"agree / max dlogit ({isa})" for isa in isas]
    head += [f"b{b} x ORT fp32 ({isa})" for b in result["batch_sizes"] for isa in isas]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, (_, _, what) in FILES.items():
        row = [name, what]
        for isa in isas:
            a = result["runs"][isa]["accuracy"][name]
            row.append(f"{a['top1_agreement']:.1%} / {a['max_abs']:.3f}")
        for b in result["batch_sizes"]:
            for isa in isas:
                row.append(f"{result['runs'][isa]['speed'][str(b)][name]['x_ort_fp32']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitdeploy-int8-isa"))
    parser.add_argument("--name", default="vit-ti16-uniform")
    parser.add_argument("--isas", default="native,avx2", help="native, avx2, avx512 (masked), comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-seconds", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--batch-sizes", default="32,1")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.measure:
        print(json.dumps(measure(args.work, args.threads, args.rounds, args.block_seconds, args.images,
                                 batch_sizes)))
        return
    sys.path.insert(0, str(ROOT))
    started = time.perf_counter()
    build(args.work, args.calibration_images)
    library = mask_library(args.work)
    runs = {}
    for isa in args.isas.split(","):
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "CPUID_MASK")}
        if isa != "native":
            env.update(LD_PRELOAD=str(library), CPUID_MASK=isa)
        child = subprocess.run([sys.executable, __file__, "--measure", "--work", str(args.work), "--threads",
                                str(args.threads), "--rounds", str(args.rounds), "--block-seconds",
                                str(args.block_seconds), "--images", str(args.images), "--batch-sizes",
                                args.batch_sizes], env=env, check=True, capture_output=True, text=True)
        runs[isa] = json.loads(child.stdout.strip().splitlines()[-1])
    result = {"schema": "vitdeploy.int8_isa/1", "environment": environment(), "threads": args.threads,
              "rounds": args.rounds, "block_seconds": args.block_seconds, "images": args.images,
              "batch_sizes": batch_sizes, "runs": runs, "seconds": round(time.perf_counter() - started, 1),
              "command": "python benchmarks/int8_isa.py " + " ".join(sys.argv[1:])}
    out = HERE / "int8_isa" / f"{args.name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
