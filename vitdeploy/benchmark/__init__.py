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

# The package's public names; everything else is imported from its module (vitdeploy.benchmark.protocol, ...).
from vitdeploy.benchmark.render import summary_lines
from vitdeploy.benchmark.report import BenchReport, load_report
from vitdeploy.benchmark.run import benchmark, run_bench, run_request
from vitdeploy.benchmark.variants import BenchSettings, parse_variants

__all__ = ["BenchReport", "BenchSettings", "benchmark", "load_report", "parse_variants", "run_bench", "run_request",
           "summary_lines"]
