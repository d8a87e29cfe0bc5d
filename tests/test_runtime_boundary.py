"""runtimes/ as one plug-in boundary: every runtime declares itself once (SPEC) and is listed by the registry;
nothing outside runtimes/ imports a runtime module; every session is a context manager that closes."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from test_imports import imported_modules, module_files

from vitdeploy.runtimes import (
    RUNTIMES,
    RuntimeSpec,
    open_runtime,
    registry,
    runtime_specs,
    this_machine,
)

# The modules that hold a runtime's session (each declares SPEC): only runtimes/ may import them. (`vitdeploy web`'s
# folder shares the web runtime's page tools, runtimes/web/toolchain.py and limits.py, not its session.)
CONCRETE = set(registry.RUNTIME_MODULES)


def concrete_imports_outside_runtimes() -> list[str]:
    files = module_files()
    found = []
    for name, path in sorted(files.items()):
        if name.startswith("vitdeploy.runtimes"):
            continue
        found += [f"{name} -> {target}" for target in sorted(imported_modules(name, path, set(files)))
                  if target in CONCRETE]
    return found


def test_no_module_outside_runtimes_imports_a_concrete_runtime() -> None:
    assert concrete_imports_outside_runtimes() == []


def test_no_session_is_created_outside_runtimes() -> None:
    """Every session is opened through registry.open_runtime: no runtime's own constructor is called elsewhere."""
    constructors = ("InferenceSession(", "compile_model(", "ReferenceEvaluator(", "OrtSession(", "OpenVinoSession(")
    found = [f"{name}: {c}" for name, path in module_files().items() if not name.startswith("vitdeploy.runtimes")
             for c in constructors if c in path.read_text(encoding="utf-8")]
    assert found == []


def test_the_boundary_check_sees_a_concrete_import(tmp_path) -> None:
    source = tmp_path / "consumer.py"
    source.write_text("from vitdeploy.runtimes.ort import OrtSession\nfrom vitdeploy.runtimes import open_runtime\n")
    found = imported_modules("vitdeploy.consumer", source, set(module_files()))
    assert "vitdeploy.runtimes.ort" in found & CONCRETE


def test_every_runtime_module_declares_one_spec_the_registry_lists() -> None:
    specs = runtime_specs()
    assert [spec.name for spec in specs] == list(RUNTIMES) == ["ort", "openvino", "reference", "web"]
    for module, spec in zip(registry.RUNTIME_MODULES, specs):
        assert importlib.import_module(module).SPEC is spec
        assert isinstance(spec, RuntimeSpec) and spec.devices and spec.help and spec.title
        assert spec.install_command().startswith(("pip install", "apt-get"))


def test_reading_the_declarations_imports_no_runtime_library() -> None:
    import subprocess
    import sys

    code = ("import sys, vitdeploy.runtimes as r; r.runtime_specs(); "
            "print(sorted(m for m in ('onnxruntime', 'openvino', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["ort", "openvino", "reference"])
def test_every_session_is_a_context_manager_that_closes(tiny_onnx, name) -> None:
    if not this_machine().offer(name).usable:
        pytest.skip(f"{name} is not usable here")
    with open_runtime(name, tiny_onnx, "cpu") as session:
        batch = np.random.default_rng(0).standard_normal((2, *session.input_shape[1:]), dtype=np.float32)
        assert session.run(batch).shape == (2, session.num_classes)
    assert session.closed
    session.close()  # a second close is harmless
    with pytest.raises(RuntimeError, match="closed"):
        session.run(batch)


@pytest.mark.slow
def test_the_web_session_closes_its_browser(tiny_onnx) -> None:
    if not this_machine().offer("web").usable:
        pytest.skip("no browser or onnxruntime-web here")
    with open_runtime("web", tiny_onnx, "wasm") as session:
        batch = np.random.default_rng(0).standard_normal((1, *session.input_shape[1:]), dtype=np.float32)
        assert session.run(batch).shape == (1, session.num_classes)
        process = session.browser.process
    assert session.closed and process.poll() is not None
