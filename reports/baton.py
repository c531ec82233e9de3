"""Turn-taking between the A and B benchmark processes of one A/B pair (the "baton").

Why: on this shared 2-core machine the speed of a memory-bound kernel drifts by 10-30% over
tens of seconds (measured 2026-12-06: the same process timing cpu_fused_moe T=64 gave minima
of 2.3-3.5 ms in runs a minute apart, and the drift, not the window length, set the spread:
1.5 s windows gave the same process-to-process spread as 0.3 s windows). Processes run one
after another are 20 s to minutes apart, so a pair of them does not cancel that drift. With the
baton the two processes of a pair run at the same time but never compute at the same time:
each does a short window of its timed rounds (about 50 ms), then hands the baton over and
blocks, so A's and B's windows of each case alternate tens of milliseconds apart and the drift
hits both alike.

Protocol (one Unix socket per pair; lines of ASCII; reports/ab.py runs the server):
  client -> server  "hello A" | "hello B"   once, at pytest_configure; then waits for "go"
  client -> server  "pass"                  at a window boundary; then waits for "go"
  server -> client  "go"                    the client may compute until it passes again
  client -> server  "done"                  its benchmarks are over (pytest_unconfigure): passes
                                            the baton for good; then waits for "bye"
  server -> client  "bye"                   once the other side is done too, or gone: exit now
  (closing the connection passes the baton for good as well, e.g. a process that died)
Why "done" waits: a process that exits tears down its interpreter (frees its weights, unloads
torch) on the same pinned CPU on which the other side still times the last windows of its last
case. Measured here 2026-12-07 (Intel Xeon, A vs A, cpu_fused_moe.vec mixtral T 1..1024): the
side left timing ran its last one or two windows of T=1024 at 6.6-6.7 ms against 2.4-2.8 ms
in every other window, the last case of each process. With "done" the two exit together, after
both have timed everything.
A client says hello when its first benchmark is set up (suites/bench/conftest.py
bench_machine): the two sides' imports and collection, which time nothing, run at the same
time; from the hello on, a client computes only between "go" and its next "pass" or its exit
(the roofline probes, weight packing and the timed windows all happen while it holds the
baton), so nothing of one side runs while the other side times. The server hands the
first "go" only when both sides said hello (or after `start_timeout` when one never does, or
once one has exited), to the side named first; later the baton goes to the other side whenever
it is waiting, else back to the one that passed.

The client side (Baton.from_env) is what suites/bench/timing.py uses; it is off unless
SUITE_BENCH_BATON names the socket (harness/ab.py sets it, with SUITE_BENCH_BATON_SIDE).
Standard library only: noxfile.py's own Python imports reports/ab.py, which imports this.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time

ENV_SOCKET = "SUITE_BENCH_BATON"
ENV_SIDE = "SUITE_BENCH_BATON_SIDE"
WINDOW_S = 0.05  # timed seconds a side computes before it passes (suites/bench/timing.py)


class BatonError(RuntimeError):
    """The baton server went away or answered something unexpected; str() is one line."""


class Baton:
    """A benchmark process's end of the baton: hello() once, then pass_() at window boundaries.
    Every call blocks until this side holds the baton again."""

    def __init__(self, path: str, side: str) -> None:
        self.path, self.side = path, side
        self.sock: socket.socket | None = None
        self.passes = 0
        self.waited_s = 0.0  # time spent blocked while the other side computed

    @classmethod
    def from_env(cls) -> Baton | None:
        path = os.environ.get(ENV_SOCKET)
        if not path:
            return None
        side = os.environ.get(ENV_SIDE, "")
        if side not in ("A", "B"):
            raise BatonError(f"{ENV_SOCKET} is set but {ENV_SIDE}={side!r} is not A or B")
        return cls(path, side)

    def _line(self) -> bytes | None:
        """The server's next line; None when it closed the connection. Adds the time blocked
        to waited_s."""
        t0 = time.perf_counter()
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = self.sock.recv(64)
            if not chunk:
                buf = None
                break
            buf += chunk
        self.waited_s += time.perf_counter() - t0
        return buf

    def _wait_go(self) -> None:
        buf = self._line()
        if buf is None:
            raise BatonError(f"baton server {self.path} closed the connection")
        if buf.strip() != b"go":
            raise BatonError(f"baton server {self.path} said {buf.strip()!r}, expected b'go'")

    def hello(self) -> None:
        if self.sock is not None:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise BatonError(f"cannot reach the baton server at {self.path}: {e.strerror}") from None
        self.sock = s
        s.sendall(f"hello {self.side}\n".encode())
        self._wait_go()

    def pass_(self) -> None:
        """Hand the baton to the other side; returns when this side holds it again."""
        if self.sock is None:
            return
        self.passes += 1
        self.sock.sendall(b"pass\n")
        self._wait_go()

    def finish(self) -> None:
        """This side's benchmarks are over: pass the baton for good, then block until the other
        side is done too (or gone), so that this process's exit never overlaps the other
        side's timed windows. Never raises: a server that went away ends the wait."""
        if self.sock is None:
            return
        try:
            self.sock.sendall(b"done\n")
            self._line()  # "bye", or None: the server went away
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class BatonServer:
    """Serves one pair: `first` ("A" or "B") gets the baton first. start(), then run the two
    processes, then close(). Counters: handovers (the baton went to the other side) and
    returns (no other side waiting: back to the one that passed)."""

    def __init__(self, path: str, first: str, start_timeout: float = 300.0) -> None:
        if first not in ("A", "B"):
            raise ValueError(f"first must be A or B, got {first!r}")
        self.path, self.first, self.start_timeout = path, first, start_timeout
        self.handovers = 0
        self.returns = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)
        self._listener.bind(path)
        self._listener.listen(4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="baton", daemon=True)
        self._gone: set[str] = set()

    def side_exited(self, side: str) -> None:
        """Told by the runner when a side's process ended (even before it said hello), so the
        start does not wait for it."""
        self._gone.add(side)

    def start(self) -> BatonServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        conns: dict[str, socket.socket] = {}
        bufs: dict[socket.socket, bytes] = {}
        side_of: dict[socket.socket, str | None] = {}
        waiting: set[str] = set()
        done: set[str] = set()  # said "done": asleep until "bye"
        holder: str | None = None
        started = False
        t0 = time.monotonic()

        def grant(side: str) -> None:
            nonlocal holder
            holder = side
            waiting.discard(side)
            try:
                conns[side].sendall(b"go\n")
            except OSError:
                drop(conns[side])

        def drop(conn: socket.socket) -> None:
            nonlocal holder
            side = side_of.pop(conn, None)
            sel.unregister(conn)
            conn.close()
            bufs.pop(conn, None)
            if side is not None:
                conns.pop(side, None)
                waiting.discard(side)
                done.discard(side)
                self._gone.add(side)
                if holder == side:
                    holder = None

        def farewell() -> None:
            """Send "bye" to the sides that are done once neither side is still timing."""
            if done and all(s in done or s in self._gone for s in ("A", "B")):
                for s in sorted(done):
                    conn = conns.get(s)
                    done.discard(s)
                    if conn is not None:
                        try:
                            conn.sendall(b"bye\n")
                        except OSError:
                            drop(conn)

        def schedule() -> None:
            nonlocal started
            if holder is not None:
                return
            if not started:
                both = all(s in waiting or s in self._gone for s in ("A", "B"))
                late = time.monotonic() - t0 > self.start_timeout
                if not (both or (late and waiting)):
                    return
                started = True
                order = (self.first, "B" if self.first == "A" else "A")
                for s in order:
                    if s in waiting:
                        grant(s)
                        return
                return
            if waiting:
                grant(sorted(waiting)[0])

        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.2):
                if key.data is None:
                    conn, _ = self._listener.accept()
                    sel.register(conn, selectors.EVENT_READ, "conn")
                    bufs[conn], side_of[conn] = b"", None
                    continue
                conn = key.fileobj
                try:
                    chunk = conn.recv(256)
                except OSError:
                    chunk = b""
                if not chunk:
                    drop(conn)
                    continue
                bufs[conn] += chunk
                while b"\n" in bufs.get(conn, b""):
                    line, _, rest = bufs[conn].partition(b"\n")
                    bufs[conn] = rest
                    words = line.decode(errors="replace").split()
                    if len(words) == 2 and words[0] == "hello" and words[1] in ("A", "B"):
                        side_of[conn] = words[1]
                        conns[words[1]] = conn
                        waiting.add(words[1])
                    elif words in (["pass"], ["done"]) and side_of.get(conn) == holder \
                            and holder:
                        me = holder
                        other = "B" if me == "A" else "A"
                        (waiting if words == ["pass"] else done).add(me)
                        holder = None
                        if other in waiting:
                            self.handovers += 1
                            grant(other)
                        elif me in waiting:  # passed, nobody else waiting: back to it
                            self.returns += 1
                            grant(me)
                    else:
                        drop(conn)
                        break
            schedule()
            farewell()
        for conn in list(side_of):
            conn.close()
        sel.close()
