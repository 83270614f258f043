"""MultimodalEncoder: the vision embeddings a step's prompt chunks need, from the cache or one batched tower call,
and where in the step's hidden states they go."""

from __future__ import annotations

import time

import torch

from glmv.engine.observer import NO_OBSERVER, StepObserver
from glmv.engine.request import Request
from glmv.engine.scheduler import ScheduledRequest
from glmv.inputs.prompt import stage_pixels
from glmv.models.glm4v import Glm4vModel
from glmv.models.vision import VisionEmbeddingCache


class MultimodalEncoder:
    def __init__(self, model: Glm4vModel, cache: VisionEmbeddingCache):
        self.model = model
        self.device = model.device
        self.dtype = model.dtype
        self.cache = cache
        self.tokens_encoded = 0
        self.observer: StepObserver = NO_OBSERVER

    def encode(self, entries: list[ScheduledRequest]) -> None:
        """Vision embeddings for media the chunks reach (into `request.mm_embeds`): from the cache, else one
        batched encoder call."""
        pending: dict[str, list[tuple[Request, int]]] = {}
        for e in entries:
            req = e.request
            for j, item in enumerate(req.media):
                if j in req.mm_embeds or not item.overlaps(e.start, e.end):
                    continue
                emb = self.cache.get(item.key)
                if emb is not None:
                    req.mm_embeds[j] = emb
                else:
                    pending.setdefault(item.key, []).append((req, j))
        if not pending:
            return
        if self.model.vision is None:
            raise ValueError("This engine was loaded without the vision tower; it cannot take images or video.")
        pixels, grids, owners = [], [], []
        for users in pending.values():
            req, j = users[0]
            item = req.media[j]
            mm = req.prompt.mm
            source = mm.pixel_values if item.kind == "image" else mm.pixel_values_videos
            pixels.append(source[item.patch_start:item.patch_end])
            grids.append(item.grid)
            owners.append(users)
        pixels = [self._upload(p) for p in pixels]  # no CPU-side concatenation
        embeds = self.model.vision.encode(pixels[0] if len(pixels) == 1 else torch.cat(pixels, dim=0), grids)
        sizes = [users[0][0].media[users[0][1]].num_tokens for users in owners]
        self.tokens_encoded += sum(sizes)
        for users, emb in zip(owners, embeds.split(sizes, dim=0), strict=True):
            emb = emb.to(self.dtype)
            self.cache.put(users[0][0].media[users[0][1]].key, emb)
            for req, j in users:
                req.mm_embeds[j] = emb

    def _upload(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels to the device in the model dtype. On CUDA they are converted on the CPU's threads into pinned
        memory first (round to nearest even, as the device would): half the bytes of float32 cross the bus, and
        asynchronously (a 1008x1008 image is 24 MB of float32)."""
        if self.device.type != "cuda" or pixels.device.type != "cpu":
            return pixels.to(self.device)
        started = time.perf_counter()
        # pixels the door staged already (AsyncEngine.stage_prompt) go up as they are
        out = stage_pixels(pixels, self.dtype, pin_memory=True).to(self.device, non_blocking=True)
        self.observer.pixels_uploaded(time.perf_counter() - started)
        return out

    @staticmethod
    def placement(media_entries: list[ScheduledRequest], starts: dict[int, int]):
        """For each picture a step's chunks reach: (request, media index, rows of its embedding the chunk takes) and
        the rows of the step's hidden states they go to. Host-side indices only (uploaded before the tower runs)."""
        plan, sels, dsts = [], [], []
        for e in media_entries:
            req = e.request
            for j, item in enumerate(req.media):
                if not item.overlaps(e.start, e.end):
                    continue
                sel = ((item.positions >= e.start) & (item.positions < e.end)).nonzero().squeeze(1)
                plan.append((req, j, int(sel.numel())))
                sels.append(sel)
                dsts.append(item.positions[sel] - e.start + starts[id(e)])
        return plan, sels, dsts
