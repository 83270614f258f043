"""Fixtures of tests/quant (the quantizers' venv and the checkpoints it writes) live in tests/quant/helpers.py."""

from tests.quant.helpers import llmc_checkpoints, quant_python  # noqa: F401  (pytest fixtures)
