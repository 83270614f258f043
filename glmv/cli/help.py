"""DefaultsHelpFormatter: `--help` shows each flag's default once (unless its help text already names it)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable


class DefaultsHelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS, [], {}, ""):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


def add_command(sub, name: str, summary: str, description: str, run) -> argparse.ArgumentParser:
    """One sub-command of `glmv`: its line in `glmv --help`, its own --help (defaults shown once), and what it runs.

    Every door builds its parser here, so they all show help the same way and none forgets its `func`."""
    p = sub.add_parser(name, help=summary, description=description, formatter_class=DefaultsHelpFormatter)
    p.set_defaults(func=run)
    return p


def json_object(example: str) -> Callable[[str], dict]:
    """An argparse `type` for flags that take a JSON object; a bad value is refused showing `example`."""

    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a JSON object such as '{example}'")
        return value

    return parse


def add_server_args(g, verb: str) -> None:
    """--url and --api-key, for the doors that run the model here or use a running server instead."""
    g.add_argument("--url", default=None,
                   help=f"{verb} a running glmv (or other OpenAI-compatible) server at this address, e.g. "
                   "http://127.0.0.1:8000, instead of loading the model here (engine flags are then ignored)")
    g.add_argument("--api-key", default=None,
                   help="API key for --url servers started with --api-key (when not given: $GLMV_API_KEY, then "
                   "$OPENAI_API_KEY; read at run time so --help never prints it)")
