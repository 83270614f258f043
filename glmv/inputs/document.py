"""Documents (PDF, PPT, PPTX) -> page images sized to fit the context, rendered with pdfium (pypdfium2, Apache-2.0).

GLM-4.1V reads documents as pictures of their pages (the official demo renders PDF pages at 180 dpi, about 4,000
tokens an A4 page). A 40-page PDF at that resolution needs 160k tokens, more than the context; so before rendering,
`plan_pages` picks one scale for all pages that fits the token budget (the context minus the answer's reserve and
the rest of the prompt), lowering resolution down to a legibility floor and then reading fewer pages. The
prompt's `info` says how many pages were read out of how many.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import pypdfium2 as pdfium
from PIL import Image

from glmv.inputs.cache import MediaCache
from glmv.inputs.errors import InvalidInputError
from glmv.inputs.office import convert_to_pdf
from glmv.inputs.sizing import PixelBounds, VisionGeometry, image_tokens

_PDFIUM = threading.Lock()  # pdfium is not thread-safe: one call into it at a time per process
_PAGE_MARKERS = 2  # <|begin_of_image|> and <|end_of_image|> around each page's tokens
_POINTS_PER_INCH = 72.0


@dataclass(frozen=True)
class DocumentSettings:
    dpi: float = 180.0
    max_pages: int = 100
    min_page_tokens: int = 768
    convert_timeout_s: float = 120.0


@dataclass
class RenderedDocument:
    pages: list[Image.Image]
    pages_total: int
    dpi: float  # the resolution the pages were rendered at (lower than asked when the budget demanded)

    @property
    def pages_read(self) -> int:
        return len(self.pages)


@dataclass(frozen=True)
class PagePlan:
    count: int  # pages to read, from the first
    scale: float  # pixels per PDF point


def document_to_pdf(data: bytes, fmt: str, where: str, settings: DocumentSettings) -> bytes:
    if fmt == "pdf":
        return data
    if fmt in ("ppt", "pptx"):
        return convert_to_pdf(data, fmt, where, settings.convert_timeout_s)
    raise InvalidInputError(f"{where}: '{fmt}' is not a document format glmv reads (PDF, PPT, PPTX).", status=415,
                            param=where, code="unsupported_media_type")


def render_document(pdf_bytes: bytes, where: str, settings: DocumentSettings, token_budget: int | None,
                    bounds: PixelBounds, geometry: VisionGeometry, max_page_pixels: int,
                    cache: MediaCache | None = None, digest: str | None = None) -> RenderedDocument:
    """Render the pages that fit `token_budget` (None: no budget, read up to max_pages at full dpi).

    With a cache, rendered pages are kept under the plan (pages, scale) rather than the budget, so the next turn of
    a chat about the same document, whose budget is a little smaller, reuses them when the plan is unchanged.
    """
    # Larger than the processor keeps is wasted work: it would shrink the page again.
    max_page_pixels = min(max_page_pixels, bounds.max_pixels // geometry.temporal_patch_size)
    with _PDFIUM:
        pdf = _open(pdf_bytes, where)
        try:
            total = len(pdf)
            if total == 0:
                raise InvalidInputError(f"{where}: the document has no pages.", param=where, code="invalid_document")
            sizes = [_page_size(pdf, i) for i in range(min(total, settings.max_pages))]
            plan = plan_pages(sizes, settings, token_budget, bounds, geometry, max_page_pixels, where)
            key = ("document-pages", digest, plan, max_page_pixels)
            cached = cache.get(key) if cache is not None and digest is not None else None
            if cached is not None:
                return cached
            pages = [_render_page(pdf, i, _page_scale(sizes[i], plan.scale, max_page_pixels))
                     for i in range(plan.count)]
        except pdfium.PdfiumError as exc:
            raise InvalidInputError(f"{where}: the PDF could not be rendered ({exc}).", param=where,
                                    code="invalid_document") from None
        finally:
            pdf.close()
    document = RenderedDocument(pages=pages, pages_total=total, dpi=plan.scale * _POINTS_PER_INCH)
    if cache is not None and digest is not None:
        cache.put(key, document)
    return document


def plan_pages(sizes: list[tuple[float, float]], settings: DocumentSettings, token_budget: int | None,
               bounds: PixelBounds, geometry: VisionGeometry, max_page_pixels: int, where: str) -> PagePlan:
    """How many leading pages to read and at what common scale, so their tokens fit `token_budget`.

    Full resolution first; then one lower scale for every page, down to where an average page still gets
    `min_page_tokens`; then fewer pages at that floor, with the scale raised again to use the budget.
    """
    full = settings.dpi / _POINTS_PER_INCH
    if token_budget is None:
        return PagePlan(len(sizes), full)

    def cost(count: int, scale: float) -> int:
        return sum(_page_tokens(sizes[i], _page_scale(sizes[i], scale, max_page_pixels), bounds, geometry)
                   + _PAGE_MARKERS for i in range(count))

    if cost(len(sizes), full) <= token_budget:
        return PagePlan(len(sizes), full)
    mean_area = sum(w * h for w, h in sizes) / len(sizes)
    floor = min(full, math.sqrt(settings.min_page_tokens * geometry.factor ** 2 / max(mean_area, 1.0)))
    count, used = 0, 0
    for i in range(len(sizes)):
        used += _page_tokens(sizes[i], _page_scale(sizes[i], floor, max_page_pixels), bounds, geometry) + _PAGE_MARKERS
        if used > token_budget:
            break
        count = i + 1
    if count == 0:
        one_page = cost(1, floor)
        raise InvalidInputError(
            f"{where}: the document does not fit: one page needs about {one_page} tokens and this prompt leaves "
            f"{max(token_budget, 0)} for it (the context minus max_tokens and the rest of the prompt). Lower "
            "max_tokens, shorten the conversation, or send fewer pages.", param=where, code="document_too_long")
    low, high = floor, full
    for _ in range(30):  # the largest scale whose cost fits; cost grows with scale
        mid = (low + high) / 2
        if cost(count, mid) <= token_budget:
            low = mid
        else:
            high = mid
    return PagePlan(count, low)


def _page_size(pdf: pdfium.PdfDocument, index: int) -> tuple[float, float]:
    page = pdf[index]
    try:
        width, height = page.get_size()
    finally:
        page.close()  # close inside the lock: a finalizer running later on another thread would race pdfium
    return max(float(width), 1.0), max(float(height), 1.0)


def _render_page(pdf: pdfium.PdfDocument, index: int, scale: float) -> Image.Image:
    page = pdf[index]
    try:
        bitmap = page.render(scale=scale, fill_color=(255, 255, 255, 255))
        try:
            return bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()
    finally:
        page.close()


def _page_scale(size: tuple[float, float], scale: float, max_page_pixels: int) -> float:
    width, height = size
    area = max(width * height, 1.0)
    return min(scale, math.sqrt(max_page_pixels / area))


def _page_tokens(size: tuple[float, float], scale: float, bounds: PixelBounds, geometry: VisionGeometry) -> int:
    width, height = size
    px_w, px_h = max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))  # as pdfium sizes its bitmap
    try:
        return image_tokens(px_h, px_w, bounds, geometry)
    except ValueError:
        return 1 << 30  # an absurd aspect ratio never fits; the processor would refuse it anyway


def _open(pdf_bytes: bytes, where: str) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(pdf_bytes)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium.raw.FPDF_ERR_PASSWORD or "password" in str(exc).lower():
            raise InvalidInputError(
                f"{where}: the PDF is encrypted with a password; send an unencrypted copy.", param=where,
                code="document_encrypted") from None
        raise InvalidInputError(f"{where}: the PDF is damaged or not a PDF ({exc}).", param=where,
                                code="invalid_document") from None
