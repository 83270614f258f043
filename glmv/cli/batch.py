"""`glmv batch INPUT.jsonl -o OUTPUT.jsonl MODEL`: run a file of chat requests offline, many at once.

Input lines are OpenAI Batch requests ({"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}) or
plain chat requests ({"messages": [...], ...}). Requests are all sent concurrently (up to --max-concurrency) so glmv's
engine batches them; the output has one OpenAI Batch result line per input line, in input order:
{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}, with the thinking in
`reasoning_content`. A line that cannot be sent (bad JSON, wrong method) gets an error line; the run goes on.
Results are written as each request finishes, not in input order (as OpenAI's Batch output: match them by
custom_id), so a finished request is on disk at once and `--resume` never runs it again after a kill (it does
send the failed ones again).

The requests go through the same API as `glmv serve` (glmv/cli/api.py): in this process, or to --url.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from glmv.cli.api import error_message, first_model, local_client, local_state, remote_client
from glmv.cli.batch_output import check_output, open_output
from glmv.cli.help import add_command, add_server_args

RETRY_STATUSES = (429, 503)  # the server is full: wait and resend
MAX_RETRIES = 6


@dataclass(frozen=True)
class BatchLine:
    """One input line, parsed. `problem` says why it cannot be sent (then body is None)."""

    index: int  # 0-based among non-blank lines: the output position
    line_no: int  # 1-based line number in the file, for messages
    custom_id: str
    url: str
    body: dict[str, Any] | None
    problem: str | None = None


def parse_line(index: int, line_no: int, text: str) -> BatchLine:
    fallback_id = f"line-{line_no}"

    def bad(problem: str, custom_id: str = fallback_id) -> BatchLine:
        return BatchLine(index, line_no, custom_id, "", None, f"line {line_no}: {problem}")

    try:  # without its newline, or a line cut short is reported at "line 2 column 1" of itself
        obj = json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        return bad(f"not valid JSON ({exc.msg} at column {exc.colno}).")
    if not isinstance(obj, dict):
        return bad("expected a JSON object.")
    custom_id = obj.get("custom_id")
    if custom_id is not None and not isinstance(custom_id, str):
        return bad("custom_id must be a string.")
    custom_id = custom_id or fallback_id
    if "body" in obj:  # the OpenAI Batch request shape
        method = obj.get("method", "POST")
        url = obj.get("url", "/v1/chat/completions")
        if method != "POST":
            return bad(f"method must be POST, got {method!r}.", custom_id)
        if not isinstance(url, str) or not url.startswith("/v1/"):
            return bad(f"url must be an API path such as /v1/chat/completions, got {url!r}.", custom_id)
        if not isinstance(obj["body"], dict):
            return bad("body must be a JSON object (the chat completion request).", custom_id)
        return BatchLine(index, line_no, custom_id, url, dict(obj["body"]))
    if "messages" in obj:  # a plain chat request
        body = {k: v for k, v in obj.items() if k != "custom_id"}
        return BatchLine(index, line_no, custom_id, "/v1/chat/completions", body)
    return bad('expected an OpenAI Batch request {"custom_id", "method", "url", "body"} or a chat request with '
               '"messages".', custom_id)


def read_lines(path: str) -> tuple[int, Iterator[BatchLine]]:
    """The number of requests and a lazy iterator over them (a file is read twice rather than held in memory)."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
        items = [(n, t) for n, t in enumerate(lines, 1) if t.strip()]
        return len(items), (parse_line(i, n, t) for i, (n, t) in enumerate(items))
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{path}: no such input file.")
    with file.open(encoding="utf-8") as f:
        total = sum(1 for t in f if t.strip())

    def generate() -> Iterator[BatchLine]:
        with file.open(encoding="utf-8", errors="replace") as f:
            index = 0
            for line_no, text in enumerate(f, 1):
                if text.strip():
                    yield parse_line(index, line_no, text)
                    index += 1

    return total, generate()


def result_line(item: BatchLine, status: int | None, body: Any, error: dict | None) -> dict[str, Any]:
    response = None
    if status is not None:
        request_id = body.get("id") if isinstance(body, dict) else None
        response = {"status_code": status, "request_id": request_id, "body": body}
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": item.custom_id, "response": response, "error": error}


class ResultWriter:
    """Writes each result line whole and flushed the moment it is done, so a kill loses no finished request."""

    def __init__(self, out: TextIO):
        self.out = out

    def put(self, result: dict[str, Any]) -> None:
        self.out.write(json.dumps(result, ensure_ascii=False) + "\n")
        self.out.flush()


@dataclass
class BatchSummary:
    total: int = 0
    ok: int = 0
    failed: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


async def send_one(client: httpx.AsyncClient, item: BatchLine, model: str | None, force_model: bool) -> dict:
    """Send one request (resending while the server says it is full) and return its result line."""
    body = dict(item.body or {})
    body["stream"] = False
    body.pop("stream_options", None)
    if model and (force_model or not body.get("model")):
        body["model"] = model
    delay = 0.5
    for attempt in range(MAX_RETRIES + 1):
        try:
            resp = await client.post(item.url, json=body)
        except httpx.HTTPError as exc:
            return result_line(item, None, None, {"code": "request_failed", "message": f"{type(exc).__name__}: {exc}"})
        if resp.status_code in RETRY_STATUSES and attempt < MAX_RETRIES:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        break
    try:
        payload = resp.json()
    except ValueError:
        payload = {"error": {"message": error_message(resp.status_code, resp.content)}}
    return result_line(item, resp.status_code, payload, None)


async def run_batch(client: httpx.AsyncClient, total: int, items: Iterator[BatchLine], out: TextIO,
                    concurrency: int, model: str | None, force_model: bool, progress: bool | None) -> BatchSummary:
    """Send every request with at most `concurrency` in flight; write results in input order."""
    from tqdm import tqdm

    summary = BatchSummary(total=total)
    writer = ResultWriter(out)
    slots = asyncio.Semaphore(concurrency)
    bar = tqdm(total=total, unit="req", desc="glmv batch", file=sys.stderr, disable=progress, dynamic_ncols=True)
    started = time.monotonic()

    async def handle(item: BatchLine) -> None:
        try:
            if item.problem is not None:
                result = result_line(item, None, None, {"code": "invalid_request", "message": item.problem})
            else:
                result = await send_one(client, item, model, force_model)
        finally:
            slots.release()
        response = result["response"]
        if response is not None and response["status_code"] == 200:
            summary.ok += 1
            usage = response["body"].get("usage") or {}
            summary.completion_tokens += int(usage.get("completion_tokens") or 0)
        else:
            summary.failed += 1
        writer.put(result)
        bar.update(1)
        if summary.failed:
            bar.set_postfix(failed=summary.failed, refresh=False)

    tasks = []
    try:
        for item in items:
            await slots.acquire()
            tasks.append(asyncio.create_task(handle(item)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        bar.close()
    summary.seconds = time.monotonic() - started
    return summary


class _IntermixedParser(argparse.ArgumentParser):
    """Lets options sit between the positionals, as in `glmv batch IN.jsonl -o OUT.jsonl MODEL`.

    Plain argparse matches all positionals it can at the first run of them (MODEL would be left out and then
    refused); parse_known_intermixed_args matches options first, then positionals wherever they are.
    """

    _parsing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._parsing:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def add_parser(sub) -> None:
    from glmv.cli.serve import add_engine_args

    p = add_command(
        sub, "batch", "run a JSONL file of chat requests offline (OpenAI Batch format)",
        "Run every request of a JSONL file through GLM-4.1V, concurrently so the engine batches them, "
        "and write OpenAI Batch result lines in input order. Input lines: OpenAI Batch requests "
        '{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}} or plain chat requests '
        '{"messages": [...], ...}. Media must be data: URIs or http(s) URLs (or file:// under '
        "--allowed-local-media-path). The model runs in this process, or on a server given with --url.",
        run)
    p.__class__ = _IntermixedParser  # sub.add_parser always builds a plain ArgumentParser
    p.add_argument("input", help="the requests, one JSON object per line ('-' reads stdin)")
    p.add_argument("model", nargs="?", default=None,
                   help="a local folder, a Hugging Face id or (with --hub modelscope) a ModelScope id; without --url "
                   "every line runs on it whatever its body's 'model' says (default: zai-org/GLM-4.1V-9B-Thinking); "
                   "with --url, the model for lines that name none (default: the server's first model)")
    g = p.add_argument_group("batch")
    g.add_argument("-o", "--output", default="-", help="where result lines go ('-' writes stdout)")
    g.add_argument("--resume", action="store_true",
                   help="carry on a run that stopped: keep the answered results already in -o and send the other "
                   "requests: those not there yet and those whose result there failed (their old lines are taken out; "
                   "a result line cut short by a kill is dropped too)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the results already in -o (without it, or --resume, a non-empty -o is refused)")
    g.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when some requests failed (by default any failed line makes the exit status 1)")
    g.add_argument("--max-concurrency", type=int, default=256,
                   help="most requests in flight at once; keep it above the engine's --max-num-seqs so the batch "
                   "stays full")
    add_server_args(g, "send the requests to")
    g.add_argument("--allowed-local-media-path", default=None,
                   help="let requests read file:// media under this folder (in-process runs only; off by default)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is "
                   "not a terminal)")
    g.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="log level of the in-process engine")
    add_engine_args(p)


def run(args: argparse.Namespace) -> int:
    from glmv.engine.beside_loop import engine_wants_main_thread, run_beside_engine_loop
    from glmv.models.loader import DEFAULT_MODEL

    _check_args(args)
    if not args.url:
        config = _engine_config(args, args.model or DEFAULT_MODEL)
        if engine_wants_main_thread(config):  # glmv's engine on the CPU: its loop in this thread, the batch beside it
            state = local_state(config, (args.model,), _media_root(args))
            return run_beside_engine_loop(state.engine, lambda: _run(args, state))
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace, state=None) -> int:
    from glmv.models.loader import DEFAULT_MODEL

    total, items = read_lines(args.input)
    plan = open_output(args.input, args.output, args.resume, args.overwrite)
    if plan.done or plan.retried:
        items = (item for item in items if item.custom_id not in plan.done)
        total = max(0, total - len(plan.done))
        again = f" ({plan.retried} of them failed before and are sent again)" if plan.retried else ""
        print(f"glmv batch: {len(plan.done)} requests already answered in {args.output}; sending the other "
              f"{total}{again}.", file=sys.stderr)
    progress = True if args.no_progress else None  # tqdm: True disables, None disables off a terminal
    try:
        if args.url:
            async with remote_client(args.url, args.api_key, args.max_concurrency) as client:
                model = args.model or (await first_model(client) if total else None)
                summary = await run_batch(client, total, items, plan.out, args.max_concurrency, model, False,
                                          progress)
        else:
            model = args.model or DEFAULT_MODEL
            async with local_client(_engine_config(args, model), (model,), _media_root(args), state) as client:
                summary = await run_batch(client, total, items, plan.out, args.max_concurrency, model, True,
                                          progress)
    finally:
        plan.close()
    rate = summary.completion_tokens / summary.seconds if summary.seconds > 0 else 0.0
    where = "stdout" if args.output == "-" else args.output
    retried = f" ({plan.retried} retried)" if plan.retried else ""
    print(f"glmv batch: {summary.total} results to {where}: {summary.ok} ok, {summary.failed} failed{retried}; "
          f"{summary.completion_tokens} output tokens in {summary.seconds:.2f} s ({rate:.1f} tok/s)",
          file=sys.stderr)
    if summary.failed and not args.allow_failures:
        print(f"glmv batch: {summary.failed} requests failed; each result line says why in its error or response. "
              "Exit status 1 (--allow-failures makes it 0).", file=sys.stderr)
        return 1
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Refuse what would waste the run before the model loads (minutes for the 9B model)."""
    if args.max_concurrency < 1:
        raise ValueError(f"--max-concurrency must be at least 1, got {args.max_concurrency}.")
    if args.input != "-" and not Path(args.input).is_file():
        raise ValueError(f"{args.input}: no such input file.")
    check_output(args.input, args.output, args.resume, args.overwrite)


def _engine_config(args: argparse.Namespace, model: str):
    from glmv.cli.serve import engine_config_from_args

    args.model = model
    return engine_config_from_args(args)


def _media_root(args: argparse.Namespace) -> Path | None:
    return Path(args.allowed_local_media_path) if args.allowed_local_media_path else None
