"""Server errors in a person's words, for `glmv chat`: what happened and what to do, with the raw error kept below.

The server's errors are OpenAI-shaped ({"error": {"message", "type", "param", "code"}} plus the HTTP status) and
written for programmers ("messages[2].content[0] ... cannot share a prompt with ..."). Someone chatting needs the
sentence that says what to type next; the raw text still follows as the details, for a bug report. The web page
has the same table in JavaScript (glmv/ui/static/errors.js); the tests hold both to the same sentences.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_FILE_KINDS = ("images (JPG, PNG, GIF, BMP, TIFF, WEBP), a video (MP4, AVI, MKV, MOV, WEBM) or a document "
               "(PDF, PPT, PPTX)")
_CONTEXT = re.compile(r"maximum context length (?:is|of) (\d+) tokens")
_ASKED = re.compile(r"the request has (\d+) prompt tokens plus max_tokens (\d+)")

# code -> the sentence; {context} is the model's context length when the message gives it.
_BY_CODE = {
    "document_too_long": "The document does not fit the model's context: ask about fewer pages (or lower "
    "--max-tokens), or start a new chat with /reset.",
    "unsupported_media_type": "The server cannot read an attached file: whatever its name says, it is not a kind "
    f"of file it knows. Attach {_FILE_KINDS}.",
    "document_converter_missing": "The server cannot open PowerPoint files (it has no LibreOffice): send the "
    "slides as a PDF.",
    "document_conversion_failed": "The server could not convert the slides: save them as a PDF and attach that.",
    "document_encrypted": "The document is password-protected: remove the password and attach it again.",
    "unsupported_media_mix": "A video cannot share a conversation with images (GLM-4.1V reads one or the other): "
    "start a new chat with /reset for the video.",
    "too_many_media": "Too many attachments for one conversation: send fewer, or start a new chat with /reset.",
    "image_too_large": "The image is too large for the server: attach a smaller one.",
    "video_too_large": "The video is too large for the server: attach a shorter or smaller one.",
    "media_too_large": "The attachments are too large for the server: attach fewer or smaller files.",
    "invalid_image": "The server could not read the image (damaged, or not really an image?): check that it "
    "opens on your computer, or attach another.",
    "invalid_video": "The server could not read the video (damaged, or not really a video?): check that it plays "
    "on your computer, or attach another.",
    "invalid_document": "The server could not read the document (damaged, or empty?): check that it opens on your "
    "computer, or attach another.",
    "empty_media": "An attached file is empty: attach it again.",
    "model_not_found": "The server does not serve that model: leave the model name out to use the server's own, "
    "or name one that GET /v1/models lists.",
    "connection_failed": "The connection to the server broke: check that it is still running (the --url "
    "address), then send the message again.",
    "overloaded": "The server is busy right now: wait a few seconds and send the message again.",
    "replica_failed": "The server is busy right now: wait a few seconds and send the message again.",
}
_BY_STATUS = {
    401: "The server wants an API key: give it with --api-key KEY (or set GLMV_API_KEY).",
    403: "The server refused access with this API key: check the key given with --api-key.",
    404: "The server has no such model or route: check the --url address and the model name.",
    413: "The message is too large for the server: attach fewer or smaller files.",
    415: f"The server cannot read this kind of file. Attach {_FILE_KINDS}.",
    429: "The server is busy right now: wait a few seconds and send the message again.",
    503: "The server is busy right now: wait a few seconds and send the message again.",
}


@dataclass(frozen=True)
class ServerError:
    """An error as the server sent it: the HTTP status (None: it came inside a stream) and the OpenAI fields."""

    status: int | None
    message: str
    type: str | None = None
    param: str | None = None
    code: str | None = None

    def details(self) -> str:
        """The raw error on one line: status, type, code and param, then the server's own message."""
        head = [f"HTTP {self.status}" if self.status else "stream error"]
        head += [str(v) for v in (self.type, self.code and f"code {self.code}", self.param and f"param {self.param}")
                 if v]
        return f"{', '.join(head)}: {self.message}"


def parse_error(status: int | None, body: bytes | str | dict) -> ServerError:
    """The error of a response body: the OpenAI shape, FastAPI's {"detail"}, or plain text."""
    data = body
    if not isinstance(body, dict):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return ServerError(status, text.strip()[:500] or "no details")
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        if isinstance(code, int):  # glmv puts the status here when there is no finer code (and in streams)
            return ServerError(status or code, str(err.get("message") or "no details"), err.get("type"),
                               err.get("param"))
        return ServerError(status, str(err.get("message") or "no details"), err.get("type"), err.get("param"),
                           None if code is None else str(code))
    if isinstance(data, dict) and (err or data.get("detail")):
        detail = err or data["detail"]
        return ServerError(status, detail if isinstance(detail, str) else json.dumps(detail))
    return ServerError(status, str(data)[:500])


def in_words(err: ServerError) -> str:
    """What happened and what to do, for someone at `glmv chat` (the raw error is err.details())."""
    if err.code == "context_length_exceeded":
        found = _CONTEXT.search(err.message)
        size = f" ({found[1]} tokens)" if found else ""
        if err.message.startswith("The media of this prompt"):
            return (f"The attachments alone need more than the model's context{size}: attach fewer or smaller "
                    "images, or a shorter video.")
        asked = _ASKED.search(err.message)
        if asked and found and int(asked[1]) < int(found[1]):
            return (f"The answer's token limit (max_tokens {asked[2]}) is more than the model's context{size} "
                    f"leaves after this conversation ({int(found[1]) - int(asked[1])} tokens): lower it "
                    "(--max-tokens, --extra-body) or leave it out.")
        return (f"This conversation no longer fits the model's context{size}. Start a new chat (/reset) or drop "
                "the oldest turns.")
    if err.code in _BY_CODE:
        return _BY_CODE[err.code]
    if err.status in _BY_STATUS:
        return _BY_STATUS[err.status]
    if err.status == 400 and err.param and err.param != "messages":
        return (f"The server refused a setting ({err.param}): change it (--temperature, --max-tokens, /budget or "
                "--extra-body) and send again.")
    if err.status is not None and err.status >= 500:
        return ("The server failed while answering (its log says why): send the message again, and report it if "
                "it keeps happening.")
    return "The server refused the message."
