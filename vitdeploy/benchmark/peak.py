"""The peak rate MFU divides by: the highest rate this hardware gives at a precision, per device.

For each precision a variant runs in, the peak is the largest of:
  - GEMMs of that precision measured at every point, in blocks of their own after the variants' (protocol.measure's
    companions: never before a variant's timed block, where their spinning threads would take its CPU), each
    by several implementations, because no one library is fastest on every CPU: fp32 by torch.mm (one thread,
    credited times the thread count, and all threads), numpy's matmul and an ONNX Runtime MatMul (MLAS); bf16
    by torch.mm on bf16 tensors; int8 by an ONNX Runtime MatMulInteger. The fastest run of each counts (a mean
    rate sinks with the load of a shared machine);
  - the ISA's theoretical peak, where /proc/cpuinfo gives the vector extensions and a clock: cores x clock x
    operations per cycle per core (theoretical_gflops). The clock is cpufreq's maximum where the kernel exposes
    it, else the "cpu MHz" /proc/cpuinfo reports (in a VM the nominal clock, possibly below turbo);
  - the rate any variant of that precision reached in the run (its fastest run): the hardware demonstrably gave
    at least that, so a peak below it is a peak measured too low, and MFU above 100% would be the peak's error,
    not the model's.
A precision with no GEMM measured and no theoretical figure (fp16 on a GPU here) gets no peak, hence no MFU. The
report names the source that set each peak and lists every candidate, so none of them is hidden.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitdeploy.benchmark.timing import CudaEventTimer, Runner, WallClock
from vitdeploy.benchmark.variants import VariantSpec
from vitdeploy.core.cpu import torch_threads
from vitdeploy.core.provenance import cpu_clock_ghz, cpu_flags
from vitdeploy.runtimes import open_runtime

PRECISIONS = ("fp32", "bf16", "int8")
CPU_GEMM_SIZE = 1024  # large enough to reach a BLAS's peak, small enough not to add much to each round
CUDA_GEMM_SIZE = 4096
# Operations (2 per multiply-add) per cycle per core, by ISA extension, best first within each precision. Vector
# widths are the ISA's; the count of FMA units is not in /proc/cpuinfo, so 2 (the most any x86 core has) is
# assumed: an upper bound, which keeps MFU a lower bound. AMX: one TDPBF16PS (16x16x32 bf16 MACs) or TDPBUSD
# (16x16x64 int8 MACs) per 16 cycles per core, Intel's stated 1024 bf16 / 2048 int8 operations per cycle.
OPS_PER_CYCLE: dict[str, tuple[tuple[str, int, str], ...]] = {
    "fp32": (("avx512f", 64, "AVX-512 FMA: 16 fp32 lanes x 2 units x 2"),
             ("fma", 32, "AVX2 FMA: 8 fp32 lanes x 2 units x 2")),
    "bf16": (("amx_bf16", 1024, "AMX-BF16 tile multiply"),
             ("avx512_bf16", 128, "AVX512_BF16 VDPBF16PS: 32 bf16 MACs x 2 units x 2")),
    "int8": (("amx_int8", 2048, "AMX-INT8 tile multiply"),
             ("avx512_vnni", 256, "AVX512_VNNI VPDPBUSD: 64 int8 MACs x 2 units x 2"),
             ("avx_vnni", 128, "AVX-VNNI VPDPBUSD: 32 int8 MACs x 2 units x 2")),
}


@dataclass
class Peak:
    """One device's peak at one precision and where it comes from."""

    device: str
    precision: str
    gflops: float
    source: str  # the candidate that set it
    candidates: dict[str, float] = field(default_factory=dict)  # every measured or derived rate, GFLOP/s
    theoretical_basis: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"gflops": round(self.gflops, 2), "source": self.source,
                "candidates": {k: round(v, 2) for k, v in self.candidates.items()},
                "theoretical_basis": self.theoretical_basis}


# ------------------------------------------------------------------------------------------------ theoretical


def theoretical_gflops(precision: str, cores: int, flags: frozenset[str] | None = None,
                       clock: tuple[float, str] | None = None) -> tuple[float, str] | None:
    """(GFLOP/s, how it was derived) for `cores` cores, or None where the ISA or the clock is unknown."""
    flags = cpu_flags() if flags is None else flags
    clock = cpu_clock_ghz() if clock is None else clock
    if clock is None:
        return None
    for flag, ops, what in OPS_PER_CYCLE.get(precision, ()):
        if flag in flags:
            return cores * clock[0] * ops, f"{cores} cores x {clock[0]:.2f} GHz ({clock[1]}) x {ops} ({what})"
    return None


# --------------------------------------------------------------------------------------------- measured GEMMs


class GemmRunner(Runner):
    """One square GEMM of a precision by one implementation, timed as a companion of the variants. `flops` is what
    one run is credited with; gflops() takes the fastest run."""

    precision = "fp32"
    credit = 1  # runs credited as this many (the one-thread GEMM scaled to the thread count)

    def __init__(self, name: str, device: str, size: int):
        self.spec = VariantSpec(f"peak-{name}", "gemm", device, self.precision, f"{name}: {size}x{size} GEMM")
        self.providers = [name]
        self.size = size
        self.timer = WallClock()

    @property
    def flops(self) -> float:
        return 2 * self.size**3 * self.credit

    def stage(self, batch: np.ndarray) -> None:
        pass  # the same matrices at every batch size

    def gflops(self, latencies_s: list[float]) -> float:
        return self.flops / min(latencies_s) / 1e9


class TorchGemm(GemmRunner):
    def __init__(self, device: str, threads: int, dtype: str = "float32", one_thread: bool = False):
        self.precision = "bf16" if dtype == "bfloat16" else "fp32"
        self.one_thread = one_thread
        self.threads = threads
        self.dtype = dtype
        name = f"torch.mm {dtype}" + (f" 1 thread x {threads}" if one_thread else "")
        super().__init__(name, device, CUDA_GEMM_SIZE if device == "cuda" else CPU_GEMM_SIZE)
        self.credit = threads if one_thread and device == "cpu" else 1

    def create(self) -> None:
        import torch

        if self.spec.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 peak must be real fp32, not TF32
        generator = torch.Generator().manual_seed(0)
        dtype = getattr(torch, self.dtype)
        self.a = torch.randn(self.size, self.size, generator=generator).to(self.spec.device, dtype)
        self.b = torch.randn(self.size, self.size, generator=generator).to(self.spec.device, dtype)
        self.mm = torch.mm
        if self.spec.device == "cuda":
            self.timer = CudaEventTimer()
        elif self.one_thread:
            self.timer = WallClock(setting=functools.partial(torch_threads, 1))

    def infer(self) -> None:
        self.mm(self.a, self.b)


class NumpyGemm(GemmRunner):
    """numpy's matmul, on whatever BLAS numpy was built with, with that BLAS's own thread count."""

    def __init__(self) -> None:
        super().__init__("numpy.matmul float32", "cpu", CPU_GEMM_SIZE)

    def create(self) -> None:
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((self.size, self.size), dtype=np.float32)
        self.b = rng.standard_normal((self.size, self.size), dtype=np.float32)

    def infer(self) -> None:
        np.matmul(self.a, self.b)


class OrtGemm(GemmRunner):
    """ONNX Runtime's own GEMM (MLAS): a one-node MatMul (fp32) or MatMulInteger (uint8 x int8) model."""

    def __init__(self, threads: int, precision: str = "fp32"):
        self.precision = precision
        self.threads = threads
        op = "MatMul float32" if precision == "fp32" else "MatMulInteger uint8 x int8"
        super().__init__(f"onnxruntime {op}", "cpu", CPU_GEMM_SIZE)

    def create(self) -> None:
        # ORT's own InferenceSession, timed with nothing in between (the runtime interface adds no call here).
        self.session = open_runtime("ort", gemm_model(self.precision), "cpu", threads=self.threads).session
        rng = np.random.default_rng(0)
        shape = (self.size, self.size)
        if self.precision == "fp32":
            self.feed = {"a": rng.standard_normal(shape, dtype=np.float32), "b": rng.standard_normal(shape, np.float32)}
        else:
            self.feed = {"a": rng.integers(0, 255, shape, dtype=np.uint8), "b": rng.integers(-127, 127, shape, np.int8)}

    def infer(self) -> None:
        self.session.run(None, self.feed)


def gemm_model(precision: str) -> bytes:
    """y = MatMul(a, b) (fp32) or MatMulInteger(a, b) (uint8 x int8 -> int32), opset 17, serialized."""
    from onnx import TensorProto, helper

    op, types = ("MatMul", (TensorProto.FLOAT,) * 3) if precision == "fp32" else (
        "MatMulInteger", (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32))
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"])], "gemm",
        [helper.make_tensor_value_info(name, elem, ["n", "n"]) for name, elem in zip("ab", types)],
        [helper.make_tensor_value_info("y", types[2], ["n", "n"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def gemm_runners(devices: set[str], precisions: set[str], threads: int, has_torch: bool,
                 has_onnx: bool) -> list[GemmRunner]:
    """The GEMMs to time beside the variants: for each device and precision in use, every implementation here."""
    runners: list[GemmRunner] = []
    if "cpu" in devices:
        if "fp32" in precisions:
            runners += [NumpyGemm()] + ([OrtGemm(threads)] if has_onnx else [])
            runners += [TorchGemm("cpu", threads, one_thread=True), TorchGemm("cpu", threads)] if has_torch else []
        if "bf16" in precisions and has_torch:
            runners.append(TorchGemm("cpu", threads, "bfloat16"))
        if "int8" in precisions and has_onnx:
            runners.append(OrtGemm(threads, "int8"))
    if "cuda" in devices and "fp32" in precisions and has_torch:
        runners.append(TorchGemm("cuda", threads))
    return runners


# --------------------------------------------------------------------------------------------------- the peak


def peaks(gemms: dict[GemmRunner, list[float]], achieved: dict[tuple[str, str], dict[str, float]],
          threads: int) -> dict[str, dict[str, Peak]]:
    """device -> precision -> Peak, for every (device, precision) a variant ran in.

    gemms: each GEMM runner and its timed latencies; achieved: (device, precision) -> {variant: its best GFLOP/s in
    the run}. A device and precision without any GEMM or theoretical figure gets no peak (and so no MFU).
    """
    result: dict[str, dict[str, Peak]] = {}
    for (device, precision), variants in achieved.items():
        candidates = {f"GEMM {r.providers[0]}": r.gflops(t) for r, t in gemms.items()
                      if r.spec.device == device and r.precision == precision and t}
        basis = None
        if device == "cpu":
            derived = theoretical_gflops(precision, threads)
            if derived:
                candidates["ISA theoretical"], basis = derived
        if not candidates:
            continue
        candidates.update({f"variant {name}": gflops for name, gflops in variants.items()})
        source = max(candidates, key=lambda k: candidates[k])
        result.setdefault(device, {})[precision] = Peak(device, precision, candidates[source], source, candidates,
                                                        basis)
    return result
