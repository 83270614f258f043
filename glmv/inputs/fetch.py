"""Media sources: `data:` URIs, `file://` under an allowed folder, and `http(s)://` downloads behind the SSRF guard.

Every source is held to the same byte caps (one item, and all items of a prompt together); what the bytes are is
decided later from the bytes themselves (mediatype.py), never from a name or a Content-Type header.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import ssl
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import certifi
import httpx

from glmv import __version__
from glmv.inputs.errors import InvalidInputError
from glmv.inputs.netguard import resolve_checked
from glmv.inputs.policy import MediaPolicy

_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class FetchedMedia:
    data: bytes
    source: str  # for messages: "a data: URI", "file /x/y.png", "https://host/path"
    declared_type: str | None = None  # the sender's claim (data: media type, Content-Type); informational only


class ByteBudget:
    """Bytes all media of one prompt may still take, drawn from by the threads that fetch or decode them at once;
    past the limit a 413 says what was over: `over` ends "the media of this prompt ..." (default: fetched bytes)."""

    def __init__(self, limit: int, over: str | None = None):
        self.limit = limit
        self.used = 0
        self.over = over or f"exceed {_mib(limit)} together; send fewer or smaller files."
        self._lock = threading.Lock()

    def take(self, n: int, where: str) -> None:
        with self._lock:
            self.used += n
            over = self.used > self.limit
        if over:
            raise InvalidInputError(f"{where}: the media of this prompt {self.over}", status=413, param=where,
                                    code="media_too_large")


async def fetch_media(url: str, policy: MediaPolicy, where: str, budget: ByteBudget | None = None) -> FetchedMedia:
    """The bytes behind `url`, or an InvalidInputError (400 refused/failed, 413 too large) naming `where`."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInputError(f"{where}: the media URL is empty.", param=where, code="invalid_media_url")
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        fetched = decode_data_uri(url, policy, where)
    elif scheme == "file":
        fetched = await asyncio.to_thread(read_local_file, url, policy, where)
    elif scheme == "" and policy.plain_paths:
        fetched = await asyncio.to_thread(read_local_file, Path(url).absolute().as_uri(), policy, where)
    elif scheme in ("http", "https"):
        fetched = await download(url, policy, where, budget)
        return fetched  # download() drew from the budget while streaming
    else:
        shown = f"'{scheme}'" if scheme else "none"
        raise InvalidInputError(
            f"{where}: unsupported URL scheme {shown}; use http(s)://, data: or file:// (when the server allows it).",
            param=where, code="invalid_media_url")
    if budget is not None:
        budget.take(len(fetched.data), where)
    return fetched


def decode_data_uri(url: str, policy: MediaPolicy, where: str) -> FetchedMedia:
    """`data:[<type>][;base64],<payload>` (RFC 2397)."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise InvalidInputError(f"{where}: malformed data: URI (no comma before the payload).", param=where,
                                code="invalid_media_url")
    params = [p.strip() for p in header.split(";")]
    declared = params[0].lower() or None
    if "base64" in (p.lower() for p in params[1:]):
        return FetchedMedia(decode_base64(payload, policy, where), "a data: URI", declared)
    data = unquote_to_bytes(payload)
    _check_size(len(data), policy, where)
    return FetchedMedia(data, "a data: URI", declared)


def decode_base64(payload: str, policy: MediaPolicy, where: str) -> bytes:
    """Base64 (standard or URL-safe alphabet, padding optional), size-checked before decoding."""
    text = "".join(payload.split())
    _check_size(len(text) * 3 // 4, policy, where)
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{where}: the base64 payload is malformed ({exc}).", param=where,
                                code="invalid_media_url") from None


def read_local_file(url: str, policy: MediaPolicy, where: str) -> FetchedMedia:
    """A file under --allowed-local-media-path, judged by its real path (symlinks resolved) before and after open."""
    root_setting = policy.allowed_local_media_path
    if root_setting is None:
        raise InvalidInputError(
            f"{where}: file:// URLs are off on this server; its operator can allow a folder with "
            "--allowed-local-media-path DIR. Send the media inline as a data: URI instead.",
            param=where, code="local_media_not_allowed")
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise InvalidInputError(f"{where}: file:// URLs must name a local path (got host '{parts.netloc}').",
                                param=where, code="invalid_media_url")
    raw = unquote(parts.path)
    if not raw.startswith("/") or "\x00" in raw:
        raise InvalidInputError(f"{where}: file:// URLs need an absolute path.", param=where, code="invalid_media_url")
    root = Path(root_setting).resolve()
    real = Path(raw).resolve()
    if not real.is_relative_to(root):
        raise InvalidInputError(
            f"{where}: {raw} is outside --allowed-local-media-path ({root}); symbolic links are followed before "
            "this check.", param=where, code="local_media_not_allowed")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InvalidInputError(f"{where}: no such file {raw}.", param=where, code="media_not_found") from None
    except OSError as exc:
        raise InvalidInputError(f"{where}: cannot open {raw} ({exc.strerror}).", param=where,
                                code="media_not_found") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInputError(f"{where}: {raw} is not a regular file.", param=where, code="media_not_found")
        opened = Path(f"/proc/self/fd/{fd}")
        if opened.exists() and not Path(os.readlink(opened)).is_relative_to(root):
            raise InvalidInputError(f"{where}: {raw} is outside --allowed-local-media-path ({root}).", param=where,
                                    code="local_media_not_allowed")
        _check_size(info.st_size, policy, where)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(policy.max_media_bytes + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    _check_size(len(data), policy, where)
    return FetchedMedia(data, f"file {raw}")


async def download(url: str, policy: MediaPolicy, where: str, budget: ByteBudget | None) -> FetchedMedia:
    """GET `url`, following at most policy.max_redirects redirects, each hop resolved and checked afresh."""
    try:
        async with asyncio.timeout(policy.fetch_timeout_s):
            return await _download(url, policy, where, budget)
    except TimeoutError:
        raise InvalidInputError(
            f"{where}: fetching {_short(url)} did not finish within {policy.fetch_timeout_s:g} s.",
            param=where, code="media_fetch_timeout") from None


async def _download(url: str, policy: MediaPolicy, where: str, budget: ByteBudget | None) -> FetchedMedia:
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidInputError(f"{where}: invalid URL ({exc}).", param=where, code="invalid_media_url") from None
    for _hop in range(policy.max_redirects + 1):
        if current.scheme not in ("http", "https") or not current.host:
            raise InvalidInputError(f"{where}: a redirect led to {_short(str(current))}; only http(s) URLs are "
                                    "followed.", param=where, code="invalid_media_url")
        host = current.raw_host.decode("ascii")
        port = current.port or (443 if current.scheme == "https" else 80)
        ip = await resolve_checked(host, port, policy.allowed_media_domains, where)
        result = await _get_once(current, ip, policy, where, budget)
        if isinstance(result, FetchedMedia):
            return result
        current = result  # the next hop
    raise InvalidInputError(f"{where}: more than {policy.max_redirects} redirects fetching {_short(url)}.",
                            param=where, code="media_fetch_failed")


async def _get_once(url: httpx.URL, ip: str, policy: MediaPolicy, where: str,
                    budget: ByteBudget | None) -> FetchedMedia | httpx.URL:
    """One GET sent to the checked address `ip` with the original Host header and TLS server name."""
    target = url.copy_with(host=ip)
    host_header = url.netloc.decode("ascii")
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    timeout = httpx.Timeout(policy.fetch_timeout_s)
    verify = _tls_context() if url.scheme == "https" else True
    headers = {"Host": host_header, "User-Agent": f"glmv/{__version__}", "Accept": "*/*", "Accept-Encoding": "identity"}
    try:
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout, verify=verify) as client:
            request = client.build_request("GET", target, headers=headers, extensions=extensions)
            response = await client.send(request, stream=True)
            try:
                _check_peer(response, ip, url, where)
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    return url.join(response.headers["location"])
                if response.status_code >= 400:
                    raise InvalidInputError(f"{where}: {_short(str(url))} answered HTTP {response.status_code}.",
                                            param=where, code="media_fetch_failed")
                length = response.headers.get("content-length")
                if length and length.isdigit():
                    _check_size(int(length), policy, where)
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    _check_size(size, policy, where)
                    if budget is not None:
                        budget.take(len(chunk), where)
                    chunks.append(chunk)
                return FetchedMedia(b"".join(chunks), _short(str(url)), response.headers.get("content-type"))
            finally:
                await response.aclose()
    except httpx.TimeoutException:
        raise InvalidInputError(f"{where}: fetching {_short(str(url))} timed out after {policy.fetch_timeout_s:g} s.",
                                param=where, code="media_fetch_timeout") from None
    except httpx.HTTPError as exc:
        raise InvalidInputError(f"{where}: fetching {_short(str(url))} failed ({type(exc).__name__}: {exc}).",
                                param=where, code="media_fetch_failed") from None


def _tls_context() -> ssl.SSLContext:
    """The system's CAs (SSL_CERT_FILE / SSL_CERT_DIR honoured) plus certifi's. Built here because trust_env stays
    off: it would also honour HTTP(S)_PROXY, and a proxy would be the address connected, not the one checked."""
    context = ssl.create_default_context()
    context.load_verify_locations(certifi.where())
    return context


def _check_peer(response: httpx.Response, ip: str, url: httpx.URL, where: str) -> None:
    """Belt and braces: the socket really is connected to the address that was checked."""
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if peer is not None and str(peer[0]).split("%", 1)[0] != ip:
        raise InvalidInputError(f"{where}: the connection for {_short(str(url))} reached {peer[0]}, not the checked "
                                f"address {ip}.", param=where, code="media_host_not_allowed")


def _check_size(n: int, policy: MediaPolicy, where: str) -> None:
    if n > policy.max_media_bytes:
        raise InvalidInputError(
            f"{where}: the media is larger than this server's limit of {_mib(policy.max_media_bytes)} per item.",
            status=413, param=where, code="media_too_large")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def _short(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[:limit] + "..."
