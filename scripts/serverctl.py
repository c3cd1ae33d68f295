"""Start `monailabel start_server` (the documented command) on a free loopback port and wait for /info.

Shared by the tests and the speed benchmark.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(app_dir: str, studies: str, log=None, timeout: float = 180, conf: dict | None = None, **env_extra: str):
    """(process, url) of a running server; the process leads its own session (kill with os.killpg).

    `conf`: more `--conf KEY VALUE` pairs; `env_extra`: environment variables (MONAI_LABEL_* settings)."""
    port = free_port()
    extra = [a for k, v in (conf or {}).items() for a in ("--conf", str(k), str(v))]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               MONAI_LABEL_TRACKING_ENABLED="false", **env_extra)
    proc = subprocess.Popen(
        [shutil.which("monailabel", path=env["PATH"]), "start_server", "--app", app_dir, "--studies", studies,
         "--conf", "models", "limnet", *extra, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            r = requests.get(url + "/info/", timeout=2)
            if r.ok or r.status_code == 401:  # 401: up, with authentication on
                return proc, url
        except requests.RequestException:
            time.sleep(1)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout:.0f} s")


def tree_rss(pid: int) -> int:
    """Resident memory in bytes of a process and all its descendants (0 once it has gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
