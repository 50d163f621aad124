"""Security: nothing a visitor controls is unpickled, the server listens on localhost with XSRF
protection, operator caps hold, and text from a link is never drawn as a link (design.md "Data",
"What bad input gets"; .streamlit/config.toml).

Run: `python -m pytest -q tests/test_security.py`. The tests that drive the system Chromium are
also marked `browser` and are skipped without /usr/bin/chromium (they fail on CI, where $CI is set).
"""
from __future__ import annotations

import ast
import io
import json
import os
import pickle
import re
import shutil
import socket
import tempfile
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from browser_util import CHROMIUM, ROOT, Server, health_ok, launch_chromium, listening_addresses, wait_app_ready
from resx.core.config import RunConfig
from resx.core.data import DataError, data_dir, save_upload
from resx.runs.pipeline import CHECKPOINTS, load_checkpoint, run_pipeline

APP_TIMEOUT = 120  # AppTest's default (3 s) is shorter than importing torch
TINY = dict(n=100, n_probe=100, n_test=100, n_pop=512, m_cert=2048, epochs=1, finetune_epochs=1, width=8, depth=2, position=1)
PAGES = ("views/lab.py", "views/signals.py", "views/scaling.py", "views/allocation.py", "views/runs.py",
         "views/theory.py")


class Payload:
    """Unpickling this calls open(path, 'w'): the marker file appears only if a pickle ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # object arrays are pickled (numpy saves with allow_pickle=True)
    return buf.getvalue()


def _set(at, **values):
    for label, value in values.items():
        next(w for w in at.number_input if w.label == label).set_value(value)


def _press_run(at):
    next(b for b in at.button if b.label == "Run").click().run()
    return at


def _run_param(at):
    if "run" not in at.query_params:
        return None
    value = at.query_params["run"]
    return value[0] if isinstance(value, list) else value


# -- (a) the data folder and npz_path come from the operator only --------------------------------
def test_no_page_has_a_free_text_field_for_a_folder_or_path(app_home):
    """No page offers a text box whose label mentions a folder, path, directory or file, so no visitor types one."""
    seen = {}
    for page in PAGES:
        at = AppTest.from_file("../app.py", default_timeout=APP_TIMEOUT)
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert at.title and at.title[0].value, page  # the page itself ran
        seen[page] = [w.label for w in (*at.text_input, *at.text_area, *at.get("chat_input"))]
        suspicious = [label for label in seen[page] if re.search(r"folder|path|dir|file|RESX", label, re.I)]
        assert not suspicious, (page, suspicious)
    assert "depths" in seen["views/scaling.py"], seen  # the check sees the text boxes there are


def _url_script():
    import json

    import streamlit as st

    import ui
    st.text(json.dumps(ui.config_from_url().to_dict()))


def test_config_from_url_ignores_npz_path_and_the_data_folder(app_home, monkeypatch):
    """A link's npz_path (even to a valid file) and RESX_DATA_DIR are ignored; its other fields are used."""
    valid = app_home / "elsewhere.npz"
    valid.write_bytes(_npz(X=np.ones((40, 3), np.float32), y=np.arange(40) % 2))
    before = (os.environ["RESX_DATA_DIR"], data_dir())
    evil = str(app_home / "visitor-data")
    for params, dataset, n in (({"npz_path": str(valid), "RESX_DATA_DIR": evil, "n": "123"}, "teacher", 123),
                               ({"dataset": "npz", "npz_path": str(valid), "RESX_DATA_DIR": evil}, "teacher", 2000)):
        at = AppTest.from_function(_url_script, default_timeout=APP_TIMEOUT)
        for key, value in params.items():
            at.query_params[key] = value
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        cfg = json.loads(at.text[0].value)
        assert cfg["npz_path"] == "" and cfg["dataset"] == dataset and cfg["n"] == n, (params, cfg)
        assert (os.environ["RESX_DATA_DIR"], data_dir()) == before


def test_a_lab_run_from_a_link_never_trains_on_a_path_from_the_link(app_home):
    """Pressing Run on a Lab opened with ?dataset=npz&npz_path=...&RESX_DATA_DIR=... submits a run on the preset's data, and the data folder stays the operator's."""
    valid = app_home / "elsewhere.npz"
    valid.write_bytes(_npz(X=np.ones((40, 3), np.float32), y=np.arange(40) % 2))
    before = os.environ["RESX_DATA_DIR"]
    at = AppTest.from_file("../app.py", default_timeout=APP_TIMEOUT)
    for key, value in {"dataset": "npz", "npz_path": str(valid), "RESX_DATA_DIR": str(app_home / "x")}.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    _set(at, n=200, n_probe=200, n_test=200, epochs=1, finetune_epochs=1, width=8)
    run_id = _run_param(_press_run(at))
    assert run_id, [e.value for e in at.error]
    import ui
    manager = ui.MANAGERS[-1]
    try:
        cfg = manager.snapshot(run_id).config
        assert cfg["dataset"] == "teacher" and cfg["npz_path"] == "", cfg
        assert os.environ["RESX_DATA_DIR"] == before
    finally:
        manager.cancel(run_id)


# -- (b) uploads are read with allow_pickle=False --------------------------------------------------
def test_pickled_uploads_are_refused_and_never_unpickled(tmp_path):
    """An npz of object arrays whose unpickling would create a file is refused with DataError and the file never appears; so are a raw pickle and an object .npy."""
    marker = tmp_path / "pwned"
    control = tmp_path / "control"
    payload = _npz(X=np.array([Payload(marker), 1.0], dtype=object), y=np.array([0, 1]))
    # the payload is live: loading it the unsafe way runs it
    with np.load(io.BytesIO(_npz(X=np.array([Payload(control)], dtype=object))), allow_pickle=True) as f:
        f["X"]
    assert control.exists()

    buf = io.BytesIO()
    np.save(buf, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    folder = tmp_path / "uploads"
    for name, content in (("object npz", payload), ("object npy", buf.getvalue()),
                          ("raw pickle", pickle.dumps({"X": Payload(marker), "y": [0, 1]}))):
        with pytest.raises(DataError):
            save_upload(content, folder)
        assert not marker.exists(), f"{name}: the pickle ran"
        assert list(folder.iterdir()) == [], f"{name}: something was kept"


def test_an_npz_member_holding_a_pickle_is_never_unpickled(tmp_path):
    """An .npz whose X.npy member is a bare pickle stream (no .npy header) is refused without running the pickle."""
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("X.npy", pickle.dumps(Payload(marker)))
        z.writestr("y.npy", pickle.dumps(Payload(marker)))
    folder = tmp_path / "uploads"
    with pytest.raises(Exception):  # noqa: B017 (the type is tests/test_reliability.py's concern)
        save_upload(buf.getvalue(), folder)
    assert not marker.exists()
    assert list(folder.iterdir()) == []




def test_an_upload_error_names_no_server_path(tmp_path):
    """The message of a refused upload, shown to the visitor, names no folder of the server."""
    folder = tmp_path / "home" / "uploads"
    for content in (b"not a zip", _npz(X=np.ones(4), y=np.arange(4) % 2),
                    _npz(X=np.ones((4, 2)), y=-np.ones(4, np.int64))):
        with pytest.raises(DataError) as info:
            save_upload(content, folder)
        assert str(tmp_path) not in str(info.value), str(info.value)


# -- (c) checkpoints load with weights_only=True ---------------------------------------------------
def test_load_checkpoint_refuses_a_malicious_pickle(tmp_path):
    """A checkpoint whose unpickling would create a file raises on load_checkpoint and the file never appears; a real run's checkpoints still load."""
    cfg = RunConfig(**TINY)
    out = tmp_path / "run"
    result = run_pipeline(cfg, out_dir=out)
    for which in CHECKPOINTS:  # the real ones load
        model = load_checkpoint(out, which, cfg, result["input_shape"], result["num_classes"])
        assert sum(p.numel() for p in model.parameters()) > 0

    marker = tmp_path / "pwned"
    control = tmp_path / "control"
    torch.save({"weight": Payload(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # the payload is live: the unsafe load runs it
    assert control.exists()

    torch.save({"blocks.0.weight": Payload(marker)}, out / "old.pt")               # torch's zip format
    (out / "new.pt").write_bytes(pickle.dumps({"weight": Payload(marker)}, protocol=2))  # a bare pickle
    for which in ("old", "new"):
        with pytest.raises(pickle.UnpicklingError):
            load_checkpoint(out, which, cfg, result["input_shape"], result["num_classes"])
        assert not marker.exists(), f"{which}.pt: the pickle ran"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (f"{getattr(f.value, 'id', getattr(f.value, 'attr', '?'))}.{f.attr}" if isinstance(f, ast.Attribute)
                    else getattr(f, "id", "?"))
            kw = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            yield node.lineno, name, kw


def test_the_source_never_deserialises_unsafely():
    """Every torch.load in the app passes weights_only=True, every np.load allow_pickle=False, and nothing calls pickle/marshal/joblib/dill loaders or eval/exec."""
    sources = [*sorted((ROOT / "resx").rglob("*.py")), ROOT / "app.py", *sorted((ROOT / "ui").glob("*.py")),
               *sorted((ROOT / "views").glob("*.py"))]
    bad = []
    for path in sources:
        for line, name, kw in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{line} {name}"
            if name == "torch.load" and kw.get("weights_only") is not True:
                bad.append(where + " without weights_only=True")
            elif name in ("np.load", "numpy.load") and kw.get("allow_pickle") is not False:
                bad.append(where + " without allow_pickle=False")
            elif re.fullmatch(r"(c?pickle|_pickle|dill|joblib|marshal|shelve)\.(load|loads|Unpickler|open)"
                              r"|pd\.read_pickle|pandas\.read_pickle|yaml\.load|eval|exec", name):
                bad.append(where)
    assert not bad, bad


# -- the server: localhost only, XSRF on ---------------------------------------------------------
def test_the_config_file_binds_localhost_with_xsrf_protection():
    """.streamlit/config.toml sets server.address to localhost and enableXsrfProtection to true, with options streamlit knows."""
    from streamlit import config as st_config

    conf = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = conf["server"]
    assert server["address"] == "localhost"
    assert server["enableXsrfProtection"] is True
    assert server.get("enableCORS", True) is not False
    for section, options in conf.items():
        for key in options:
            st_config.get_option(f"{section}.{key}")  # raises for an option streamlit does not have


@pytest.fixture(scope="module")
def server():
    """`streamlit run app.py` with the repository's .streamlit/config.toml: no address given on the command line."""
    home = Path(tempfile.mkdtemp(prefix="resx-security-"))
    srv = Server(home=home, log_path=home / "streamlit.log")
    env = {k: v for k, v in os.environ.items() if k.startswith("STREAMLIT_SERVER_")}
    assert not env, f"the environment overrides server options: {env}"
    srv.start(timeout=120)
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(home, ignore_errors=True)


def _non_loopback_ipv4() -> set[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return set()
    return {i[4][0] for i in infos if not i[4][0].startswith("127.")}


def test_the_server_listens_on_loopback_only_and_enforces_xsrf(server):
    """The server started with the repository's config listens on 127.0.0.1 (or ::1) only, not on every interface, and refuses a state-changing request without an XSRF token."""
    addresses = listening_addresses(server.port)
    assert addresses, f"nothing listens on port {server.port}"
    assert set(addresses) <= {"127.0.0.1", "::1"}, addresses
    assert "127.0.0.1" in addresses
    assert health_ok(f"http://127.0.0.1:{server.port}")
    for ip in _non_loopback_ipv4():  # the machine's own address on its network: nobody answers
        with pytest.raises(OSError):
            socket.create_connection((ip, server.port), timeout=2).close()
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/_stcore/upload_file/session/file",
                                     data=b"x", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 403 and b"XSRF" in info.value.read()




@pytest.mark.browser
def test_text_from_a_link_is_never_drawn_as_a_link(server):
    """Markdown or bare URLs in a link's query (run, depth, dataset, preset) are shown as text, never as a hyperlink to another site."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    queries = [{"run": "[Log in again](https://evil.example/login)"}, {"run": "https://evil.example/bare"},
               {"depth": "[Click](https://evil.example/depth)"}, {"dataset": "[Click](https://evil.example/data)"},
               {"preset": "[Click](https://evil.example/preset)", "depth": "0"}]
    found = {}
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            for query in queries:
                page.goto(f"{server.url}/lab?{urllib.parse.urlencode(query)}")
                wait_app_ready(page)
                page.locator('[data-testid="stAlert"]').first.wait_for(timeout=30_000)
                page.wait_for_function("() => !document.querySelector('[data-stale=\"true\"]')", timeout=30_000)
                links = page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)"
                                      ".filter(h => { try { return new URL(h).hostname.endsWith('evil.example'); }"
                                      " catch (e) { return false; } })")
                if links:
                    found[json.dumps(query)] = links
        finally:
            browser.close()
    assert not found, found


# -- operator caps -------------------------------------------------------------------------------
def test_operator_caps_refuse_a_wider_run_and_a_second_run_in_the_session(app_home, monkeypatch):
    """With RESX_MAX_WIDTH=32 and RESX_MAX_RUNNING=1 the Lab refuses width 64 naming the cap, and refuses a second run while the first is going."""
    monkeypatch.setenv("RESX_MAX_WIDTH", "32")
    monkeypatch.setenv("RESX_MAX_RUNNING", "1")
    at = AppTest.from_file("../app.py", default_timeout=APP_TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    _set(at, width=64)
    _press_run(at)
    assert any("width=64 is not allowed: at most 32 on this server" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert _run_param(at) is None
    import ui
    manager = ui.MANAGERS[-1]
    assert manager.active() == []

    _set(at, width=32, n=2000, n_probe=200, n_test=200, epochs=500, finetune_epochs=1)
    first = _run_param(_press_run(at))
    assert first, [e.value for e in at.error]
    try:
        assert manager.snapshot(first).is_active
        _press_run(at)
        assert any("this server allows 1 per session" in e.value for e in at.error), [e.value for e in at.error]
        assert manager.active() == [first]
        assert _run_param(at) == first
    finally:
        manager.cancel(first)
        manager.wait(first, timeout=30)
