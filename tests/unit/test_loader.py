"""Model resolution: local folders, hub ids offline, wrong architectures; errors are one readable paragraph."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from glmv.config import ModelConfig
from glmv.models.loader import ModelNotFoundError, resolve_model


def test_local_folder_resolves(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir


def test_model_config_reads_dims_and_stop_ids(tiny_model_dir):
    cfg = ModelConfig.from_dir(tiny_model_dir)
    assert cfg.text.num_layers == 2 and cfg.text.head_dim == 32 and cfg.text.rotary_dim == 16
    assert cfg.text.mrope_section == (2, 3, 3)
    assert len(cfg.eos_token_ids) == 4  # endoftext, user, observation, </answer>
    assert cfg.generation_defaults["top_k"] == 2


def test_released_config_shape_is_parsed(tmp_path, tiny_model_dir):
    raw = json.loads((tiny_model_dir / "config.json").read_text())
    text = raw["text_config"]
    rope = text.pop("rope_parameters")
    text["rope_scaling"] = {"type": "default", "mrope_section": rope["mrope_section"]}
    text["partial_rotary_factor"] = 0.5
    text["rope_theta"] = 10000.0
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cfg = ModelConfig.from_dir(tmp_path, generation_config=None)
    assert cfg.text.mrope_section == (2, 3, 3) and cfg.text.partial_rotary_factor == 0.5
    assert cfg.generation_defaults == {}


def test_other_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ModelNotFoundError, match="not GLM-4.1V"):
        resolve_model(str(tmp_path))


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_id_offline_gives_one_paragraph(tmp_path, monkeypatch):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "glmv.cli.main", "serve", "zai-org/GLM-4.1V-9B-Thinking", "--port", "18999"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "zai-org/GLM-4.1V-9B-Thinking" in proc.stderr and "glmv download" in proc.stderr
    assert str(tmp_path) in proc.stderr  # names where it looked


def test_garbage_model_argument(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither an existing folder nor a hub id"):
        resolve_model(str(tmp_path / "nope" / "deeper" / "x"))
