"""`glmv chat MODEL`: an interactive terminal chat, with the model in this process or a server at --url.

The thinking streams dim grey above the answer (or is hidden with /think off); images, a video or a document are
attached with /image, /video and /file before a message. The conversation keeps answers only, as GLM-4.1V expects.
Ctrl-C stops the answer being written and returns to the prompt; Ctrl-D or /exit leaves. Piped stdin works too:
each line is one message (or command), and the output carries plain-text labels instead of colours.

The model runs behind the same API as `glmv serve` (see glmv/cli/api.py); a background thread owns the asyncio
loop, the main thread owns the terminal, so Ctrl-C always lands where it can stop a generation cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import mimetypes
import os
import queue
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from glmv.cli.api import ChatEvent, first_model, local_client, remote_client, stream_chat
from glmv.cli.error_words import ServerError, in_words
from glmv.cli.help import add_command, add_server_args, json_object
from glmv.options import RuntimeOptions, default_chat_history

DIM, RED, BOLD, RESET = "\x1b[2;90m", "\x1b[31m", "\x1b[1m", "\x1b[0m"

_EXTRA_TYPES = {".mkv": "video/x-matroska", ".flv": "video/x-flv", ".wmv": "video/x-ms-wmv", ".m4v": "video/x-m4v",
                ".webp": "image/webp", ".webm": "video/webm",
                ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation"}
_DOCUMENT_SUFFIXES = (".pdf", ".ppt", ".pptx")
# Words people type to leave or start over; sent to the model they would only puzzle it.
_LEAVE_WORDS = ("exit", "quit", "bye")
_CLEAR_WORDS = ("clear", "reset")
MIN_ROOM = 32  # fewer tokens than this left in the context: too little for the model to answer

HELP = """Commands:
  /image PATH [PATH ...]  attach images to your next message
  /video PATH             attach a video to your next message
  /file PATH              attach a document (PDF, PPT, PPTX) to your next message
  /think on|off           show or hide the model's thinking (the model always thinks)
  /budget N|off           thinking budget: after N thinking tokens the model must answer
  /system TEXT|off        set or clear the system prompt
  /detach                 drop the attachments waiting for your next message
  /reset                  forget the conversation and pending attachments (also typing clear)
  /help                   this list
  /exit                   leave (also Ctrl-D, or typing exit / quit)
Ctrl-C stops the answer being written."""


# ----------------------------------------------------------------------------------------------- conversation


def data_uri(path: Path) -> str:
    mime = _EXTRA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def media_part(kind: str, path_text: str) -> dict[str, Any]:
    """The OpenAI content part for a local file; ValueError with what to change if it cannot be one."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ValueError(f"{path}: no such file.")
    if kind == "file" and path.suffix.lower() not in _DOCUMENT_SUFFIXES:
        raise ValueError(f"{path.name}: /file takes a PDF, PPT or PPTX document; use /image or /video for media.")
    mime = _EXTRA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or ""
    if kind in ("image", "video") and not mime.startswith(kind + "/"):
        examples = "JPG, PNG, GIF, BMP, TIFF, WEBP" if kind == "image" else "MP4, AVI, MKV, MOV, WEBM"
        raise ValueError(f"{path.name} is not {'an image' if kind == 'image' else 'a video'} ({examples}); "
                         "/file takes documents.")
    url = data_uri(path)
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "video":
        return {"type": "video_url", "video_url": {"url": url}}
    return {"type": "file", "file": {"file_data": url, "filename": path.name}}


@dataclass
class Conversation:
    """What is sent each turn: the system prompt, user turns with their media, and assistant answers only."""

    system: str | None = None
    turns: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)  # media parts for the next user message

    def messages(self, text: str) -> list[dict[str, Any]]:
        """The full message list for sending `text` (with the pending media) as the next user turn."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        content: str | list = [*self.pending, {"type": "text", "text": text}] if self.pending else text
        if self.pending and not text:
            content = list(self.pending)
        return [*head, *self.turns, {"role": "user", "content": content}]

    def commit(self, user_message: dict[str, Any], answer: str) -> None:
        self.turns += [user_message, {"role": "assistant", "content": answer}]
        self.pending = []

    def reset(self) -> None:
        self.turns.clear()
        self.pending.clear()

    def kinds(self) -> set[str]:
        """The media kinds ("image_url", "video_url", "file") in the kept turns."""
        return {p.get("type") for t in self.turns if isinstance(t.get("content"), list) for p in t["content"]
                if isinstance(p, dict)}

    def drop_oldest_turn(self) -> bool:
        """Leave out the oldest question and its answer; False when there is none to leave out."""
        if len(self.turns) < 2:
            return False
        del self.turns[:2]
        return True


# ----------------------------------------------------------------------------------------------- output


class AnswerPrinter:
    """Writes one streamed answer: thinking dim grey (or labelled when colours are off), then the answer."""

    def __init__(self, out: TextIO, color: bool, show_thinking: bool):
        self.out = out
        self.color = color
        self.show_thinking = show_thinking
        self.section: str | None = None  # None, "reasoning" or "content"
        self.reasoning_text = ""
        self.answer_text = ""

    def _enter(self, section: str) -> None:
        if self.section == section:
            return
        if self.section == "reasoning":
            self.out.write((RESET if self.color else "") + "\n\n")
        if section == "reasoning":
            self.out.write(DIM if self.color else "Thinking: ")
        elif not self.color and self.show_thinking:
            self.out.write("Answer: ")
        self.section = section

    def reasoning(self, text: str) -> None:
        self.reasoning_text += text
        if self.show_thinking:
            if self.section is None:
                text = text.lstrip()
            self._enter("reasoning")
            self.out.write(text)
            self.out.flush()

    def content(self, text: str) -> None:
        if not self.answer_text:
            text = text.lstrip()
            if not text:
                return
        self.answer_text += text
        self._enter("content")
        self.out.write(text)
        self.out.flush()

    def close(self, note: str | None = None) -> None:
        if self.section == "reasoning" and self.color:
            self.out.write(RESET)
        if self.section is not None:
            self.out.write("\n")
        if note:
            self.out.write((DIM + note + RESET if self.color else note) + "\n")
        self.out.flush()


# ----------------------------------------------------------------------------------------------- the session


class ChatSession:
    """The asyncio side: one event loop in a daemon thread holding the API client (in-process app or --url)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="glmv-chat-loop", daemon=True)
        self.thread.start()
        self._client_cm = None
        self.client = None
        self.model: str | None = None

    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open(self) -> str:
        """Load the model (or connect) and return the model name requests will use."""
        args = self.args
        if args.url:
            self.client = remote_client(args.url, args.api_key)
            self.model = args.model or self._run(first_model(self.client))
        else:
            from glmv.cli.serve import engine_config_from_args

            self.model = args.model
            client_cm = local_client(engine_config_from_args(args), (args.model,))
            self.client = self._run(client_cm.__aenter__())
            self._client_cm = client_cm  # entered: close() must exit it
        return self.model

    def close(self) -> None:
        """Shut the engine (or connection) down; after a Ctrl-C during loading there is nothing to wait for."""
        try:
            if self._client_cm is not None:
                self._run(self._client_cm.__aexit__(None, None, None), timeout=30)
            elif self.client is not None:
                self._run(self.client.aclose(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - leaving anyway; say why it was not clean
            print(f"glmv chat: shutdown was not clean: {exc!r}", file=sys.stderr)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self.client is not None:  # else the loop may still be busy loading: the daemon thread just ends
                self.thread.join(timeout=10)

    def count_tokens(self, messages: list[dict]) -> tuple[int, int] | None:
        """(prompt tokens, context length) as the server counts them (/tokenize); None when it cannot say."""
        async def ask():
            return await self.client.post("/tokenize", json={"model": self.model, "messages": messages})

        try:
            resp = self._run(ask(), timeout=120)
        except Exception:  # noqa: BLE001 - a server without /tokenize: the request itself will tell
            return None
        if resp.status_code != 200:
            return None
        body = resp.json()
        return int(body["count"]), int(body["max_model_len"])

    def stream(self, body: dict, sink: queue.SimpleQueue, finished: threading.Event):
        """Start streaming `body` into `sink` (ChatEvent, then None); returns the concurrent future to cancel."""

        async def pump() -> None:
            try:
                async for event in stream_chat(self.client, body):
                    sink.put(event)
            except Exception as exc:  # noqa: BLE001 - shown to the user, the chat goes on
                err = ServerError(None, f"{type(exc).__name__}: {exc}", code="connection_failed")
                sink.put(ChatEvent("error", err.details(), error=err))
            finally:
                sink.put(None)
                finished.set()

        return asyncio.run_coroutine_threadsafe(pump(), self.loop)


@dataclass
class ChatSettings:
    show_thinking: bool = True
    thinking_budget: int | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ChatRepl:
    """The terminal side: reads lines, runs commands, sends messages and prints answers as they stream."""

    def __init__(self, session: ChatSession, settings: ChatSettings, conversation: Conversation,
                 stdin: TextIO, stdout: TextIO, stderr: TextIO, interactive: bool, color: bool):
        self.session = session
        self.settings = settings
        self.conversation = conversation
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.interactive = interactive
        self.color = color
        self.failures = 0

    # -- input
    def read_line(self) -> str | None:
        """The next line, or None at end of input. Ctrl-C at the prompt clears the line (interactive only)."""
        while True:
            try:
                if self.interactive:
                    return input(self._prompt())
                line = self.stdin.readline()
                return None if line == "" else line.rstrip("\n")
            except EOFError:
                if self.interactive:
                    self.stdout.write("\n")
                return None
            except KeyboardInterrupt:
                if not self.interactive:
                    return None
                self.stdout.write("^C (Ctrl-D or /exit to leave)\n")

    def _prompt(self) -> str:
        marks = f"[{len(self.conversation.pending)} attached] " if self.conversation.pending else ""
        # \001..\002 tell readline the colour codes take no room, or long lines wrap wrongly.
        return f"\001{BOLD}\002{marks}you>\001{RESET}\002 " if self.color else f"{marks}you> "

    def note(self, text: str, error: bool = False) -> None:
        stream = self.stderr if error else self.stdout
        if self.color:
            text = (RED if error else DIM) + text + RESET
        stream.write(text + "\n")
        stream.flush()

    # -- the loop
    def run(self) -> int:
        while True:
            line = self.read_line()
            if line is None:
                return 1 if self.failures and not self.interactive else 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line) == "exit":
                    return 1 if self.failures and not self.interactive else 0
                continue
            word = line.lower().rstrip(".!")
            if word in _LEAVE_WORDS:
                return 1 if self.failures and not self.interactive else 0
            if word in _CLEAR_WORDS:
                self.conversation.reset()
                self.note("Conversation cleared (to send the word itself, write it in a sentence).")
                continue
            self.send(line)

    def _check_mixing(self, name: str, parts: list[dict]) -> None:
        """GLM-4.1V takes images or one video in a prompt, not both: say so when attaching, not on every message."""
        new = {p["type"] for p in parts} | {p.get("type") for p in self.conversation.pending}
        kept = self.conversation.kinds()
        if "video_url" in new and ("image_url" in kept or "image_url" in new - {"video_url"}):
            raise ValueError("A video cannot go in the same conversation as images (GLM-4.1V reads one or the "
                             "other). /reset starts a new conversation for the video; /detach drops it.")
        if "video_url" in new and "video_url" in kept:
            raise ValueError("This conversation has a video already and GLM-4.1V reads one per prompt: /reset starts "
                             "a new conversation for this one.")
        if "image_url" in new and "video_url" in kept:
            raise ValueError("Images cannot go in the same conversation as a video (GLM-4.1V reads one or the "
                             "other). /reset starts a new conversation for the images.")

    def command(self, line: str) -> str | None:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.note(f"Cannot read that command: {exc}.", error=True)
            return None
        name, rest = words[0].lower(), words[1:]
        s = self.settings
        try:
            if name in ("/exit", "/quit"):
                return "exit"
            if name == "/help":
                self.note(HELP)
            elif name in ("/image", "/video", "/file"):
                if not rest or (name != "/image" and len(rest) > 1):
                    raise ValueError(f"Usage: {name} PATH" + (" [PATH ...]" if name == "/image" else ""))
                parts = [media_part(name[1:], p) for p in rest]
                self._check_mixing(name, parts)
                self.conversation.pending += parts
                self.note(f"Attached {', '.join(Path(p).name for p in rest)}; it goes with your next message.")
            elif name == "/detach":
                count, self.conversation.pending = len(self.conversation.pending), []
                self.note(f"Dropped {count} attachment(s).")
            elif name == "/reset":
                self.conversation.reset()
                self.note("Conversation cleared.")
            elif name == "/think":
                if rest and rest[0].lower() not in ("on", "off"):
                    raise ValueError("Usage: /think on|off")
                s.show_thinking = (rest[0].lower() == "on") if rest else not s.show_thinking
                self.note(f"Thinking is {'shown' if s.show_thinking else 'hidden'}.")
            elif name == "/budget":
                if len(rest) != 1:
                    raise ValueError("Usage: /budget N|off")
                s.thinking_budget = None if rest[0].lower() in ("off", "none") else _non_negative_int(rest[0])
                self.note(f"Thinking budget: {s.thinking_budget if s.thinking_budget is not None else 'off'}.")
            elif name == "/system":
                text = line.split(None, 1)[1].strip() if rest else ""
                self.conversation.system = None if text.lower() in ("", "off") else text
                self.note("System prompt " + ("cleared." if self.conversation.system is None else "set."))
            else:
                raise ValueError(f"Unknown command {name}; /help lists them.")
        except ValueError as exc:
            self.note(str(exc), error=True)
            self.failures += 0 if self.interactive else 1
        return None

    def request_body(self, messages: list[dict]) -> dict:
        s = self.settings
        body: dict[str, Any] = {"model": self.session.model, "messages": messages,
                                "stream_options": {"include_usage": True}}
        if s.temperature is not None:
            body["temperature"] = s.temperature
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        if s.thinking_budget is not None:
            body["thinking_budget"] = s.thinking_budget
        return body | {k: v for k, v in s.extra.items() if k not in ("messages", "stream")}

    def fit_to_context(self, text: str) -> tuple[list[dict], int | None] | None:
        """The messages to send and the max_tokens that fits; old turns left out (asked first on a terminal) when
        the history no longer leaves room to answer. None: not sent."""
        left_out = 0
        while True:
            messages = self.conversation.messages(text)
            counted = self.session.count_tokens(messages)
            if counted is None:  # the chat request itself will say what is wrong
                return messages, self.settings.max_tokens
            count, limit = counted
            room = limit - count
            if room >= MIN_ROOM:
                break
            if not self.conversation.turns:
                self.note(f"Your message is {count} tokens, more than the model's context of {limit} leaves room "
                          "for: shorten it or attach less.", error=True)
                return None
            if left_out == 0 and self.interactive:
                answer = input(f"The conversation no longer fits the model's context ({count} of {limit} tokens). "
                               "Leave out the oldest turns and send? [Y/n] ").strip().lower()
                if answer not in ("", "y", "yes"):
                    self.note("Not sent. /reset starts a new conversation.")
                    return None
            self.conversation.drop_oldest_turn()
            left_out += 1
        if left_out:
            self.note(f"Left out the {left_out} oldest turn(s) so the conversation fits the context.")
        max_tokens = self.settings.max_tokens
        if max_tokens is not None and max_tokens > room:
            self.note(f"max_tokens lowered from {max_tokens} to {room}: that is the room the context has left.")
            max_tokens = room
        return messages, max_tokens

    def send(self, text: str) -> None:
        fitted = self.fit_to_context(text)
        if fitted is None:
            return
        messages, max_tokens = fitted
        printer = AnswerPrinter(self.stdout, self.color, self.settings.show_thinking)
        sink: queue.SimpleQueue = queue.SimpleQueue()
        finished = threading.Event()
        started = time.monotonic()
        body = self.request_body(messages)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        future = self.session.stream(body, sink, finished)
        error: ServerError | None = None
        finish = usage = None
        notices: list[str] = []
        stopped = False
        try:
            while (event := sink.get()) is not None:
                if event.kind == "reasoning":
                    printer.reasoning(event.text)
                elif event.kind == "content":
                    printer.content(event.text)
                elif event.kind == "finish":
                    finish = event.text
                elif event.kind == "usage":
                    usage = event.usage
                elif event.kind == "prompt_info":
                    notices += prompt_notices(event.info or {})
                elif event.kind == "error":
                    error = event.error or ServerError(None, event.text)
        except KeyboardInterrupt:
            stopped = True
            future.cancel()  # closes the response: the server sees the client leave and aborts the request
            try:
                finished.wait(timeout=15)
            except KeyboardInterrupt:
                pass  # a second Ctrl-C: stop waiting for the clean-up, it goes on in the background
        printer.close(self._summary(finish, usage, time.monotonic() - started, stopped))
        for notice in notices:
            self.note(notice)
        if error is not None:
            self.show_error(error)
            self.failures += 1
            if not printer.answer_text and not printer.reasoning_text:  # nothing generated: the turn is not kept
                if self.conversation.pending:
                    self.note("Not sent; your attachments are still waiting: /detach drops them, /reset starts over.")
                return
        self.conversation.commit(messages[-1], printer.answer_text.strip())

    def show_error(self, error: ServerError) -> None:
        """The sentence that says what to do first; the server's own words after it, for a bug report."""
        self.note(in_words(error), error=True)
        self.note(f"  (details: {error.details()})", error=True)

    def _summary(self, finish: str | None, usage: dict | None, seconds: float, stopped: bool) -> str | None:
        if stopped:
            return "[stopped]"
        if finish == "length":
            return "[cut off at the token limit: raise --max-tokens or set /budget N]"
        if not self.interactive or not usage:
            return None
        tokens = usage.get("completion_tokens", 0)
        return f"[{tokens} tokens, {tokens / seconds:.1f} tok/s]" if seconds > 0 else None


def prompt_notices(info: dict) -> list[str]:
    """What the server did to the prompt (the API's prompt_info), in a person's words: a document cut short."""
    pages, total = info.get("document_pages"), info.get("document_pages_total")
    if isinstance(pages, int) and isinstance(total, int) and pages < total:
        return [f"Only the first {pages} of the document's {total} pages were read (the rest did not fit the "
                "model's context or the server's page limit), so the answer is about those pages. Ask about fewer "
                "pages, or lower --max-tokens to leave more room for the document."]
    return []


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"Expected a whole number, got {text!r}.") from None
    if value < 0:
        raise ValueError(f"Expected a number >= 0, got {value}.")
    return value


def _setup_readline() -> None:
    """Line editing, a history file, and Tab completion of commands and paths (interactive terminals only)."""
    try:
        import readline
    except ImportError:
        return
    history_file = RuntimeOptions.from_env().chat_history or default_chat_history()  # GLMV_CHAT_HISTORY
    try:
        history_file.parent.mkdir(parents=True, exist_ok=True)
        readline.read_history_file(history_file)
    except OSError:
        pass
    readline.set_history_length(2000)
    import atexit
    import glob

    def save() -> None:
        try:
            readline.write_history_file(history_file)
        except OSError:
            pass

    atexit.register(save)
    commands = ["/image ", "/video ", "/file ", "/detach", "/think ", "/budget ", "/system ", "/reset", "/help",
                "/exit"]

    def complete(text: str, state: int) -> str | None:
        line = readline.get_line_buffer()
        if line.startswith(("/image ", "/video ", "/file ")):
            options = [p + ("/" if os.path.isdir(p) else "") for p in glob.glob(os.path.expanduser(text) + "*")]
        else:
            options = [c for c in commands if c.startswith(text)] if line.startswith("/") else []
        return options[state] if state < len(options) else None

    readline.set_completer_delims(" \t")
    readline.set_completer(complete)
    readline.parse_and_bind("tab: complete")


# ----------------------------------------------------------------------------------------------- command line


def add_parser(sub) -> None:
    from glmv.cli.serve import add_engine_args

    p = add_command(
        sub, "chat", "chat with the model in the terminal",
        "Chat with GLM-4.1V in the terminal: the thinking streams dim grey above the answer; attach "
        "media with /image, /video, /file (type /help in the chat). The model runs in this process, or on a "
        "server given with --url. Works with piped stdin too: one message or command per line.",
        run)
    p.add_argument("model", nargs="?", default=None,
                   help="a local folder, a Hugging Face id or (with --hub modelscope) a ModelScope id; with --url, "
                   "the served model name (default then: the server's first model; without --url: "
                   "zai-org/GLM-4.1V-9B-Thinking)")
    g = p.add_argument_group("chat")
    add_server_args(g, "talk to")
    g.add_argument("--system", default=None, help="system prompt for the conversation (/system changes it)")
    g.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: the checkpoint's generation_config)")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="most tokens per answer, thinking included (default: up to the context length)")
    g.add_argument("--thinking-budget", type=int, default=None,
                   help="per-message thinking budget in tokens: then the model must answer (/budget changes it)")
    g.add_argument("--extra-body", type=json_object('{"top_p": 0.6}'), default={}, metavar="JSON",
                   help='more request fields, e.g. \'{"top_p": 0.6, "repetition_penalty": 1.1, "seed": 1}\'')
    g.add_argument("--hide-thinking", action="store_true", help="start with the thinking hidden (/think on shows it)")
    g.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="attach an image to the first message (repeatable)")
    g.add_argument("--no-color", action="store_true",
                   help="plain text output with 'Thinking:'/'Answer:' labels (default when stdout is not a terminal "
                   "or NO_COLOR is set)")
    g.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="log level of the in-process engine")
    add_engine_args(p)


def run(args: argparse.Namespace) -> int:
    from glmv.models.loader import DEFAULT_MODEL

    if args.url is None and args.model is None:
        args.model = DEFAULT_MODEL
    for name in ("max_tokens", "thinking_budget"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "max_tokens" else 0):
            raise ValueError(f"--{name.replace('_', '-')} must be at least {1 if name == 'max_tokens' else 0}.")
    interactive = sys.stdin.isatty()
    color = sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")
    conversation = Conversation(system=args.system)
    conversation.pending = [media_part("image", p) for p in args.image]
    settings = ChatSettings(show_thinking=not args.hide_thinking, thinking_budget=args.thinking_budget,
                            temperature=args.temperature, max_tokens=args.max_tokens, extra=args.extra_body)
    session = ChatSession(args)
    if interactive:
        where = args.url or "this process"
        print(f"Loading {args.model or 'the server model'} ({where})...", file=sys.stderr, flush=True)
    try:
        model = session.open()
        if interactive:
            _setup_readline()
            print(f"Chatting with {model}. /help lists commands; Ctrl-C stops an answer, Ctrl-D leaves.",
                  file=sys.stderr, flush=True)
        repl = ChatRepl(session, settings, conversation, sys.stdin, sys.stdout, sys.stderr, interactive, color)
        return repl.run()
    finally:
        session.close()
