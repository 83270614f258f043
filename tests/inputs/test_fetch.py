"""Sources: http(s) behind the SSRF guard, data: URIs, file:// under an allowed folder; every refusal a clear 4xx."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from glmv.inputs.errors import InvalidInputError
from glmv.inputs.fetch import ByteBudget, fetch_media
from glmv.inputs.netguard import address_refusal, host_is_listed, resolve_checked
from glmv.inputs.policy import MediaPolicy
from tests.inputs.http_host import http_host
from tests.inputs.media import data_uri, image_bytes, image_part, user

PNG = image_bytes("png", 64, 48, seed=7)
WHERE = "messages[0].content[0]"


class _Media(BaseHTTPRequestHandler):
    """Routes: /img.png (served as text/plain), /host (echoes the Host header), /big, /stream-big, /redirect?to=,
    /loop, /missing."""

    def do_GET(self):  # noqa: N802 - http.server's name
        path, _, query = self.path.partition("?")
        if path == "/img.png":
            self._send(200, PNG, "text/plain")
        elif path == "/host":
            self._send(200, self.headers.get("Host", "").encode(), "text/plain")
        elif path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(10 << 20))
            self.end_headers()
            self.wfile.write(b"\0" * 1024)
        elif path == "/stream-big":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                for _ in range(200):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query.removeprefix("to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"no", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    with http_host(_Media) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_socket():
    """Accepts connections and never answers: a URL that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/never"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    sock.close()


def _fetch(url: str, policy: MediaPolicy, budget: ByteBudget | None = None):
    return asyncio.run(fetch_media(url, policy, WHERE, budget))


def _refused(url: str, policy: MediaPolicy, status: int = 400) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as err:
        _fetch(url, policy)
    assert err.value.status == status, err.value
    assert err.value.param == WHERE and str(err.value).startswith(WHERE)
    return err.value


LOCAL = MediaPolicy(allowed_media_domains=("127.0.0.1",), fetch_timeout_s=3.0)


def test_loopback_is_refused_unless_allowed(server):
    err = _refused(f"{server}/img.png", MediaPolicy())
    assert "127.0.0.1" in str(err) and "loopback" in str(err) and "--allowed-media-domains" in str(err)
    fetched = _fetch(f"{server}/img.png", LOCAL)
    assert fetched.data == PNG and fetched.declared_type == "text/plain"  # the bytes, whatever the header says


def test_names_resolving_to_loopback_are_refused():
    assert "loopback" in str(_refused("http://localhost:9/x.png", MediaPolicy()))


def test_allow_list_restricts_hosts(server):
    port = server.rsplit(":", 1)[1]
    err = _refused(f"http://localhost:{port}/img.png", LOCAL)
    assert "not in --allowed-media-domains" in str(err)


def test_the_checked_address_is_connected_with_the_original_host_header(server):
    port = server.rsplit(":", 1)[1]
    fetched = _fetch(f"http://localhost:{port}/host", MediaPolicy(allowed_media_domains=("localhost",)))
    assert fetched.data == f"localhost:{port}".encode()


def test_redirects_are_rechecked_at_every_hop(server):
    port = server.rsplit(":", 1)[1]
    assert _fetch(f"{server}/redirect?to=/img.png", LOCAL).data == PNG
    err = _refused(f"{server}/redirect?to=http://localhost:{port}/img.png", LOCAL)
    assert "localhost" in str(err)
    both = MediaPolicy(allowed_media_domains=("127.0.0.1", "localhost"))
    assert _fetch(f"{server}/redirect?to=http://localhost:{port}/img.png", both).data == PNG
    assert "file" in str(_refused(f"{server}/redirect?to=file:///etc/passwd", LOCAL))
    assert "redirects" in str(_refused(f"{server}/loop", LOCAL))


def test_http_errors_are_400(server):
    assert "HTTP 404" in str(_refused(f"{server}/missing", LOCAL))


def test_downloads_over_the_cap_are_413(server):
    small = MediaPolicy(allowed_media_domains=("127.0.0.1",), max_media_bytes=1 << 20)
    assert "1 MiB" in str(_refused(f"{server}/big", small, 413))  # declared Content-Length
    assert "1 MiB" in str(_refused(f"{server}/stream-big", small, 413))  # counted while streaming


def test_a_url_that_never_answers_times_out(silent_socket):
    policy = MediaPolicy(allowed_media_domains=("127.0.0.1",), fetch_timeout_s=1.0)
    start = time.monotonic()
    err = _refused(silent_socket, policy)
    assert time.monotonic() - start < 5
    assert err.code == "media_fetch_timeout" and "1 s" in str(err)


def test_prompt_byte_budget_spans_parts(server):
    budget = ByteBudget(len(PNG) + 10)
    _fetch(f"{server}/img.png", LOCAL, budget)
    with pytest.raises(InvalidInputError) as err:
        _fetch(f"{server}/img.png", LOCAL, budget)
    assert err.value.status == 413 and "together" in str(err.value)


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "gopher://x", "javascript:alert(1)", "/etc/passwd",
                                 "example.com/a.png", "   "])
def test_other_schemes_are_refused(url):
    _refused(url, MediaPolicy())


def test_data_uris():
    import base64

    policy = MediaPolicy()
    assert _fetch(data_uri(PNG, "image/png"), policy).data == PNG
    urlsafe = base64.urlsafe_b64encode(PNG).decode().rstrip("=")
    assert _fetch(f"data:image/png;base64,{urlsafe}", policy).data == PNG
    spaced = "\n".join(base64.b64encode(PNG).decode()[i:i + 76] for i in range(0, 4000, 76))
    assert _fetch(f"data:;base64,{spaced}", policy).data[:10] == PNG[:10]
    assert _fetch("data:text/plain,hello%20world", policy).data == b"hello world"
    assert "base64" in str(_refused("data:image/png;base64,@@@@", policy))
    assert "comma" in str(_refused("data:image/png;base64", policy))
    tiny = MediaPolicy(max_media_bytes=100)
    _refused(data_uri(PNG), tiny, 413)


def test_file_urls_are_off_by_default(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG)
    err = _refused(f"file://{tmp_path}/a.png", MediaPolicy())
    assert "--allowed-local-media-path" in str(err)


def test_file_urls_under_the_allowed_folder(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a b.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    os.symlink(tmp_path / "secret.png", root / "escape.png")
    os.symlink(root / "sub" / "a b.png", root / "inside.png")
    os.mkfifo(root / "pipe.png")
    policy = MediaPolicy(allowed_local_media_path=root)
    assert _fetch(f"file://{root}/sub/a%20b.png", policy).data == PNG
    assert _fetch(f"file://{root}/inside.png", policy).data == PNG  # a link that stays inside is fine
    assert "outside" in str(_refused(f"file://{tmp_path}/secret.png", policy))
    assert "outside" in str(_refused(f"file://{root}/escape.png", policy))  # symlink escape
    assert "outside" in str(_refused(f"file://{root}/../secret.png", policy))
    assert "no such file" in str(_refused(f"file://{root}/nope.png", policy))
    assert "regular file" in str(_refused(f"file://{root}/sub", policy))
    assert "regular file" in str(_refused(f"file://{root}/pipe.png", policy))
    assert "local path" in str(_refused(f"file://otherhost{root}/sub/a%20b.png", policy))
    _refused(f"file://{root}/sub/a%20b.png", MediaPolicy(allowed_local_media_path=root, max_media_bytes=10), 413)


def test_missing_allowed_folder_is_a_startup_error(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        MediaPolicy(allowed_local_media_path=tmp_path / "absent")


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd12::1", "private"),
    ("169.254.169.254", "metadata"), ("100.100.100.200", "metadata"), ("168.63.129.16", "metadata"),
    ("fd00:ec2::254", "metadata"), ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("240.0.0.1", "reserved"),
    ("100.64.0.1", "not publicly routable"), ("2002:7f00:1::", "loopback"),
    ("8.8.8.8", None), ("2001:4860:4860::8888", None), ("93.184.216.34", None),
])
def test_address_rules(address, reason):
    got = address_refusal(ipaddress.ip_address(address))
    assert (got is None) if reason is None else (reason in got)


def test_allow_list_matching():
    assert host_is_listed("Example.COM.", ("example.com",))
    assert not host_is_listed("img.example.com", ("example.com",))
    assert host_is_listed("img.example.com", ("*.example.com",))
    assert not host_is_listed("example.com", ("*.example.com",))
    assert not host_is_listed("badexample.com", ("*.example.com",))


def test_listed_hosts_may_be_private():
    assert asyncio.run(resolve_checked("127.0.0.1", 80, ("127.0.0.1",), WHERE)) == "127.0.0.1"
    with pytest.raises(InvalidInputError):
        asyncio.run(resolve_checked("127.0.0.1", 80, (), WHERE))


def test_star_keeps_other_hosts_reachable_but_only_on_public_addresses():
    assert asyncio.run(resolve_checked("8.8.8.8", 80, ("internal.test", "*"), WHERE)) == "8.8.8.8"
    with pytest.raises(InvalidInputError) as err:
        asyncio.run(resolve_checked("8.8.8.8", 80, ("internal.test",), WHERE))
    assert "not in --allowed-media-domains" in str(err.value)
    with pytest.raises(InvalidInputError) as err:
        asyncio.run(resolve_checked("127.0.0.1", 80, ("internal.test", "*"), WHERE))
    assert "loopback" in str(err.value)


def test_loader_refuses_before_fetching_anything_when_counts_are_over(build_prompt, server):
    """Too many images: refused from the part list alone (the URL would be refused anyway, but later)."""
    policy = MediaPolicy(max_images=1)
    with pytest.raises(InvalidInputError) as err:
        build_prompt(user(image_part(f"{server}/img.png"), image_part(f"{server}/img.png")), policy=policy)
    assert err.value.param == "messages[0].content[1]" and "at most 1 images" in str(err.value)


def test_loader_fetches_over_http(build_prompt, server):
    prompt, media, _ = build_prompt(user(image_part(f"{server}/img.png")), policy=LOCAL)
    assert media.images[0].size == (64, 48) and prompt.mm.pixel_values is not None


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """HTTPS on 127.0.0.1 with a self-signed certificate for 'localhost'; records the TLS server names it was sent."""
    import ssl
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    with http_host(_Media, tls=context) as port:
        yield {"url": f"https://localhost:{port}", "cert": cert, "names": names}


def test_https_connects_to_the_checked_address_with_the_hosts_name(tls_server, monkeypatch):
    policy = MediaPolicy(allowed_media_domains=("localhost",), fetch_timeout_s=3.0)
    err = _refused(f"{tls_server['url']}/img.png", policy)  # a self-signed certificate is not trusted
    assert "CERTIFICATE_VERIFY_FAILED" in str(err) or "certificate" in str(err).lower()
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server["cert"]))  # now trusted, like a corporate CA
    assert _fetch(f"{tls_server['url']}/img.png", policy).data == PNG
    assert tls_server["names"][-1] == "localhost"  # SNI carries the name though the socket went to 127.0.0.1
    port = tls_server["url"].rsplit(":", 1)[1]
    ip_policy = MediaPolicy(allowed_media_domains=("127.0.0.1",), fetch_timeout_s=3.0)
    err = _refused(f"https://127.0.0.1:{port}/img.png", ip_policy)  # the certificate names localhost only
    assert "certificate" in str(err).lower() or "hostname" in str(err).lower()
