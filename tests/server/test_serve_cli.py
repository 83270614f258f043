"""`glmv serve` flags: every flag explained in --help, vLLM's spellings accepted, the API key from the environment,
safe defaults, clear refusals."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from glmv.cli.main import build_parser
from glmv.cli.serve import configs_from_args, normalize_flag_spelling

VLLM_FLAGS = ("--served-model-name", "--host", "--port", "--max-model-len", "--limit-mm-per-prompt",
              "--allowed-local-media-path", "--allowed-media-domains", "--chat-template", "--generation-config",
              "--api-key", "--dtype", "--engine", "--root-path", "--allowed-origins", "--allow-credentials",
              "--allowed-methods", "--allowed-headers", "--log-level", "--disable-log-requests",
              "--max-num-seqs", "--max-thinking-tokens", "--max-request-bytes")


def serve_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(normalize_flag_spelling(["serve", *argv]))


def test_help_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "glmv.cli.main", "serve", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in VLLM_FLAGS:
        assert flag in out.stdout, flag
    for action in serve_parser()._actions:
        assert action.help and action.help != argparse.SUPPRESS and len(action.help) > 8, action.option_strings


def test_vllm_spellings_and_defaults():
    args = parse("some/model", "--max_model_len", "25000", "--served-model-name", "my_model", "other",
                 "--limit-mm-per-prompt", '{"image": 32, "video": 1}', "--allowed-local-media-path", "/")
    engine, server = configs_from_args(args)
    assert engine.max_model_len == 25000 and engine.model == "some/model"
    assert server.served_model_names == ("my_model", "other")
    assert server.limit_mm_per_prompt == {"image": 32, "video": 1, "document": 1}
    assert server.host == "127.0.0.1" and server.port == 8000
    assert normalize_flag_spelling(["--max_num_seqs=4", "a_b", "-x"]) == ["--max-num-seqs=4", "a_b", "-x"]


@pytest.mark.parametrize("var", ["GLMV_API_KEY", "VLLM_API_KEY"])
def test_api_key_from_environment(monkeypatch, var):
    monkeypatch.delenv("GLMV_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    assert configs_from_args(parse("m"))[1].api_keys == ()
    monkeypatch.setenv(var, "from-env")
    assert configs_from_args(parse("m"))[1].api_keys == ("from-env",)
    assert configs_from_args(parse("m", "--api-key", "flag"))[1].api_keys == ("flag",)


def test_bad_flags_are_refused_clearly(capsys):
    with pytest.raises(SystemExit) as e:
        parse("m", "--limit-mm-per-prompt", "{image: 3}")
    assert e.value.code == 2
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(ValueError, match="allowed-origins"):
        configs_from_args(parse("m", "--allowed-origins", '"*"'))
    with pytest.raises(ValueError, match="limit-mm-per-prompt"):
        configs_from_args(parse("m", "--limit-mm-per-prompt", '{"audio": 1}'))
    with pytest.raises(ValueError, match="max-request-bytes"):
        configs_from_args(parse("m", "--max-request-bytes", "10"))


def test_missing_model_is_a_clear_error_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "glmv.cli.main", "serve", str(tmp_path / "nothing-here"),
                          "--engine", "transformers"], capture_output=True, text=True, timeout=120,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "nothing-here" in out.stderr


def test_cache_bounds_are_flags_in_gib():
    engine, _ = configs_from_args(parse("m"))
    assert (engine.mm_processor_cache_bytes, engine.media_cache_bytes, engine.vision_cache_bytes) == \
        (1 << 30, 512 << 20, 512 << 20)
    engine, _ = configs_from_args(parse("m", "--mm_processor_cache_gb", "4", "--media-cache-gb", "0",
                                        "--vision-cache-gb", "0.25"))
    assert (engine.mm_processor_cache_bytes, engine.media_cache_bytes, engine.vision_cache_bytes) == \
        (4 << 30, 0, 256 << 20)
    with pytest.raises(ValueError, match="--vision-cache-gb must be >= 0"):
        configs_from_args(parse("m", "--vision-cache-gb", "-1"))
