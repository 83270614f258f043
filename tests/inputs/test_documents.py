"""Documents: PDF pages rendered by pdfium, PPTX converted by LibreOffice, sized to fit the context; bad files 4xx."""

from __future__ import annotations

import math
import stat
import time

import numpy as np
import pytest

from glmv.inputs.document import DocumentSettings, plan_pages, render_document
from glmv.inputs.errors import InvalidInputError
from glmv.inputs.office import soffice_path
from glmv.inputs.policy import MediaPolicy
from glmv.inputs.sizing import PixelBounds, VisionGeometry, image_tokens
from tests.inputs.media import (
    data_uri,
    encrypted_pdf_bytes,
    file_part,
    image_bytes,
    image_part,
    pdf_bytes,
    pptx_bytes,
    text_part,
    user,
)

BOUNDS = PixelBounds(12544, 47040000)
GEO = VisionGeometry()
A4 = (595.0, 842.0)
WHERE = "messages[0].content[0]"


def test_pdf_pages_render_at_180_dpi_in_order(build_prompt, builder):
    data = pdf_bytes(3, size=(144, 216))  # 2 x 3 inches
    prompt, media, normalized = build_prompt(user(file_part(data_uri(data, "application/pdf")),
                                                  text_part("Summarize.")), max_tokens=64)
    assert [p["type"] for p in normalized[0]["content"]] == ["image", "image", "image", "text"]
    assert [im.size for im in media.images] == [(360, 540)] * 3  # 180 dpi
    levels = [int(np.asarray(im).mean()) for im in media.images]
    assert levels == [40, 90, 140]  # the pages' own grey levels, in order
    assert prompt.info == {"document_pages": 3, "document_pages_total": 3, "document_dpi": 180.0}
    assert prompt.mm.image_grid_thw.shape[0] == 3


def test_raw_base64_file_data_and_url_shapes_are_accepted(build_prompt, tmp_path):
    raw = __import__("base64").b64encode(pdf_bytes(1, size=(100, 100))).decode()
    _, media, _ = build_prompt(user({"type": "file", "file": {"file_data": raw, "filename": "x.pdf"}}))
    assert len(media.images) == 1
    (tmp_path / "d.pdf").write_bytes(pdf_bytes(2, size=(100, 100)))
    policy = MediaPolicy(allowed_local_media_path=tmp_path)
    for part in ({"type": "file", "file": {"url": f"file://{tmp_path}/d.pdf"}},
                 {"type": "file_url", "file_url": {"url": f"file://{tmp_path}/d.pdf"}}):
        _, media, _ = build_prompt(user(part), policy=policy)
        assert media.info["document_pages"] == 2


def test_pages_shrink_then_drop_to_fit_the_budget():
    settings = DocumentSettings(dpi=180, max_pages=100, min_page_tokens=768)
    sizes = [A4] * 40
    full = image_tokens(round(842 * 2.5), round(595 * 2.5), BOUNDS, GEO)
    assert 3800 < full < 4200  # about 4k tokens an A4 page at 180 dpi (as the official demo)
    roomy = plan_pages(sizes[:3], settings, 50_000, BOUNDS, GEO, 10 ** 8, WHERE)
    assert roomy.count == 3 and roomy.scale == pytest.approx(2.5)
    shrunk = plan_pages(sizes[:10], settings, 20_000, BOUNDS, GEO, 10 ** 8, WHERE)
    assert shrunk.count == 10 and shrunk.scale < 2.5
    per_page = image_tokens(math.ceil(842 * shrunk.scale), math.ceil(595 * shrunk.scale), BOUNDS, GEO) + 2
    assert 10 * per_page <= 20_000 and per_page >= 768
    dropped = plan_pages(sizes, settings, 20_000, BOUNDS, GEO, 10 ** 8, WHERE)
    per_page = image_tokens(math.ceil(842 * dropped.scale), math.ceil(595 * dropped.scale), BOUNDS, GEO) + 2
    assert 20 <= dropped.count < 40 and dropped.count * per_page <= 20_000 and per_page >= 700
    with pytest.raises(InvalidInputError) as err:
        plan_pages(sizes, settings, 300, BOUNDS, GEO, 10 ** 8, WHERE)
    assert err.value.status == 400 and "does not fit" in str(err.value) and err.value.param == WHERE


def test_document_budget_follows_max_tokens(build_prompt, builder):
    data = data_uri(pdf_bytes(12, size=A4), "application/pdf")
    prompt, media, _ = build_prompt(user(file_part(data), text_part("What does it say?")), max_model_len=4096,
                                    max_tokens=1000)
    info = prompt.info
    assert info["document_pages_total"] == 12 and 1 <= info["document_pages"] < 12
    assert len(prompt) <= 4096 - 1000  # the pages were sized so the answer still fits
    assert info["document_dpi"] < 180
    # A smaller answer budget leaves room for more of the document.
    more, _, _ = build_prompt(user(file_part(data), text_part("What does it say?")), max_model_len=4096,
                              max_tokens=100)
    assert more.info["document_pages"] > info["document_pages"] or more.info["document_dpi"] > info["document_dpi"]
    assert len(more) <= 4096 - 100


def test_page_cap_and_dpi_override(build_prompt):
    data = data_uri(pdf_bytes(5, size=(72, 72)), "application/pdf")
    prompt, media, _ = build_prompt(user(file_part(data)), media_io_kwargs={"document": {"max_pages": 2, "dpi": 72}})
    assert prompt.info == {"document_pages": 2, "document_pages_total": 5, "document_dpi": 72.0}
    assert [im.size for im in media.images] == [(72, 72)] * 2
    with pytest.raises(InvalidInputError) as err:
        build_prompt(user(file_part(data)), media_io_kwargs={"document": {"dpi": 600}})
    assert err.value.status == 400 and "dpi" in err.value.param


def test_encrypted_pdf_is_a_clear_400(build_prompt):
    with pytest.raises(InvalidInputError) as err:
        build_prompt(user(file_part(data_uri(encrypted_pdf_bytes(), "application/pdf"))))
    assert err.value.status == 400 and "encrypted" in str(err.value) and err.value.param == WHERE


def test_damaged_pdf_is_a_400():
    with pytest.raises(InvalidInputError) as err:
        render_document(b"%PDF-1.7\n garbage garbage", WHERE, DocumentSettings(), None, BOUNDS, GEO, 10 ** 8)
    assert err.value.status == 400 and "damaged" in str(err.value)


def test_wrong_kinds_in_parts_are_415(build_prompt):
    with pytest.raises(InvalidInputError) as err:
        build_prompt(user(file_part(data_uri(image_bytes("png")))))
    assert err.value.status == 415 and "image_url" in str(err.value)
    with pytest.raises(InvalidInputError) as err:
        build_prompt(user(image_part(data_uri(pdf_bytes(1)))))
    assert err.value.status == 415 and "'file' part" in str(err.value)
    with pytest.raises(InvalidInputError) as err:  # a DOCX-like ZIP
        import io
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("word/document.xml", "<w/>")
        build_prompt(user(file_part(data_uri(buf.getvalue()))))
    assert err.value.status == 415 and "ZIP" in str(err.value)


@pytest.mark.skipif(soffice_path() is None, reason="LibreOffice absent: `make system-deps` installs it")
def test_pptx_is_converted_by_libreoffice(build_prompt):
    data = data_uri(pptx_bytes(3))
    prompt, media, _ = build_prompt(user(file_part(data, "deck.pptx"), text_part("Read the slides.")),
                                    max_tokens=64)
    assert prompt.info["document_pages_total"] == 3 and prompt.info["document_pages"] >= 1
    first = np.asarray(media.images[0])
    assert first.shape[1] > first.shape[0]  # landscape slides
    assert (first < 128).any() and (first > 200).mean() > 0.5  # dark title text on a light slide


def test_missing_libreoffice_is_a_415(build_prompt, monkeypatch):
    monkeypatch.setattr("glmv.inputs.office.soffice_path", lambda: None)
    with pytest.raises(InvalidInputError) as err:
        build_prompt(user(file_part(data_uri(pptx_bytes(1)), "deck.pptx")))
    assert err.value.status == 415 and "LibreOffice" in str(err.value) and err.value.param == WHERE


def test_conversion_timeout_kills_the_converter(tmp_path, monkeypatch):
    from glmv.inputs.office import convert_to_pdf

    fake = tmp_path / "soffice"
    pidfile = tmp_path / "helper.pid"
    fake.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {pidfile}\nwait\n")  # a converter with a helper process
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr("glmv.inputs.office.soffice_path", lambda: str(fake))
    monkeypatch.setattr("glmv.inputs.office._network_isolation", lambda: ())
    with pytest.raises(InvalidInputError) as err:
        convert_to_pdf(pptx_bytes(1), "pptx", WHERE, timeout_s=2.5)
    assert err.value.status == 400 and "longer than" in str(err.value)
    assert pidfile.exists(), "the fake converter did not start its helper within the time limit (machine overloaded?)"
    helper = pidfile.read_text().strip()
    deadline = time.monotonic() + 5.0  # SIGKILL is delivered at once, but a loaded machine may run the exit late
    while not _gone(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(helper)  # the whole process group was killed, helpers included


def _gone(pid: str) -> bool:
    """No such process, or only its zombie (a container's init may not reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_two_documents_share_the_budget(build_prompt):
    data = data_uri(pdf_bytes(6, size=A4), "application/pdf")
    policy = MediaPolicy(max_documents=2)
    prompt, _, _ = build_prompt(user(file_part(data), file_part(data), text_part("Compare.")), policy=policy,
                                max_model_len=4096, max_tokens=500)
    assert prompt.info["document_pages_total"] == 12 and prompt.info["document_pages"] >= 2
    assert len(prompt) <= 4096 - 500
