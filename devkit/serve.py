"""Real server processes for the service tests and benchmarks: ``nearest-prompt serve`` on loopback.

The server picks a free port itself (``--port 0``) and announces it; ``Server`` reads the port from that
line, so no other process can take it in between. ``wait_for`` polls an observable state (a metric, a log
line, a file) until it holds, instead of sleeping and hoping; ``metrics`` reads the Prometheus text.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

EXE = str(Path(sys.executable).parent / "nearest-prompt")
ANNOUNCED = re.compile(r"serving .* on http://[^:]+:(\d+) ")


def wait_for(check: Callable[[], Any], *, what: str, timeout: float = 120, every: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something truthy (and return that); ``TimeoutError`` naming ``what``
    after ``timeout`` seconds (a bound against a hang, not a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(every)


class Server:
    def __init__(self, index: Path | None, *args: str, log: Path, env: dict[str, str] | None = None):
        self.log = log
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        cmd = [EXE, "serve", *(["--index", str(index)] if index is not None else []), "--port", "0", *args]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        try:
            self.port = int(wait_for(self._announced, what="the server to announce its port").group(1))
            self.url = f"http://127.0.0.1:{self.port}"
            wait_for(self._healthy, what="the server to answer /health")
        except BaseException:
            self.stop()
            raise

    def _announced(self) -> re.Match | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        return ANNOUNCED.search(self.log.read_text(errors="replace"))

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(self.url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kw)

    def metrics(self, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The server's metrics: (sample name, sorted labels) -> value."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", headers=headers, timeout=30).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def metric(self, name: str, headers: dict[str, str] | None = None, **labels: str) -> float:
        """One sample's value (0 when the server has not recorded it yet)."""
        return self.metrics(**(headers or {})).get((name, tuple(sorted(labels.items()))), 0.0)

    def logged(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class CpuHog:
    """``n`` processes spinning on the CPU (a busy machine), for at most ``seconds``; a context manager."""

    def __init__(self, n: int = 2, *, seconds: float = 600):
        self.n, self.seconds = n, seconds
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> CpuHog:
        code = f"import time\nend = time.monotonic() + {self.seconds}\nwhile time.monotonic() < end:\n    pass\n"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.n)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


class HealthProbe:
    """A separate process that asks ``url``/health every ``every`` seconds and records how long each answer
    took (a process of its own, so that the load a test makes in its own process does not delay the probe's
    requests); a context manager: it probes from entry (after its first answer) to exit, then ``latencies``
    and ``statuses`` hold what it saw."""

    CODE = """
import json, os, sys, time, httpx
url, every, started, stop, out = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
seen = []
with httpx.Client(timeout=60) as c:
    while not os.path.exists(stop):
        t0 = time.monotonic()
        status = c.get(url + "/health").status_code
        seen.append([time.monotonic() - t0, status])
        open(started, "a").close()
        time.sleep(every)
with open(out, "w") as f:
    json.dump(seen, f)
"""

    def __init__(self, url: str, folder: Path, *, every: float = 0.1):
        self.url, self.every, self.folder = url, every, folder
        self.latencies: list[float] = []
        self.statuses: list[int] = []

    def __enter__(self) -> HealthProbe:
        f = self.folder
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, self.url, str(self.every), str(f / "probe.started"),
                                      str(f / "probe.stop"), str(f / "probe.json")])
        wait_for(lambda: (f / "probe.started").exists() or self.proc.poll() is not None, what="the first probe")
        return self

    def __exit__(self, *exc: Any) -> None:
        (self.folder / "probe.stop").touch()
        self.proc.wait(timeout=120)
        seen = json.loads((self.folder / "probe.json").read_text())
        self.latencies = [s for s, _ in seen]
        self.statuses = [c for _, c in seen]
