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


def _client(path, side, windows, log, delay=0.0, errors=None, end="finish", exit_s=0.0):
    """A benchmark process: windows of compute between passes, then `end` ("finish": say done
    and wait for the other side; "close": hang up at once, as processes did before "done"),
    then `exit_s` of teardown outside the baton (logged as side + "-exit")."""
    try:
        time.sleep(delay)
        b = Baton(path, side)
        b.hello()
        log.compute(side)  # imports, probes, packing: while holding the baton
        for _ in range(windows):
            b.pass_()
            log.compute(side)
        getattr(b, end)()
        if exit_s:
            log.compute(f"{side}-exit", exit_s)
    except Exception as e:  # pragma: no cover (reported by the test)
        if errors is not None:
            errors.append(e)


def _run(path, first, windows, delays=(0.0, 0.0), start_timeout=30.0, **how):
    server = BatonServer(path, first, start_timeout=start_timeout).start()
    log, errors = Log(), []
    threads = [threading.Thread(target=_client, args=(path, s, w, log, d, errors), kwargs=how)
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
    # 12 passes and B's "done": each went to the other side (the last turn: A after B is done)
    assert server.handovers == 13 and server.returns == 0


def test_uneven_windows_finish_alone(sock_path):
    server, log = _run(sock_path, "A", (2, 5))
    sides = [s for s, _ in log.events]
    assert log.overlaps == 0
    assert sides[:6] == ["A", "B"] * 3 and sides[6:] == ["B"] * 3, sides
    assert server.returns == 3  # B passed with nobody waiting: the baton came back


@pytest.mark.parametrize("end", ["finish", "close"])
def test_a_side_that_is_done_exits_only_with_the_other(sock_path, end):
    """The side that finishes first must not tear down while the other still times: its exit
    ran on the same pinned CPU as the other side's last windows (measured: 2.5x slower). With
    "close" (the negative control, how processes ended before "done") the teardown of A
    overlaps B's remaining windows."""
    server, log = _run(sock_path, "A", (2, 5), end=end, exit_s=0.05)
    sides = [s for s, _ in log.events]
    b_last = max(i for i, s in enumerate(sides) if s == "B")
    a_exit = sides.index("A-exit")
    if end == "close":
        assert a_exit < b_last and log.overlaps > 0, sides
        return
    assert a_exit > b_last, sides  # A's teardown after B's last window
    assert sides[:6] == ["A", "B"] * 3 and sides[6:9] == ["B"] * 3, sides
    assert set(sides[9:]) == {"A-exit", "B-exit"}, sides  # the two exit together
    assert server.returns == 3  # B passed with A done: the baton came back to B


def test_done_ends_when_the_other_side_dies_or_the_server_goes(sock_path):
    server = BatonServer(sock_path, "A", start_timeout=60).start()
    a, b = Baton(sock_path, "A"), Baton(sock_path, "B")
    got = []
    tb = threading.Thread(target=lambda: (b.hello(), got.append("B go")))
    tb.start()
    a.hello()  # both said hello: A first
    t0 = time.monotonic()
    ta = threading.Thread(target=a.finish)  # A done: the baton goes to B; A waits
    ta.start()
    tb.join(5)
    assert got == ["B go"]
    time.sleep(0.3)
    assert ta.is_alive()  # B still holds the baton: A must not exit yet
    b.close()  # B's process died without "done": A is let go
    ta.join(5)
    assert not ta.is_alive() and time.monotonic() - t0 < 5
    # a server that goes away while a side waits for "bye" ends the wait, without an error
    c, d = Baton(sock_path, "A"), Baton(sock_path, "B")
    server.close()
    server = BatonServer(sock_path, "A", start_timeout=60).start()
    td = threading.Thread(target=d.hello)
    td.start()
    c.hello()
    td.join(5)
    tc = threading.Thread(target=c.finish)
    tc.start()
    time.sleep(0.2)
    server.close()
    tc.join(5)
    assert not tc.is_alive()
    d.close()


def test_a_side_that_never_comes_does_not_stall_the_other(sock_path):
    server = BatonServer(sock_path, "A", start_timeout=0.5).start()
    log, errors = Log(), []
    t = threading.Thread(target=_client, args=(sock_path, "B", 3, log, 0.0, errors))
    t0 = time.monotonic()
    t.start()
    while len(log.events) < 4 and time.monotonic() - t0 < 10:
        time.sleep(0.01)
    assert [s for s, _ in log.events] == ["B"] * 4  # B timed alone after start_timeout
    assert 0.4 < time.monotonic() - t0 < 5
    time.sleep(0.3)
    assert t.is_alive()  # done, B waits: A might still start and time
    server.side_exited("A")  # the runner saw A's process end: B is let go
    t.join(5)
    server.close()
    assert not errors and not t.is_alive()


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
