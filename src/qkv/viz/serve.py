"""A small local web app: type a sentence and a word, get the interactive explain page.

Standard library only (:class:`http.server.ThreadingHTTPServer`), hardened to hold under load
and against hostile clients. It binds 127.0.0.1 by default, so only this machine can reach it;
every page is built with escaped text and a Content Security Policy, and model runs are
serialised with a lock (one model, one tokenizer, shared by the request threads).

    GET /                                  the form
    GET /explain?sentence=...&focus=...    the report (see :func:`qkv.viz.html.render_html`);
        optional fields as ``qkv explain``'s options: occurrence, layer, head, senses, contrast

Bad input (an empty field, a focus word that is not in the sentence, a sentence longer
than the model reads, an option out of range) comes back as a readable page with status 400;
a field over :data:`MAX_CHARS` characters with 413.

What keeps it standing:

- a listen backlog of :data:`BACKLOG` connections, so a burst waits in the kernel's queue;
- one request per connection (HTTP/1.0), whose request line and headers must arrive within
  ``header_timeout`` seconds of the connection opening, else the connection is dropped
  (an idle or half-sent request holds a thread no longer); every later read or write on
  the socket times out after :data:`IO_TIMEOUT` seconds (a client that stops reading);
- a bounded pool for reports: at most ``max_pending`` running or waiting for the model; one
  more gets 503 with ``Retry-After`` at once, and one that waited ``queue_wait`` seconds for
  the model gets it then (so a burst is answered, report or 503, within about that time);
- GET and HEAD only (405 with ``Allow`` for any other method);
- a Host check against DNS rebinding: only localhost, 127.0.0.1, [::1] (and the bound address
  or names given in ``allowed_hosts``) with the server's port; any other Host gets 421;
- a client that hangs up is dropped quietly (no traceback).
"""

from __future__ import annotations

import contextlib
import html
import socket
import sys
import threading
import time
import webbrowser
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from qkv.inspect.explain import DEFAULT_FOCUS, DEFAULT_SENTENCE, explain
from qkv.inspect.senses import parse_senses
from qkv.inspect.words import word_view
from qkv.viz.html import render_html, show_controls

__all__ = ["make_server", "serve", "serve_until_interrupted", "ExplainServer", "InputError", "BusyError"]

# Characters per field: far above what a model reads (512 tokens are about 2,500 characters of
# English), low enough that a pathological query is refused before it is tokenised.
MAX_CHARS = 10_000
MAX_REQUEST_LINE = 65_536  # bytes of "GET /explain?... HTTP/1.1", as http.server reads it
BACKLOG = 128  # connections the kernel queues while every thread is busy accepting
HEADER_TIMEOUT = 5.0  # seconds from a connection opening to the end of its request's headers
IO_TIMEOUT = 10.0  # seconds any one read or write on a connection may block
MAX_PENDING = 12  # reports running or waiting for the model; the next one gets 503
QUEUE_WAIT = 7.0  # seconds a report may wait for the model before it gets 503
RETRY_AFTER = 2  # seconds, in a 503's Retry-After
ALLOWED_METHODS = ("GET", "HEAD")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
# Errors of a client that hung up or stopped reading: the connection is dropped, quietly.
HUNG_UP = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
# "No truncation" for the tokenizer, which otherwise cuts at the model's maximum.
_NO_LIMIT = 1 << 30
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; base-uri 'none'"
_CSP_HEADER = _CSP + "; frame-ancestors 'none'"  # frame-ancestors works in a header only, not in <meta>
# The form's optional fields, as qkv explain's options: name -> label.
OPTION_FIELDS = {
    "occurrence": "Occurrence (which one, from 1, when the focus word repeats)",
    "layer": "Layer of the step-by-step head (from 0; empty: chosen for you)",
    "head": "Head (from 0; empty: chosen for you)",
    "senses": "Senses (\u201cmoney: sentence | sentence; river: sentence\u201d; empty: built-in ones, if any)",
    "contrast": "Contrast sentence (the word in another sense; empty: chosen from the senses)",
}


class InputError(ValueError):
    """Input the user can fix; shown as a page with ``status`` (400, or 413 for a field too long)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


class BusyError(RuntimeError):
    """Every place in the report pool is taken, or the wait for the model ran out: 503."""


def check_sizes(fields: dict[str, str]) -> None:
    """Raise :class:`InputError` (413) for a field longer than :data:`MAX_CHARS` characters,
    before anything is tokenised."""
    for name, text in fields.items():
        if len(text) > MAX_CHARS:
            raise InputError(f"The {name} has {len(text):,} characters; this page takes at most {MAX_CHARS:,} "
                             f"per field (the model reads only a few thousand characters). Shorten it and try "
                             f"again.", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)


def token_limit(model) -> int | None:
    """The longest input the model reads, in tokens (None if its config does not say)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def parse_options(model, fields: dict[str, str]) -> dict:
    """``explain`` keyword arguments from the form's optional fields (empty ones left out),
    checked as ``qkv explain`` checks its options; :class:`InputError` says what to fix."""
    options: dict = {}
    layers, heads = len(model.blocks), model.blocks[0].attn.num_heads
    for name, count, what in (("occurrence", None, None), ("layer", layers, "layers"),
                              ("head", heads, "heads per layer")):
        text = fields.get(name, "").strip()
        if not text:
            continue
        lowest = 1 if count is None else 0
        if not text.isdecimal() or int(text) < lowest or (count is not None and int(text) >= count):
            limits = (f"this model has {count} {what}, numbered 0 to {count - 1}" if count is not None
                      else "give a whole number from 1")
            raise InputError(f"{name.capitalize()} “{text}”: {limits}.")
        options[name] = int(text)
    if fields.get("senses", "").strip():
        try:
            options["senses"] = parse_senses(fields["senses"])
        except ValueError as error:
            raise InputError(f"Senses: {str(error).replace('--senses ', '')}.") from error
    if fields.get("contrast", "").strip():
        options["contrast"] = fields["contrast"].strip()
    return options


def check_input(tokenizer, model, sentence: str, focus: str, occurrence: int | None = None) -> None:
    """Raise :class:`InputError` for empty fields, a sentence longer than the model reads, a
    focus word that is not in it, or an ``occurrence`` it does not have.

    The tokenizer truncates to the model's maximum by itself, so the count is taken with
    truncation off: a long sentence is refused, never silently cut. A focus word that is
    not among the sentence's tokens is refused with the list of its words.
    """
    if not sentence.strip():
        raise InputError("Please type a sentence.")
    if not focus.strip():
        raise InputError("Please type the focus word: a word of the sentence to follow.")
    batch = tokenizer(sentence, max_length=_NO_LIMIT)
    limit = token_limit(model)
    count = int(batch.input_ids.shape[1])
    if limit is not None and count > limit:
        raise InputError(
            f"The sentence is too long for this model: it has {count} tokens "
            f"(special tokens included) and the model reads at most {limit}. Shorten it and try again."
        )
    view = word_view(batch)
    words = list(dict.fromkeys(t for t, kind in zip(view.tokens, view.kinds) if kind == "word"))
    if not words:
        raise InputError("The sentence has no words to follow, only punctuation or symbols. Type a sentence "
                         "with words.")
    if not view.occurrences(focus):  # as explain() matches it
        split = view.split_reason(focus)
        raise InputError(split[:1].upper() + split[1:] + "." if split else
                         f"The focus word “{focus.strip()}” is not in the sentence. Its words are: "
                         f"{', '.join(words)}. Type one of them (one word, without spaces).")
    try:
        view.find(focus, occurrence, option="Occurrence")
    except ValueError as error:
        raise InputError(f"{error}.") from error


_STYLE = """
body { margin: 0 auto; max-width: 760px; padding: 24px 20px; color: #1d2433;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
h1 { font-size: 1.4rem; } label { display: block; margin: 12px 0 4px; font-weight: 600; }
input[type=text], textarea { width: 100%; font: inherit; padding: 6px 8px; border: 1px solid #b8c0cc;
  border-radius: 4px; box-sizing: border-box; }
details { margin-top: 14px; } summary { cursor: pointer; color: #1f5fbf; }
button { font: inherit; margin-top: 14px; padding: 6px 16px; background: #1f5fbf; color: #fff; border: 0;
  border-radius: 4px; cursor: pointer; }
.error { background: #fff1ec; border: 1px solid #e8a48b; border-radius: 6px; padding: 10px 14px; color: #7a2300; }
.help { color: #5b6475; }
"""


def page(title: str, body: str) -> str:
    """A small HTML page; ``title`` is escaped here, ``body`` must already be safe markup."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{html.escape(_CSP, quote=True)}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<link rel=\"icon\" href=\"data:,\">\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def form(sentence: str = DEFAULT_SENTENCE, focus: str = DEFAULT_FOCUS, options: dict[str, str] | None = None) -> str:
    """The input form, pre-filled (values escaped); ``options``: the optional fields' text."""
    options = options or {}
    fields = []
    for name, label in OPTION_FIELDS.items():
        value = html.escape(options.get(name, ""), quote=True)
        fields.append(f"<label for=\"{name}\">{html.escape(label)}</label>\n" + (
            f"<textarea id=\"{name}\" name=\"{name}\" rows=\"3\">{value}</textarea>\n" if name == "senses" else
            f"<input type=\"text\" id=\"{name}\" name=\"{name}\" value=\"{value}\""
            + (" inputmode=\"numeric\"" if name in ("occurrence", "layer", "head") else "") + ">\n"))
    opened = " open" if any(v.strip() for v in options.values()) else ""
    return (
        "<form id=\"explain-form\" method=\"get\" action=\"/explain\">\n"
        "<label for=\"sentence\">Sentence</label>\n"
        "<input type=\"text\" id=\"sentence\" name=\"sentence\" required "
        f"value=\"{html.escape(sentence, quote=True)}\">\n"
        "<label for=\"focus\">Focus word (a word of the sentence to follow)</label>\n"
        f"<input type=\"text\" id=\"focus\" name=\"focus\" required value=\"{html.escape(focus, quote=True)}\">\n"
        f"<details id=\"options\"{opened}><summary>Options: occurrence, layer, head, senses, contrast "
        f"(as qkv explain's)</summary>\n{''.join(fields)}</details>\n"
        "<button type=\"submit\" id=\"submit\">Explain</button>\n</form>\n"
    )


def index_page() -> str:
    return page("qkv · explain attention", (
        "<h1>Self-attention, step by step</h1>\n"
        "<p class=\"help\">Type a sentence and one of its words. The model runs once on this machine and the "
        "page shows where that word looks in every layer and head, the computation of one head step by step, "
        "which heads matter and how its meaning moves from layer to layer.</p>\n" + form()
    ))


def error_page(message: str, sentence: str = "", focus: str = "", options: dict[str, str] | None = None) -> str:
    return page("qkv · cannot explain this", (
        "<h1>Cannot explain this input</h1>\n"
        f"<p class=\"error\" id=\"error\" role=\"alert\">{html.escape(show_controls(message))}</p>\n"
        + form(sentence, focus, options) + "<p><a id=\"back\" href=\"/\">← back to the start</a></p>"
    ))


class ExplainServer(ThreadingHTTPServer):
    """A threading HTTP server that holds one model and runs it one request at a time.

    See the module docstring for the limits; the keyword arguments are :func:`make_server`'s.
    """

    daemon_threads = True  # request threads never keep the process alive
    request_queue_size = BACKLOG  # listen() backlog

    def __init__(self, address, model, tokenizer, *, quiet: bool = False, header_timeout: float = HEADER_TIMEOUT,
                 max_pending: int = MAX_PENDING, queue_wait: float = QUEUE_WAIT,
                 allowed_hosts: tuple[str, ...] = ()):
        for name, value in (("header_timeout", header_timeout), ("queue_wait", queue_wait),
                            ("max_pending", max_pending)):
            if not value > 0:
                raise ValueError(f"{name} must be positive; got {value}")
        self.model, self.tokenizer, self.quiet = model, tokenizer, quiet
        self.header_timeout, self.queue_wait = header_timeout, queue_wait
        self.lock = threading.Lock()  # the model, the tokenizer's truncation state: one user at a time
        self.max_pending = max_pending
        self.pending = 0  # reports running or waiting for the model
        self._pool_lock = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}  # connection -> when its headers must be in
        self._deadlines_lock = threading.Lock()
        self._connections = 0
        super().__init__(address, ExplainHandler)
        self.allowed_hosts = self._allowed_hosts(allowed_hosts)

    def _allowed_hosts(self, extra: tuple[str, ...]) -> frozenset[str]:
        """Host header values this server answers: the loopback names, the bound address (the one
        :attr:`url` prints) and ``extra``, each with the server's port (and without it on port 80).
        An address is no DNS name, so it cannot be rebound."""
        bound = self.server_address[0]
        names = {*LOOPBACK_NAMES, *(name.lower() for name in extra), f"[{bound}]" if ":" in bound else bound}
        port = self.server_address[1]
        return frozenset({f"{name}:{port}" for name in names} | (names if port == 80 else set()))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    @property
    def connections(self) -> int:
        """Connections being handled now (each by a thread of its own)."""
        return self._connections

    # ---- connections: counted, and dropped when their request is late ----

    def process_request(self, request, client_address) -> None:
        with self._deadlines_lock:
            self._connections += 1
            self._deadlines[request] = time.monotonic() + self.header_timeout
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: this connection is over
            self.request_done(request)
            raise

    def request_done(self, request) -> None:
        """Forget a connection whose handler has finished."""
        with self._deadlines_lock:
            self._connections -= 1
            self._deadlines.pop(request, None)

    def headers_received(self, request) -> bool:
        """Stop the clock of a connection whose request has arrived; False if it came too late
        (the connection is then dropped unanswered)."""
        with self._deadlines_lock:
            deadline = self._deadlines.pop(request, None)
        return deadline is not None and time.monotonic() <= deadline

    def service_actions(self) -> None:
        """Called by ``serve_forever`` at least every half second: shut the connections whose
        request line and headers did not arrive in time (their blocked read returns at once)."""
        super().service_actions()
        now = time.monotonic()
        with self._deadlines_lock:
            late = [request for request, deadline in self._deadlines.items() if deadline < now]
            for request in late:
                del self._deadlines[request]
        for request in late:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)

    def shutdown_request(self, request) -> None:
        try:
            super().shutdown_request(request)
        finally:
            self.request_done(request)

    def handle_error(self, request, client_address) -> None:
        """A socket error is a client that hung up, no error of the server's (a failing report is
        answered with a 500 page before it gets here); anything else is reported as usual."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    # ---- reports ----

    def _admit(self) -> None:
        """Take a place in the report pool, or raise :class:`BusyError` when every place is taken.

        Clients refused here wait for no lock and cost the model nothing; a pool of reports that
        wait instead would let a burst queue for minutes."""
        with self._pool_lock:
            if self.pending >= self.max_pending:
                raise BusyError(f"{self.pending} reports are running or waiting, the most this server queues")
            self.pending += 1

    def report_page(self, sentence: str, focus: str, fields: dict[str, str] | None = None) -> str:
        """The explain page for one input; ``fields``: the optional fields' text (see
        :data:`OPTION_FIELDS`). Raises :class:`InputError` for input the user can fix and
        :class:`BusyError` when the report pool is full or the model stayed busy too long."""
        fields = {name: value for name, value in (fields or {}).items() if name in OPTION_FIELDS and value}
        check_sizes({"sentence": sentence, "focus word": focus, **fields})
        self._admit()
        try:
            if not self.lock.acquire(timeout=self.queue_wait):
                raise BusyError(f"the model stayed busy for {self.queue_wait:g} s")
            try:
                options = parse_options(self.model, fields)
                check_input(self.tokenizer, self.model, sentence, focus, options.get("occurrence"))
                try:
                    report = explain(self.model, self.tokenizer, sentence, focus.strip(), **options)
                except ValueError as error:  # anything else explain() refuses; said as a sentence
                    message = str(error)
                    raise InputError(message[:1].upper() + message[1:]) from error
            finally:
                self.lock.release()
        finally:
            with self._pool_lock:
                self.pending -= 1
        return render_html(report, back_href="/?" + urlencode({"sentence": sentence, "focus": focus, **fields}))


class ExplainHandler(BaseHTTPRequestHandler):
    server: ExplainServer
    server_version = "qkv"
    sys_version = ""
    timeout = IO_TIMEOUT  # on every read and write of the connection (set in setup())

    def handle_one_request(self) -> None:
        """Read one request within the server's header deadline, check its method and Host, answer it.

        As :meth:`BaseHTTPRequestHandler.handle_one_request`, with the method and Host checks
        added and a client that hangs up dropped quietly.
        """
        self.close_connection = True  # one request per connection
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not self.raw_requestline.endswith(b"\n"):  # hung up, cut off by the deadline, or too long
                if len(self.raw_requestline) > MAX_REQUEST_LINE:
                    self.requestline, self.request_version, self.command = "", "HTTP/1.0", ""
                    self.send_page(HTTPStatus.REQUEST_URI_TOO_LONG, error_page(
                        f"The address is longer than {MAX_REQUEST_LINE:,} bytes: the sentence or an option is far "
                        f"too long. Each field takes at most {MAX_CHARS:,} characters."))
                return
            if not self.parse_request():  # it answered the error itself (400, 431, 505)
                return
            if not self.server.headers_received(self.connection):
                return  # too late: the connection was shut
            if self.command not in ALLOWED_METHODS:
                self.method_not_allowed()
            elif (problem := self.host_problem()) is not None:
                status, message = problem
                self.send_page(status, page("qkv · wrong address", (
                    f"<h1>Wrong address</h1>\n<p class=\"error\" id=\"error\">{html.escape(message)}</p>")))
            else:
                self.do_GET()
            self.wfile.flush()
        except HUNG_UP:
            self.close_connection = True

    def finish(self) -> None:
        with contextlib.suppress(*HUNG_UP):
            super().finish()

    def host_problem(self) -> tuple[HTTPStatus, str] | None:
        """None when the Host header names this server; else the status and message (DNS rebinding:
        a page on another site may reach 127.0.0.1 under its own name, and is refused here)."""
        host = self.headers.get("Host")
        if host is None:
            return HTTPStatus.BAD_REQUEST, "The request has no Host header; open the address the server printed."
        if host.strip().lower() not in self.server.allowed_hosts:
            return HTTPStatus.MISDIRECTED_REQUEST, (
                f"This server answers only at {self.server.url} (or localhost with its port); it was asked for "
                f"host “{show_controls(host[:200])}”, which it refuses: another site's name pointing here is how "
                f"DNS rebinding reaches local servers. To answer at another name of this machine, start it with "
                f"qkv serve --allow-host NAME.")
        return None

    def method_not_allowed(self) -> None:
        self.discard_body()
        self.send_page(HTTPStatus.METHOD_NOT_ALLOWED, page("qkv · method not allowed", (
            f"<h1>Method not allowed</h1>\n<p class=\"error\" id=\"error\">This server only reads pages "
            f"({', '.join(ALLOWED_METHODS)}); it was sent {html.escape(show_controls(self.command[:50]))}.</p>")),
            extra_headers={"Allow": ", ".join(ALLOWED_METHODS)})

    def discard_body(self, limit: int = 1 << 16) -> None:
        """Read a small request body away, so that closing the connection does not reset it before
        the client has read the answer."""
        length = self.headers.get("Content-Length", "")
        if length.isdecimal() and 0 < int(length) <= limit:
            self.rfile.read(int(length))

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        try:
            query = parse_qs(url.query, keep_blank_values=True, max_num_fields=10)
        except ValueError:
            self.send_page(HTTPStatus.BAD_REQUEST, error_page("Too many fields in the address."))
            return
        options = {name: query.get(name, [""])[0] for name in OPTION_FIELDS}
        if url.path == "/":
            sentence = query.get("sentence", [DEFAULT_SENTENCE])[0]
            focus = query.get("focus", [DEFAULT_FOCUS])[0]
            body = index_page() if not query else page("qkv · explain attention", (
                "<h1>Self-attention, step by step</h1>\n" + form(sentence, focus, options)))
            self.send_page(HTTPStatus.OK, body)
        elif url.path == "/explain":
            sentence = query.get("sentence", [""])[0]
            focus = query.get("focus", [""])[0]
            try:
                body = self.server.report_page(sentence, focus, options)
            except InputError as error:
                if error.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:  # not sent back into the form
                    sentence, focus, options = sentence[:MAX_CHARS], focus[:MAX_CHARS], {}
                self.send_page(error.status, error_page(str(error), sentence, focus, options))
                return
            except BusyError as busy:
                self.send_page(HTTPStatus.SERVICE_UNAVAILABLE, page("qkv · busy", (
                    f"<h1>Busy</h1>\n<p class=\"error\" id=\"error\">The server is busy ({html.escape(str(busy))}); "
                    f"try again in a few seconds.</p>\n" + form(sentence[:MAX_CHARS], focus[:MAX_CHARS]))),
                    extra_headers={"Retry-After": str(RETRY_AFTER)})
                return
            except Exception as error:  # a bug: say so, escaped, and keep serving
                self.log_error("explain failed: %r", error)
                self.send_page(HTTPStatus.INTERNAL_SERVER_ERROR, error_page(
                    f"Something went wrong while explaining this input: {type(error).__name__}: {error}",
                    sentence, focus, options))
                return
            self.send_page(HTTPStatus.OK, body, report=True)
        else:
            self.send_page(HTTPStatus.NOT_FOUND, page("qkv · not found", (
                "<h1>Not found</h1>\n<p>There is nothing at this address. "
                "<a id=\"back\" href=\"/\">Go to the start</a>.</p>")))

    def send_page(self, status: HTTPStatus, body: str, report: bool = False,
                  extra_headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Connection", "close")
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        if not report:  # the report page carries its own policy (with its script's hash)
            self.send_header("Content-Security-Policy", _CSP_HEADER)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        if not self.server.quiet:  # one short line per request, however long its address
            message = format % args
            super().log_message("%s", message if len(message) <= 300 else message[:300] + "…")


def make_server(model, tokenizer, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False,
                header_timeout: float = HEADER_TIMEOUT, max_pending: int = MAX_PENDING,
                queue_wait: float = QUEUE_WAIT, allowed_hosts: Sequence[str] = ()) -> ExplainServer:
    """A ready (bound, not yet serving) server; call ``serve_forever()`` on it.

    Args:
        model, tokenizer: from ``qkv.load()``.
        host: the address to bind; 127.0.0.1 (this machine only) by default.
        port: the port; 0 picks a free one (see ``server.server_address``).
        quiet: do not log each request to stderr.
        header_timeout: seconds a connection has to send its request line and headers.
        max_pending: reports running or waiting for the model at once; more get 503.
        queue_wait: seconds a report may wait for the model before it gets 503.
        allowed_hosts: names besides localhost, 127.0.0.1, [::1] and ``host`` that the Host
            header may carry (e.g. this machine's name, when ``host`` is a wildcard).

    Stop it with ``server.shutdown()`` (from another thread) and ``server.server_close()``.

    Raises:
        OSError: the address cannot be bound, e.g. errno EADDRINUSE when the port is taken.
        ValueError: a limit that is not positive.
    """
    return ExplainServer((host, port), model, tokenizer, quiet=quiet, header_timeout=header_timeout,
                         max_pending=max_pending, queue_wait=queue_wait, allowed_hosts=tuple(allowed_hosts))


def serve(model, tokenizer, host: str = "127.0.0.1", port: int = 8000, open_browser: bool = False) -> None:
    """Serve the explain app until Ctrl-C; OSError if the address cannot be bound (see :func:`make_server`)."""
    serve_until_interrupted(make_server(model, tokenizer, host, port), open_browser)


def serve_until_interrupted(server: ExplainServer, open_browser: bool = False) -> None:
    """Serve the bound ``server`` until Ctrl-C, then close it."""
    host = server.server_address[0]
    try:
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {host}: other machines can reach this server", file=sys.stderr)
        print(f"qkv serve: serving on {server.url} (Ctrl-C stops)", file=sys.stderr)
        if open_browser:
            webbrowser.open(server.url)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
