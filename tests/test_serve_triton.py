"""`vitdeploy triton`: the repository parses with Triton's own protobuf schema, carries dims without the batch axis
and the exported file byte for byte, and refuses what Triton would refuse at load."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.errors import EXIT_BAD_INPUT
from vitdeploy.serving.triton import TritonOptions, render_pbtxt, write_triton_repository

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def model_config_pb2() -> ModuleType:
    """Triton's ModelConfig schema as tritonclient ships it. Loaded from its file: the tritonclient.grpc package
    imports grpcio first, which the [serve] extra does not need; the schema itself needs only protobuf."""
    tritonclient = pytest.importorskip("tritonclient")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(path: Path):
    from google.protobuf import text_format

    schema = model_config_pb2()
    return text_format.Parse(path.read_text(), schema.ModelConfig()), schema


@pytest.fixture(scope="module")
def default_repo(tiny_onnx: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    result = runner.invoke(app, ["triton", str(tiny_onnx), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_the_default_repository_parses_with_tritons_schema(default_repo: Path, tiny_onnx: Path) -> None:
    config, schema = parse_config(default_repo / "tiny" / "config.pbtxt")
    assert config.name == "tiny" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    (inp,), (out,) = config.input, config.output
    # dims leave out the batch axis: Triton adds it because max_batch_size > 0
    assert (inp.name, list(inp.dims), inp.data_type) == ("pixel_values", [3, 16, 16], schema.TYPE_FP32)
    assert (out.name, list(out.dims), out.data_type) == ("logits", [3], schema.TYPE_FP32)
    assert out.label_filename == "labels.txt"
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.kind, g.count) for g in config.instance_group] == [(schema.ModelInstanceGroup.KIND_CPU, 1)]
    assert not config.HasField("optimization")  # GPU accelerators only when asked for


def test_the_repository_holds_the_export_byte_for_byte_with_labels_and_a_readme(default_repo: Path,
                                                                                 tiny_onnx: Path) -> None:
    model_dir = default_repo / "tiny"
    assert (model_dir / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert (model_dir / "labels.txt").read_text().splitlines() == ["cat", "dog", "bird"]
    readme = (default_repo / "README.md").read_text()
    assert "tritonserver --model-repository=/models" in readme and 'client.infer("tiny"' in readme
    assert "resize the shorter side to 16 px (bilinear)" in readme and "mean [0.5, 0.5, 0.5]" in readme


def test_gpu_options_write_the_accelerators_asked_for(tiny_onnx: Path, tmp_path: Path) -> None:
    options = TritonOptions(name="vit-gpu", device="gpu", instances=2, max_batch_size=16, preferred_batch_sizes=(8, 16),
                            tensorrt="fp16")
    repo = write_triton_repository(tiny_onnx, tmp_path, options)
    config, schema = parse_config(repo.model_dir / "config.pbtxt")
    assert [(g.kind, g.count) for g in config.instance_group] == [(schema.ModelInstanceGroup.KIND_GPU, 2)]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_profile_max_shapes"] == "pixel_values:16x3x16x16"

    graphs = write_triton_repository(tiny_onnx, tmp_path, TritonOptions(
        name="vit-graphs", device="gpu", cuda_graphs=True, dynamic_batching=False))
    config, _ = parse_config(graphs.model_dir / "config.pbtxt")
    (cuda,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert cuda.name == "cuda" and cuda.parameters["enable_cuda_graph"] == "1"
    assert config.WhichOneof("scheduling_choice") is None


def test_from_bench_takes_the_recommended_batch_and_the_budget_left(tiny_onnx: Path, tmp_path: Path) -> None:
    from vitdeploy.runtimes import read_model_info

    config = read_model_info(tiny_onnx).model_config
    assert config is not None
    report = {"schema": "vitdeploy.bench/1", "results": [], "model": {"config": config.to_dict()},
              "recommendation": {"p99_budget_ms": 50.0, "best": None, "per_variant": {
                  "ort-cpu": {"batch_size": 8, "p99_ms": 20.5, "images_per_s": 400.0}, "ort-cuda": None}}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    repo = write_triton_repository(tiny_onnx, tmp_path / "repo", TritonOptions(from_bench=path))
    parsed, _ = parse_config(repo.model_dir / "config.pbtxt")
    assert parsed.max_batch_size == 8 and list(parsed.dynamic_batching.preferred_batch_size) == [8]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 29500  # 50 ms budget - 20.5 ms p99
    assert "batch 8 meets the p99 budget of 50.0 ms" in repo.notes[0]

    result = runner.invoke(app, ["triton", str(tiny_onnx), "--out", str(tmp_path / "r2"), "--device", "gpu",
                                 "--from-bench", str(path)])
    assert result.exit_code == EXIT_BAD_INPUT and "no batch size recommendation for ort-cuda" in result.output


@pytest.fixture(scope="module")
def fixed_batch_onnx(tiny_onnx: Path, tmp_path_factory) -> Path:
    import onnx

    proto = onnx.load(str(tiny_onnx))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path_factory.mktemp("fixed") / "fixed.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("args, fragment", [
    (["--name", "../escape"], "not a valid repository directory name"),
    (["--name", "a b"], "not a valid repository directory name"),
    (["--name", ".hidden"], "not a valid repository directory name"),
    (["--tensorrt", "fp16"], "add --device gpu"),
    (["--device", "gpu", "--cuda-graphs"], "--no-dynamic-batching"),
    (["--device", "tpu"], "unknown --device"),
    (["--backend", "tensorflow"], "unknown --backend"),
    (["--backend", "python", "--device", "gpu"], "use --backend onnxruntime"),
    (["--max-batch-size", "8", "--preferred-batch-sizes", "16"], "at most --max-batch-size"),
])
def test_bad_names_and_contradictory_options_exit_2_without_writing(tiny_onnx: Path, tmp_path: Path, args: list[str],
                                                                    fragment: str) -> None:
    result = runner.invoke(app, ["triton", str(tiny_onnx), "--out", str(tmp_path / "repo"), *args])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert fragment in " ".join(result.output.split())
    assert not (tmp_path / "repo").exists()


def test_a_model_with_a_fixed_batch_axis_is_refused(fixed_batch_onnx: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["triton", str(fixed_batch_onnx), "--out", str(tmp_path / "repo")])
    assert result.exit_code == EXIT_BAD_INPUT
    # Refused when the model is opened (the input contract every consumer checks), before Triton could refuse it.
    assert "batch axis is fixed at 1" in " ".join(result.output.split())
    assert not (tmp_path / "repo").exists()


@pytest.mark.slow
def test_triton_needs_neither_torch_nor_onnx_nor_the_serve_extra(tiny_onnx: Path, tmp_path: Path) -> None:
    from builders import without_modules

    bench = tmp_path / "bench.json"  # --from-bench reads the report without torch too
    bench.write_text(json.dumps({"schema": "vitdeploy.bench/1", "results": [], "recommendation": {
        "p99_budget_ms": 40.0, "per_variant": {"ort-cpu": {"batch_size": 4, "p99_ms": 10.0, "images_per_s": 1.0}}}}))
    code = without_modules("torch", "onnx", "starlette", "uvicorn", "tritonclient", why="core install only")
    done = subprocess.run([sys.executable, "-c", code, "triton", str(tiny_onnx), "--out", str(tmp_path / "repo"),
                           "--from-bench", str(bench)],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "max_batch_size: 4" in (tmp_path / "repo" / "tiny" / "config.pbtxt").read_text()


def test_the_text_format_writer_quotes_strings_and_leaves_enums_and_numbers_bare() -> None:
    from vitdeploy.serving.triton import Enum

    text = render_pbtxt({"name": 'a"b', "kind": Enum("KIND_GPU"), "count": 2, "flag": True, "dims": [3, 4]})
    assert text == 'name: "a\\"b"\nkind: KIND_GPU\ncount: 2\nflag: true\ndims: [ 3, 4 ]\n'


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rewrite_that_fails_its_check_leaves_the_repository_as_it_was(tiny_onnx: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:
    """The model folder is staged and checked before it replaces the old one: a failure installs nothing."""
    from vitdeploy.errors import ModelFileError
    from vitdeploy.serving import triton

    out = tmp_path / "repo"
    write_triton_repository(tiny_onnx, out, TritonOptions())
    before = _snapshot(out)

    def fails(folder: Path, version: str = "1", final: Path | None = None) -> None:
        assert folder != final and folder.name.endswith(".tmp")  # the check sees the staged folder
        raise ModelFileError(f"{final}: injected mismatch")

    monkeypatch.setattr(triton, "check_model_folder", fails)
    with pytest.raises(ModelFileError, match="injected mismatch"):
        write_triton_repository(tiny_onnx, out, TritonOptions(max_batch_size=8))
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "inferenceservice.yaml", "tiny"]


def test_a_rewrite_replaces_the_model_folder_whole_and_clears_a_killed_runs_staging(tiny_onnx: Path,
                                                                                    tmp_path: Path) -> None:
    out = tmp_path / "repo"
    write_triton_repository(tiny_onnx, out, TritonOptions())
    (out / "tiny" / "2").mkdir()  # a version folder the new repository does not have
    stale = out / ".tiny.killed.tmp"  # what a run killed while staging leaves
    (stale / "1").mkdir(parents=True)
    write_triton_repository(tiny_onnx, out, TritonOptions(max_batch_size=8))
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "inferenceservice.yaml", "tiny"]
    assert sorted(p.name for p in (out / "tiny").iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert "max_batch_size: 8" in (out / "tiny" / "config.pbtxt").read_text()


# ------------------------------------------------------------------------------------- the Python backend


@pytest.fixture(scope="module")
def python_repo(tiny_onnx: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton-python") / "repo"
    result = runner.invoke(app, ["triton", str(tiny_onnx), "--out", str(out), "--backend", "python"])
    assert result.exit_code == 0, result.output
    return out


def test_the_python_backend_repository_parses_with_tritons_schema_and_carries_model_py(python_repo: Path,
                                                                                       tiny_onnx: Path) -> None:
    from vitdeploy.serving import triton_model

    config, schema = parse_config(python_repo / "tiny" / "config.pbtxt")
    assert config.backend == "python" and not config.platform and config.max_batch_size == 32
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert [(g.kind, g.count) for g in config.instance_group] == [(schema.ModelInstanceGroup.KIND_CPU, 1)]
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["runtime"] == "ort"
    folders = parameters["python_path"].split(os.pathsep)
    assert str(REPO) in folders  # where this vitdeploy is imported from; numpy's site folder follows
    assert any((Path(folder) / "numpy").is_dir() for folder in folders)
    version = python_repo / "tiny" / "1"
    assert (version / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert (version / "model.py").read_text() == Path(triton_model.__file__).read_text()
    assert triton_model.configured_python_path(python_repo / "tiny" / "config.pbtxt") == folders
    readme = (python_repo / "README.md").read_text()
    assert "nvidia-pytriton==0.7.0" in readme and "--backend-directory" in readme and "docker run" not in readme


def test_a_python_backend_folder_without_model_py_fails_the_check(python_repo: Path, tmp_path: Path) -> None:
    import shutil

    from vitdeploy.errors import ModelFileError
    from vitdeploy.serving.repository_check import check_model_folder

    copy = tmp_path / "tiny"
    shutil.copytree(python_repo / "tiny", copy)
    (copy / "1" / "model.py").unlink()
    with pytest.raises(ModelFileError, match="backend python but no 1/model.py"):
        check_model_folder(copy)


@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_a_file_whose_answers_depend_on_the_batch_gets_no_dynamic_batching(dynamic_int8_onnx: Path, tmp_path: Path,
                                                                           backend: str) -> None:
    repo = write_triton_repository(dynamic_int8_onnx, tmp_path / "repo", TritonOptions(backend=backend))
    config, _ = parse_config(repo.model_dir / "config.pbtxt")
    assert config.WhichOneof("scheduling_choice") is None and config.max_batch_size == 32
    assert any("no dynamic_batching: dynamic INT8" in note for note in repo.notes), repo.notes


class FakeBackendUtils(ModuleType):
    """The part of triton_python_backend_utils model.py uses; a request is {input name: array}, and an input
    tensor is the array itself (numpy arrays speak DLPack, as the stub's tensors do)."""

    class TritonError(Exception):
        pass

    class InferenceResponse:
        def __init__(self, output_tensors: list, error: Exception | None = None):
            self.output_tensors, self.error = output_tensors, error

    class Tensor:
        def __init__(self, name: str, array):
            self.name, self.array = name, array

        @classmethod
        def from_dlpack(cls, name: str, tensor):
            import numpy as np

            assert tensor.flags.c_contiguous and tensor.flags.owndata  # the stub needs C order; a copy of its own
            return cls(name, np.from_dlpack(tensor))

    def __init__(self) -> None:
        super().__init__("triton_python_backend_utils")

    @staticmethod
    def get_input_tensor_by_name(request: dict, name: str):
        return request[name]


def test_model_py_runs_each_batch_once_and_hands_every_request_its_own_rows(python_repo: Path, tiny_onnx: Path,
                                                                            monkeypatch) -> None:
    import numpy as np

    from vitdeploy.runtimes import open_runtime
    from vitdeploy.serving import triton_model

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", FakeBackendUtils())
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # initialize wraps it; restored after the test
    config = json.dumps({"input": [{"name": "pixel_values"}], "output": [{"name": "logits"}],
                         "parameters": {"runtime": {"string_value": "ort"}}})
    model = triton_model.TritonPythonModel()
    model.initialize({"model_config": config, "model_repository": str(python_repo / "tiny"), "model_version": "1"})
    rng = np.random.default_rng(0)
    requests = [{"pixel_values": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)} for n in (1, 3, 2)]
    calls = []
    run_outputs = model.session.run_outputs
    monkeypatch.setattr(model.session, "run_outputs", lambda batch, names: calls.append(len(batch))
                        or run_outputs(batch, names))
    responses = model.execute(requests)
    assert calls == [6]  # one model run for the three requests
    expected = open_runtime(None, tiny_onnx, "cpu").run(np.concatenate([r["pixel_values"] for r in requests]))
    rows = np.concatenate([r.output_tensors[0].array for r in responses])
    assert [r.output_tensors[0].array.shape for r in responses] == [(1, 3), (3, 3), (2, 3)]
    assert [r.output_tensors[0].name for r in responses] == ["logits"] * 3
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-5)

    monkeypatch.setattr(model.session, "run_outputs", lambda batch, names: 1 / 0)
    failed = model.execute(requests)  # a failing batch fails its requests, each with the reason
    assert [type(r.error).__name__ for r in failed] == ["TritonError"] * 3
    assert "ZeroDivisionError" in str(failed[0].error)


@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_a_merged_file_gets_a_repository_like_any_other_and_model_py_gives_each_image_its_own_answer(
        tome_onnx: Path, tmp_path: Path, backend: str, monkeypatch) -> None:
    """Token merging (model.tome.onnx) is an ordinary graph with a symbolic batch axis and batch-independent
    answers: dynamic batching stays on, and model.py's batch of several requests gives each image the logits it
    gets alone."""
    import numpy as np

    from vitdeploy.runtimes import open_runtime
    from vitdeploy.serving import triton_model

    result = runner.invoke(app, ["triton", str(tome_onnx), "--out", str(tmp_path / "repo"), "--backend", backend])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "repo" / "model.tome"
    config, _ = parse_config(folder / "config.pbtxt")
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching" and config.max_batch_size == 32
    assert (list(config.input[0].dims), list(config.output[0].dims)) == ([3, 16, 16], [10])
    assert (folder / "1" / "model.onnx").read_bytes() == tome_onnx.read_bytes()
    assert (folder / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]
    if backend == "onnxruntime":
        return
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", FakeBackendUtils())
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    model = triton_model.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"input": [{"name": "pixel_values"}], "output": [{"name": "logits"}],
                                                  "parameters": {"runtime": {"string_value": "ort"}}}),
                      "model_repository": str(folder), "model_version": "1"})
    rng = np.random.default_rng(3)
    requests = [{"pixel_values": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)} for n in (1, 3, 2)]
    rows = np.concatenate([r.output_tensors[0].array for r in model.execute(requests)])
    alone = open_runtime(None, tome_onnx, "cpu")
    expected = np.concatenate([alone.run(x[None]) for r in requests for x in r["pixel_values"]])
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-5)


def test_only_numpys_report_on_a_capsule_the_stub_renamed_is_dropped(monkeypatch) -> None:
    """Triton's stub renames a DLPack capsule it consumed "used_dlpack" (the standard says "used_dltensor"); numpy's
    capsule destructor then reports an error through sys.unraisablehook. model.py drops that report, no other."""
    import ctypes

    import numpy as np

    from vitdeploy.serving.triton_model import quiet_renamed_capsules

    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", quiet_renamed_capsules(lambda u: seen.append(str(u.exc_value))))
    capsule = np.arange(4, dtype=np.float32).__dlpack__(stream=None)
    set_name = ctypes.pythonapi.PyCapsule_SetName
    set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
    name = ctypes.c_char_p(b"used_dlpack")  # the stub's name; must outlive the capsule
    set_name(capsule, name)
    del capsule  # numpy's destructor reports, the hook drops it
    assert seen == []

    class Reports:
        def __del__(self) -> None:
            raise RuntimeError("any other error in a destructor")

    Reports()
    assert seen == ["any other error in a destructor"]
