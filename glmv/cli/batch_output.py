"""Where `glmv batch` writes: checks on -o before anything loads, and what --resume finds already done there.

A batch of thousands of requests can take hours; the checks here make sure a typo never costs that work: the input
is never the output, a non-empty output is never emptied unless --overwrite says so, and --resume carries on after
a kill from the last whole result line (a line cut short by the kill is dropped and its request sent again).
--resume also sends the failed requests again (a server that was down, a full queue): their result lines are taken
out of the output first, by writing the lines that succeeded to a temporary file renamed over the output, so a kill
at any moment leaves either the old file or the new one, never a file with answered requests missing.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass(frozen=True)
class OutputPlan:
    """The stream results go to, the custom_ids whose results it holds already (skipped by --resume), and how many
    of the requests it held failed results for (taken out, so they are sent again)."""

    out: TextIO
    done: frozenset[str]
    retried: int = 0

    def close(self) -> None:
        if self.out is not sys.stdout:
            self.out.close()


def check_output(input_path: str, output: str, resume: bool, overwrite: bool) -> None:
    """Refuse an -o that would lose work or cannot be written; touches nothing (run before the model loads)."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: pick one.")
    if output == "-":
        if resume:
            raise ValueError("--resume needs the results in a file (-o FILE), not on stdout.")
        return
    target = Path(output)
    if input_path != "-" and _same_file(Path(input_path), target):
        raise ValueError(f"-o {output} is the input file: writing results there would destroy the requests. "
                         "Give another file for -o.")
    if not target.parent.is_dir():
        raise ValueError(f"-o {output}: the folder {target.parent} does not exist. Create it first "
                         f"(mkdir -p {target.parent}) or write somewhere else.")
    if target.is_dir():
        raise ValueError(f"-o {output} is a folder; give a file name such as {target / 'results.jsonl'}.")
    if not resume and not overwrite and target.exists() and target.stat().st_size > 0:
        raise ValueError(f"-o {output} already holds results. Add --resume to finish that run (requests already "
                         "answered there are skipped), or --overwrite to start again and replace them.")


def open_output(input_path: str, output: str, resume: bool, overwrite: bool) -> OutputPlan:
    """Check -o (check_output) and open it: for appending after what is done (--resume) or fresh."""
    check_output(input_path, output, resume, overwrite)
    if output == "-":
        return OutputPlan(sys.stdout, frozenset())
    target = Path(output)
    if resume:
        done, retried = _keep_succeeded(target) if target.exists() else (frozenset(), 0)
        return OutputPlan(target.open("a", encoding="utf-8"), done, retried)
    return OutputPlan(target.open("w", encoding="utf-8"), frozenset())


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def succeeded(result: dict) -> bool:
    """A result line whose request was answered (status 200, no error): --resume keeps it, sends the rest again."""
    response = result.get("response")
    return result.get("error") is None and isinstance(response, dict) and response.get("status_code") == 200


def _keep_succeeded(path: Path) -> tuple[frozenset[str], int]:
    """Keep the whole result lines of path whose request succeeded; return their custom_ids and how many requests
    had only failed lines. A last line cut short by a kill goes too. The file is replaced atomically (temporary
    file, fsync, rename) and only when something is taken out."""
    data = path.read_bytes()
    *whole, tail = data.split(b"\n")  # tail: what follows the last newline, a line written only in part
    done: set[str] = set()
    failed: set[str] = set()
    kept: list[bytes] = []
    for n, raw in enumerate(whole, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
        if not isinstance(custom_id, str):
            raise ValueError(f"{path}: line {n} is not a glmv batch result line, so --resume cannot tell what is "
                             "done. Check that -o names the results of this input.")
        if succeeded(obj) and custom_id not in done:
            done.add(custom_id)
            kept.append(raw + b"\n")
        else:
            failed.add(custom_id)
    if len(kept) != len(whole) or tail:
        temporary = path.with_name(f".{path.name}.resume-{os.getpid()}")
        with temporary.open("wb") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    return frozenset(done), len(failed - done)
