"""`glmv serve --data-parallel-size 2` on the CPU with the tiny model, through the real openai SDK: two replica
processes behind one server. Load spreads; a conversation stays on the replica holding its prefix (prefix hits in
/metrics); a replica killed with SIGKILL under load fails only its own requests, /health says degraded, it comes back
and serves again; SIGTERM lets a running request finish and ends every replica."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import httpx
import openai
import pytest

from glmv.engine.client import PromptTooLongError
from glmv.inputs.prompt import Prompt
from glmv.sampling import SamplingParams
from tests.server.conftest import serve_args, start_server
from tests.server.test_serve_process import free_port, start

MODEL_FLAGS = ("--data-parallel-size", "2", "--max-model-len", "1024")


@pytest.fixture(scope="module")
def server(tiny_model_dir, media_dir):
    live = start_server(serve_args(tiny_model_dir, "glmv", *MODEL_FLAGS, "--allowed-local-media-path",
                                   str(media_dir)))
    yield live
    live.stop()


def replicas(server) -> list[dict[str, float]]:
    return server.state.engine.replica_stats()


def routed(server) -> list[float]:
    return [r["routed_total"] for r in replicas(server)]


def health(base_url: str) -> httpx.Response:
    return httpx.get(base_url + "/health", timeout=5)


def scrape(server, name: str) -> dict[str, float]:
    """replica label -> value of one per-replica gauge in /metrics."""
    text = httpx.get(server.base_url + "/metrics", timeout=5).text
    return {m[0]: float(m[1]) for m in re.findall(rf'^{name}{{replica="(\d+)"}} (\S+)$', text, re.M)}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


async def stream_tokens(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int, started: list) -> int:
    """Streams a completion; returns the number of tokens streamed (raises what the SDK raises)."""
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                             temperature=0, stream=True, extra_body={"ignore_eos": True},
                                             stream_options={"include_usage": True})
    tokens = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text and not started.count(prompt):
            started.append(prompt)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens


def test_health_lists_both_replicas_up(server):
    res = health(server.base_url)
    assert res.status_code == 200
    body = res.json()
    assert body["status"] == "ok"
    assert [r["state"] for r in body["replicas"]] == ["up", "up"]
    assert len({r["pid"] for r in body["replicas"]}) == 2 and os.getpid() not in {r["pid"] for r in body["replicas"]}


def test_concurrent_requests_spread_over_the_replicas(server):
    before = routed(server)

    async def run() -> list[int]:
        client = server.async_client()
        return await asyncio.gather(*(stream_tokens(client, server.state.default_name, f"story number {i} begins", 12, []) for i in range(6)))

    assert asyncio.run(run()) == [12] * 6
    after = routed(server)
    spread = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(spread) == 6 and min(spread) >= 2, spread
    assert scrape(server, "glmv_replica_routed_requests") == {str(i): v for i, v in enumerate(after)}


def test_a_conversation_stays_on_the_replica_that_holds_its_prefix(server):
    client = server.client()
    model = server.state.default_name
    system = "You are a careful assistant. " * 12  # several KV blocks of shared prefix
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Name a colour."}]
    before = replicas(server)
    homes = []
    for turn in range(3):
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0)
        after = replicas(server)
        homes.append(next(i for i in range(2) if after[i]["routed_total"] > before[i]["routed_total"]))
        if turn:
            assert after[homes[-1]]["prefix_routed_total"] == before[homes[-1]]["prefix_routed_total"] + 1
        before = after
        # an unrelated request between turns: the idle replicas take turns, so it lands on the other one
        client.completions.create(model=model, prompt=f"unrelated {turn}", max_tokens=2, temperature=0)
        before = replicas(server)
        messages += [{"role": "assistant", "content": reply.choices[0].message.content or "red"},
                     {"role": "user", "content": f"And another one, number {turn + 2}?"}]
    assert len(set(homes)) == 1, homes
    hits = scrape(server, "glmv_replica_prefix_cache_hit_tokens")
    assert hits[str(homes[0])] >= 2 * 16, hits  # its later turns reused cached blocks of the earlier ones


def test_a_conversation_about_a_picture_reuses_its_cached_prefix_on_one_replica(server, media_dir):
    client = server.client()
    model = server.state.default_name
    image = {"type": "image_url", "image_url": {"url": f"file://{media_dir / 'demo1.png'}"}}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "What is in this picture?"}]}]
    before = replicas(server)
    first = client.chat.completions.create(model=model, messages=messages, max_tokens=5, temperature=0)
    middle = replicas(server)
    messages += [{"role": "assistant", "content": first.choices[0].message.content or "a picture"},
                 {"role": "user", "content": "Describe its colours."}]
    second = client.chat.completions.create(model=model, messages=messages, max_tokens=5, temperature=0)
    after = replicas(server)
    home = [i for i in range(2) if middle[i]["routed_total"] > before[i]["routed_total"]]
    again = [i for i in range(2) if after[i]["routed_total"] > middle[i]["routed_total"]]
    assert home == again and len(home) == 1
    assert after[home[0]]["prefix_routed_total"] == middle[home[0]]["prefix_routed_total"] + 1
    # the picture's vision tokens (and the text before them) came from that replica's prefix cache
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 16, \
        (second.usage, first.usage)


def test_a_replica_refusing_a_request_is_the_usual_openai_error(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=server.state.default_name, prompt="hello", max_tokens=5000)
    assert too_long.value.code == "context_length_exceeded" and "1024" in too_long.value.message
    ok = client.completions.create(model=server.state.default_name, prompt="hello", max_tokens=2)
    assert ok.usage.completion_tokens >= 1


def test_errors_raised_in_a_replica_come_back_typed(server):
    """The server checks lengths first; driven directly, the replica's own refusal crosses the wire as the same
    typed error, with its counts."""

    async def run(prompt: Prompt, params: SamplingParams, request_id: str):
        return [out async for out in server.state.engine.generate(prompt, params, request_id)]

    with pytest.raises(PromptTooLongError) as refused:
        asyncio.run(run(Prompt(token_ids=[5] * 1030), SamplingParams(max_tokens=4), "direct-too-long"))
    assert refused.value.prompt_tokens == 1030 and refused.value.max_model_len == 1024
    outs = asyncio.run(run(Prompt(token_ids=[5, 6, 7]), SamplingParams(max_tokens=3, temperature=0,
                                                                        ignore_eos=True), "direct-ok"))
    assert outs[-1].finished and outs[-1].outputs[0].num_tokens == 3 and outs[-1].prompt_token_ids == [5, 6, 7]


def test_a_client_that_goes_away_aborts_its_request_in_the_replica(server):
    def settled() -> tuple[float] | None:
        """Generated tokens once nothing runs and the count holds still for 0.5 s (gauges come every 0.2 s)."""
        if not all("generation_tokens_total" in r for r in replicas(server)):
            return None  # a replica's first gauges are not in yet
        first = sum(r["generation_tokens_total"] for r in replicas(server))
        time.sleep(0.5)
        now = replicas(server)
        total = sum(r["generation_tokens_total"] for r in now)
        return (total,) if total == first and all(r["in_flight"] == 0 and r["running"] == 0 for r in now) else None

    (before,) = wait_for(settled, 20, "an idle server")
    stream = server.client().completions.create(model=server.state.default_name, prompt="walk away", max_tokens=800,
                                                temperature=0, stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    generated = wait_for(settled, 20, "the abort")[0] - before
    assert 4 <= generated < 400, generated  # it ran, and the replica's engine stopped it long before 800 tokens


def test_a_killed_replica_fails_only_its_requests_and_comes_back(server):
    victim = 0
    old_pid = health(server.base_url).json()["replicas"][victim]["pid"]
    prompts = [f"long run {i}" for i in range(6)]
    started: list[str] = []

    async def run():
        client = server.async_client()
        tasks = [asyncio.create_task(stream_tokens(client, server.state.default_name, p, 400, started)) for p in prompts]
        while len(started) < len(prompts):  # every stream has its first tokens: all are running
            await asyncio.sleep(0.02)
        on_victim = int(replicas(server)[victim]["in_flight"])
        os.kill(old_pid, signal.SIGKILL)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return on_victim, results

    on_victim, results = asyncio.run(run())
    assert on_victim >= 1
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == on_victim, results
    for exc in failed:
        assert isinstance(exc, openai.APIError), exc
        assert "replica 0 stopped while running this request" in str(exc), exc
        assert exc.code == "replica_failed", exc
    assert [r for r in results if not isinstance(r, BaseException)] == [400] * (len(prompts) - on_victim)
    assert replicas(server)[victim]["failed_requests_total"] >= on_victim

    degraded = health(server.base_url)
    assert degraded.status_code == 200 and degraded.json()["status"] == "degraded"
    # the other replica keeps serving meanwhile
    client = server.client()
    done = client.completions.create(model=server.state.default_name, prompt="still here?", max_tokens=3,
                                     temperature=0, extra_body={"ignore_eos": True})
    assert done.usage.completion_tokens == 3

    back = wait_for(lambda: (h := health(server.base_url).json())["status"] == "ok" and h, 180, "the restart")
    assert back["replicas"][victim]["restarts"] == 1 and back["replicas"][victim]["pid"] != old_pid
    assert scrape(server, "glmv_replica_restarts")[str(victim)] == 1.0
    before = routed(server)[victim]
    for i in range(4):  # idle replicas take turns: within two requests one lands on the restarted replica
        out = client.completions.create(model=server.state.default_name, prompt=f"again {i}", max_tokens=3,
                                        temperature=0, extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 3
    assert routed(server)[victim] >= before + 2


def test_sigterm_lets_running_requests_finish_and_stops_every_replica(tiny_model_dir):
    port = free_port()
    proc = start(tiny_model_dir, port, "--dtype", "float32", *MODEL_FLAGS)
    try:
        base = f"http://127.0.0.1:{port}"
        pids = [r["pid"] for r in health(base).json()["replicas"]]
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", timeout=60, max_retries=0)
        model = client.models.list().data[0].id
        # long enough to still be streaming 0.2 s after the signal on a quiet machine (400 tokens took 0.14 s once)
        stream = client.completions.create(model=model, prompt="drain me", max_tokens=1000, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True}, stream_options={"include_usage": True})
        chunks = iter(stream)
        first = next(chunks)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        rest = list(chunks)
        streamed_after_signal = time.monotonic() - signalled
        usage = [c.usage for c in [first, *rest] if c.usage is not None]
        finish = [c.choices[0].finish_reason for c in [first, *rest] if c.choices and c.choices[0].finish_reason]
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert usage and usage[0].completion_tokens == 1000 and finish == ["length"]
    assert streamed_after_signal > 0.2, streamed_after_signal  # the request was still running when the signal came
    # uvicorn, serving from the main thread here, re-raises SIGTERM once its graceful shutdown is done
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_replicas_end_when_the_server_is_killed(tiny_model_dir):
    """No orphaned replica keeps a GPU: each ends when its connection to the server drops."""
    port = free_port()
    proc = start(tiny_model_dir, port, "--dtype", "float32", *MODEL_FLAGS)
    try:
        pids = [r["pid"] for r in health(f"http://127.0.0.1:{port}").json()["replicas"]]
        proc.kill()
        proc.communicate(timeout=30)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{pid}/stat") as f:  # exited but not yet reaped by init: gone too
                return f.read().split(") ")[1].startswith("Z")

        wait_for(lambda: all(gone(pid) for pid in pids), 30, "the replicas to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
