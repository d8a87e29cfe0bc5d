"""Fair latency / throughput benchmark of one ViT across runtimes: benchmark(...) -> BenchReport.

    variants.py     the settings of a run, why a device cannot run a variant (the catalogue of variants is
                    vitdeploy.files.variants.BENCH_VARIANTS: a runtime on a device, timing one export variant's file)
    artifacts.py    the model under test, the file each variant times, which variants can run
    timing.py       the Runner interface, the timers (wall clock, CUDA events), the input every variant sees
    protocol.py     THE timing protocol (identical inputs, warm-up, alternating blocks, minimums)
    runners.py      PyTorch, ONNX Runtime CPU / CUDA / TensorRT (IO binding, CUDA graphs), OpenVINO
    peak.py         the peak per device and precision behind MFU: measured GEMMs, the ISA's figure
    run.py          a whole benchmark: benchmark(), and run_bench() behind `vitdeploy bench`
    end_to_end.py   decode / preprocess / model split from image files to logits
    environment.py  the machine, versions, threads, GPUs and load a run was measured on
    report.py       statistics, the JSON report, speed-up and MFU, the fastest gated variant, batch-size
                    recommendation and baseline comparison
    render.py       summary lines, plot, and live progress on a terminal (the table: vitdeploy.cli.tables)

Figures: p50 / p90 / p99 / mean / std latency, images/s, speed-up against PyTorch eager on the same device in the
same run, and model FLOPs utilisation (analytic FLOPs from flops.py against the peak of the variant's precision:
GEMMs measured at every point, in blocks of their own after the variants', and the ISA's theoretical figure).
"""

from vitdeploy.benchmark.artifacts import (
    ModelUnderTest,
    OnnxFile,
    build_variant_files,
    model_from_files,
    model_from_preset,
    plan_variants,
)
from vitdeploy.benchmark.environment import environment
from vitdeploy.benchmark.peak import GemmRunner, Peak, gemm_runners, peaks, theoretical_gflops
from vitdeploy.benchmark.protocol import Block, Blocks, ColdStart, block_schedule, cold_start, measure, measure_points
from vitdeploy.benchmark.render import (
    TerminalProgress,
    plot_report,
    progress_display,
    progress_wanted,
    summary_lines,
)
from vitdeploy.benchmark.report import (
    SCHEMA,
    BenchReport,
    PointResult,
    compare_to_baseline,
    gate_status,
    load_report,
    mfu,
    recommend_batch_size,
    recommend_variant,
    regression_failures,
)
from vitdeploy.benchmark.run import benchmark, run_bench, run_request
from vitdeploy.benchmark.runners import (
    OrtCpuRunner,
    OrtCudaRunner,
    SessionRunner,
    TorchRunner,
    make_runner,
)
from vitdeploy.benchmark.timing import CudaEventTimer, Runner, Timer, WallClock, input_batch, torch_threads
from vitdeploy.benchmark.variants import (
    DEFAULT_BATCH_SIZES,
    EAGER,
    ORT_FP32,
    VARIANTS,
    BenchSettings,
    VariantSpec,
    parse_variants,
)

__all__ = [
    "DEFAULT_BATCH_SIZES", "EAGER", "ORT_FP32", "SCHEMA", "VARIANTS", "Block", "Blocks", "BenchReport",
    "BenchSettings", "ColdStart", "CudaEventTimer", "GemmRunner", "ModelUnderTest", "OnnxFile", "OrtCpuRunner",
    "OrtCudaRunner", "Peak", "PointResult", "Runner", "SessionRunner", "TerminalProgress", "Timer", "TorchRunner",
    "VariantSpec", "WallClock", "benchmark", "block_schedule", "build_variant_files", "cold_start",
    "compare_to_baseline", "environment", "gate_status", "gemm_runners", "input_batch", "load_report", "make_runner",
    "measure", "measure_points", "mfu", "model_from_files", "model_from_preset", "parse_variants", "peaks",
    "plan_variants", "plot_report", "progress_display", "progress_wanted", "recommend_batch_size",
    "recommend_variant", "regression_failures", "run_bench", "run_request", "summary_lines", "theoretical_gflops",
    "torch_threads",
]
