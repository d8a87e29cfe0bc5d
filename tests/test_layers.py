"""The stage layout (docs/architecture.md): the package's folders are layers in pipeline order, and a module imports
only from its own layer or the layers below it, counting function-level and TYPE_CHECKING imports alike."""

from __future__ import annotations

from test_imports import imported_modules, module_files

# Lowest first. A unit may import itself and anything ranked below it; units of one rank do not import each other.
# verification sits below exporting because export runs verification's parity check before a file appears.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("core",),
    ("model", "requests"),
    ("files",),
    ("runtimes",),
    ("training", "pretrained"),
    ("verification",),
    ("exporting",),
    ("prediction", "benchmark", "explanation"),
    ("serving",),
    ("api",),
    ("cli",),
    ("__main__", "vitdeploy"),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """vitdeploy.exporting.gate -> exporting; vitdeploy.api -> api; vitdeploy -> vitdeploy (the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vitdeploy"


def upstream_imports() -> list[str]:
    files = module_files()
    wrong = []
    for name, path in sorted(files.items()):
        for target in sorted(imported_modules(name, path, set(files))):
            source, dest = unit_of(name), unit_of(target)
            if source != dest and RANK[dest] >= RANK[source]:
                wrong.append(f"{name} -> {target}")
    return wrong


def test_every_unit_of_the_package_has_a_layer() -> None:
    units = {unit_of(name) for name in module_files()}
    assert len(units) > 15
    assert units - set(RANK) == set()


def test_imports_run_down_the_layers_only() -> None:
    assert upstream_imports() == []


def test_the_layer_check_sees_an_upstream_import() -> None:
    assert RANK["core"] < RANK["files"] < RANK["runtimes"] < RANK["exporting"] < RANK["serving"] < RANK["cli"]
    assert unit_of("vitdeploy.core.images") == "core" and unit_of("vitdeploy.api") == "api"


def test_core_imports_nothing_of_vitdeploy_but_errors() -> None:
    files = module_files()
    core = {name: imported_modules(name, path, set(files)) for name, path in files.items() if unit_of(name) == "core"}
    assert core
    assert {t for targets in core.values() for t in targets if unit_of(t) not in ("core", "errors")} == set()
