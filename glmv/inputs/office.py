"""Converts PPT/PPTX to PDF with LibreOffice headless (`soffice --convert-to pdf`), in a private temp folder.

Each conversion gets its own LibreOffice profile (two instances sharing one block each other), a time limit that
kills the whole process group, and, where the kernel allows unprivileged namespaces, no network at all: a
presentation can link pictures by URL, and the converter must not fetch them for an attacker.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from glmv.inputs.errors import InvalidInputError

_CONVERSIONS = threading.BoundedSemaphore(2)  # LibreOffice is heavy; at most two at once per process


def soffice_path() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


@functools.cache
def _network_isolation() -> tuple[str, ...]:
    """`unshare -rn` when it works here (a fresh network namespace with only a loopback that is down)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    try:
        ok = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (unshare, "-rn") if ok else ()


def convert_to_pdf(data: bytes, fmt: str, where: str, timeout_s: float) -> bytes:
    """PDF bytes of a presentation, or InvalidInputError: 415 when LibreOffice is absent, 400 when it fails."""
    soffice = soffice_path()
    if soffice is None:
        raise InvalidInputError(
            f"{where}: reading {fmt.upper()} needs LibreOffice (soffice) on the server, and it is not installed. "
            "Convert the file to PDF and send that, or ask the operator to install LibreOffice Impress.",
            status=415, param=where, code="document_converter_missing")
    with _CONVERSIONS, tempfile.TemporaryDirectory(prefix="glmv-office-") as tmp:
        folder = Path(tmp)
        source = folder / f"input.{fmt}"
        source.write_bytes(data)
        out_dir = folder / "out"
        command = [
            *_network_isolation(), soffice, "--headless", "--invisible", "--norestore", "--nolockcheck",
            "--nodefault", "--nofirststartwizard", f"-env:UserInstallation={(folder / 'profile').as_uri()}",
            "--convert-to", "pdf", "--outdir", str(out_dir), str(source),
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder), "LANG": "C.UTF-8",
               "SAL_USE_VCLPLUGIN": "svp"}
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=folder,
                                start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise InvalidInputError(f"{where}: converting the {fmt.upper()} file took longer than {timeout_s:g} s.",
                                    param=where, code="document_conversion_failed") from None
        finally:
            _kill_group(proc)  # LibreOffice may leave helpers behind in its session
        result = out_dir / "input.pdf"
        if proc.returncode != 0 or not result.is_file() or result.stat().st_size == 0:
            detail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] if stderr else []
            raise InvalidInputError(
                f"{where}: LibreOffice could not convert the {fmt.upper()} file (is it damaged?)"
                + (f": {detail[0]}" if detail else "."), param=where, code="document_conversion_failed")
        return result.read_bytes()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=5)
