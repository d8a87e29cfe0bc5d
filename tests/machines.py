"""Made-up machine records (runtimes.Machine) for the CPU families and installs no test machine has: put one in
place with `runtimes.assume(fake_machine(...))` and every decision (bench's plan, export's refusals and --precision
auto, the runtime a file runs on, doctor) reads it instead of this machine's.

What each family offers is what the runtimes report there: ONNX Runtime's CPU provider computes fp32 and INT8 on
every x86 and ARM CPU (runtimes/ort.py PRECISIONS); OpenVINO's CPU plugin lists its OPTIMIZATION_CAPABILITIES, turned
into precisions by the runtime's own precisions_of(). The OpenVINO lists are OpenVINO 2026.4's: measured on the Ice
Lake Xeon (AVX-512 VNNI: FP32, INT8) and the Zen 5 EPYC (AVX512_BF16: FP32, BF16, INT8) these tests ran on, and the
Zen 3 of issue 25 (AVX2: FP32, INT8); AMX and aarch64 as OpenVINO documents them (bf16 on AMX, f16 on ARM with fp16
arithmetic), not measured here.
"""

from __future__ import annotations

from vitdeploy.core.cpu import isa_class
from vitdeploy.runtimes import Machine, RuntimeOffer, runtime_spec, runtime_specs
from vitdeploy.runtimes.machine import missing_offer
from vitdeploy.runtimes.openvino import precisions_of
from vitdeploy.runtimes.ort import PRECISIONS as ORT_PRECISIONS
from vitdeploy.runtimes.web.limits import DEVICE_PRECISIONS as WEB_PRECISIONS

# family -> (a CPU of it, /proc/cpuinfo flags, OpenVINO CPU's OPTIMIZATION_CAPABILITIES)
FAMILIES: dict[str, tuple[str, frozenset[str], tuple[str, ...]]] = {
    "avx2": ("AMD EPYC (Zen 3)", frozenset({"avx2", "fma"}), ("FP32", "INT8", "BIN", "EXPORT_IMPORT")),
    "avx512_vnni": ("Intel Xeon (Cascade Lake)", frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}),
                    ("WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT")),
    "avx512_bf16": ("AMD EPYC (Zen 5)", frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}),
                    ("FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT")),
    "amx": ("Intel Xeon (Sapphire Rapids)",
            frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}),
            ("FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT")),
    "arm64": ("ARM Neoverse-V1", frozenset({"asimd", "asimdhp", "asimddp", "bf16", "i8mm"}),
              ("FP32", "FP16", "INT8", "EXPORT_IMPORT")),
}
# The docs' names of the families (docs/runtimes.md's table).
TITLES = {
    "avx2": "AVX2 only (AMD Zen 2/3, Intel Haswell to Coffee Lake)",
    "avx512_vnni": "AVX-512 + VNNI, no bf16 (Intel Cascade Lake, Ice Lake)",
    "avx512_bf16": "AVX-512 + bf16 (AMD Zen 4/5)",
    "amx": "AMX (Intel Sapphire Rapids and later)",
    "arm64": "aarch64 (AWS Graviton 3, Ampere)",
}


def fake_machine(family: str, *, openvino: bool = True, browser: bool = True, onnx: bool = True,
                 cuda: bool = False) -> Machine:
    """A machine of `family` (FAMILIES), with or without OpenVINO, a browser, the onnx package (the reference
    runtime), a working CUDA GPU; a missing one says what its own declaration says would install it."""
    cpu, flags, capabilities = FAMILIES[family]
    arch = "aarch64" if family == "arm64" else "x86_64"
    ort_devices = ("cpu", "cuda") if cuda else ("cpu",)
    offers = {
        "ort": RuntimeOffer("ort", True, True, "", ort_devices, {d: ORT_PRECISIONS[d] for d in ort_devices}),
        "openvino": (RuntimeOffer("openvino", True, True, "", ("cpu",), {"cpu": precisions_of(list(capabilities))},
                                  details={"optimization_capabilities": {"cpu": list(capabilities)}})
                     if openvino else missing_offer(runtime_spec("openvino"), ["openvino"])),
        "reference": (RuntimeOffer("reference", True, True, "", ("cpu",), {"cpu": ("fp32", "fp16", "int8")})
                      if onnx else missing_offer(runtime_spec("reference"), ["onnx"])),
        "web": (RuntimeOffer("web", True, True, "", ("wasm",), {"wasm": WEB_PRECISIONS["wasm"]}) if browser
                else missing_offer(runtime_spec("web"), ["a Chromium browser"])),
    }
    machine = Machine("Linux", arch, cpu, flags, isa_class(flags, arch), offers, {s.name: s for s in runtime_specs()})
    assert machine.isa == family, (family, machine.isa)  # the family is what core/cpu.py calls these flags
    return machine


def this_family() -> str:
    """This machine's family where FAMILIES has it (tests that change one thing about this machine)."""
    from vitdeploy.runtimes import this_machine

    return this_machine().isa if this_machine().isa in FAMILIES else "avx2"
