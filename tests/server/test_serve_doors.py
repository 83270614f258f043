"""`glmv serve` as a new user meets it: flags from `vllm serve`, serve's own usage on a mistake, HEAD probes, /docs
offline, and a damaged checkpoint said in one sentence."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import pytest

from glmv.cli.main import main
from tests.server.conftest import serve_args, start_server


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    live = start_server(serve_args(tiny_model_dir, "glmv", "--trust-remote-code", "--reasoning-parser", "glm45",
                                   "--enable-log-requests", "--uvicorn-log-level", "info"))
    yield live
    live.stop()


@pytest.mark.parametrize("flags", [["--trust-remote-code"], ["--reasoning-parser", "glm45"],
                                   ["--enable-log-requests"], ["--uvicorn-log-level", "debug"]])
def test_vllm_flags_glmv_needs_no_value_for_are_accepted_with_a_note(flags, caplog):
    from glmv.cli.main import build_parser
    from glmv.cli.vllm_flags import log_vllm_flag_notes

    args = build_parser().parse_args(["serve", "some/model", *flags])
    with caplog.at_level("WARNING", logger="glmv.cli"):
        log_vllm_flag_notes(args.vllm_notes)
    assert len(args.vllm_notes) == 1 and flags[0] in caplog.text


@pytest.mark.parametrize("flag, says", [("--media-io-kwargs", "send media_io_kwargs in the request body"),
                                        ("--mm-processor-kwargs", "send mm_processor_kwargs in the request body")])
def test_vllm_flags_without_a_server_wide_form_are_refused_with_what_to_use(flag, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "some/model", flag, '{"video": {"fps": 1}}'])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert says in err and "usage: glmv serve" in err


def test_an_unknown_flag_prints_serves_usage_not_glmvs(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "some/model", "--no-such-flag"])
    err = capsys.readouterr().err
    assert "usage: glmv serve" in err and "unrecognized arguments: --no-such-flag" in err
    assert "glmv serve --help" in err


def test_head_probes_answer_200(server):
    for path in ("/", "/health"):
        response = httpx.head(server.base_url + path)
        assert response.status_code == 200, path
        assert response.content == b""


def test_docs_page_needs_nothing_from_outside(server):
    response = httpx.get(server.base_url + "/docs")
    assert response.status_code == 200
    page = response.text
    assert "/v1/chat/completions" in page and "messages" in page  # endpoints and their request fields
    assert "http://" not in page and "https://" not in page and "<script" not in page  # no CDN, no script
    assert httpx.get(server.base_url + "/openapi.json").status_code == 200


def test_a_truncated_checkpoint_is_one_sentence(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    done = subprocess.run([sys.executable, "-m", "glmv.cli.main", "serve", str(broken), "--device", "cpu",
                           "--port", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("glmv:")]
    assert "cannot be read as safetensors" in line and "Download the checkpoint again" in line
