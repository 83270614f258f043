/* Server errors in a person's words, for the chat page: what happened and what to do, the raw error kept as details.
 *
 * The server's errors are OpenAI-shaped ({"error": {"message", "type", "param", "code"}} plus the HTTP status) and
 * written for programmers. The page leads with the sentence that says what to do next and keeps the raw text in an
 * expandable Details block. `glmv chat` has the same table in Python (glmv/cli/error_words.py).
 */
(function () {
  "use strict";

  const FILE_KINDS = "images (JPG, PNG, GIF, BMP, TIFF, WEBP), a video (MP4, AVI, MKV, MOV, WEBM) or a document " +
    "(PDF, PPT, PPTX)";
  const BUSY = "The server is busy right now: wait a few seconds and send the message again.";
  const BY_CODE = {
    document_too_long: "The document does not fit the model's context: ask about fewer pages (or lower Max " +
      "tokens in Settings), or start a new chat.",
    unsupported_media_type: "The server cannot read an attached file: whatever its name says, it is not a kind " +
      "of file it knows. Attach " + FILE_KINDS + ".",
    document_converter_missing: "The server cannot open PowerPoint files (it has no LibreOffice): send the " +
      "slides as a PDF.",
    document_conversion_failed: "The server could not convert the slides: save them as a PDF and attach that.",
    document_encrypted: "The document is password-protected: remove the password and attach it again.",
    unsupported_media_mix: "A video cannot share a conversation with images (GLM-4.1V reads one or the other): " +
      "start a new chat for the video.",
    too_many_media: "Too many attachments for one conversation: send fewer, or start a new chat.",
    image_too_large: "The image is too large for the server: attach a smaller one.",
    video_too_large: "The video is too large for the server: attach a shorter or smaller one.",
    media_too_large: "The attachments are too large for the server: attach fewer or smaller files.",
    invalid_image: "The server could not read the image (damaged, or not really an image?): check that it opens " +
      "on your computer, or attach another.",
    invalid_video: "The server could not read the video (damaged, or not really a video?): check that it plays " +
      "on your computer, or attach another.",
    invalid_document: "The server could not read the document (damaged, or empty?): check that it opens on your " +
      "computer, or attach another.",
    empty_media: "An attached file is empty: attach it again.",
    model_not_found: "The server does not serve that model: pick one from the Model list.",
    connection_failed: "The connection to the server broke: check that glmv serve is still running, then send " +
      "the message again.",
    overloaded: BUSY,
    replica_failed: BUSY,
  };
  const BY_STATUS = {
    401: "The server wants an API key: enter it in Settings.",
    403: "The server refused access with this API key: check the key in Settings.",
    404: "The server has no such model or route: reload the page to see what it serves.",
    413: "The message is too large for the server: attach fewer or smaller files.",
    415: "The server cannot read this kind of file. Attach " + FILE_KINDS + ".",
    429: BUSY,
    503: BUSY,
  };

  /** {status, message, type, param, code} from a response body (OpenAI shape, FastAPI detail, or plain text). */
  function parse(status, text) {
    let body = text;
    if (typeof text === "string") {
      try { body = JSON.parse(text); } catch (e) { return { status: status, message: text.slice(0, 500) || "no details" }; }
    }
    const err = body && body.error;
    if (err && typeof err === "object") {
      const code = err.code;
      return { status: status || (typeof code === "number" ? code : null), message: String(err.message || "no details"),
        type: err.type || null, param: err.param || null, code: typeof code === "string" ? code : null };
    }
    const detail = err || (body && body.detail);
    if (detail) return { status: status, message: typeof detail === "string" ? detail : JSON.stringify(detail) };
    return { status: status, message: String(text).slice(0, 500) };
  }

  /** The raw error on one line: status, type, code and param, then the server's own message. */
  function details(err) {
    const head = [err.status ? "HTTP " + err.status : "stream error"];
    if (err.type) head.push(err.type);
    if (err.code) head.push("code " + err.code);
    if (err.param) head.push("param " + err.param);
    return head.join(", ") + ": " + err.message;
  }

  /** What happened and what to do, for someone at the page. */
  function words(err) {
    if (err.code === "context_length_exceeded") {
      const found = /maximum context length (?:is|of) (\d+) tokens/.exec(err.message);
      const size = found ? " (" + found[1] + " tokens)" : "";
      if (err.message.indexOf("The media of this prompt") === 0) {
        return "The attachments alone need more than the model's context" + size + ": attach fewer or smaller " +
          "images, or a shorter video.";
      }
      const asked = /the request has (\d+) prompt tokens plus max_tokens (\d+)/.exec(err.message);
      if (asked && found && Number(asked[1]) < Number(found[1])) {
        return "The answer's token limit (max_tokens " + asked[2] + ") is more than the model's context" + size +
          " leaves after this conversation (" + (Number(found[1]) - Number(asked[1])) + " tokens): lower Max " +
          "tokens in Settings or leave it empty.";
      }
      return "This conversation no longer fits the model's context" + size + ". Start a new chat or drop the " +
        "oldest turns.";
    }
    if (BY_CODE[err.code]) return BY_CODE[err.code];
    if (BY_STATUS[err.status]) return BY_STATUS[err.status];
    if (err.status === 400 && err.param && err.param !== "messages") {
      return "The server refused a setting (" + err.param + "): change it in Settings and send again.";
    }
    if (err.status >= 500) {
      return "The server failed while answering (its log says why): send the message again, and report it if it " +
        "keeps happening.";
    }
    return "The server refused the message.";
  }

  /** {words, details} for an error the server sent, parsed from its body text or a stream chunk. */
  function explain(status, body) {
    const err = parse(status, body);
    return { words: words(err), details: details(err) };
  }

  window.glmvErrors = { parse: parse, words: words, details: details, explain: explain };
})();
