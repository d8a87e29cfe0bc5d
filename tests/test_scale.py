"""Scale: Parquet rows, --resume, predict on Ray Data (same rows as local predict), KServe's InferenceService and
the Triton repository cross-check."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import encoded, png_header_only, smooth_rgb, wait_until, without_modules
from typer.testing import CliRunner

import vitdeploy
from vitdeploy.cli import app
from vitdeploy.errors import EXIT_BAD_INPUT, EXIT_OK, ModelFileError
from vitdeploy.prediction import local as prediction
from vitdeploy.prediction.rows import ROW_FIELDS, parquet_schema
from vitdeploy.serving import kserve
from vitdeploy.serving.repository_check import check_model_folder, parse_pbtxt

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
NON_UTF8 = b"caf\xe9.png"  # a Latin-1 file name: not UTF-8, so pyarrow cannot name it


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Real photos (scikit-learn's two JPEGs), PNGs, a non-UTF-8 name, and files that are not images."""
    folder = tmp_path_factory.mktemp("scale") / "images"
    folder.mkdir()
    sklearn = pytest.importorskip("sklearn.datasets")
    for photo in ("china.jpg", "flower.jpg"):
        shutil.copyfile(Path(sklearn.__file__).parent / "images" / photo, folder / photo)
    for i in range(3):
        smooth_rgb(24 + 5 * i, 18, seed=i).save(folder / f"smooth{i}.png")
    smooth_rgb(20, 30, seed=9).save(os.path.join(os.fsencode(folder), NON_UTF8))
    (folder / "text.png").write_bytes(b"not an image")
    png_header_only(folder / "truncated.png", 64, 64)
    return folder


def by_path(rows: list[dict]) -> dict[str, dict]:
    assert len({row["path"] for row in rows}) == len(rows), "one row per input"
    return {row["path"]: row for row in rows}


def read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [{k: v for k, v in row.items() if v is not None} for row in pq.read_table(path).to_pylist()]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def local_rows(images: Path, tiny_onnx: Path, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("local") / "rows.jsonl"
    vitdeploy.predict([str(images)], model=tiny_onnx, output_format="jsonl", output=out)
    return read_jsonl(out)


# ------------------------------------------------------------------------------------------- Parquet (local)


def test_local_parquet_holds_the_same_rows_as_jsonl_in_the_documented_schema(tmp_path, images, tiny_onnx,
                                                                             local_rows):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "rows.parquet"
    summary = vitdeploy.predict([str(images)], model=tiny_onnx, output_format="parquet", output=out)
    table = pq.read_table(out)
    assert table.schema.names == list(ROW_FIELDS)
    assert table.schema.equals(parquet_schema())
    assert str(table.schema.field("top_k").type) == \
        "list<element: struct<label: string not null, probability: double not null>>"
    assert read_parquet(out) == local_rows  # same rows, same order
    kinds = {row["path"].rsplit("/", 1)[-1]: row.get("error") for row in local_rows}
    assert kinds["text.png"] == "not_an_image" and kinds["truncated.png"] == "corrupt"
    assert kinds["caf\\xe9.png"] is None  # predicted, its name escaped
    assert (summary.images_ok, summary.images_failed) == (6, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["rows.parquet"]  # nothing staged is left beside it


def test_a_failed_parquet_run_leaves_no_file_and_an_existing_one_untouched(tmp_path, images, tiny_onnx, monkeypatch):
    pytest.importorskip("pyarrow")
    out = tmp_path / "rows.parquet"
    out.write_bytes(b"the previous results")
    calls = []

    def disk_full_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    real = prediction.classify_batch
    monkeypatch.setattr(prediction, "classify_batch", disk_full_on_second_batch)
    result = runner.invoke(app, ["predict", str(images), "--model", str(tiny_onnx), "--format", "parquet", "-o",
                                 str(out), "--batch-size", "2"])
    assert result.exit_code == EXIT_BAD_INPUT and "no space left" in result.output.lower()
    assert out.read_bytes() == b"the previous results"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.parquet"]


def test_an_interrupted_parquet_run_completes_the_file_with_the_finished_rows(tmp_path, images, tiny_onnx,
                                                                              monkeypatch, local_rows):
    pytest.importorskip("pyarrow")
    real, calls = prediction.classify_batch, []

    def interrupted_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prediction, "classify_batch", interrupted_on_third_batch)
    out = tmp_path / "rows.parquet"
    summary = vitdeploy.predict([str(images)], model=tiny_onnx, output_format="parquet", output=out, batch_size=2)
    assert summary.interrupted
    assert read_parquet(out) == local_rows[:4]  # two whole batches, readable: the footer was written
    assert [p.name for p in tmp_path.iterdir()] == ["rows.parquet"]


@pytest.mark.parametrize("output_format", ["parquet", "jsonl"])
def test_resume_keeps_the_rows_written_and_skips_their_files(tmp_path, images, tiny_onnx, local_rows, monkeypatch,
                                                             output_format):
    pytest.importorskip("pyarrow")
    out = tmp_path / f"rows.{output_format}"
    first = sorted(images.glob("smooth*.png"))
    vitdeploy.predict([str(p) for p in first], model=tiny_onnx, output_format=output_format, output=out, top_k=1)
    if output_format == "jsonl":  # an interrupted run's unfinished last line is cut off, not kept
        with open(out, "ab") as f:
            f.write(b'{"path": "half-writ')
    decoded = []
    real = prediction.decode_one
    monkeypatch.setattr(prediction, "decode_one", lambda path, *a: decoded.append(Path(path).name) or real(path, *a))
    vitdeploy.predict([str(images)], model=tiny_onnx, output_format=output_format, output=out, resume=True)
    rows = by_path(read_parquet(out) if output_format == "parquet" else read_jsonl(out))
    assert rows.keys() == by_path(local_rows).keys()
    assert not {p.name for p in first} & set(decoded)  # done files were not decoded again
    assert all(len(rows[str(p)]["top_k"]) == 1 for p in first)  # their rows are the first run's (top-1)
    assert all(len(row["top_k"]) == 3 for path, row in rows.items() if row["ok"] and "smooth" not in path)


def test_parquet_without_pyarrow_and_ray_without_ray_exit_2_naming_the_install(tmp_path, images, tiny_onnx):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cases = [(("pyarrow",), ["--format", "parquet", "-o", "r.parquet"], "vitdeploy[parquet]"),
             (("ray",), ["--engine", "ray", "--format", "parquet", "-o", "r.parquet"], "vitdeploy[ray]")]
    for blocked, args, extra in cases:
        code = without_modules(*blocked, why="not installed")
        done = subprocess.run([sys.executable, "-c", code, "predict", str(images), "--model", str(tiny_onnx), *args],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert done.returncode == EXIT_BAD_INPUT, done.stderr
        assert f'pip install "{extra}"' in done.stderr.replace("\\[", "[")
    assert not list(tmp_path.iterdir())


def test_ray_engine_refuses_formats_it_does_not_write(tmp_path, images, tiny_onnx):
    pytest.importorskip("ray")
    result = runner.invoke(app, ["predict", str(images), "--model", str(tiny_onnx), "--engine", "ray",
                                 "--format", "csv", "-o", str(tmp_path / "r.csv")])
    assert result.exit_code == EXIT_BAD_INPUT and "parquet or jsonl" in result.output


# ------------------------------------------------------------------------------------------------- Ray Data


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the session: 2 CPUs, no dashboard (its start-up is measured in benchmarks/scale.py)."""
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_writes_the_rows_local_predict_writes(tmp_path, images, tiny_onnx, local_rows, local_ray):
    out = tmp_path / "ray.parquet"
    summary = vitdeploy.predict([str(images)], model=tiny_onnx, engine="ray", workers=2, batch_size=3,
                                output_format="parquet", output=out)
    assert by_path(read_parquet(out)) == by_path(local_rows)  # labels, probabilities, error rows, escaped name
    assert (summary.images_ok, summary.images_failed) == (6, 2)
    assert summary.runtime["engine"] == "ray" and summary.provider == "CPUExecutionProvider"


@pytest.mark.slow
def test_ray_resume_appends_jsonl_rows_for_the_files_not_done(tmp_path, images, tiny_onnx, local_rows, local_ray):
    out = tmp_path / "ray.jsonl"
    first = sorted(images.glob("*.jpg"))
    vitdeploy.predict([str(p) for p in first], model=tiny_onnx, output_format="jsonl", output=out, top_k=1)
    vitdeploy.predict([str(images)], model=tiny_onnx, engine="ray", output_format="jsonl", output=out, resume=True)
    rows = read_jsonl(out)
    assert by_path(rows).keys() == by_path(local_rows).keys()
    assert [row["path"] for row in rows[:2]] == [str(p) for p in first]  # kept, and first
    assert all(len(row["top_k"]) == 1 for row in rows[:2])
    assert {k: v for k, v in by_path(rows).items() if k not in map(str, first)} == \
        {k: v for k, v in by_path(local_rows).items() if k not in map(str, first)}


@pytest.mark.slow
def test_a_ray_actor_gives_non_finite_and_unreadable_rows(tmp_path, images, tiny_onnx, local_ray):
    import numpy as np
    from onnx import numpy_helper

    from vitdeploy.prediction.ray import ActorSpec, Classifier, model_files

    onnx = pytest.importorskip("onnx")
    proto = onnx.load(tiny_onnx)
    (bias,) = [t for t in proto.graph.initializer if list(t.dims) == [3]]  # the head's bias: one per class
    bias.CopyFrom(numpy_helper.from_array(np.full(3, np.nan, np.float32), bias.name))
    onnx.save(proto, tmp_path / "nan.onnx")
    spec = ActorSpec(local_ray.put(model_files(tmp_path / "nan.onnx")), "nan.onnx", None, "cpu", 1, 5)
    png = (images / "smooth0.png").read_bytes()
    batch = {"path": np.array(["a.png", "gone.png"], dtype=object), "bytes": np.array([png, None], dtype=object)}
    rows = Classifier(spec)(batch).to_pylist()
    assert [(r["path"], r["ok"], r["error"], r["probability"]) for r in rows] == \
        [("a.png", False, "non_finite", None), ("gone.png", False, "unreadable", None)]


def _processes_marked(mark: str) -> list[tuple[int, str]]:
    """Live processes whose environment holds `mark` (Ray's processes inherit the driver's environment)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if mark.encode() in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, IndexError):
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["success", "SIGINT", "SIGTERM"])
def test_every_way_a_ray_run_ends_leaves_no_ray_process(tiny_onnx, tmp_path, ending):
    import signal
    import uuid

    folder = tmp_path / "many"
    folder.mkdir()
    pngs = [encoded(smooth_rgb(20, 18, seed=seed)) for seed in range(7)]  # 4000 encodes would take 3 s
    for i in range(40 if ending == "success" else 4000):  # enough that a signal arrives mid-run
        (folder / f"{i:05d}.png").write_bytes(pngs[i % 7])
    mark = f"VITDEPLOY_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(REPO), mark.split("=")[0]: mark.split("=")[1]}
    # SIGINT as a terminal's Ctrl-C finds the process: a test runner started in the background by a non-interactive
    # shell ignores SIGINT, an ignored signal stays ignored across exec, and Python then raises no KeyboardInterrupt.
    child = subprocess.Popen([sys.executable, "-m", "vitdeploy", "predict", str(folder), "--engine", "ray",
                              "--batch-size", "8", "--format", "parquet", "-o", str(tmp_path / "r.parquet"),
                              "--model", str(tiny_onnx)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if ending != "success":
        assert wait_until(lambda: any("MapWorker" in args for _, args in _processes_marked(mark)), 300), \
            "no Ray worker started"
        child.send_signal(getattr(signal, ending))
    _, err = child.communicate(timeout=300)
    assert child.returncode in ((EXIT_OK,) if ending == "success" else (130, -15, 143)), err
    assert wait_until(lambda: not [p for p in _processes_marked(mark) if p[0] != child.pid], 60), \
        f"left running: {_processes_marked(mark)}"


# ---------------------------------------------------------------------------------------------------- KServe


@pytest.fixture(scope="module")
def repository(tiny_onnx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kserve") / "repo"
    result = runner.invoke(app, ["triton", str(tiny_onnx), "--out", str(out), "--name", "Tiny_ViT.v2",
                                 "--device", "gpu", "--storage-uri", "s3://models/vit/repo"])
    assert result.exit_code == 0, result.output
    return out


def test_inference_service_names_every_field_kserve_needs(repository):
    yaml = pytest.importorskip("yaml")
    service = yaml.safe_load((repository / "inferenceservice.yaml").read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    assert service["metadata"]["name"] == "tiny-vit-v2"  # a DNS-1123 name from the Triton name
    assert service["metadata"]["annotations"]["vitdeploy/triton-model"] == "Tiny_ViT.v2"
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "triton"}
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == "kserve-tritonserver"
    assert model["storageUri"] == "s3://models/vit/repo"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert model["resources"]["requests"]["cpu"] == "1" and model["resources"]["limits"]["memory"] == "2Gi"
    readme = (repository / "README.md").read_text()
    assert "kubectl apply -f inferenceservice.yaml" in readme and 'headers={"Host": SERVICE_HOSTNAME}' in readme


def test_inference_service_on_cpu_asks_for_no_gpu_and_a_bad_storage_uri_is_refused(tmp_path, tiny_onnx):
    yaml = pytest.importorskip("yaml")
    result = runner.invoke(app, ["triton", str(tiny_onnx), "--out", str(tmp_path / "cpu")])
    assert result.exit_code == 0, result.output
    service = yaml.safe_load((tmp_path / "cpu" / "inferenceservice.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    assert "nvidia.com/gpu" not in model["resources"]["limits"]
    assert model["storageUri"] == "s3://CHANGE-ME/cpu" and "placeholder" in result.output
    refused = runner.invoke(app, ["triton", str(tiny_onnx), "--out", str(tmp_path / "bad"), "--storage-uri", "repo/"])
    assert refused.exit_code == EXIT_BAD_INPUT and "--storage-uri" in refused.output
    assert not (tmp_path / "bad").exists()


def test_service_names_are_kubernetes_names():
    assert kserve.service_name("model.int8") == "model-int8"
    assert kserve.service_name("8bit") == "vit-8bit"
    assert len(kserve.service_name("x" * 200)) <= kserve.MAX_NAME


# ------------------------------------------------------------------------------------ the repository check


def test_our_pbtxt_parser_reads_what_tritons_schema_reads(repository):
    from google.protobuf import json_format, text_format
    from test_serve_triton import model_config_pb2

    text = (repository / "Tiny_ViT.v2" / "config.pbtxt").read_text()
    schema = model_config_pb2()
    theirs = json_format.MessageToDict(text_format.Parse(text, schema.ModelConfig()), preserving_proto_field_name=True)
    ours = parse_pbtxt(text)
    assert ours["name"] == theirs["name"] and ours["max_batch_size"] == theirs["max_batch_size"]
    for kind in ("input", "output"):
        assert [(t["name"], t["data_type"], t["dims"]) for t in ours[kind]] == \
            [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in theirs[kind]]


def fixed_batch_onnx(src: Path, dst: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(src)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(model, dst)


TAMPERING = {
    "labels": (lambda d: (d / "labels.txt").write_text("cat\ndog\n"), "labels.txt has 2 labels but output"),
    "dims": (lambda d: _edit(d, "dims: [ 3, 16, 16 ]", "dims: [ 3, 32, 32 ]"), "dims [3, 32, 32]"),
    "input name": (lambda d: _edit(d, '"pixel_values"', '"pixels"'), "input 'pixels' is not a graph input"),
    "data type": (lambda d: _edit(d, "TYPE_FP32", "TYPE_FP16", count=1), "data_type TYPE_FP16 but the graph"),
    "name": (lambda d: _edit(d, 'name: "Tiny_ViT.v2"', 'name: "other"'), "is not the folder's name"),
    "batch axis": (lambda d: fixed_batch_onnx(d / "1" / "model.onnx", d / "1" / "model.onnx"),
                   "needs a dynamic batch axis"),
}


def _edit(folder: Path, old: str, new: str, count: int = -1) -> None:
    config = folder / "config.pbtxt"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new, count))


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_a_repository_that_does_not_match_its_onnx_is_refused_naming_the_mismatch(tmp_path, repository, tamper):
    folder = tmp_path / "Tiny_ViT.v2"
    shutil.copytree(repository / "Tiny_ViT.v2", folder)
    check_model_folder(folder)  # the untouched copy passes
    change, expected = TAMPERING[tamper]
    change(folder)
    with pytest.raises(ModelFileError, match="does not match") as refused:
        check_model_folder(folder)
    assert expected in str(refused.value)
