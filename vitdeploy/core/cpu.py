"""The CPU's instruction-set class: what decides which arithmetic runs natively, and which INT8 recipe is exact.

    amx          Intel Sapphire Rapids and later: AMX tiles for bf16 and int8
    avx512_bf16  AVX-512 with AVX512_BF16 and VNNI (AMD Zen 4/5, Intel Cooper Lake)
    avx512_vnni  AVX-512 with VNNI, no bf16 (Intel Cascade Lake, Ice Lake)
    avx2_vnni    AVX2 with AVX-VNNI (Intel Alder Lake and later client CPUs)
    avx512       AVX-512 without VNNI (Intel Skylake-SP)
    avx2         AVX2 + FMA only (AMD Zen 2/3, Intel Haswell to Coffee Lake)
    arm64        aarch64 (NEON; its own kernels)
    generic      anything older or unknown

Why a class and not the flags: without VNNI or AMX, x86 INT8 kernels multiply u8 x s8 pairs with VPMADDUBSW, whose
16-bit sum saturates; with VNNI/AMX it cannot. A file gated on one class may not hold on another.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator, Set
from pathlib import Path

from vitdeploy.core.provenance import cpu_flags

ISA_CLASSES = ("amx", "avx512_bf16", "avx512_vnni", "avx2_vnni", "avx512", "avx2", "arm64", "generic")
# Classes whose INT8 dot products accumulate in 32 bits (VNNI or AMX): no u8 x s8 saturation.
NO_INT8_SATURATION = frozenset({"amx", "avx512_bf16", "avx512_vnni", "avx2_vnni", "arm64"})


def isa_class(flags: Set[str] | None = None, machine: str | None = None) -> str:
    """The class of a CPU with these /proc/cpuinfo flags and this `platform.machine()` (both default to this one)."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    flags = cpu_flags() if flags is None else flags
    if "amx_tile" in flags or "amx_int8" in flags:
        return "amx"
    if "avx512f" in flags:
        if "avx512_bf16" in flags:
            return "avx512_bf16"
        return "avx512_vnni" if "avx512_vnni" in flags else "avx512"
    if "avx2" in flags:
        return "avx2_vnni" if "avx_vnni" in flags else "avx2"
    return "generic"


def int8_saturates(isa: str) -> bool:
    """True where u8 x s8 INT8 kernels can saturate (no VNNI or AMX): x86 AVX2 / AVX-512 without VNNI, and older."""
    return isa not in NO_INT8_SATURATION


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo's "model name", else platform.processor()), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `count` inside the block and restored after it; unchanged for None or
    where torch is not installed (ONNX Runtime and OpenVINO sessions take theirs when they are created)."""
    try:
        import torch
    except ImportError:
        torch = None
    if count is None or torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
