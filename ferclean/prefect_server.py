"""A local Prefect server that ferclean starts, owns and stops (for `ferclean serve`).

Prefect's embedded temporary API (what a flow uses when `PREFECT_API_URL` is unset) runs no
scheduler, so a served deployment's schedule never creates a run. `ferclean serve` without
`PREFECT_API_URL` therefore starts a real `prefect server start` process on a free loopback port,
with its state (SQLite database, logs) under `home`, waits until its API answers, and stops it
(the whole process group) when serving ends, on Ctrl-C or SIGTERM.

Nothing here imports Prefect: the server is a subprocess, probed over HTTP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class ServerStartError(RuntimeError):
    """The Prefect server did not come up (its log's last lines are in the message)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True when `GET {api_url}/health` answers 200."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as resp:  # noqa: S310
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def prefect_command() -> list[str]:
    """The `prefect` CLI of this interpreter's environment."""
    exe = Path(sys.executable).with_name("prefect")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("prefect")
    if found:
        return [found]
    return [sys.executable, "-m", "prefect"]


class LocalPrefectServer:
    """`with LocalPrefectServer(home) as srv:` runs `prefect server start` on a free loopback port.

    `srv.api_url` is the API (set it as PREFECT_API_URL), `srv.ui_url` the UI. The server's
    database and log (`server.log`) live in `home`, so the run history survives restarts.
    `scheduler_loop_s` is how often the server's scheduler creates runs (Prefect's default 60 s).
    """

    def __init__(self, home: str | os.PathLike[str], host: str = "127.0.0.1", port: int | None = None,
                 startup_timeout_s: float = 180.0, scheduler_loop_s: float | None = None):
        self.home = Path(home).expanduser().resolve()
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.scheduler_loop_s = scheduler_loop_s
        self.proc: subprocess.Popen | None = None

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env["PREFECT_HOME"] = str(self.home)
        env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        env["PREFECT_UI_API_URL"] = self.api_url
        if self.scheduler_loop_s is not None:
            env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = str(self.scheduler_loop_s)
        return env

    def start(self) -> LocalPrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port(self.host)
        cmd = [*prefect_command(), "server", "start", "--host", self.host, "--port", str(self.port)]
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"prefect server exited with code {self.proc.returncode}: {self._log_tail()}")
            if api_healthy(self.api_url):
                return self
            time.sleep(0.5)
        self.stop()
        raise ServerStartError(f"prefect server did not answer at {self.api_url} within "
                               f"{self.startup_timeout_s:.0f} s: {self._log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left after `timeout_s`."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no server log)"
        return " | ".join(text[-lines:]) or "(empty server log)"

    def __enter__(self) -> LocalPrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
