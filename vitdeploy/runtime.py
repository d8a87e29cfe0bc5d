"""ONNX Runtime's sessions under their earlier module name: everything here lives in vitdeploy.runtimes.ort, and
other runtimes beside it in vitdeploy.runtimes. Kept so that code written against vitdeploy.runtime still works."""

from vitdeploy.runtimes.base import check_input_contract
from vitdeploy.runtimes.ort import (
    CPU,
    CUDA,
    DEVICES,
    GRAPH_OPTIMIZATION,
    PROBE_MODEL,
    TENSORRT,
    CudaStatus,
    ProviderStatus,
    cuda_status,
    load_model_info,
    make_session,
    model_info_from_session,
    run_batch,
    run_in_batches,
    short_provider_name,
    tensorrt_status,
    usable_providers,
)

__all__ = [
    "CPU", "CUDA", "DEVICES", "GRAPH_OPTIMIZATION", "PROBE_MODEL", "TENSORRT", "CudaStatus", "ProviderStatus",
    "check_input_contract", "cuda_status", "load_model_info", "make_session", "model_info_from_session", "run_batch",
    "run_in_batches", "short_provider_name", "tensorrt_status", "usable_providers",
]
