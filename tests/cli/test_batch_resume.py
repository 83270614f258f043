"""`glmv batch` never loses work: --resume after SIGKILL, refusals that protect the input and old results, exit codes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time

import pytest

from glmv.cli.batch import parse_line
from glmv.cli.batch_output import open_output
from tests.cli.conftest import GLMV, door_env, run_glmv
from tests.cli.live_server import SERVED_NAME


def request_line(custom_id: str, **body) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": f"request {custom_id}"}], **body}})


def asked_ids(recorder) -> list[str]:
    """The custom_ids (written into each question) of the requests the server received."""
    return [r["body"]["messages"][0]["content"].removeprefix("request ") for r in recorder.requests]


def whole_result_ids(path) -> list[str]:
    """custom_ids of the complete lines in path (what a kill left finished on disk)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line)["custom_id"] for line in text.split("\n")[:-1] if line.strip()]


def test_sigkill_then_resume_runs_every_request_once(live_server, tmp_path):
    ids = [f"r{i:02d}" for i in range(24)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(request_line(i, max_tokens=12, ignore_eos=True) + "\n" for i in ids))
    rng = random.Random(15)
    cut_mid_run = 0
    for run in range(5):
        out = tmp_path / f"out{run}.jsonl"
        args = ["batch", str(source), "-o", str(out), "--url", live_server.url, "--max-concurrency", "3",
                "--no-progress"]
        live_server.recorder.reset()
        proc = subprocess.Popen([*GLMV, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=door_env())
        # A random point once results are being written (start-up time varies with the machine's load): mid-run,
        # or while a line is half written; run 0 is killed during start-up.
        deadline = time.monotonic() + 60
        while run and not whole_result_ids(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.8) if run else 0.5)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        finished = set(whole_result_ids(out))
        cut_mid_run += 0 < len(finished) < len(ids)
        time.sleep(0.5)  # the server sees the killed client's requests go away
        live_server.recorder.reset()
        done = run_glmv([*args, "--resume"])
        assert done.returncode == 0, done.stderr
        lines = out.read_text().splitlines()
        results = [json.loads(line) for line in lines]  # every line is valid JSON
        assert sorted(r["custom_id"] for r in results) == ids  # every request exactly once
        assert all(r["response"]["status_code"] == 200 for r in results)
        rerun = asked_ids(live_server.recorder)
        assert not finished & set(rerun), f"run {run}: finished before the kill and sent again"
        assert sorted(rerun) == sorted(set(ids) - finished)
    assert cut_mid_run >= 2, "the kills should land while results are being written"


def answered(custom_id: str) -> str:
    return json.dumps({"id": f"batch_req_{custom_id}", "custom_id": custom_id, "error": None,
                       "response": {"status_code": 200, "request_id": "chatcmpl-1", "body": {"choices": []}}})


def test_resume_drops_a_line_cut_short(tmp_path):
    out = tmp_path / "out.jsonl"
    whole = answered("a")
    out.write_text(whole + "\n" + '{"id": "batch_req_2", "custom_id": "b", "resp')
    plan = open_output(str(tmp_path / "in.jsonl"), str(out), resume=True, overwrite=False)
    plan.close()
    assert plan.done == {"a"}
    assert out.read_text() == whole + "\n"


def test_resume_sends_failed_requests_again_and_keeps_the_answered(live_server, tmp_path):
    """A run whose server went away part-way: failed lines are taken out and rerun, answered ones are kept as they
    were, and the summary counts the retried requests."""
    ids = ["a", "b", "c", "d"]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(request_line(i, max_tokens=8) + "\n" for i in ids))
    out = tmp_path / "out.jsonl"
    down = run_glmv(["batch", str(source), "-o", str(out), SERVED_NAME, "--url", "http://127.0.0.1:9",
                     "--no-progress"])
    assert down.returncode == 1 and "0 ok, 4 failed" in down.stderr
    failed = {r["custom_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert failed["a"]["error"]["code"] == "request_failed"
    kept = [answered("a"), answered("c")]  # as if a and c had been answered before the server went down
    out.write_text(kept[0] + "\n" + json.dumps(failed["b"]) + "\n" + kept[1] + "\n" + json.dumps(failed["d"]) + "\n")
    inode = out.stat().st_ino
    live_server.recorder.reset()
    done = run_glmv(["batch", str(source), "-o", str(out), SERVED_NAME, "--url", live_server.url, "--resume",
                     "--no-progress"])
    assert done.returncode == 0, done.stderr
    assert "2 of them failed before and are sent again" in done.stderr
    assert "2 ok, 0 failed (2 retried)" in done.stderr
    assert sorted(asked_ids(live_server.recorder)) == ["b", "d"]
    lines = out.read_text().splitlines()
    assert lines[:2] == kept  # the answered lines stay byte for byte
    results = [json.loads(line) for line in lines]
    assert sorted(r["custom_id"] for r in results) == ids  # every custom_id exactly once
    assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in results)
    assert out.stat().st_ino != inode  # rewritten through a new file renamed over the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary file left


def test_resume_refuses_a_file_that_is_not_results(tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\nmore\n")
    with pytest.raises(ValueError, match="line 1 is not a glmv batch result line"):
        open_output("-", str(out), resume=True, overwrite=False)
    assert out.read_text() == "my notes\nmore\n"


@pytest.mark.parametrize("case, message", [
    ("same", "is the input file: writing results there would destroy the requests"),
    ("missing-dir", "does not exist. Create it first"),
    ("non-empty", "already holds results. Add --resume"),
    ("resume-stdout", "--resume needs the results in a file"),
])
def test_output_refusals_leave_files_alone(tmp_path, case, message):
    source = tmp_path / "in.jsonl"
    source.write_text(request_line("a") + "\n")
    old = tmp_path / "old.jsonl"
    old.write_text('{"custom_id": "a"}\n')
    output, extra = {"same": (str(source), []), "missing-dir": (str(tmp_path / "nope" / "out.jsonl"), []),
                     "non-empty": (str(old), []), "resume-stdout": ("-", ["--resume"])}[case]
    done = run_glmv(["batch", str(source), "-o", output, "--url", "http://127.0.0.1:9", *extra])
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert source.read_text() == request_line("a") + "\n" and old.read_text() == '{"custom_id": "a"}\n'


def test_a_failed_line_makes_the_exit_status_1_unless_allowed(live_server, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(request_line("good") + "\n" + request_line("bad", temperature=9) + "\n")
    out = tmp_path / "out.jsonl"
    done = run_glmv(["batch", str(source), "-o", str(out), "--url", live_server.url])
    assert done.returncode == 1
    assert "1 ok, 1 failed" in done.stderr and "--allow-failures" in done.stderr
    done = run_glmv(["batch", str(source), "-o", str(out), "--url", live_server.url, "--overwrite",
                     "--allow-failures"])
    assert done.returncode == 0, done.stderr
    assert sorted(r["custom_id"] for r in map(json.loads, out.read_text().splitlines())) == ["bad", "good"]


def test_the_docs_example_names_a_model_the_default_server_serves():
    """docs/DOORS.md's example line must run against `glmv serve MODEL` as documented (served name = MODEL)."""
    from pathlib import Path

    from glmv.models.loader import DEFAULT_MODEL

    docs = (Path(__file__).parents[2] / "docs" / "DOORS.md").read_text()
    example = next(line for line in docs.splitlines() if line.startswith('{"custom_id": "q1"'))
    assert json.loads(example)["body"]["model"] == DEFAULT_MODEL


@pytest.mark.parametrize("text, column", [
    ('{"messages": [1,\n', 17),  # cut short: the column where it stops, not "column 1" of a second line
    ('{"messages": \n', 14),
    ('{"a": 1,, }\n', 9),
])
def test_malformed_line_error_names_the_right_column(text, column):
    assert f"at column {column})" in parse_line(0, 3, text).problem
