"""`python -m resx serve`: the app for a room (issue 28).

Starts `streamlit run app.py` as a subprocess (resx never imports streamlit) listening on every
interface, with the checkout's `.streamlit/config.toml` for everything else (headless, XSRF on,
the viewer toolbar, error details hidden), waits until it answers, then prints the address the
students open (this machine's LAN address and the port) and, with `--class CODE`, the class's
student link and its teacher's link (a new teacher key: the store keeps only its hash, so a key
cannot be shown twice; a restart with the same code makes a new one and the old link stops working).
`streamlit run app.py` stays the local default: it listens on localhost only.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..core.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app.py"
DEFAULT_PORT = 8501
START_TIMEOUT_S = 180.0


def lan_address() -> str:
    """This machine's address on its local network: the source address the kernel picks for a route
    out (a UDP "connect" sends no packet); the host name's address when there is no route; else
    127.0.0.1 (then only this machine can open the link, and `serve` says so)."""
    for probe in ("10.255.255.255", "192.168.255.255", "172.31.255.255"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((probe, 1))
                address = s.getsockname()[0]
            if address and not address.startswith("127.") and address != "0.0.0.0":
                return address
        except OSError:
            continue
    try:
        address = socket.gethostbyname(socket.gethostname())
        if not address.startswith("127."):
            return address
    except OSError:
        pass
    return "127.0.0.1"


def check_port(port: int, bind: str) -> None:
    """A one-line error unless `port` is a port number free on `bind`."""
    if not 1 <= port <= 65535:
        raise ConfigError("port", port, "an integer from 1 to 65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((bind, port))
        except PermissionError:
            raise ConfigError("port", port, "a port this user may open (1024 or above)") from None
        except OSError:
            raise ConfigError("port", port, f"a free port: {port} is in use on this machine (try --port {port + 1})") from None


def streamlit_command(port: int, bind: str) -> list[str]:
    """The subprocess: the checkout's app.py; only the address and the port differ from config.toml."""
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", bind,
            "--server.port", str(port), "--server.headless", "true"]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"streamlit did not answer {url}/_stcore/health within {timeout:g} s")


def cmd_serve(args) -> int:
    from .classroom import check_code

    code = check_code(args.class_code) if args.class_code else None
    check_port(args.port, args.bind)
    if not APP.exists():
        raise ConfigError("serve", str(APP), "a source checkout of resx: app.py beside the resx/ folder")
    address = args.address or lan_address()
    base = f"http://{address}:{args.port}"
    key = None
    if code:
        from .store import Store
        with Store() as store:
            key = store.create_class(code, reissue=True)
    proc = subprocess.Popen(streamlit_command(args.port, args.bind), cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stop = lambda signum, frame: proc.send_signal(signal.SIGTERM)  # noqa: E731
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        wait_healthy(f"http://127.0.0.1:{args.port}", proc)
        print(f"\nresx is serving the class on {base} (every interface, port {args.port}).", flush=True)
        if address.startswith("127."):
            print("  warning: no network address found: only this machine can open it; "
                  "pass --address with the address students reach this machine by", flush=True)
        if code:
            print(f"  students open:        {base}/lesson?class={code}", flush=True)
            print(f"  your teacher's link:  {base}/class?class={code}&key={key}", flush=True)
            print("  (keep the teacher's link to yourself: it shows names, exports and closes the class; "
                  "serving this code again makes a new one)", flush=True)
        else:
            print(f"  students open:        {base}", flush=True)
            print(f"  your teacher's link:  {base}/class  (create the class there: the page gives you its teacher's "
                  "link; or start with --class CODE)", flush=True)
        print("  stop with Ctrl+C", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return 130
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        if proc.poll() is None:
            proc.terminate()
        return 1


def add_serve_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="start the app for a room: every interface; prints the students' address "
                                     "and the teacher's link")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the port (default {DEFAULT_PORT})")
    p.add_argument("--class", dest="class_code", metavar="CODE",
                   help="create (or re-key) the class CODE and print its students' and teacher's links")
    p.add_argument("--bind", default="0.0.0.0", help="the interface to listen on (default 0.0.0.0: all)")
    p.add_argument("--address", help="the address to print in the links (default: this machine's LAN address)")
    p.set_defaults(func=cmd_serve)
    return p
