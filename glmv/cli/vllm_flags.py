"""Flags people bring from `vllm serve` that glmv needs no value for: accepted with a note, or refused with a sentence.

Tutorials and launch scripts for GLM-4.1V pass these to `vllm serve`; refusing them with argparse's bare
"unrecognized arguments" would make every such script fail on its first line. Each flag here says what glmv does
instead, so the note (or the refusal) tells the user what to change.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

log = logging.getLogger("glmv.cli")


@dataclass(frozen=True)
class VllmFlag:
    """One `vllm serve` flag: takes a value or not, and what glmv says about it."""

    name: str
    takes_value: bool
    note: str
    refused: bool = False  # refused: glmv has no server-wide equivalent and the note says what to use


VLLM_FLAGS = (
    VllmFlag("--trust-remote-code", False,
             "--trust-remote-code is not needed: glmv runs its own GLM-4.1V code and loads none from the checkpoint."),
    VllmFlag("--reasoning-parser", True,
             "--reasoning-parser is not needed: glmv always splits <think> into reasoning_content itself."),
    VllmFlag("--enable-log-requests", False,
             "--enable-log-requests is the default in glmv (one line per request; --disable-log-requests turns it "
             "off)."),
    VllmFlag("--uvicorn-log-level", True,
             "--uvicorn-log-level is not separate in glmv: --log-level sets glmv's and uvicorn's level together."),
    VllmFlag("--media-io-kwargs", True,
             "--media-io-kwargs has no server-wide form in glmv: send media_io_kwargs in the request body instead, "
             "e.g. {\"media_io_kwargs\": {\"video\": {\"num_frames\": 32}}} (docs/API.md).", refused=True),
    VllmFlag("--mm-processor-kwargs", True,
             "--mm-processor-kwargs has no server-wide form in glmv: send mm_processor_kwargs in the request body "
             "instead, e.g. {\"mm_processor_kwargs\": {\"max_pixels\": 1003520}} (docs/API.md).", refused=True),
)


class _Refuse(argparse.Action):
    """Stops parsing with the flag's sentence and the command's own usage."""

    def __init__(self, *args, note: str, **kwargs):
        self.note = note
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(self.note)


class _Note(argparse.Action):
    """Accepts the flag (and its value) and keeps its note in args.vllm_notes, logged once the server starts."""

    def __init__(self, *args, note: str, **kwargs):
        self.note = note
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.vllm_notes = [*namespace.vllm_notes, self.note]


def add_vllm_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accepted from `vllm serve` (glmv needs no value for these)")
    for flag in VLLM_FLAGS:
        action = _Refuse if flag.refused else _Note
        g.add_argument(flag.name, dest="vllm_notes", action=action, note=flag.note,
                       nargs=None if flag.takes_value else 0, metavar="VALUE" if flag.takes_value else None,
                       help=("refused: " if flag.refused else "ignored: ") + flag.note)
    p.set_defaults(vllm_notes=[])  # after the arguments: a parser default overrides theirs


def log_vllm_flag_notes(notes: list[str]) -> None:
    for note in notes:
        log.warning("%s", note)
