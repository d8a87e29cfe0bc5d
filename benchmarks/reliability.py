"""How fast, and in how much memory, `vitdeploy import` refuses a config.json that asks for more than its weights
hold (issue 21: num_hidden_layers 10000 beside the weights of a 12-layer ViT).

Each case runs in a fresh process (so its peak RSS is its own): the process imports vitdeploy and torch, records
its peak RSS, then times import_model() until it raises CheckpointError, and reports the peak RSS (VmHWM). The
weights are a randomly initialised transformers ViT saved with save_pretrained (tests/checkpoints.py), 12 layers,
width 768 (ViT-B/16) or 32; the config then says num_hidden_layers 10000.

    python benchmarks/reliability.py --output benchmarks/results/reliability.json
    python benchmarks/reliability.py --widths 32 --cap-gb 4   # with an address-space cap (e.g. for old versions)

Needs transformers (pip install "vitdeploy[dev]") to write the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from vitdeploy.core.provenance import machine

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
from pathlib import Path
cap = float(sys.argv[3])
if cap:
    resource.setrlimit(resource.RLIMIT_AS, (int(cap * 2**30),) * 2)
import torch
import vitdeploy
from vitdeploy.errors import VitDeployError


def peak_mb():
    # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak across exec on Linux)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024)


before = peak_mb()


def attempt():
    started = time.perf_counter()
    try:
        vitdeploy.import_model(sys.argv[1], sys.argv[2])
        outcome = "imported"
    except VitDeployError as e:
        outcome = "refused: " + str(e)
    except (MemoryError, RuntimeError) as e:
        outcome = f"crashed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return round(time.perf_counter() - started, 4), outcome


first, outcome = attempt()  # includes importing vitdeploy's import modules (safetensors, model, ...)
peak = peak_mb()
again, _ = attempt()  # the checks alone
print(json.dumps({"seconds_first_call": first, "seconds_second_call": again,
                  "peak_rss_after_imports_mb": before, "peak_rss_mb": peak,
                  "outcome": outcome}))
"""


def make_checkpoint(folder: Path, width: int) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from checkpoints import hf_vit, save_hf

    heads = 12 if width == 768 else 2
    model = hf_vit(["a", "b"], hidden_size=width, num_hidden_layers=12, num_attention_heads=heads, image_size=224,
                   patch_size=16)
    save_hf(model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 10000
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="768,32")
    parser.add_argument("--cap-gb", type=float, default=0.0, help="RLIMIT_AS for the importing process (0: none)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    import vitdeploy

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in map(int, args.widths.split(",")):
            folder = make_checkpoint(Path(tmp) / f"w{width}", width)
            load = Path("/proc/loadavg").read_text().split()[:3]
            done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(Path(tmp) / f"b{width}"),
                                   str(args.cap_gb)], capture_output=True, text=True, timeout=1800, cwd=tmp)
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            row = {"width": width, "layers_in_weights": 12, "num_hidden_layers": 10000,
                   "weights_mb": round((folder / "model.safetensors").stat().st_size / 2**20),
                   **json.loads(done.stdout.splitlines()[-1]), "loadavg_before": load}
            print(json.dumps(row))
            rows.append(row)
    result = {"cpu": machine()["cpu"], "vitdeploy": vitdeploy.__version__, "python": platform.python_version(),
              "cap_gb": args.cap_gb, "rows": rows}
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
