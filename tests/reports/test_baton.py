"""reports/baton.py: the two sides of an interleaved A/B pair never compute at the same time,
take turns window by window, and a side that exits (or never starts) does not stall the other."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from reports.baton import Baton, BatonError, BatonServer


@pytest.fixture
def sock_path():
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="baton-test-")  # Unix socket paths must stay short
    yield f"{d}/s"
    shutil.rmtree(d, ignore_errors=True)


class Log:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str]] = []  # (side, "start" | "end") of each compute slice
        self.holding: set[str] = set()
        self.overlaps = 0

    def compute(self, side: str, seconds: float = 0.002) -> None:
        with self.lock:
            if self.holding:
                self.overlaps += 1
            self.holding.add(side)
            self.events.append((side, "start"))
        time.sleep(seconds)
        with self.lock:
            self.holding.discard(side)


def _client(path, side, windows, log, delay=0.0, errors=None):
    try:
        time.sleep(delay)
        b = Baton(path, side)
        b.hello()
        log.compute(side)  # imports, probes, packing: while holding the baton
        for _ in range(windows):
            b.pass_()
            log.compute(side)
        b.close()
    except Exception as e:  # pragma: no cover (reported by the test)
        if errors is not None:
            errors.append(e)


def _run(path, first, windows, delays=(0.0, 0.0), start_timeout=30.0):
    server = BatonServer(path, first, start_timeout=start_timeout).start()
    log, errors = Log(), []
    threads = [threading.Thread(target=_client, args=(path, s, w, log, d, errors))
               for s, w, d in zip("AB", windows, delays)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    server.close()
    assert not errors, errors
    return server, log


def test_sides_alternate_and_never_overlap(sock_path):
    server, log = _run(sock_path, "B", (6, 6), delays=(0.0, 0.3))
    sides = [s for s, _ in log.events]
    assert log.overlaps == 0
    # A said hello 0.3 s before B, but nothing starts before both are there, and B is first
    assert sides == ["B", "A"] * 7, sides
    assert server.handovers == 12 and server.returns == 0  # the last turn: A after B exits


def test_uneven_windows_finish_alone(sock_path):
    server, log = _run(sock_path, "A", (2, 5))
    sides = [s for s, _ in log.events]
    assert log.overlaps == 0
    assert sides[:6] == ["A", "B"] * 3 and sides[6:] == ["B"] * 3, sides
    assert server.returns == 3  # B passed with nobody waiting: the baton came back


def test_a_side_that_never_comes_does_not_stall_the_other(sock_path):
    server = BatonServer(sock_path, "A", start_timeout=0.5).start()
    log, errors = Log(), []
    t = threading.Thread(target=_client, args=(sock_path, "B", 3, log, 0.0, errors))
    t0 = time.monotonic()
    t.start()
    t.join(10)
    server.close()
    assert not errors and [s for s, _ in log.events] == ["B"] * 4
    assert 0.4 < time.monotonic() - t0 < 5


def test_a_side_that_exited_lets_the_other_start_at_once(sock_path):
    server = BatonServer(sock_path, "A", start_timeout=60).start()
    server.side_exited("A")  # the runner saw A's process end before it said hello
    log, errors = Log(), []
    t0 = time.monotonic()
    _client(sock_path, "B", 2, log, errors=errors)
    server.close()
    assert not errors and time.monotonic() - t0 < 5


def test_protocol_violations_are_refused(sock_path):
    server = BatonServer(sock_path, "A", start_timeout=60).start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    s.sendall(b"hello C\n")  # no such side: the server drops the connection
    s.settimeout(5)
    assert s.recv(16) == b""
    s.close()
    server.close()
    with pytest.raises(BatonError, match="cannot reach the baton server"):
        Baton(sock_path, "A").hello()


def test_from_env(monkeypatch, sock_path):
    monkeypatch.delenv("SUITE_BENCH_BATON", raising=False)
    assert Baton.from_env() is None
    monkeypatch.setenv("SUITE_BENCH_BATON", sock_path)
    monkeypatch.setenv("SUITE_BENCH_BATON_SIDE", "X")
    with pytest.raises(BatonError, match="is not A or B"):
        Baton.from_env()
    monkeypatch.setenv("SUITE_BENCH_BATON_SIDE", "B")
    assert Baton.from_env().side == "B"
