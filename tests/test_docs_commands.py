"""Every shell command in README.md and docs/ runs as written, so a command that stops working fails the suite.

A block is a shell block when it is marked bash/sh, or when its first line is a command (vitdeploy, python, pip,
...; `$ ` prompts: only the prompted lines). Each command (a line, `\\` continuations joined, a trailing `# ...`
comment dropped) must have an entry in COMMANDS saying how it runs:

  fast   in the suite;      slow   makes its block a slow test that runs with --docs-slow, as .ci/run runs it
                                   (trains a model, benches, starts Ray or a browser, builds NNCF INT8);
  not    not run here, with the reason (a cluster, PyPI, a server that runs until stopped, hours of training).

A command added to the docs without an entry fails test_every_documented_command_has_an_entry (and an entry whose
command left the docs fails it too). Commands run in order, block by block, in a fresh copy of a workspace that
makes the docs' placeholders real: models/digits/{best,last} (the digits preset, briefly trained; with --docs-slow,
trained whole as `vitdeploy train` does) with its model.onnx, samples/ (vitdeploy samples), photos/<class>/*.jpg,
images/*.png, a Hugging Face folder (vit-hf/, hf_folder/), a timm ViT-Ti state dict, bench.json / old.json (a quick
bench report). `vitdeploy` is this checkout's (`python -m vitdeploy`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_START = re.compile(r"(vitdeploy|python3?|pip|torchrun|aws|kubectl|curl|bash)(\s|$)")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
TIMEOUT_S = 1800  # a guard against a hang, not a speed check

PYPI = "installs from PyPI into an environment; .ci/run installs the deployment, training and dev extras"
REAL_TRITON = ("a real tritonserver from the nvidia-pytriton wheel, a server that runs until stopped: "
               "tests/test_triton_server.py starts it (as .ci/run installs it), queries it and stops it")
QUICKSTART = "the README quickstart: .ci/run runs it exactly as written (a fresh venv, pip install, then the commands)"


@dataclass(frozen=True)
class Entry:
    kind: str  # fast | slow | not
    why: str = ""  # for `not`: why it cannot run here
    replace: dict[str, str] = field(default_factory=dict)  # placeholder -> what the workspace holds
    exit_codes: tuple[int, ...] = (0,)
    # On a CPU without native bf16 (no AVX512_BF16, no AMX) the command must fail this way instead: (code, words).
    without_bf16: tuple[int, str] | None = None


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (what export's bf16 variants need)."""
    try:
        import openvino

        return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except (ImportError, RuntimeError):  # no OpenVINO: the variants are refused for that reason instead
        return False


NO_BF16 = (2, "bf16 needs a CPU with AVX512_BF16 or AMX")
def fast(**replace: str) -> Entry:
    return Entry("fast", replace=replace)


def slow(**replace: str) -> Entry:
    return Entry("slow", replace=replace)


def not_here(why: str) -> Entry:
    return Entry("not", why)


MODEL = "models/digits/best/model.onnx"
# The default `vitdeploy train` is 36 epochs (~25 s of CPU, minutes on a busy machine) and the docs train it three
# times (training.md: alone and under torchrun; scale.md): here each runs the same command on the same path (the
# digits preset, its data, bundles and DDP) for 2 epochs. The README quickstart in .ci/run trains it whole.
TWO_EPOCHS = " --epochs 2"
# bench's documented timing (3 s at each of 3 batch sizes, per variant) is what makes a figure trustworthy, not what
# a test checks: every bench command here times 3 runs at batch 1 (bench.md's four commands took 133 s of the suite's
# 759 s that way, timed as documented). What it builds, gates, compares and reports is unchanged.
QUICK_BENCH = {"vitdeploy bench": "vitdeploy bench --batch-sizes 1 --warmup-iters 1 --warmup-seconds 0 --min-iters 3 "
                                  "--min-seconds 0 --block-idle 0"}
COMMANDS: dict[str, Entry] = {
    # README.md
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[train]" && vitdeploy train && '
    "vitdeploy export --opset 17 && vitdeploy samples samples/ && vitdeploy predict samples/*.png": not_here(QUICKSTART),
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[dev]" && python -m pytest -q':
        not_here(QUICKSTART + "; it is this suite"),
    "pip install vitdeploy": not_here(PYPI),
    'pip install torch==2.13.0 "vitdeploy[train]"': not_here(PYPI),
    'pip install "vitdeploy[plot]"': not_here(PYPI),
    'pip install "vitdeploy[openvino]"': not_here(PYPI),
    'pip install "vitdeploy[serve]"': not_here(PYPI),
    'pip install "vitdeploy[parquet]"': not_here(PYPI),
    'pip install "vitdeploy[ray]"': not_here(PYPI),
    'pip install "vitdeploy[dev]"': not_here(PYPI),
    # architecture.md
    "python -m pytest -q": not_here("the whole suite, of which this test is a part"),
    "python -m pytest -q tests/test_train.py": not_here("a part of the suite, which runs it anyway"),
    'python -m pytest -q -m "not slow"': not_here("a part of the suite, which runs it anyway"),
    "python -m pytest -q --docs-slow": not_here("the whole suite and the slow docs blocks, which .ci/run runs"),
    "bash .ci/run": not_here("CI itself: it creates virtual environments and installs from PyPI and Debian"),
    # bench.md: every variant that runs here is built, gated and timed as documented, each timed briefly (QUICK_BENCH)
    "vitdeploy bench": slow(**QUICK_BENCH),
    "vitdeploy bench --preset vit-ti16 --batch-sizes 1,32 --output bench.json --plot bench.png": not_here(
        "builds, gates and times every variant of ViT-Ti/16 (15 minutes on 2 cores; 4 even on the tiny preset); "
        "tests/test_bench.py runs bench --preset with quick settings, --output and --plot"),
    "vitdeploy bench MODEL.onnx --runtimes ort,openvino --p99-budget 50": slow(**QUICK_BENCH, **{"MODEL.onnx": MODEL}),
    "vitdeploy bench MODEL.onnx --baseline old.json --max-regress 5": Entry(  # 3: slower than old.json by 5% (noise)
        "slow", replace={**QUICK_BENCH, "MODEL.onnx": MODEL}, exit_codes=(0, 3)),
    "vitdeploy bench MODEL.onnx --end-to-end photos/ --recursive": slow(**QUICK_BENCH, **{"MODEL.onnx": MODEL}),
    # explain.md
    "vitdeploy explain samples/*.png": fast(),
    "vitdeploy explain samples/ --method grad-rollout --class 3 -o maps/": fast(),
    "vitdeploy explain --guide -o guide.png": fast(),
    # export-and-verify.md
    "vitdeploy export": fast(),
    "vitdeploy export models/digits/best --opset 17 --exporter dynamo -o digits.onnx": fast(),
    "vitdeploy verify": fast(),
    "vitdeploy verify digits.onnx --bundle models/digits/best --images photos/ --batch-sizes 1,7,32,64": fast(),
    # precision-speed.md
    "vitdeploy export BUNDLE --precision ov-int8-bf16": Entry(
        "slow", replace={"BUNDLE": "models/digits/best"}, without_bf16=NO_BF16),
    "vitdeploy predict images/ --model model.ov-int8-bf16.onnx": Entry(
        "slow", replace={"model.ov-int8-bf16.onnx": "models/digits/best/model.ov-int8-bf16.onnx"},
        without_bf16=(2, "no such model file")),  # the export above was refused
    "python benchmarks/photo_regions.py /tmp/regions224 --per-class 100": not_here(
        "the measurement behind the page: with the two commands after it, hours of ViT-Ti/16 on 2 cores"),
    "vitdeploy train --preset vit-ti16 --data /tmp/regions224 --epochs 3 --batch-size 32 --out /tmp/ti16regions":
        not_here("ViT-Ti/16 on 224-px photos: hours on 2 cores"),
    "python benchmarks/precision_speed.py /tmp/ti16regions/best --runs 3 --profile": not_here(
        "needs the ViT-Ti/16 run above"),
    "python benchmarks/avx2_speed.py time --work /tmp/avx2w --isas avx2,native --runs 3": not_here(
        "needs the ViT-Ti/16 run above, built by avx2_speed.py build; about 30 minutes on 2 cores"),
    # predict.md
    "vitdeploy predict samples/*.png": fast(),
    "vitdeploy predict photos/ --recursive --model models/vit-ti/best/model.onnx --format csv -o predictions.csv":
        fast(**{"models/vit-ti/best/model.onnx": MODEL}),
    'vitdeploy predict "photos/**/*.jpg" --recursive --runtime openvino --top-k 3 --format jsonl': fast(),
    # pretrained.md
    "vitdeploy import vit-hf/ -o models/vit-ti": fast(),
    "vitdeploy import vit_tiny.safetensors --timm-model vit_tiny_patch16_224 -o models/vit-ti": slow(),
    "vitdeploy import timm-folder/model.safetensors": slow(),
    "vitdeploy train --init models/vit-ti --data photos/": not_here(
        "fine-tunes the imported ViT-Ti/16 for the default 60 epochs at 224 px: hours on 2 cores"),
    # reliability.md
    "vitdeploy import hf_folder/ -o nonbundle": Entry("fast", exit_codes=(2,)),  # the page shows the refusal
    # runtimes-and-precision.md
    "vitdeploy verify MODEL.onnx --runtime ort,openvino,reference": fast(**{"MODEL.onnx": MODEL}),
    "vitdeploy predict images/ --runtime openvino": fast(),
    "vitdeploy export BUNDLE --precision ov-bf16,ov-int8": Entry(
        "slow", replace={"BUNDLE": "models/digits/best"}, without_bf16=NO_BF16),
    "vitdeploy bench MODEL.onnx --runtimes ort,openvino": slow(**QUICK_BENCH, **{"MODEL.onnx": MODEL}),
    "vitdeploy doctor": fast(),
    "vitdeploy doctor --json": fast(),
    "vitdeploy export BUNDLE --precision auto": slow(BUNDLE="models/digits/best"),
    "vitdeploy verify models/digits/best/model.int8.onnx": slow(  # the page's export builds the file first
        **{"vitdeploy verify": "vitdeploy export models/digits/best --precision int8 && vitdeploy verify"}),
    "vitdeploy export models/digits/best --optimize --precision fp16,int8,ov-bf16,ov-int8": Entry(
        "slow", without_bf16=NO_BF16),
    # scale.md
    "vitdeploy train && vitdeploy export --opset 17 && vitdeploy samples samples/": slow(
        **{"vitdeploy train &&": f"vitdeploy train{TWO_EPOCHS} &&"}),
    "vitdeploy predict samples/ --engine ray --format parquet -o out.parquet": slow(),
    "vitdeploy predict 's3://bucket/images/' --engine ray --address auto --workers 16 --format parquet -o "
    "out.parquet": not_here("a Ray cluster (--address auto) and an S3 bucket"),
    "vitdeploy predict images/ --engine ray --format parquet -o out.parquet --resume": slow(),
    "vitdeploy triton models/digits/best/model.onnx --out triton --name digits --device gpu --storage-uri "
    "s3://bucket/vitdeploy/triton": fast(),
    "aws s3 sync triton s3://bucket/vitdeploy/triton": not_here("an S3 bucket and its credentials"),
    "kubectl apply -f triton/inferenceservice.yaml": not_here("a Kubernetes cluster with KServe"),
    # serve.md
    "vitdeploy triton models/digits/best/model.onnx --out triton --name digits": fast(),
    "vitdeploy triton MODEL.onnx --from-bench bench.json --device gpu --tensorrt fp16": not_here(
        "--device gpu takes ort-cuda's recommendation from a bench report measured on a GPU; there is none here"),
    "vitdeploy triton MODEL.onnx --backend python": fast(**{"MODEL.onnx": MODEL}),
    "pip install --no-deps --target ~/.cache/vitdeploy/tritonserver nvidia-pytriton==0.7.0": not_here(
        PYPI + " (tests/test_serve_triton.py runs the real Triton where this wheel is installed)"),
    "T=~/.cache/vitdeploy/tritonserver/pytriton/tritonserver": not_here(REAL_TRITON),
    "cp $T/python_backend_stubs/3.11/triton_python_backend_stub $T/backends/python/": not_here(REAL_TRITON),
    "vitdeploy triton MODEL.onnx --out triton --backend python": fast(**{"MODEL.onnx": MODEL}),
    "$T/bin/tritonserver --model-repository triton --backend-directory $T/backends --http-address 127.0.0.1 "
    "--grpc-address 127.0.0.1 --allow-metrics false": not_here(REAL_TRITON),
    "vitdeploy triton models/tiny/model.onnx --out tr --name tiny --backend python": fast(
        **{"models/tiny/model.onnx": MODEL}),
    "$T/bin/tritonserver --model-repository tr --backend-directory $T/backends --http-address 127.0.0.1 "
    "--http-port 18000 --grpc-address 127.0.0.1 --grpc-port 18001 --allow-metrics false &": not_here(REAL_TRITON),
    "curl -s localhost:18000/v2/models/tiny": not_here(REAL_TRITON),
    "python client.py": not_here(REAL_TRITON),
    "kill -TERM $pid; wait $pid": not_here(REAL_TRITON),
    "vitdeploy serve models/digits/best/model.onnx --port 8000": not_here(
        "a server that runs until stopped: tests/test_serve.py starts one and queries it"),
    # training.md
    "vitdeploy train": slow(**{"vitdeploy train": f"vitdeploy train{TWO_EPOCHS}"}),
    "vitdeploy train --data photos/ --preset vit-ti16": not_here("ViT-Ti/16 at 224 px for 60 epochs: hours on 2 cores"),
    # docs/token-merging.md: the page's ViT-Ti/16 trained on photo regions; tests/test_tome.py runs each step (export
    # tome / tome-int8 with the search, --tome-r, verify and bench on the merged file) on a tiny model.
    **{command: not_here("needs the page's ViT-Ti/16 trained on photo regions (hours on 2 cores); tests/test_tome.py "
                         "runs the same commands on a tiny model")
       for command in ("vitdeploy export models/ti16/best --precision tome,tome-int8,ov-tome-int8",
                       "vitdeploy export models/ti16/best --precision tome --tome-r 8",
                       "vitdeploy verify models/ti16/best/model.tome.onnx",
                       "vitdeploy bench models/ti16/best/model.onnx --variants ort-cpu,ov-cpu-int8,ort-cpu-tome,"
                       "ov-cpu-tome,ov-cpu-tome-int8")},
    "vitdeploy train --resume models/digits/last": fast(),
    "torchrun --nproc_per_node=2 -m vitdeploy train --device cpu": slow(
        **{"--device cpu": f"--device cpu{TWO_EPOCHS}"}),
    "vitdeploy samples samples/": fast(),
    # web.md
    "vitdeploy web models/digits/best/model.onnx -o web": fast(),
    "python3 web/serve.py 8000": not_here(
        "a server that runs until stopped: tests/test_web.py loads the folder's page behind its serve.py"),
    "vitdeploy verify models/digits/best/model.onnx --runtime web --batch-sizes 1,7": slow(),
    "vitdeploy predict photos/ --recursive --runtime web --threads 2": slow(),
}


@dataclass(frozen=True)
class Block:
    page: str
    number: int  # the page's n-th shell block
    commands: tuple[str, ...]

    def has(self, kind: str) -> bool:
        return any(COMMANDS[c].kind == kind for c in self.commands if c in COMMANDS)

    def __str__(self) -> str:
        return f"{self.page}#{self.number}"


def shell_commands(body: str, marked: bool) -> list[str]:
    """The commands of one block (empty when it is not a shell block)."""
    lines = body.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    if prompted:
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    first = next((line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    if not (marked or prompted) and not COMMAND_START.match(first):
        return []
    commands, pending = [], ""
    for line in lines:
        line = re.sub(r"\s+#(\s.*)?$", "", line.rstrip())
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        commands.append(re.sub(r"\s+", " ", pending + line.strip()))
        pending = ""
    return commands


def documented_blocks() -> list[Block]:
    blocks = []
    for page in PAGES:
        found = [shell_commands(body, lang in ("bash", "sh", "shell", "console"))
                 for lang, body in BLOCK.findall(page.read_text(encoding="utf-8"))]
        blocks += [Block(str(page.relative_to(ROOT)), n, tuple(commands))
                   for n, commands in enumerate((c for c in found if c), 1)]
    return blocks


BLOCKS = documented_blocks()


def test_every_documented_command_has_an_entry():
    documented = {command for block in BLOCKS for command in block.commands}
    assert sorted(documented - COMMANDS.keys()) == [], "add these to COMMANDS (fast, slow or not_here with why)"
    stale = sorted(COMMANDS.keys() - documented)
    assert stale == [], "these entries name commands the docs no longer hold"
    assert all(entry.why for entry in COMMANDS.values() if entry.kind == "not")


def test_the_block_finder_reads_commands_prompts_and_continuations():
    assert shell_commands("vitdeploy a  # note\n# a comment\nvitdeploy b \\\n    --c d\n", False) == [
        "vitdeploy a", "vitdeploy b --c d"]
    assert shell_commands("$ vitdeploy x\nerror: y\n", False) == ["vitdeploy x"]
    assert shell_commands("best held-out accuracy 98%\n", False) == []
    assert shell_commands('vitdeploy predict "photos/**/*.jpg" --top-k 3', False) == [
        'vitdeploy predict "photos/**/*.jpg" --top-k 3']


# ------------------------------------------------------------------------------------------------ the workspace


@pytest.fixture(scope="module")
def docs_bundle(request, tmp_path_factory) -> Path:
    """The docs' models/digits/best: the suite's briefly trained digits_bundle for the fast blocks; with --docs-slow,
    the default `vitdeploy train` whole (~25 s), so that the slow blocks run the default model's work on the default
    model. The brief one is a weak model (66% held-out), and its INT8 search can end with no layer left in INT8
    (seen on a CPU with AVX512_BF16), which export refuses with exit 3."""
    if not request.config.getoption("--docs-slow"):
        return request.getfixturevalue("digits_bundle")
    from vitdeploy.requests import TrainRequest
    from vitdeploy.training.run import train

    return train(TrainRequest(out=tmp_path_factory.mktemp("default-digits"))).best


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, docs_bundle, hf_checkpoint) -> Path:
    """What the docs' commands expect to find, made from the suite's shared fixtures."""
    from PIL import Image

    from vitdeploy.files.bundle import read_bundle_info

    root = tmp_path_factory.mktemp("docs-workspace")
    for run in ("best", "last"):  # the fixture's run: last/ holds the training state --resume reads
        shutil.copytree(docs_bundle.parent / run, root / "models" / "digits" / run)
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    (bin_dir / "vitdeploy").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vitdeploy "$@"\n')
    (bin_dir / "vitdeploy").chmod(0o755)
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(sys.executable)
    assert run_command(root, "vitdeploy export models/digits/best --opset 17").returncode == 0
    assert run_command(root, "vitdeploy samples samples/ --count 12").returncode == 0
    labels = read_bundle_info(docs_bundle).labels
    for png in sorted((root / "samples").glob("*.png")):
        label = png.stem.split("true-", 1)[1]
        assert label in labels
        (root / "photos" / label).mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").save(root / "photos" / label / f"{png.stem}.jpg", quality=95)
        (root / "images").mkdir(exist_ok=True)
        shutil.copy(png, root / "images" / png.name)
    for name in ("vit-hf", "hf_folder"):
        shutil.copytree(hf_checkpoint, root / name)
    (root / "nonbundle").mkdir()  # reliability.md's refusal: a folder vitdeploy did not write
    (root / "nonbundle" / "config.json").write_text("{}\n")
    (root / "nonbundle" / "keep.txt").write_text("mine\n")
    quick = ("--variants ort-cpu --batch-sizes 1 --warmup-iters 1 --warmup-seconds 0 --min-iters 3 --min-seconds 0 "
             "--block-idle 0 --threads 1 --p99-budget 1000")
    assert run_command(root, f"vitdeploy bench {MODEL} {quick} --output bench.json").returncode == 0
    shutil.copy(root / "bench.json", root / "old.json")
    return root


@pytest.fixture(scope="module")
def timm_files(workspace) -> Path:
    """vit_tiny.safetensors (ViT-Ti/16 shapes, named by --timm-model) and timm-folder/ (a small one with timm's hub
    config.json beside it), for pretrained.md's slow block."""
    from checkpoints import SMALL, TIMM_SETTINGS, VIT_TI16, hf_vit, save_hf, save_timm, timm_state_dict

    folder = save_hf(hf_vit([f"c{i}" for i in range(10)], seed=2, **VIT_TI16, **TIMM_SETTINGS), workspace / ".ti16-hf")
    save_timm(timm_state_dict(folder), workspace / "vit_tiny.safetensors")
    small = save_hf(hf_vit(["a", "b", "c"], seed=1, **SMALL, **TIMM_SETTINGS), workspace / ".small-hf")
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": 3, "global_pool": "token", "label_names":
              ["a", "b", "c"], "model_args": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2,
                                              "num_heads": 3},
              "pretrained_cfg": {"input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 0.875,
                                 "crop_mode": "center", "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 3}}
    save_timm(timm_state_dict(small), workspace / "timm-folder" / "model.safetensors", config)
    return workspace


def run_command(cwd: Path, command: str) -> subprocess.CompletedProcess:
    root = cwd if (cwd / ".bin").is_dir() else cwd.parent
    # The environment's own scripts (torchrun) beside this checkout's vitdeploy, as in an activated venv.
    scripts = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": os.pathsep.join([str(root / ".bin"), str(scripts), os.environ["PATH"]]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def run_block(block: Block, workspace: Path, tmp_path: Path) -> list[str]:
    """Run a block's commands (all but `not`) in order in a fresh copy of the workspace; the commands run."""
    here = tmp_path / "ws"
    shutil.copytree(workspace, here, symlinks=True)
    ran = []
    for command in block.commands:
        entry = COMMANDS[command]
        if entry.kind == "not":
            continue
        concrete = command
        for placeholder, real in entry.replace.items():
            concrete = concrete.replace(placeholder, real)
        done = run_command(here, concrete)
        if entry.without_bf16 is not None and not cpu_has_bf16():
            code, words = entry.without_bf16
            assert done.returncode == code and words in done.stderr, (
                f"{block}: `{command}` on a CPU without bf16 exited {done.returncode}\n{done.stderr[-3000:]}")
        else:
            assert done.returncode in entry.exit_codes, (
                f"{block}: `{command}` exited {done.returncode}\n{done.stderr[-3000:]}")
        ran.append(command)
    return ran


@pytest.mark.parametrize("block", [pytest.param(b, marks=[pytest.mark.slow, pytest.mark.docs_slow] if b.has("slow")
                                                else []) for b in BLOCKS if b.has("fast") or b.has("slow")], ids=str)
def test_every_documented_command_of_a_block_runs_as_written(block, workspace, tmp_path, request):
    """A block's commands in order, each once. A block with a slow command runs the default model's full-size work
    as documented (minutes of CPU in all, what dedicated tests check on tiny models): .ci/run runs those blocks
    with --docs-slow, and the plain suite says it skipped them (conftest.py, before their workspace is built)."""
    here = request.getfixturevalue("timm_files") if block.has("slow") and block.page == "docs/pretrained.md" \
        else workspace
    assert run_block(block, here, tmp_path)


def test_what_is_not_run_here_is_listed_with_why():
    """The report the issue asks for: how many commands run, under which marker, and what is not run and why."""
    counts = {kind: sum(1 for b in BLOCKS for c in b.commands if COMMANDS[c].kind == kind)
              for kind in ("fast", "slow", "not")}
    assert counts["fast"] and sum(counts.values()) == sum(len(b.commands) for b in BLOCKS)
    print(json.dumps(counts))
