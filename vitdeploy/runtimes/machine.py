"""The machine, probed once: what this computer offers each runtime, the one record every decision reads.

    machine = this_machine()         # registry.py: probed on first use, once per process
    machine.isa                      # avx2 | avx512_vnni | avx512_bf16 | amx | arm64 | ... (core/cpu.py)
    machine.offer("openvino")        # installed? usable? its devices, the precisions each computes natively here
    machine.compute_problem("openvino", "cpu", "bf16")   # None, or why not here and what would make it run

Each runtime's own module says what it offers (RuntimeSpec.probe): ONNX Runtime the providers a real session
gets (not get_available_providers()), OpenVINO its devices' OPTIMIZATION_CAPABILITIES, the web runtime its browser
and onnxruntime-web. A runtime is probed when a decision first needs it (predict asks ONNX Runtime only). Tests put
a made-up record in place with registry.assume() to cover CPU families no test machine has.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vitdeploy.core.cpu import cpu_model, isa_class
from vitdeploy.core.extras import importable
from vitdeploy.core.provenance import cpu_flags
from vitdeploy.core.strict_json import record
from vitdeploy.errors import ConfigError
from vitdeploy.runtimes.base import RuntimeOffer, RuntimeSpec

# The CPU extensions the precisions and INT8 recipes depend on: the ones a record keeps (x86, then ARM's names).
ISA_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                       "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "asimdhp", "asimddp", "bf16", "i8mm"})


@dataclass(frozen=True)
class Machine:
    """What this machine offers: its CPU and OS, and every registered runtime."""

    os: str  # platform.system(): Linux, Darwin, Windows
    arch: str  # platform.machine(), lower case: x86_64, aarch64, arm64
    cpu: str | None  # the CPU's model name
    cpu_flags: frozenset[str]  # those of ISA_FLAGS this CPU has
    isa: str  # core.cpu.isa_class: the class the precisions and INT8 recipes follow
    runtimes: Mapping[str, RuntimeOffer]  # name -> what it offers here, for every registered runtime
    specs: Mapping[str, RuntimeSpec]  # name -> its declaration (what would make it compute what it cannot)

    def offer(self, name: str) -> RuntimeOffer:
        if name not in self.runtimes:
            raise ConfigError(f"unknown runtime {name!r}; choose from: {', '.join(self.runtimes)}")
        return self.runtimes[name]

    def precisions(self, runtime: str, device: str) -> tuple[str, ...]:
        """What `runtime` computes natively on `device` here (nothing where it has no such device)."""
        offer = self.offer(runtime)
        return tuple(offer.precisions.get(device, ())) if offer.usable else ()

    def compute_problem(self, runtime: str, device: str, precision: str, *, emulated: bool = False) -> str | None:
        """Why `runtime` cannot compute in `precision` on `device` here, ending with what would (an install line
        or the hardware); None when it can. `emulated`: a precision the runtime runs without computing in it
        (ONNX Runtime's CPU provider casts fp16 to fp32) counts: enough to judge a file, not to time it."""
        spec, offer = self.specs[runtime], self.offer(runtime)
        if not offer.usable:
            return offer.reason
        if device not in offer.devices:
            return (f"{spec.title} has no {device.upper()} device here (only "
                    f"{', '.join(d.upper() for d in offer.devices)}): {spec.needs(device, precision)}")
        if precision in self.precisions(runtime, device) or (emulated and precision in spec.emulated.get(device, ())):
            return None
        return (f"{spec.title} {device.upper()} does not compute {precision} natively on this CPU ({self.isa}): "
                f"{spec.needs(device, precision)}")

    def to_dict(self) -> dict[str, Any]:
        return record(self, exclude=("specs",), cpu_flags=sorted(self.cpu_flags),
                      runtimes={name: offer.to_dict() for name, offer in self.runtimes.items()})


class _Offers(Mapping[str, RuntimeOffer]):
    """Every registered runtime's offer, each probed the first time it is asked for."""

    def __init__(self, specs: tuple[RuntimeSpec, ...]):
        self._specs = {spec.name: spec for spec in specs}
        self._offers: dict[str, RuntimeOffer] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> RuntimeOffer:
        spec = self._specs[name]
        with self._lock:
            if name not in self._offers:
                self._offers[name] = offer_of(spec)
            return self._offers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def probe(specs: Sequence[RuntimeSpec]) -> Machine:
    """This machine's record; its runtimes are asked what they offer as decisions first need them."""
    arch = platform.machine().lower()
    flags = cpu_flags()
    return Machine(platform.system(), arch, cpu_model(), frozenset(flags & ISA_FLAGS), isa_class(flags, arch),
                   _Offers(tuple(specs)), {spec.name: spec for spec in specs})


def offer_of(spec: RuntimeSpec) -> RuntimeOffer:
    """The runtime's own probe where its modules import; else not installed, with its install command."""
    missing = [module for module in spec.modules if not importable(module)]
    return missing_offer(spec, missing) if missing else spec.probe()


def missing_offer(spec: RuntimeSpec, missing: Sequence[str]) -> RuntimeOffer:
    """The offer of a runtime whose modules (or other parts) this installation lacks: nothing, and the install."""
    return RuntimeOffer(spec.name, False, False, f"{spec.name} needs {', '.join(missing)}, which this installation "
                        f"lacks: {spec.install_command()}")
