"""`vitdeploy triton` and `serve`: a Triton model repository, and the same protocol served locally."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vitdeploy.cli.app import app, handle_errors, print_json, print_note
from vitdeploy.cli.options import Force, JsonFlag, Threads
from vitdeploy.core.config import parse_batch_sizes
from vitdeploy.requests import DEFAULT_TRITON_DIR, ServeSettings, TritonOptions, WebRequest
from vitdeploy.runtimes import RUNTIMES


@app.command()
@handle_errors
def triton(
    model: Annotated[
        Optional[Path], typer.Argument(help="The .onnx to put in the repository. Default: the newest .onnx under models/.")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Repository folder; the model goes to OUT/<name>/.")
    ] = DEFAULT_TRITON_DIR,
    name: Annotated[
        Optional[str], typer.Option(help="Model name in the repository and in URLs. Default: the file name "
                                    "without .onnx.")
    ] = None,
    backend: Annotated[
        str, typer.Option(help="onnxruntime: Triton's ONNX Runtime backend runs the .onnx (CPU or GPU servers). "
                          "python: Triton's Python backend runs it through vitdeploy's runtimes (the runtime and "
                          "precision the file was made for; CPU), with a model.py beside it.")
    ] = TritonOptions.backend,
    device: Annotated[str, typer.Option(help="cpu | gpu: the instance_group kind.")] = TritonOptions.device,
    instances: Annotated[int, typer.Option(help="Model instances (per GPU with --device gpu).")] = TritonOptions.instances,
    max_batch_size: Annotated[
        Optional[int], typer.Option(help="Largest batch Triton forms. Default: 32, or the --from-bench recommendation.")
    ] = None,
    max_queue_delay_ms: Annotated[
        Optional[float], typer.Option(help="How long a request may wait for a batch to fill. Default: 2 ms, or what "
                                      "the p99 budget of --from-bench leaves.")
    ] = None,
    preferred_batch_sizes: Annotated[
        Optional[str], typer.Option(help="Batch sizes Triton should aim for, comma-separated. Default: none, or the "
                                    "--from-bench recommendation.")
    ] = None,
    dynamic_batching: Annotated[
        bool, typer.Option(help="Write a dynamic_batching block.")
    ] = TritonOptions.dynamic_batching,
    from_bench: Annotated[
        Optional[Path], typer.Option(help="A `vitdeploy bench --p99-budget MS --output F.json` report: its "
                                     "recommended batch size (ort-cpu, or ort-cuda with --device gpu) sets the "
                                     "preferred and largest batch, the budget left after its p99 the queue delay.")
    ] = None,
    tensorrt: Annotated[
        Optional[str], typer.Option(help="fp32 | fp16: run through ONNX Runtime's TensorRT accelerator "
                                    "(--device gpu), one engine profile for batch 1..max, engines cached.")
    ] = None,
    cuda_graphs: Annotated[
        bool, typer.Option(help="Replay CUDA graphs (--device gpu). A graph holds one input shape, so this needs "
                           "--no-dynamic-batching and clients that always send the same batch size.")
    ] = TritonOptions.cuda_graphs,
    storage_uri: Annotated[
        Optional[str], typer.Option(help="KServe: where OUT will be uploaded (s3://, gs://, pvc://...), written as "
                                    "the InferenceService's storageUri. Default: a placeholder to replace.")
    ] = None,
    json_output: JsonFlag = False,
    force: Force = TritonOptions.force,
) -> None:
    """Write a Triton Inference Server model repository: OUT/<name>/config.pbtxt, 1/model.onnx, labels.txt
    (and 1/model.py with --backend python), OUT/inferenceservice.yaml (KServe, Triton runtime, protocol v2), and
    OUT/README.md with the tritonserver, kubectl and client commands and the preprocessing clients must apply.

    Needs only the core install. Refuses a model whose batch axis is fixed (Triton would refuse it at load), a
    name that is not a plain directory name, and a written folder that does not match its .onnx (names, data
    types, dims, labels) (exit code 2).

    Example: vitdeploy triton models/digits/best/model.onnx --out triton --name digits --device gpu --tensorrt fp16
    """
    import vitdeploy

    repo = vitdeploy.triton(model, out, TritonOptions(
        name=name, backend=backend, device=device, instances=instances, max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        preferred_batch_sizes=parse_batch_sizes(preferred_batch_sizes, "--preferred-batch-sizes")
        if preferred_batch_sizes else (),
        dynamic_batching=dynamic_batching, from_bench=from_bench, tensorrt=tensorrt, cuda_graphs=cuda_graphs,
        storage_uri=storage_uri,
        force=force,
    ))
    print_note(f"wrote Triton model {repo.name!r} to {repo.model_dir}/ (see {repo.root / 'README.md'})")
    if json_output:
        print_json(repo.to_dict())


@app.command()
@handle_errors
def serve(
    model: Annotated[
        Optional[Path], typer.Argument(help="The .onnx to serve. Default: the newest .onnx under models/.")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface; think first).")
    ] = ServeSettings.host,
    port: Annotated[int, typer.Option(help="TCP port (0: any free one, printed at start).")] = ServeSettings.port,
    runtime: Annotated[
        Optional[str], typer.Option(help=f"What runs the model: {' | '.join(RUNTIMES)}. "
                                    "Default: the runtime the file was made for (as predict), else ort.")
    ] = ServeSettings.runtime,
    device: Annotated[
        str, typer.Option(help="auto (CUDA only if a session really gets it) | cpu | cuda.")
    ] = ServeSettings.device,
    threads: Threads = None,
    name: Annotated[
        Optional[str], typer.Option(help="Model name in URLs (/v2/models/NAME). Default: the file name without .onnx, "
                                    "as `vitdeploy triton` names it.")
    ] = None,
    max_batch_size: Annotated[
        Optional[int], typer.Option(help="Most images per model call (and per request). Default: 8 on a CPU, 32 on "
                                    "a GPU (measured: docs/serve.md).")
    ] = ServeSettings.max_batch_size,
    max_queue_delay_ms: Annotated[
        float, typer.Option(help="How long the oldest waiting request may wait for a batch to fill.")
    ] = ServeSettings.max_queue_delay_ms,
    max_body_mb: Annotated[
        float, typer.Option(help="Largest request body (MiB); larger ones get 413.")
    ] = ServeSettings.max_body_mb,
    decode_threads: Annotated[
        Optional[int], typer.Option(help="Threads decoding uploaded images for /classify. Default: one per core.")
    ] = ServeSettings.decode_threads,
    top_k: Annotated[
        int, typer.Option(help="Labels /classify returns per image (?top_k= overrides).")
    ] = ServeSettings.top_k,
) -> None:
    """Serve a model over HTTP with the Open Inference Protocol (v2: what Triton and KServe speak) and an image
    endpoint, batching concurrent requests dynamically.

    Endpoints: /v2/health/live, /v2/health/ready, /v2/models/NAME (metadata), /v2/models/NAME/ready,
    /v2/models/NAME/infer (FP32 tensors, JSON or binary), /v2/models/NAME/stats (batch sizes run), and
    POST /classify (image bytes or multipart files -> top-k labels, preprocessed as predict does).
    Ctrl-C or SIGTERM drains the requests in flight and exits 0. Needs the serve extra: pip install "vitdeploy\\[serve]".

    Example: vitdeploy serve models/digits/best/model.onnx --port 8000 --max-batch-size 32 --max-queue-delay-ms 2
    """
    import vitdeploy

    summary = vitdeploy.serve(model, ServeSettings(
        host=host, port=port, runtime=runtime, device=device, threads=threads, name=name,
        max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms, max_body_mb=max_body_mb,
        decode_threads=decode_threads, top_k=top_k,
    ))
    s = summary.stats
    batches = ", ".join(f"{b['batch_size']}: {b['compute_infer']['count']}" for b in s.get("batch_stats", []))
    print_note(
        f"stopped: {s.get('inference_stats', {}).get('success', {}).get('count', 0)} requests answered, "
        f"{s.get('inference_count', 0)} images in {s.get('execution_count', 0)} model calls "
        f"(batch size: calls {{{batches}}}), {s.get('refused_requests', 0)} refused"
    )


@app.command()
@handle_errors
def web(
    model: Annotated[
        Optional[Path], typer.Argument(help="The .onnx to put in the folder. Default: the newest .onnx under models/.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder to write: new, empty, or one `vitdeploy web` "
                                      "wrote (then replaced).")] = WebRequest.out,
    force: Force = WebRequest.force,
    json_output: JsonFlag = False,
) -> None:
    """Write a static folder that runs the model in a browser with onnxruntime-web: index.html, vitdeploy.js (the
    model's own preprocessing, bit-identical with predict's), the .onnx, onnxruntime-web's files (no CDN), the
    transformers.js layout (its model does the preprocessing in its graph: `pipeline('image-classification',
    folder)` answers as predict does), serve.py and a README with the headers multithreaded WebAssembly needs.

    onnxruntime-web is installed with npm into ~/.cache/vitdeploy the first time. Refused (exit code 2): a file over
    onnxruntime-web's 2 GiB limit, one with external data, a variant made for another runtime, an -o folder of other
    files (without --force).

    Example: vitdeploy web models/digits/best/model.onnx -o web && python3 web/serve.py 8000
    """
    import vitdeploy

    folder = vitdeploy.web(WebRequest(model, out=out, force=force))
    print_note(f"wrote {folder.path}/ ({len(folder.files)} files, {folder.size_bytes / 2**20:.1f} MiB) for "
               f"{folder.model}: serve it with `python3 {folder.path / 'serve.py'}` (see its README.md)")
    if json_output:
        print_json({"path": str(folder.path), "model": str(folder.model), "files": list(folder.files),
                    "size_bytes": folder.size_bytes})
