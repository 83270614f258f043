"""`glmv batch`: OpenAI Batch JSONL in, ordered result lines out, concurrently, bad lines as error lines."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from glmv.cli.api import InProcessTransport
from glmv.cli.batch import BatchLine, parse_line, send_one
from tests.cli.conftest import run_glmv
from tests.cli.live_server import SERVED_NAME
from tests.media_factory import make_image


def batch_request(custom_id: str, content, **body) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "any-name", "messages": [{"role": "user", "content": content}], **body}})


def read_results(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_in_process(scripted_model, tmp_path):
    image = make_image(tmp_path / "photo.png")
    data = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    lines = [
        batch_request("text", "Hello"),
        "",  # blank lines are skipped, not answered
        batch_request("image", [{"type": "image_url", "image_url": {"url": data}}, {"type": "text", "text": "What?"}],
                      max_tokens=64, stream=True),
        json.dumps({"messages": [{"role": "user", "content": "plain line"}], "temperature": 0.2}),
        "{not json",
        json.dumps({"custom_id": "get", "method": "GET", "url": "/v1/chat/completions", "body": {}}),
        batch_request("too-hot", "x", temperature=9),
        json.dumps({"custom_id": "no-body", "prompt": "hi"}),
        "[1, 2]",
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    done = run_glmv(["batch", str(source), "-o", str(out), str(scripted_model.path), "--device", "cpu"])
    assert done.returncode == 1, done.stderr  # 5 lines failed
    written = read_results(out)  # in the order they finished: matched to their lines by custom_id
    by_id = {r["custom_id"]: r for r in written}
    order = ["text", "image", "line-4", "line-5", "get", "too-hot", "no-body", "line-9"]
    assert sorted(by_id) == sorted(order) and len(written) == len(order)
    results = [by_id[c] for c in order]
    assert len({r["id"] for r in results}) == len(results) and all(r["id"].startswith("batch_req_") for r in results)

    for ok in results[:3]:
        assert ok["error"] is None
        response = ok["response"]
        assert response["status_code"] == 200
        body = response["body"]
        assert body["object"] == "chat.completion" and response["request_id"] == body["id"]
        assert body["model"] == str(scripted_model.path)  # every line runs on MODEL, whatever it names
        message = body["choices"][0]["message"]
        assert (message["reasoning_content"], message["content"]) == (scripted_model.reasoning,
                                                                      scripted_model.answer)
        assert body["usage"]["completion_tokens"] > 0
    assert results[1]["response"]["body"]["usage"]["prompt_tokens"] > results[0]["response"]["body"]["usage"][
        "prompt_tokens"] + 10  # the image's tokens were in the prompt

    bad_json, get, too_hot, no_body, not_object = results[3:]
    assert bad_json["response"] is None and bad_json["error"]["code"] == "invalid_request"
    assert bad_json["error"]["message"].startswith("line 5: not valid JSON")
    assert get["error"]["message"] == "line 6: method must be POST, got 'GET'."
    assert too_hot["error"] is None and too_hot["response"]["status_code"] == 400
    assert "temperature" in too_hot["response"]["body"]["error"]["message"]
    assert "expected an OpenAI Batch request" in no_body["error"]["message"]
    assert not_object["error"]["message"] == "line 9: expected a JSON object."
    assert "8 results" in done.stderr and "3 ok, 5 failed" in done.stderr


@pytest.mark.parametrize("concurrency, expected_peak", [(256, 6), (2, 2)])
def test_batch_against_a_server_keeps_requests_in_flight(live_server, tmp_path, concurrency, expected_peak):
    source = tmp_path / "in.jsonl"
    # ignore_eos + max_tokens: each request takes a while, so the peak shows what the runner keeps in flight.
    source.write_text("\n".join(json.dumps({"custom_id": f"r{i}", "body": {
        "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 40, "ignore_eos": True}})
        for i in range(6)) + "\n")
    out = tmp_path / "out.jsonl"
    live_server.recorder.reset()
    done = run_glmv(["batch", str(source), "-o", str(out), "--url", live_server.url,
                     "--max-concurrency", str(concurrency)])
    assert done.returncode == 0, done.stderr
    results = read_results(out)
    assert sorted(r["custom_id"] for r in results) == [f"r{i}" for i in range(6)]
    assert all(r["response"]["status_code"] == 200 for r in results)
    assert all(r["response"]["body"]["usage"]["completion_tokens"] == 40 for r in results)
    assert live_server.recorder.max_in_flight == expected_peak
    bodies = [r["body"] for r in live_server.recorder.requests]
    assert all(b["model"] == SERVED_NAME and b["stream"] is False for b in bodies)  # the server's first model


def test_batch_reads_stdin_and_writes_stdout(live_server):
    done = run_glmv(["batch", "-", "--url", live_server.url, "--no-progress"],
                    stdin=json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n\n")
    assert done.returncode == 0, done.stderr
    (result,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert result["custom_id"] == "line-1" and result["response"]["status_code"] == 200


def test_missing_input_is_a_clear_error(tmp_path):
    done = run_glmv(["batch", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--url",
                     "http://127.0.0.1:9"])
    assert done.returncode == 2
    assert "nope.jsonl: no such input file." in done.stderr


@pytest.mark.parametrize("text, custom_id, url, problem", [
    ('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}', "a",
     "/v1/chat/completions", None),
    ('{"custom_id": "b", "body": {"messages": []}}', "b", "/v1/chat/completions", None),  # method/url default
    ('{"messages": [], "custom_id": "c"}', "c", "/v1/chat/completions", None),
    ('{"messages": []}', "line-7", "/v1/chat/completions", None),
    ('{"custom_id": 5, "body": {}}', "line-7", "", "custom_id must be a string."),
    ('{"custom_id": "d", "url": "https://api.openai.com/v1/x", "body": {}}', "d", "", "url must be an API path"),
    ('{"custom_id": "e", "body": "text"}', "e", "", "body must be a JSON object"),
    ("null", "line-7", "", "expected a JSON object."),
])
def test_parse_line(text, custom_id, url, problem):
    item = parse_line(3, 7, text)
    assert (item.index, item.line_no, item.custom_id, item.url) == (3, 7, custom_id, url)
    if problem is None:
        assert item.problem is None and isinstance(item.body, dict)
    else:
        assert item.body is None and item.problem.startswith("line 7: ") and problem in item.problem


def test_parse_line_plain_body_drops_custom_id():
    item = parse_line(0, 1, '{"custom_id": "x", "messages": [{"role": "user", "content": "hi"}], "seed": 3}')
    assert item.body == {"messages": [{"role": "user", "content": "hi"}], "seed": 3}


def test_send_one_retries_while_the_server_is_full():
    app = FastAPI()
    calls: list[dict] = []

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        calls.append(body)
        if len(calls) < 3:
            return JSONResponse({"error": {"message": "full"}}, status_code=503, headers={"Retry-After": "1"})
        return {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}

    async def main() -> dict:
        async with httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://in-process") as client:
            item = BatchLine(0, 1, "c1", "/v1/chat/completions", {"messages": [], "stream": True,
                                                                  "stream_options": {"include_usage": True}})
            return await send_one(client, item, "m", force_model=False)

    result = asyncio.run(main())
    assert len(calls) == 3
    assert calls[0] == {"messages": [], "stream": False, "model": "m"}
    assert result["response"] == {"status_code": 200, "request_id": "chatcmpl-1",
                                  "body": {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}}
    assert result["custom_id"] == "c1" and result["error"] is None


def test_ctrl_c_stops_an_in_process_batch_on_the_cpu(tiny_model_dir, tmp_path):
    """In process on the CPU the engine loop runs in the main thread and the batch beside it
    (glmv/engine/beside_loop.py): Ctrl-C must end both, promptly and quietly, with the shell's 130."""
    import signal
    import subprocess
    import time

    from tests.cli.conftest import GLMV, door_env

    source = tmp_path / "long.jsonl"
    source.write_text("".join(batch_request(f"r{i}", "go on", max_tokens=3000, ignore_eos=True) + "\n"
                              for i in range(8)))
    proc = subprocess.Popen([*GLMV, "batch", str(source), "-o", str(tmp_path / "out.jsonl"), str(tiny_model_dir),
                             "--device", "cpu", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=door_env())
    time.sleep(8)  # loaded and generating (8 x 3000 tokens take far longer)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
