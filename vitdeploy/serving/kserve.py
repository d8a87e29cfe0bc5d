"""KServe's InferenceService for a Triton model repository written by `vitdeploy triton`.

    DIR/inferenceservice.yaml   apiVersion serving.kserve.io/v1beta1, kind InferenceService:
                                spec.predictor.model: modelFormat triton, protocolVersion v2, runtime
                                kserve-tritonserver (KServe's Triton ClusterServingRuntime), storageUri = where
                                DIR was uploaded, resources (nvidia.com/gpu with --device gpu)

KServe downloads storageUri into /mnt/models and starts `tritonserver --model-store=/mnt/models`, so storageUri is
the repository folder (the one holding <name>/config.pbtxt), not the model folder. The YAML is written by hand
(block style, every string double-quoted as JSON, which YAML reads as the same string): no YAML library needed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from vitdeploy.errors import ConfigError

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
MODEL_FORMAT = "triton"  # the repository (config.pbtxt + version folders), served by Triton as it is
RUNTIME = "kserve-tritonserver"  # the ClusterServingRuntime a KServe install ships for Triton
PROTOCOL = "v2"  # the Open Inference Protocol, as `vitdeploy serve` speaks it
FILE_NAME = "inferenceservice.yaml"
# A placeholder a cluster cannot download, so an unedited file fails loudly at the storage initializer.
PLACEHOLDER_URI = "s3://CHANGE-ME/{folder}"
# Where KServe can fetch a model from (its storage initializer's schemes).
URI_SCHEMES = ("gs", "s3", "pvc", "hdfs", "webhdfs", "http", "https", "oci", "hf")
# Kubernetes object names: a DNS-1123 label. KServe derives longer names from it, so keep well under 63.
MAX_NAME = 45
# Strings YAML reads as the same string without quotes; and words YAML 1.1 would read as booleans or null.
PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_./-]*")
YAML_WORDS = frozenset(("true", "false", "null", "yes", "no", "on", "off", "y", "n"))


def service_name(model_name: str) -> str:
    """The Triton model name as a Kubernetes name: lowercase letters, digits and '-', starting with a letter."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = "vit-" + name
    return name[:MAX_NAME].rstrip("-")


def check_storage_uri(uri: str) -> str:
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in URI_SCHEMES:
        raise ConfigError(f"--storage-uri {uri!r}: give the uploaded repository folder as a URI KServe can fetch "
                          f"({', '.join(s + '://' for s in URI_SCHEMES)})")
    # The YAML is written as UTF-8 and read back by Kubernetes: a control character or a byte that is not UTF-8
    # (the shell's surrogate escapes) would make it invalid, or read back as something else.
    odd = next(((i, c) for i, c in enumerate(uri) if not c.isprintable()), None)
    if odd is not None:
        i, c = odd
        what = ("a byte that is not UTF-8" if "\udc80" <= c <= "\udcff"
                else f"the control character U+{ord(c):04X}")
        raise ConfigError(f"--storage-uri {uri.encode('utf-8', 'backslashreplace').decode()!r} has {what} at "
                          f"position {i}: percent-encode it (e.g. %{ord(c) & 0xFF:02X})")
    return uri


def inference_service(model_name: str, storage_uri: str, device: str) -> dict[str, Any]:
    """The InferenceService as a dict, in the field order KServe's documentation uses."""
    resources: dict[str, Any] = {"cpu": "1", "memory": "2Gi"}
    if device == "gpu":
        resources["nvidia.com/gpu"] = "1"
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": service_name(model_name),
                     "annotations": {"vitdeploy/triton-model": model_name}},
        "spec": {"predictor": {"model": {
            "modelFormat": {"name": MODEL_FORMAT},
            "protocolVersion": PROTOCOL,
            "runtime": RUNTIME,
            "storageUri": storage_uri,
            "resources": {"requests": dict(resources), "limits": dict(resources)},
        }}},
    }


def render_yaml(value: Any, indent: int = 0) -> str:
    """Nested dicts (block mappings) of strings, numbers and booleans as YAML; strings double-quoted."""
    pad = "  " * indent
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(f"{pad}{_scalar(key)}:\n{render_yaml(item, indent + 1)}")
        else:
            lines.append(f"{pad}{_scalar(key)}: {_scalar(item)}\n")
    return "".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    # Plain words stay plain, as KServe's examples write them; anything else is a JSON string (quoted).
    plain = PLAIN.fullmatch(text) and text.lower() not in YAML_WORDS
    return text if plain else json.dumps(text, ensure_ascii=False)


def readme_section(model_name: str, service: dict[str, Any], placeholder: bool, output: str) -> str:
    """How to deploy the repository on KServe, and query it with the same client as `vitdeploy serve`."""
    name = service["metadata"]["name"]
    gpu = ", 1 GPU" if "nvidia.com/gpu" in service["spec"]["predictor"]["model"]["resources"]["limits"] else ""
    upload = ("First upload this folder and set `storageUri` in it (or rerun `vitdeploy triton --storage-uri "
              "s3://bucket/path`): it is a placeholder now. " if placeholder else "")
    return f"""
## Deploy on KServe

`{FILE_NAME}` serves this folder with KServe's Triton runtime (`{RUNTIME}`, protocol {PROTOCOL}) from
`{service['spec']['predictor']['model']['storageUri']}`. {upload}Its resources (1 CPU, 2 GiB{gpu}) are a starting
point: size them from `vitdeploy bench` on the node type.

```
kubectl apply -f {FILE_NAME}
kubectl get inferenceservice {name}        # READY True, and its URL
export SERVICE_HOSTNAME=$(kubectl get inferenceservice {name} -o jsonpath='{{.status.url}}' | cut -d/ -f3)
curl -sf -H "Host: $SERVICE_HOSTNAME" "http://$INGRESS_HOST:$INGRESS_PORT/v2/models/{model_name}/ready"
```

The client above (the one `vitdeploy serve` answers too) works unchanged; only where it connects differs:

```python
client = httpclient.InferenceServerClient(f"{{INGRESS_HOST}}:{{INGRESS_PORT}}")
logits = client.infer("{model_name}", [pixels], headers={{"Host": SERVICE_HOSTNAME}}).as_numpy("{output}")
```
"""
