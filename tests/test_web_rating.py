"""Rating workbench: API, consensus export, agreement, durability, and a real browser."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convfocus.cli import main
from convfocus.errors import ConfigError, OutputError
from convfocus.web.rating import (
    LABELS,
    RatingApp,
    RatingStore,
    consensus_in_focus,
    export_consensus,
    fleiss_kappa,
    validation_sources,
)
from convfocus.web.server import HttpError, Response
from web_helpers import browser_or_skip, get_json, http, make_patch_folder, serving

JSON = {"Content-Type": "application/json"}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    make_patch_folder(tmp_path / "rate", n=3)
    return tmp_path / "rate"


@pytest.fixture()
def server(folder: Path):
    with serving(RatingApp(folder)) as url:
        yield url


def _label(url: str, rater: str, index: int, label: str) -> tuple[int, dict]:
    return get_json(f"{url}/api/label", method="POST",
                    body={"rater": rater, "index": index, "label": label})


# --- API ---------------------------------------------------------------------------------------


def test_page_and_security_headers(server: str) -> None:
    status, headers, body = http(server + "/")
    assert status == 200 and b"rating workbench" in body
    assert headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in headers["content-security-policy"]
    assert http(server + "/static/rate.js")[0] == 200
    assert http(server + "/patches/0.png")[1]["content-type"] == "image/png"


def test_session_and_progress(server: str) -> None:
    status, p = get_json(server + "/api/session", method="POST", body={"rater": "alice"})
    assert status == 200 and p == {"rater": "alice", "total": 3, "done": 0,
                                   "first_unlabelled": 0}
    status, r = _label(server, "alice", 0, "in-focus")
    assert status == 200 and r["saved"] and r["done"] == 1 and r["first_unlabelled"] == 1
    status, s = get_json(server + "/api/state?rater=alice&i=0")
    assert s["label"] == "in-focus" and s["next_unlabelled"] == 1
    _label(server, "alice", 0, "undecided")  # a rater may change their mind
    assert get_json(server + "/api/state?rater=alice&i=0")[1]["label"] == "undecided"


def test_raters_never_see_each_others_labels(server: str) -> None:
    _label(server, "alice", 1, "out-focus")
    status, s = get_json(server + "/api/state?rater=bob&i=1")
    assert status == 200 and s["label"] is None and s["done"] == 0
    for path in ("/api/info", "/api/state?rater=bob&i=1"):
        assert b"alice" not in http(server + path)[2]


@pytest.mark.parametrize("body, status", [
    ({"rater": "", "index": 0, "label": "in-focus"}, 400),
    ({"rater": "<script>", "index": 0, "label": "in-focus"}, 400),
    ({"rater": "a" * 41, "index": 0, "label": "in-focus"}, 400),
    ({"rater": "alice", "index": 3, "label": "in-focus"}, 404),
    ({"rater": "alice", "index": -1, "label": "in-focus"}, 404),
    ({"rater": "alice", "index": "x", "label": "in-focus"}, 400),
    ({"rater": "alice", "index": True, "label": "in-focus"}, 400),
    ({"rater": "alice", "index": 0, "label": "sharp"}, 400),
    ({"rater": "alice", "index": 0}, 400),
])
def test_label_validation(server: str, body: dict, status: int) -> None:
    got, data = get_json(server + "/api/label", method="POST", body=body)
    assert got == status and set(data) == {"error"}
    assert "Traceback" not in data["error"]


def test_request_hygiene(server: str, folder: Path) -> None:
    # path traversal, in every spelling, is refused
    for path in ("/static/../rating.py", "/static/%2e%2e/rating.py", "/static/..%2fserver.py",
                 "/patches/../manifest.csv", "/static/%00", "/../ratings.sqlite"):
        status, _, body = http(server + path)
        assert status in (400, 403, 404), path
        assert b"Traceback" not in body
    assert http(server + "/patches/99.png")[0] == 404
    assert http(server + "/api/state?rater=alice&i=abc")[0] == 400
    assert http(server + "/api/state?rater=alice&i=1&i=2")[0] == 400
    # JSON only, same origin only, bounded bodies, known methods, loopback Host only
    assert http(server + "/api/label", method="POST", raw=b"rater=alice",
                headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
    assert http(server + "/api/label", method="POST", raw=b"{not json", headers=JSON)[0] == 400
    assert http(server + "/api/label", method="POST", raw=b"[]", headers=JSON)[0] == 400
    assert http(server + "/api/label", method="POST", body={"rater": "a"},
                headers={"Origin": "http://evil.example"})[0] == 403
    assert http(server + "/api/label", method="POST", raw=b"{}" + b" " * 70000,
                headers=JSON)[0] == 413
    assert http(server + "/api/label", method="PUT", raw=b"{}", headers=JSON)[0] == 405
    assert http(server + "/", headers={"Host": "evil.example"})[0] == 421


def test_unexpected_errors_do_not_leak(folder: Path) -> None:
    class Broken(RatingApp):
        def handle(self, request):  # type: ignore[no-untyped-def]
            if request.path == "/boom":
                raise RuntimeError("secret detail /etc/passwd")
            return super().handle(request)

    with serving(Broken(folder)) as url:
        status, _, body = http(url + "/boom")
    assert status == 500 and json.loads(body) == {"error": "internal error"}


# --- export and agreement ------------------------------------------------------------------------


def test_fleiss_kappa_known_values() -> None:
    assert fleiss_kappa([[3, 0, 0], [0, 3, 0], [0, 0, 3]]) == pytest.approx(1.0)
    # two subjects, 2 raters each, always disagreeing over two categories: P = 0, Pe = .5
    assert fleiss_kappa([[1, 1, 0], [1, 1, 0]]) == pytest.approx(-1.0)
    # worked by hand: P_i = (1, 1/3, 1/3, 1), P = 2/3; p = (5/12, 5/12, 2/12), Pe = 54/144
    assert fleiss_kappa([[3, 0, 0], [2, 1, 0], [0, 1, 2], [0, 3, 0]]) == pytest.approx(
        (2 / 3 - 54 / 144) / (1 - 54 / 144))
    assert fleiss_kappa([[3, 0, 0], [3, 0, 0]]) is None  # one category only: undefined
    assert fleiss_kappa([[1, 0, 0]]) is None  # a single rating per patch


def test_consensus_rule() -> None:
    labels = {"a": {"r1": "in-focus", "r2": "in-focus", "r3": "in-focus"},
              "b": {"r1": "in-focus", "r2": "in-focus"},
              "c": {"r1": "in-focus", "r2": "in-focus", "r3": "undecided"},
              "d": {"r1": "in-focus", "r2": "in-focus", "r3": "in-focus", "r4": "in-focus"}}
    assert consensus_in_focus(labels) == {"a", "d"}
    assert consensus_in_focus(labels, min_raters=2) == {"a", "b", "d"}


def test_export_layout(folder: Path, tmp_path: Path) -> None:
    patches = [r for r in csv.DictReader((folder / "manifest.csv").open())]
    store = RatingStore(folder / "ratings.sqlite")
    for rater in ("r1", "r2", "r3"):
        store.set_label(rater, patches[0]["patch"], "in-focus")
        store.set_label(rater, patches[1]["patch"], "in-focus" if rater != "r3" else "out-focus")
    store.set_label("r1", patches[2]["patch"], "in-focus")
    pool = tmp_path / "pool"
    stats = export_consensus(folder, pool, min_raters=3)
    rows = list(csv.DictReader((pool / "manifest.csv").open()))
    assert [r["patch"] for r in rows] == ["patches/" + Path(patches[0]["patch"]).name]
    assert set(rows[0]) >= {"patch", "source", "x_px", "y_px", "mpp", "split"}
    assert (pool / rows[0]["patch"]).read_bytes() == (folder / patches[0]["patch"]).read_bytes()
    agreement = json.loads((pool / "agreement.json").read_text())
    assert agreement == stats
    assert agreement["consensus_in_focus"] == 1 and agreement["patches_with_min_raters"] == 2
    assert agreement["labels"] == {"in-focus": 6, "out-focus": 1, "undecided": 0}
    assert agreement["categories"] == list(LABELS)
    with pytest.raises(OutputError):  # never overwrite a pool
        export_consensus(folder, pool)
    assert not any(p.name.startswith(".pool.tmp") for p in tmp_path.iterdir())


def test_export_without_labels_is_a_clear_error(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no labels"):
        export_consensus(folder, tmp_path / "pool")


def test_validation_split_is_by_source() -> None:
    assert validation_sources(["a.svs"]) == set()
    val = validation_sources([f"s{i}.svs" for i in range(10)], 0.2)
    assert len(val) == 2 and val == validation_sources([f"s{i}.svs" for i in range(10)], 0.2)


def test_http_error_is_not_a_response() -> None:
    assert HttpError(404, "x").status == 404
    assert Response.json({"a": 1}).body == b'{"a":1}'


# --- a real server process, killed mid-session -------------------------------------------------


def _start(folder: Path) -> tuple[subprocess.Popen, str]:
    code = "import sys; from convfocus.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "rate", str(folder), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("the rating server did not print its URL")


def test_killed_server_loses_no_label(folder: Path) -> None:
    proc, url = _start(folder)
    try:
        for i, label in enumerate(("in-focus", "out-focus")):
            assert _label(url, "alice", i, label)[0] == 200
        assert _label(url, "bob", 2, "undecided")[0] == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    proc, url = _start(folder)
    try:
        alice = [get_json(f"{url}/api/state?rater=alice&i={i}")[1]["label"] for i in range(3)]
        bob = get_json(f"{url}/api/state?rater=bob&i=2")[1]
        assert alice == ["in-focus", "out-focus", None]
        assert bob["label"] == "undecided" and bob["done"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- end to end in Chromium --------------------------------------------------------------------


def _rate_in_browser(browser, url: str, rater: str, wanted: dict[str, str]) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.fill("#rater", rater)
    page.click("#start")
    for step in range(3):
        page.wait_for_selector(f"#patch[data-index='{step}']")
        name = page.inner_text("#patch-name")
        label = wanted[name]
        if step == 0:
            page.click(f"#labels button[data-label='{label}']")  # the buttons ...
        else:
            page.keyboard.press({"in-focus": "i", "out-focus": "o", "undecided": "u"}[label])
        if step < 2:
            page.wait_for_selector(f"#patch[data-index='{step + 1}']")
    page.wait_for_selector("#done:not(.hidden)")
    assert page.inner_text("#progress-count") == "3 / 3 labelled"
    page.keyboard.press("z")  # 1:1 view
    page.wait_for_selector("[data-zoom='1'].on")
    if os.environ.get("CONVFOCUS_SCREENSHOTS"):
        page.screenshot(path=str(Path(os.environ["CONVFOCUS_SCREENSHOTS"]) / "rating.png"))
    assert errors == []
    context.close()


def test_two_raters_in_the_browser_and_export(folder: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    pw, browser = browser_or_skip()
    names = [Path(r["patch"]).name for r in csv.DictReader((folder / "manifest.csv").open())]
    alice = dict(zip(names, ("in-focus", "in-focus", "out-focus")))
    bob = dict(zip(names, ("in-focus", "undecided", "out-focus")))
    try:
        with serving(RatingApp(folder)) as url:
            _rate_in_browser(browser, url, "alice", alice)
            _rate_in_browser(browser, url, "bob", bob)
    finally:
        browser.close()
        pw.stop()
    pool = tmp_path / "pool"
    assert main(["rate", str(folder), "--export", str(pool), "--min-raters", "2"]) == 0
    assert "1 consensus in-focus patches of 3" in capsys.readouterr().out
    rows = list(csv.DictReader((pool / "manifest.csv").open()))
    assert [Path(r["patch"]).name for r in rows] == [names[0]]
    agreement = json.loads((pool / "agreement.json").read_text())
    assert agreement["raters"] == {"alice": 3, "bob": 3}
    # per patch: (2,0,0), (1,0,1), (0,2,0) -> P = 2/3, p = (1/2, 1/3, 1/6), Pe = 14/36
    assert agreement["fleiss_kappa"] == pytest.approx((2 / 3 - 14 / 36) / (1 - 14 / 36),
                                                      abs=1e-6)
