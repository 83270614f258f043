"""Resolves a model argument to a local checkpoint folder: a folder, a Hugging Face Hub id or a ModelScope id.

Errors a user can cause (offline, missing model, wrong architecture) raise ModelNotFoundError with one paragraph
that names the model, where glmv looked and what to do; the CLI prints it without a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from glmv.config import ModelConfig

DEFAULT_MODEL = "zai-org/GLM-4.1V-9B-Thinking"
MODELSCOPE_DEFAULT = "ZhipuAI/GLM-4.1V-9B-Thinking"
_CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


class ModelNotFoundError(RuntimeError):
    """A model could not be resolved to a usable local folder. The message is meant for people."""


def _looks_like_repo_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~"))


def resolve_model(
    model: str, hub: str = "huggingface", revision: str | None = None, download: bool = True
) -> Path:
    """Return the local folder for `model`, downloading it from the hub when allowed and needed."""
    local = Path(os.path.expanduser(model))
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ModelNotFoundError(
                f"'{model}' exists but is not a model folder (no config.json in it). Pass a folder that holds "
                "config.json and *.safetensors, such as one written by `glmv download` or `glmv make-tiny-model`."
            )
        try:
            ModelConfig.from_dir(local)  # refuses other architectures with a clear message
        except ValueError as exc:
            raise ModelNotFoundError(str(exc)) from None
        return local
    if not _looks_like_repo_id(model):
        raise ModelNotFoundError(
            f"Model '{model}' is neither an existing folder nor a hub id of the form 'org/name'. "
            f"Pass a local folder, a Hugging Face id such as {DEFAULT_MODEL}, or a ModelScope id with "
            "--hub modelscope."
        )
    if hub == "modelscope":
        path = _resolve_modelscope(model, revision, download)
    else:
        path = _resolve_huggingface(model, revision, download)
    try:
        ModelConfig.from_dir(path)
    except ValueError as exc:
        raise ModelNotFoundError(str(exc)) from None
    return path


def _resolve_huggingface(model: str, revision: str | None, download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True, allow_patterns=_CHECKPOINT_PATTERNS))
    except Exception:  # noqa: BLE001 - not cached: fall through to a download or a clear error
        pass
    offline = HF_HUB_OFFLINE or not download
    if offline:
        raise ModelNotFoundError(
            f"Model '{model}' is not in the Hugging Face cache ({HF_HUB_CACHE}) and downloads are off "
            f"({'HF_HUB_OFFLINE is set' if HF_HUB_OFFLINE else 'offline mode'}). Run `glmv download {model}` on a "
            "machine with internet access (or copy the folder here and pass its path), or unset HF_HUB_OFFLINE."
        )
    return download_model(model, hub="huggingface", revision=revision)


def _resolve_modelscope(model: str, revision: str | None, download: bool) -> Path:
    try:
        from modelscope import snapshot_download  # type: ignore[import-not-found]
    except ImportError:
        raise ModelNotFoundError(
            f"Model '{model}' was asked for from ModelScope, but the modelscope package is not installed. "
            "Install it with `pip install 'glmv[modelscope]'`, or download the folder and pass its path."
        ) from None
    if not download:
        raise ModelNotFoundError(f"Model '{model}' is not available locally and downloads are off.")
    return download_model(model, hub="modelscope", revision=revision, _snapshot=snapshot_download)


def download_model(model: str, hub: str = "huggingface", revision: str | None = None, local_dir: str | None = None,
                   _snapshot=None) -> Path:
    """Fetch a checkpoint (weights, configs, tokenizer) with a progress bar; return its folder."""
    try:
        if hub == "modelscope":
            if _snapshot is None:
                from modelscope import snapshot_download as _snapshot  # type: ignore[import-not-found]
            return Path(_snapshot(model, revision=revision or "master", local_dir=local_dir))
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(model, revision=revision, local_dir=local_dir, allow_patterns=_CHECKPOINT_PATTERNS)
        )
    except ImportError:
        raise ModelNotFoundError(
            f"Downloading '{model}' from ModelScope needs the modelscope package: pip install 'glmv[modelscope]'."
        ) from None
    except Exception as exc:  # noqa: BLE001 - network, auth and 404 errors all become one readable paragraph
        where = "ModelScope" if hub == "modelscope" else "the Hugging Face Hub"
        raise ModelNotFoundError(
            f"Could not download '{model}' from {where}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}. "
            "Check the id and your network (or HF_ENDPOINT / HF_TOKEN for gated or mirrored models), or download "
            "the folder elsewhere and pass its local path."
        ) from None
