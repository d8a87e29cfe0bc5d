"""Each default once: a stage never restates, as a literal default of its own, a value a request class holds as the
default of a field of the same name. Stages take the request (or its fields, with no defaults of their own), so
changing a default in requests.py changes it everywhere."""

from __future__ import annotations

import ast
import dataclasses

from test_imports import module_files

from vitdeploy import requests

STAGES = ("training", "pretrained", "verification", "exporting", "prediction", "benchmark", "explanation", "serving")


def request_defaults() -> dict[str, set[object]]:
    """Field name -> the literal defaults (str, int, float; not None or bool) request classes give it."""
    defaults: dict[str, set[object]] = {}
    for value in vars(requests).values():
        if isinstance(value, type) and dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                if isinstance(f.default, (str, int, float)) and not isinstance(f.default, bool):
                    defaults.setdefault(f.name, set()).add(f.default)
    return defaults


def restated_defaults(source: str, defaults: dict[str, set[object]]) -> list[str]:
    """`name=literal` parameters and `name: T = literal` class fields in `source` that restate a request default."""
    found = []
    for node in ast.walk(ast.parse(source)):
        pairs: list[tuple[str, ast.expr]] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            positional = node.args.posonlyargs + node.args.args
            pairs += [(a.arg, d) for a, d in zip(positional[len(positional) - len(node.args.defaults):],
                                                 node.args.defaults)]
            pairs += [(a.arg, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
        elif isinstance(node, ast.ClassDef):
            pairs += [(s.target.id, s.value) for s in node.body
                      if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None]
        for name, default in pairs:
            if isinstance(default, ast.Constant) and not isinstance(default.value, bool) \
                    and default.value in defaults.get(name, ()):
                found.append(f"{getattr(node, 'name', '?')}({name}={default.value!r})")
    return found


def test_the_scan_finds_a_restated_default() -> None:
    defaults = {"top_k": {5}, "runtime": {"ort"}}
    assert restated_defaults("def f(x, top_k=5, runtime=None): ...", defaults) == ["f(top_k=5)"]
    assert restated_defaults("class C:\n    runtime: str = 'ort'\n", defaults) == ["C(runtime='ort')"]
    assert restated_defaults("def f(top_k=3, flag=True): ...", {**defaults, "flag": {1}}) == []


def test_no_stage_restates_a_request_default() -> None:
    defaults = request_defaults()
    assert {"top_k", "int8_method", "max_accuracy_drop"} <= set(defaults)
    restated = {name: found for name, path in module_files().items()
                if name.split(".")[1:2] and name.split(".")[1] in STAGES
                and (found := restated_defaults(path.read_text(encoding="utf-8"), defaults))}
    assert restated == {}
