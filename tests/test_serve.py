"""`python -m resx serve` (issue 28): a real streamlit on every interface, its printed links, and the
errors it gives before starting anything."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser_util import ROOT, free_port
from resx.runs.serve import lan_address


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port`, from /proc/net/tcp (state 0A)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, p = local.split(":")
        if state == "0A" and int(p, 16) == port:
            out.add(".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def test_serve_listens_on_every_interface_and_prints_the_links(tmp_path):
    """serve --port P --class CODE: streamlit listens on 0.0.0.0:P; the printed students' address is
    http://<this machine's LAN address>:P and answers there; the teacher's link carries a key the store
    accepts for CODE; SIGTERM stops the server and its workers."""
    port = free_port()
    env = {**os.environ, "RESX_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "resx", "serve", "--port", str(port), "--class", "room-1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("stop with Ctrl+C" in line for line in lines):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
        text = "".join(lines)
        address = lan_address()
        assert f"resx is serving the class on http://{address}:{port}" in text, text
        assert _listening_addresses(port) == {"0.0.0.0"}, text
        for host in {address, "127.0.0.1"}:
            with urllib.request.urlopen(f"http://{host}:{port}/_stcore/health", timeout=10) as r:
                assert r.read().strip() == b"ok"
        assert f"students open:        http://{address}:{port}/lesson?class=ROOM-1" in text
        key = re.search(rf"http://{re.escape(address)}:{port}/class\?class=ROOM-1&key=([\w-]+)", text).group(1)
        from resx.runs.store import Store
        with Store(tmp_path) as store:
            assert store.check_teacher_key("ROOM-1", key)
            assert not store.check_teacher_key("ROOM-1", key[:-1])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert _listening_addresses(port) == set()


@pytest.mark.parametrize("args, message", [(["--port", "0"], "from 1 to 65535"), (["--class", "x"], "3 to 16 letters")])
def test_serve_bad_input_is_one_line_and_starts_nothing(args, message, tmp_path):
    out = subprocess.run([sys.executable, "-m", "resx", "serve", *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "RESX_HOME": str(tmp_path)}, timeout=60)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_serve_refuses_a_port_in_use(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "resx", "serve", "--port", str(port)], cwd=ROOT, capture_output=True,
                             text=True, env={**os.environ, "RESX_HOME": str(tmp_path)}, timeout=60)
    assert out.returncode == 2 and "in use" in out.stderr, out.stderr
