"""Entry point of the `glmv` command: one sub-command per door, each in its own module."""

from __future__ import annotations

import argparse
import logging
import sys

from glmv import __version__


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def build_parser() -> argparse.ArgumentParser:
    return build_commands()[0]


def build_commands() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `glmv` parser and its sub-commands' parsers by name (to report an error with the right usage)."""
    from glmv.cli import batch, chat, download, quantize, serve, tiny

    parser = argparse.ArgumentParser(
        prog="glmv",
        description="Serve and use GLM-4.1V-Thinking: an OpenAI-compatible server, a terminal chat, batch runs.",
    )
    parser.add_argument("--version", action="version", version=f"glmv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve.add_parser(sub)
    download.add_parser(sub)
    tiny.add_parser(sub)
    chat.add_parser(sub)
    batch.add_parser(sub)
    quantize.add_parser(sub)
    return parser, dict(sub.choices)


def main(argv: list[str] | None = None) -> int:
    from glmv.cli.serve import normalize_flag_spelling
    from glmv.models.loader import ModelNotFoundError

    parser, commands = build_commands()
    args, unknown = parser.parse_known_args(normalize_flag_spelling(sys.argv[1:] if argv is None else list(argv)))
    if unknown:  # said with the sub-command's usage (argparse would print glmv's top-level one)
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)} "
                                     f"(glmv {args.command} --help lists the flags)")
    _configure_logging(getattr(args, "log_level", "info"))
    try:
        return int(args.func(args) or 0)
    except ModelNotFoundError as exc:
        print(f"glmv: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"glmv: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
