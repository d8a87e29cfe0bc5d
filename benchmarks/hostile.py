"""The hostile sweep of issue 30: every probe a command a hostile user or a newcomer runs, and what must hold.

Each probe runs `python -m vitdeploy ...` (this checkout) in a fresh process, in a scratch folder, and holds when
its exit code is one of those allowed, stderr has no Python traceback, and its own check passes (a file kept, a
message that names the fix, nothing left running). The `import` probes also record the process's peak RSS (its
children's VmHWM) against a baseline import that fails at once, and check that no pickle was run.

    python benchmarks/hostile.py --output benchmarks/results/hostile.json    # writes the table to stdout too
    python benchmarks/hostile.py --skip-slow                                 # without Ray and the browser

Needs the [dev] extras; the web probes need chromium-headless-shell and onnxruntime-web (see .ci/run).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


# `python -m vitdeploy ARGS` that writes its peak RSS (VmHWM, kB) to argv[1] when it exits.
PEAK_CHILD = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def peak():
    hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    open(out, "w").write(hwm)
atexit.register(peak)
sys.argv[0] = "vitdeploy"
runpy.run_module("vitdeploy", run_name="__main__", alter_sys=True)
"""


@dataclass
class Probe:
    name: str
    finding: str  # the issue's finding number, or "import" / "input"
    args: list  # vitdeploy's arguments (str or bytes)
    exit_codes: tuple[int, ...] = (2,)
    check: Callable[[subprocess.CompletedProcess], str | None] | None = None  # None: holds; else what failed
    setup: Callable[[], None] | None = None
    slow: bool = False
    stdin: bytes | None = None
    measure_rss: bool = False


@dataclass
class Outcome:
    name: str
    finding: str
    held: bool
    exit_code: int
    seconds: float
    why: str = ""
    peak_rss_mb: float | None = None
    extra: dict = field(default_factory=dict)


def run_vitdeploy(args: list, cwd: Path, timeout: float = 600, stdin: bytes | None = None) -> tuple[
        subprocess.CompletedProcess, float, float]:
    """Run one command; (result, seconds, its own peak RSS in MB: VmHWM, which the process reads at exit; rusage
    would count this large process's RSS at fork in)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    peak_file = Path(tempfile.mkstemp(prefix="vitdeploy-peak-")[1])
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", PEAK_CHILD, str(peak_file), *args], cwd=cwd, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    streams: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda name=name, s=s: streams.__setitem__(name, s.read()))
               for name, s in (("out", child.stdout), ("err", child.stderr))]
    for reader in readers:
        reader.start()
    child.stdin.write(stdin or b"")
    child.stdin.close()
    timer = threading.Timer(timeout, child.kill)
    timer.start()
    _, status, _ = os.wait4(child.pid, 0)
    timer.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    done = subprocess.CompletedProcess(child.args, child.returncode, streams["out"], streams["err"])
    peak_kb = peak_file.read_text().strip()
    peak_file.unlink()
    return done, time.perf_counter() - started, int(peak_kb) / 1024 if peak_kb else float("nan")


def text(done: subprocess.CompletedProcess) -> str:
    return (done.stdout + done.stderr).decode("utf-8", "replace")


def expect(*fragments: str) -> Callable[[subprocess.CompletedProcess], str | None]:
    def check(done: subprocess.CompletedProcess) -> str | None:
        missing = [f for f in fragments if f not in text(done)]
        return f"output lacks {missing}" if missing else None
    return check


def both(*checks: Callable) -> Callable:
    def check(done: subprocess.CompletedProcess) -> str | None:
        return next((why for c in checks if (why := c(done)) is not None), None)
    return check


def kept(path: Path, content: bytes) -> Callable:
    def check(done: subprocess.CompletedProcess) -> str | None:
        return None if path.is_file() and path.read_bytes() == content else f"{path.name} was changed or deleted"
    return check


# ------------------------------------------------------------------------------------------------ inputs


def hostile_inputs(folder: Path) -> None:
    """rin/: good PNGs, an empty file, text, a truncated PNG, random bytes, a 30000x30000 1-bit PNG, a name that
    is not UTF-8."""
    from builders import smooth_rgb
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(3):
        smooth_rgb(24, 20, seed=i).save(folder / f"good{i}.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image\n")
    whole = (folder / "good0.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "random.png").write_bytes(os.urandom(4096))
    Image.new("1", (30000, 30000)).save(folder / "huge.png", optimize=True)
    (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(whole)


def import_files(root: Path) -> dict[str, Path]:
    """Crafted checkpoints for `import`: each must be refused (exit 2) without allocating beyond its size and
    without running any pickle."""
    from checkpoints import SMALL, hf_vit, save_hf

    files: dict[str, Path] = {}
    bad = root / "import"
    bad.mkdir()
    huge = bad / "huge-length.safetensors"  # the header claims 1 TB
    huge.write_bytes((10 ** 12).to_bytes(8, "little") + b"{}")
    files["safetensors: declared header length 1 TB"] = huge
    header = json.dumps({"cls_token": {"dtype": "F32", "shape": [1, 1, 48], "data_offsets": [0, 2 ** 40]}}).encode()
    offsets = bad / "offsets.safetensors"  # a tensor said to span 1 TiB of a 100-byte file
    offsets.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 100)
    files["safetensors: data_offsets beyond the file"] = offsets
    header = json.dumps({"cls_token": {"dtype": "F32", "shape": [2 ** 20, 2 ** 20, 48], "data_offsets": [0, 192]}}
                        ).encode()
    shape = bad / "shape.safetensors"  # a shape of 2^45 values over 192 bytes
    shape.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 192)
    files["safetensors: a shape far larger than its bytes"] = shape
    folder = save_hf(hf_vit(["a", "b", "c"], **SMALL), root / "hf")
    for field_name, value in (("num_hidden_layers", 10_000), ("hidden_size", 2 ** 31), ("image_size", 10 ** 9),
                              ("intermediate_size", 2 ** 40), ("patch_size", -16)):
        absurd = root / f"hf-{field_name}"
        shutil.copytree(folder, absurd)
        config = json.loads((absurd / "config.json").read_text())
        config[field_name] = value
        (absurd / "config.json").write_text(json.dumps(config))
        files[f"config.json: {field_name} {value}"] = absurd
    marker = root / "pickle-ran"
    payload = bad / "pickle-only.pth"  # a pickle that would create `marker` if anything unpickled it
    payload.write_bytes(pickle.dumps(_Marker(str(marker)), protocol=4))
    files["pickle-only checkpoint (would write a file if unpickled)"] = payload
    return files


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------------------------ the sweep


def probes(root: Path, model: Path, other: Path, bundle: Path, run: Path) -> list[Probe]:
    m = str(model)
    out: list[Probe] = []

    def folder_with(name: str, files: dict[str, bytes]) -> Path:
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        for rel, data in files.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(data)
        return path

    # 1-2, 10: output folders
    f = folder_with("f", {"keep.txt": b"k\n"})
    out.append(Probe("web --force into a user's folder", "1", ["web", m, "-o", str(f), "--force"], (0,),
                     kept(f / "keep.txt", b"k\n")))
    out.append(Probe("web again without --force: still the user's folder", "1", ["web", m, "-o", str(f)], (2,),
                     both(kept(f / "keep.txt", b"k\n"), expect("keep.txt"))))
    web = root / "web"
    out.append(Probe("web into a new folder", "2", ["web", m, "-o", str(web)], (0,)))
    out.append(Probe("web over its folder with a user's photos/ added", "2", ["web", m, "-o", str(web)], (2,),
                     both(kept(web / "photos" / "a.txt", b"x"), expect("photos/a.txt")),
                     setup=lambda: folder_with("web", {"photos/a.txt": b"x"})))
    (root / "dangling").symlink_to(root / "nowhere")
    out.append(Probe("web -o a dangling symlink", "10", ["web", m, "-o", str(root / "dangling")], (2,),
                     expect("symbolic link")))
    folder_with("real", {})
    (root / "link").symlink_to(root / "real")
    out.append(Probe("web -o a symlink to a folder is written through", "10", ["web", m, "-o", str(root / "link")],
                     (0,), lambda d: None if (root / "link").is_symlink() and (root / "real" / "index.html").is_file()
                     else "the link was replaced"))
    trit = root / "trit"
    out.append(Probe("triton into a new folder", "2", ["triton", m, "-o", str(trit), "--name", "m"], (0,)))
    out.append(Probe("triton over a model folder holding a user's file, --force", "2",
                     ["triton", m, "-o", str(trit), "--name", "m", "--force"], (2,), kept(trit / "m" / "n.txt", b"n"),
                     setup=lambda: folder_with("trit", {"m/n.txt": b"n"})))
    # 3-4: --resume
    notes = root / "notes.jsonl"
    out.append(Probe("predict --resume onto a user's notes.jsonl", "3",
                     ["predict", str(root / "rin"), "--format", "jsonl", "-o", str(notes), "--resume", "--model", m],
                     (2,), kept(notes, b"my notes\n"), setup=lambda: notes.write_bytes(b"my notes\n")))
    rows = root / "r.parquet"
    out.append(Probe("predict -o r.parquet with model A", "4",
                     ["predict", str(root / "rin" / "good0.png"), "--format", "parquet", "-o", str(rows), "--model", m],
                     (0,)))
    out.append(Probe("predict --resume with model B", "4",
                     ["predict", str(root / "rin"), "--format", "parquet", "-o", str(rows), "--resume", "--model",
                      str(other)], (2,), expect(model.name, other.name)))
    # 7-9, 16: Ray (fast: no Ray is started)
    out.append(Probe("predict --engine ray --address 127.0.0.1:1", "7",
                     ["predict", str(root / "rin"), "--engine", "ray", "--address", "127.0.0.1:1", "--format",
                      "parquet", "-o", str(root / "ray.parquet"), "--model", m], (2,), expect("127.0.0.1:1")))
    # 11-13: bad input
    for label, uri in (("DEL", b"s3://b/x\x7fy"), ("NEL", "s3://b/x\u0085y".encode()), ("not UTF-8", b"s3://b/\xff\xfe")):
        k = root / f"k-{label.replace(' ', '')}"
        out.append(Probe(f"triton --storage-uri with {label}", "11", ["triton", m, "-o", str(k), "--storage-uri", uri],
                         (2,), lambda d, k=k: None if not k.exists() else f"{k.name} was created"))
    out.append(Probe("verify a config.json", "13", ["verify", str(bundle / "config.json")], (2,),
                     expect("ONNX model")))
    # 15: a newcomer's mistakes
    photos = root / "photos"
    for label in ("a", "b"):
        (photos / label).mkdir(parents=True)
        shutil.copy(root / "rin" / "good0.png", photos / label / "x.png")
    out.append(Probe("predict on class folders", "15", ["predict", str(photos), "--model", m], (2,),
                     expect("2 images below", "--recursive")))
    out.append(Probe("bench --end-to-end class folders", "15",
                     ["bench", m, "--end-to-end", str(photos), "--variants", "ort-cpu", "--batch-sizes", "1"], (2,),
                     expect("--recursive")))
    out.append(Probe("export a run folder", "15", ["export", str(run), "-o", str(root / "x.onnx")], (2,),
                     expect(str(run / "best"))))
    out.append(Probe("verify a bundle folder", "15", ["verify", str(model.parent)], (2,),
                     expect(str(model.parent / "model.onnx"))))
    out.append(Probe("predict -o a folder", "15", ["predict", str(photos / "a"), "-o", str(photos), "--model", m],
                     (2,), expect("is a folder")))
    empty = folder_with("nomodels", {})
    for command in ("bench", "triton"):
        out.append(Probe(f"{command} with no model anywhere", "15",
                         [command, str(empty)] + (["-o", str(root / "tk")] if command == "triton" else []), (2,),
                         lambda d: "says --model" if "--model FILE" in text(d) else None))
    # 16: train --resume of a finished run
    out.append(Probe("train --resume a finished run", "16", ["train", "--resume", str(run / "last")], (0,),
                     expect("nothing left to train", "--init")))
    # 17: --help
    out.append(Probe("predict --help", "17", ["predict", "--help"], (0,),
                     lambda d: "<bool>" if "<bool>" in text(d) else None))
    # hostile inputs
    out.append(Probe("predict rin/ (empty, text, truncated, random, 30000x30000, non-UTF-8 name)", "input",
                     ["predict", str(root / "rin"), "--model", m, "--format", "jsonl"], (4,),
                     lambda d: None if len(d.stdout.splitlines()) == 9 else f"{len(d.stdout.splitlines())} rows, not 9"))
    out.append(Probe("predict a missing file", "input", ["predict", str(root / "nope.png"), "--model", m], (2,)))
    out.append(Probe("predict with a text file as the model", "input",
                     ["predict", str(root / "rin" / "good0.png"), "--model", str(root / "rin" / "text.jpg")], (2,)))
    out.append(Probe("train --data a folder of garbage", "input", ["train", "--data", str(root / "rin"), "--out",
                                                                      str(root / "garbage-run")], (2,)))
    # import: crafted checkpoints
    for label, path in import_files(root).items():
        args = ["import", str(path), "-o", str(root / f"b-{abs(hash(label))}")]
        if path.suffix in (".safetensors", ".pth"):
            args += ["--timm-model", "vit_tiny_patch16_224"]
        out.append(Probe(f"import {label}", "import", args, (2,),
                         (lambda d: "the pickle ran" if (root / "pickle-ran").exists() else None), measure_rss=True))
    return out


def slow_probes(root: Path, model: Path) -> list[Probe]:
    """Ray and the browser: each started and ended, checking nothing is left behind."""
    m = str(model)
    return [
        Probe("predict --engine ray on 8 images with --workers 16", "8",
              ["predict", str(root / "rin"), "--engine", "ray", "--workers", "16", "--format", "parquet", "-o",
               str(root / "ray8.parquet"), "--model", m], (0, 4), expect("starting 1 actors"), slow=True),
        Probe("predict --engine ray --resume with nothing left", "16",
              ["predict", str(root / "rin"), "--engine", "ray", "--resume", "--format", "parquet", "-o",
               str(root / "ray8.parquet"), "--model", m], (0, 4), expect("Ray was not started"), slow=True),
    ] + [Probe(f"predict --runtime web, run {i} of 3 (no traceback on stderr)", "14",
               ["predict", str(root / "rin" / "good0.png"), str(root / "rin" / "good1.png"), "--runtime", "web",
                "--model", m], (0,), slow=True) for i in (1, 2, 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--skip-slow", action="store_true")
    args = parser.parse_args()
    from builders import export_tiny_onnx, make_bundle

    import onnx

    with tempfile.TemporaryDirectory(prefix="vitdeploy-hostile-") as tmp:
        root = Path(tmp)
        hostile_inputs(root / "rin")
        model = export_tiny_onnx(root / "models" / "tiny" / "model.onnx")
        proto = onnx.load(str(model))
        proto.metadata_props.add(key="note", value="another file")
        other = root / "other.onnx"
        onnx.save(proto, str(other))
        bundle = make_bundle(root / "bundle")
        run = root / "run"
        shutil.copytree(bundle, run / "best")
        subprocess.run([sys.executable, "-m", "vitdeploy", "train", "--preset", "tiny", "--epochs", "1", "--out",
                        str(root / "done")], env={**os.environ, "PYTHONPATH": str(REPO)}, check=True,
                       capture_output=True)
        run = root / "done"
        baseline, _, baseline_rss = run_vitdeploy(["import", str(root / "missing.safetensors"), "-o",
                                                   str(root / "nb")], root)
        sweep = probes(root, model, other, bundle, run) + ([] if args.skip_slow else slow_probes(root, model))
        outcomes = []
        for probe in sweep:
            if probe.setup:
                probe.setup()
            done, seconds, rss = run_vitdeploy(probe.args, root, stdin=probe.stdin)
            err = done.stderr.decode("utf-8", "replace")
            why = ""
            if done.returncode not in probe.exit_codes:
                why = f"exit {done.returncode}, wanted {probe.exit_codes}: {err.strip().splitlines()[-1:]}"
            elif "Traceback" in err:
                why = "a traceback on stderr"
            elif probe.check is not None and (failed := probe.check(done)):
                why = failed
            outcome = Outcome(probe.name, probe.finding, not why, done.returncode, round(seconds, 2), why,
                              round(rss, 1) if probe.measure_rss else None)
            if probe.measure_rss:
                outcome.extra = {"message": err.strip().splitlines()[-1][:200] if err.strip() else "",
                                 "file_bytes": Path(probe.args[1]).stat().st_size if Path(probe.args[1]).is_file()
                                 else None}
            outcomes.append(outcome)
            print(f"{'held ' if outcome.held else 'FAILED'} [{probe.finding:>6}] {probe.name}: exit "
                  f"{done.returncode}, {seconds:.1f} s" + (f", peak RSS {rss:.0f} MB" if probe.measure_rss else "")
                  + (f"  <- {why}" if why else ""), flush=True)
    held = sum(o.held for o in outcomes)
    print(f"{held} of {len(outcomes)} probes held; baseline import (a missing file): peak RSS {baseline_rss:.0f} MB")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                        "load_average": open("/proc/loadavg").read().split()[:3],
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
            "held": held, "probes": len(outcomes), "baseline_import_peak_rss_mb": round(baseline_rss, 1),
            "outcomes": [o.__dict__ for o in outcomes]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
