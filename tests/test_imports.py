"""The import rule (docs/architecture.md): imports inside vitdeploy run one way, with no cycle, counting
module-level, function-level and TYPE_CHECKING imports alike; only the heavy optional libraries are imported lazily.

Read from the source with `ast`, so a cycle hidden inside a function body counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import vitdeploy

PACKAGE = Path(vitdeploy.__file__).parent
# Libraries whose import costs seconds or which an install may lack: the only ones imported inside functions.
HEAVY_OPTIONAL = {"torch", "onnx", "onnxscript", "openvino", "nncf", "matplotlib", "ray", "pyarrow", "starlette",
                  "uvicorn", "multipart", "python_multipart", "tritonclient", "sklearn", "safetensors", "transformers",
                  "onnxruntime", "rich", "typer", "PIL", "numpy", "scipy", "websockets",
                  "google",  # google.protobuf comes with onnx
                  "triton_python_backend_utils"}  # exists only inside Triton's Python backend (serving/triton_model)


def module_files() -> dict[str, Path]:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("vitdeploy",) + path.relative_to(PACKAGE).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Every vitdeploy module `name` imports, anywhere in its source."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target not in (name, "vitdeploy"):
                found.add(target)
    return found


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), each as a path that returns to its start."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_the_cycle_finder_finds_a_cycle_and_passes_a_chain() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_inside_vitdeploy() -> None:
    files = module_files()
    edges = {name: imported_modules(name, path, set(files)) for name, path in files.items()}
    assert sum(map(len, edges.values())) > 100  # the graph was really read
    assert find_cycles(edges) == []


def test_function_level_imports_are_heavy_optional_libraries_or_vitdeploy() -> None:
    """Lazy imports are for what is slow to import or may be missing; anything else belongs at the top."""
    odd = []
    for name, path in module_files().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    roots = [alias.name.split(".")[0] for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    roots = [node.module.split(".")[0]]
                else:
                    continue
                odd += [f"{name}: {root}" for root in roots if root not in HEAVY_OPTIONAL | {"vitdeploy"}]
    assert odd == []


def test_every_exception_is_defined_in_errors_py() -> None:
    """errors.py is the one list of what vitdeploy raises, each with its exit code."""
    from vitdeploy import errors

    exception_names = {name for name, value in vars(errors).items()
                       if isinstance(value, type) and issubclass(value, BaseException)}
    exception_names |= {"Exception", "BaseException", "ValueError", "RuntimeError", "OSError"}
    elsewhere = []
    for name, path in module_files().items():
        if name == "vitdeploy.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                         for b in node.bases}
                if bases & exception_names:
                    elsewhere.append(f"{name}.{node.name}")
    assert len(exception_names) > 10 and elsewhere == []
