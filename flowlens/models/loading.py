"""`flowlens.load`: a Hub id, a local folder, `tiny:<family>` or `toy` -> `VideoLM`."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from flowlens.errors import FlowlensError, ModelNotFoundError, UsageError
from flowlens.models.base import VideoLM
from flowlens.models.prompt import PromptTemplate
from flowlens.models.registry import adapter_for_architecture, supported_families

TINY_PREFIX = "tiny:"
TOY_NAME = "toy"
PROMPT_FILE = "flowlens_prompt.json"  # optional PromptTemplate fields saved next to the weights
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def load(
    name_or_path: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    layers: int | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> VideoLM:
    """Load a video LLM with its processor and flowlens adapter.

    `name_or_path`: a Hugging Face id (`llava-hf/LLaVA-NeXT-Video-7B-hf`), a local folder, or
    `tiny:<family>` (random weights, built locally; `layers` sets its language-model depth).
    `dtype` defaults to float32 on CPU and bfloat16 on GPU. `trust_remote_code` is passed to
    transformers only when you set it. `device_map` (`auto`, `balanced`, or {module: device}) spreads
    one model over devices with accelerate (instead of `device`); modules mapped to `disk` are kept in
    `offload_folder`.
    """
    if device_map is not None and device is not None:
        raise UsageError("give --device or --device-map, not both: a device map places every module itself")
    source = _resolve_source(name_or_path, layers)
    torch_dtype = _resolve_dtype(dtype, device if device_map is None else _map_device(device_map))
    local_only = not Path(source).is_dir() and not hub_reachable()
    if local_only:
        _require_cached(source, revision)
    hub = {"revision": revision, "trust_remote_code": trust_remote_code, "local_files_only": local_only}
    config = _load_config(source, name_or_path, **hub)
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        raise FlowlensError(f"{name_or_path}: config.json names no architecture; is this a model folder?")
    adapter_cls = adapter_for_architecture(architectures[0])
    placed = {} if device_map is None else _device_map_kwargs(device_map, offload_folder)
    model = _from_pretrained(
        adapter_cls.model_class(), source, name_or_path, dtype=torch_dtype, **hub, **placed
    )
    processor = _load_processor(source, name_or_path, **hub)
    model.eval()
    if device is not None:
        model.to(device)
    lm = VideoLM(model, processor, adapter_cls(model, processor), name=name_or_path, revision=revision)
    lm.template = _prompt_template(source) or lm.template
    return lm


def _map_device(device_map: str | dict[str, Any]) -> str:
    """The device that decides the default dtype of a device-mapped model: a GPU if the map uses one."""
    if isinstance(device_map, dict):
        used = {str(v) for v in device_map.values()}
        return "cuda" if any(v not in ("cpu", "disk", "meta") for v in used) else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_map_kwargs(device_map: str | dict[str, Any], offload_folder: str | Path | None) -> dict[str, Any]:
    """from_pretrained keywords for accelerate's placement (refused clearly when accelerate is missing)."""
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise UsageError("--device-map needs accelerate: pip install accelerate (or 'flowlens[scale]')")
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise UsageError(
            f"--device-map {device_map!r}: use one of {', '.join(DEVICE_MAPS)} or a JSON mapping"
        )
    kwargs: dict[str, Any] = {"device_map": device_map}
    disk = isinstance(device_map, dict) and "disk" in {str(v) for v in device_map.values()}
    if disk or offload_folder is not None:
        if offload_folder is None:
            raise UsageError("a device map with 'disk' needs an offload folder (offload_folder=...)")
        kwargs["offload_folder"] = str(offload_folder)
    return kwargs


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _resolve_source(name: str, layers: int | None) -> str:
    if name.startswith(TINY_PREFIX):
        from flowlens.models.tiny import tiny_path

        family = name[len(TINY_PREFIX) :]
        if family not in supported_families():
            raise ModelNotFoundError(
                f"unknown tiny model {name!r}; use one of: {', '.join('tiny:' + f for f in supported_families())}"
            )
        return str(tiny_path(family, layers))
    if layers is not None:
        raise FlowlensError("`layers` only applies to tiny:<family> models")
    if name == TOY_NAME:  # the trained toy model shipped in flowlens/zoo/toy
        toy = Path(__file__).resolve().parents[1] / "zoo" / "toy"
        if not (toy / "config.json").exists():
            raise ModelNotFoundError(
                "the toy model's weights are not in this installation; train them with "
                "`python -m flowlens.zoo.train_toy --install` or use tiny:<family>"
            )
        return str(toy)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.count("/") != 1 or name.startswith((".", "/", "~")) or Path(name).suffix:
        raise ModelNotFoundError(
            f"unknown model {name!r}: give a Hugging Face id (org/name), a local model folder, "
            "tiny:<family>, or toy (see `flowlens inspect --help`)"
        )
    return name


def _prompt_template(source: str) -> PromptTemplate | None:
    """The prompt a local model folder was trained with (`flowlens_prompt.json`), if it ships one."""
    path = Path(source) / PROMPT_FILE
    if not path.is_file():
        return None
    try:
        return PromptTemplate(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise FlowlensError(f"{path}: not a valid prompt template ({exc})") from exc


def _resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        on_gpu = device is not None and torch.device(device).type == "cuda"
        return torch.bfloat16 if on_gpu else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise FlowlensError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}") from None


def _hub_error(name: str, exc: Exception) -> FlowlensError:
    """Translate Hub and filesystem failures into one actionable line."""
    text = f"{type(exc).__name__}: {exc}"
    if "RepositoryNotFound" in text or "404" in text:
        return ModelNotFoundError(
            f"no model {name!r} on the Hugging Face Hub; check the id (and your access token)"
        )
    offline = os.environ.get("HF_HUB_OFFLINE") or "LocalEntryNotFound" in text or "connect" in text.lower()
    if offline or isinstance(exc, OSError):
        return ModelNotFoundError(
            f"{name!r} is not in the local Hugging Face cache and the Hub cannot be reached; download it where "
            f"there is network (`hf download {name}`) or pass a local folder"
        )
    return FlowlensError(f"cannot load {name!r}: {exc}")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers on TCP within `timeout` s (False when HF_HUB_OFFLINE is set).

    Checked once per load so an offline machine fails in seconds instead of after HTTP retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _require_cached(repo_id: str, revision: str | None) -> None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(cached, str):
        raise ModelNotFoundError(
            f"{repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached; download it "
            f"where there is network (`hf download {repo_id}`) or pass a local folder"
        )


def _load_config(source: str, name: str, **hub: Any) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, **hub)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise FlowlensError(
                f"{name!r} needs custom code from its repository; pass --trust-remote-code if you trust it"
            ) from exc
        raise _hub_error(name, exc) from exc
    except OSError as exc:
        raise _hub_error(name, exc) from exc


def _from_pretrained(model_class: type, source: str, name: str, **kwargs: Any) -> Any:
    try:
        return model_class.from_pretrained(source, attn_implementation="sdpa", **kwargs)
    except OSError as exc:
        raise _hub_error(name, exc) from exc


def _load_processor(source: str, name: str, **hub: Any) -> Any:
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source, **hub)
    except OSError as exc:
        raise _hub_error(name, exc) from exc
