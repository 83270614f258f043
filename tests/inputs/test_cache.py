"""The media cache: LRU bounded by bytes; a resent picture or clip is neither decoded nor preprocessed again."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmv.inputs import messages as loader
from glmv.inputs.cache import MediaCache, content_hash, sizeof
from tests.inputs.media import data_uri, image_bytes, image_part, text_part, user, video_bytes, video_part


def test_lru_evicts_least_recent_by_bytes():
    cache = MediaCache(max_bytes=300)
    for key in "abc":
        cache.put(key, np.zeros(100, dtype=np.uint8))
    assert cache.bytes_used == 300 and len(cache) == 3
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("d", np.zeros(100, dtype=np.uint8))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None
    assert cache.stats.evictions == 1 and cache.bytes_used == 300
    cache.put("huge", np.zeros(1000, dtype=np.uint8))  # larger than the whole cache: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 3
    cache.put("a", np.zeros(50, dtype=np.uint8))  # replacing an entry frees its old size
    assert cache.bytes_used == 250


def test_sizeof_counts_media():
    from PIL import Image

    assert sizeof(torch.zeros(10, dtype=torch.float32)) == 40
    assert sizeof(Image.new("RGB", (10, 10))) == 300
    assert sizeof([np.zeros(5, dtype=np.uint8), (np.zeros(5, dtype=np.uint8),)]) == 10


def test_content_hash_is_by_content():
    assert content_hash(b"abc") == content_hash(b"abc") != content_hash(b"abd")


@pytest.fixture
def counting(monkeypatch, builder):
    builder.media_cache.clear()
    builder.patch_cache.clear()
    counts = {"decode_image": 0, "decode_video": 0, "image_processor": 0}
    real_image, real_video = loader.decode_image, loader.decode_video

    def decode_image(*a, **k):
        counts["decode_image"] += 1
        return real_image(*a, **k)

    def decode_video(*a, **k):
        counts["decode_video"] += 1
        return real_video(*a, **k)

    class CountingProcessor:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, *a, **k):
            counts["image_processor"] += 1
            return self.inner(*a, **k)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(loader, "decode_image", decode_image)
    monkeypatch.setattr(loader, "decode_video", decode_video)
    monkeypatch.setattr(builder.processor, "image_processor", CountingProcessor(builder.processor.image_processor))
    return counts


def test_a_resent_image_is_not_decoded_or_preprocessed_again(build_prompt, counting):
    img = data_uri(image_bytes("jpg", 300, 200, seed=9))
    first, _, _ = build_prompt(user(image_part(img), text_part("What is it?")))
    turn2 = user(image_part(img), text_part("What is it?")) + [{"role": "assistant", "content": "A test."}] + \
        user(text_part("Sure?"))
    second, _, _ = build_prompt(turn2)
    assert counting == {"decode_image": 1, "decode_video": 0, "image_processor": 1}
    assert torch.equal(first.mm.pixel_values, second.mm.pixel_values)
    assert first.mm.image_hashes == second.mm.image_hashes
    # Other bounds: the decoded picture is reused, the patches are made anew.
    third, _, _ = build_prompt(user(image_part(img)), mm_processor_kwargs={"max_pixels": 112 * 112})
    assert counting["decode_image"] == 1 and counting["image_processor"] == 2
    assert third.mm.image_hashes != first.mm.image_hashes  # different patches, different prefix-cache key


def test_a_resent_video_is_not_decoded_again(build_prompt, counting):
    vid = data_uri(video_bytes("mp4", "libx264", frames=12, fps=6))
    first, _, _ = build_prompt(user(video_part(vid)))
    second, _, _ = build_prompt(user(video_part(vid)))
    assert counting["decode_video"] == 1
    assert torch.equal(first.mm.pixel_values_videos, second.mm.pixel_values_videos)
    build_prompt(user(video_part(vid)), media_io_kwargs={"video": {"fps": 4}})  # other sampling: decoded anew
    assert counting["decode_video"] == 2


def test_a_document_in_a_longer_chat_is_not_rendered_or_converted_again(build_prompt, builder, monkeypatch):
    from glmv.inputs import document
    from tests.inputs.media import file_part, pdf_bytes, pptx_bytes

    builder.media_cache.clear()
    builder.patch_cache.clear()
    counts = {"render": 0, "convert": 0}
    real_render = document._render_page

    def render(*a, **k):
        counts["render"] += 1
        return real_render(*a, **k)

    def convert(data, fmt, where, settings):  # stands in for LibreOffice: any PPTX becomes a 2-page PDF
        counts["convert"] += 1
        return pdf_bytes(2, size=(200, 150))

    monkeypatch.setattr(document, "_render_page", render)
    monkeypatch.setattr(loader, "document_to_pdf", convert)
    deck = file_part(data_uri(pptx_bytes(2)), "deck.pptx")
    turn1 = user(deck, text_part("Summarize the deck."))
    first, _, _ = build_prompt(turn1, max_tokens=256)
    turn2 = turn1 + [{"role": "assistant", "content": "It has two slides."}] + user(text_part("And slide 2?"))
    second, _, _ = build_prompt(turn2, max_tokens=256)
    assert counts == {"render": 2, "convert": 1}
    assert first.info == second.info and first.mm.image_hashes == second.mm.image_hashes


def test_sizeof_counts_the_buffer_a_view_keeps_alive():
    batch = torch.zeros(100, 10)
    assert sizeof(batch[:10]) == 4000  # the slice keeps all 100 rows alive
    base = np.zeros(1000, dtype=np.uint8)
    assert sizeof(base[:10]) == 1000 and sizeof(base[:10].copy()) == 10


def test_a_cache_reports_its_usage_and_bound():
    cache = MediaCache(max_bytes=250)
    for key in "abc":
        cache.put(key, np.zeros(100, dtype=np.uint8))
    usage = cache.usage("media")
    assert (usage.name, usage.bytes_used, usage.entries, usage.capacity_bytes) == ("media", 200, 2, 250)
    off = MediaCache(max_bytes=0)
    off.put("a", np.zeros(1, dtype=np.uint8))
    assert len(off) == 0  # a bound of 0 turns the cache off


def test_vision_cache_keeps_compact_copies_of_batch_slices():
    from glmv.models.vision import VisionEmbeddingCache

    cache = VisionEmbeddingCache(max_bytes=1000)
    batch = torch.arange(400, dtype=torch.float32).view(100, 4)  # one encoder call's output for several pictures
    first, rest = batch.split([10, 90])
    cache.put("first", first)
    kept = cache.get("first")
    assert torch.equal(kept, first)
    assert kept.untyped_storage().nbytes() == 160  # not the batch's 1,600 bytes
    assert cache.bytes == 160 and len(cache) == 1
    whole = torch.zeros(10, 4)
    cache.put("whole", whole)
    assert cache.get("whole") is whole  # an owning tensor is kept as it is


def test_vision_cache_counts_the_blocks_the_allocator_gave():
    """On CUDA an entry counts the allocator's bytes around its copy (a block can be larger than the tensor), and
    the bound holds in those bytes."""
    from glmv.models.vision import VisionEmbeddingCache

    class Allocator:  # a block 96 bytes larger than each 160-byte copy, as a large free block left unsplit
        def __init__(self):
            self.allocated, self.reads = 0, 0

        def __call__(self) -> int:
            self.reads += 1
            if self.reads % 2 == 0:  # the read after the copy
                self.allocated += 256
            return self.allocated

    allocator = Allocator()
    cache = VisionEmbeddingCache(max_bytes=600, allocated_bytes=allocator)
    owning = torch.zeros(10, 4)  # 160 bytes
    cache.put("a", owning)
    assert cache.bytes == 256 and cache.get("a") is not owning  # a fresh copy: its block is the one measured
    assert torch.equal(cache.get("a"), owning)
    cache.put("b", torch.ones(10, 4))
    cache.put("c", torch.ones(10, 4))  # 768 > 600: "a" goes
    assert cache.bytes == 512 and cache.get("a") is None and len(cache) == 2

