"""bench/replay.py's raw HTTP/1.1 reader: whole answers by Content-Length, chunked (with a trailer)
or to the close, over one keep-alive connection, and its answer check."""

from __future__ import annotations

import socket
import threading

import pytest

from bench import replay


def _server(answers: list[bytes]) -> tuple[int, list[bytes]]:
    """A raw socket server answering each request (read up to its blank line) with the next of
    `answers`, in pieces, on one connection; returns (port, the requests it got)."""
    listener = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            buf = b""
            for answer in answers:
                while b"\r\n\r\n" not in buf:
                    buf += conn.recv(65536)
                head, buf = buf.split(b"\r\n\r\n", 1)
                got.append(head)
                for at in range(0, len(answer), 7):  # in small pieces: the reader must reassemble
                    conn.sendall(answer[at:at + 7])
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], got


def test_reads_each_answer_whole_on_one_connection():
    body = b'{"runs": [' + b"1," * 500 + b"2]}"
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\n{\"a\":\r\n3;ext=1\r\n 12\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n")
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        chunked,
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the close",
    ]
    port, got = _server(answers)
    conn = replay.Connection("127.0.0.1", port)
    request = replay.Captured("GET", "/api/2.0/mlflow/x?a=1", (("Host", "elsewhere:1"), ("Accept", "*/*")),
                              b"", 200, 0, b"")
    wire = request.wire(f"127.0.0.1:{port}")
    assert conn.exchange(wire) == (200, len(body), b'{"')
    assert conn.exchange(wire) == (200, 9, b'{"')  # '{"a": 12}' reassembled from three chunks
    assert conn.exchange(wire) == (404, 2, b"{}")
    assert conn.exchange(wire) == (200, 12, b"to")
    assert conn.sock is None  # closed with the answer; the next exchange reconnects
    assert got[0] == f"GET /api/2.0/mlflow/x?a=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*".encode()
    assert len(got) == 4


def test_check_rejects_another_status_length_or_start():
    want = (200, 1000, b'{"')
    replay._check((200, 1100, b'{"'), want)
    for wrong in ((404, 1000, b'{"'), (200, 400, b'{"'), (200, 2500, b'{"'), (200, 1000, b"\x1f\x8b")):
        with pytest.raises(AssertionError):
            replay._check(wrong, want)


def test_reconnects_when_the_server_closed_an_idle_connection():
    # uvicorn closes a keep-alive connection idle for 5 s; MLflow's client (urllib3) then opens a
    # new one instead of failing, and so must the replayer.
    listener = socket.create_server(("127.0.0.1", 0))
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    idle_closed = threading.Event()

    def serve():
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += conn.recv(65536)
                conn.sendall(answer)
            idle_closed.set()  # closed after one answer, without saying so
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    conn = replay.Connection("127.0.0.1", listener.getsockname()[1])
    request = replay.Captured("POST", "/x", (("Content-Length", "0"),), b"", 200, 2, b"{}").wire("h:1")
    assert conn.exchange(request) == (200, 2, b"{}")
    assert idle_closed.wait(10)
    assert conn.sock is not None  # still held as keep-alive
    assert conn.exchange(request) == (200, 2, b"{}")
