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
from convfocus.io.atomic import is_temp_name
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
    ({"rater": "alice", "index": "0", "label": "in-focus"}, 400),  # a string is not an index
    ({"rater": "alice", "index": 0.0, "label": "in-focus"}, 400),
    ({"rater": "alice", "index": None, "label": "in-focus"}, 400),
    ({"rater": "alice", "index": [0], "label": "in-focus"}, 400),
    ({"rater": "alice", "index": 0, "label": "sharp"}, 400),
    ({"rater": "alice", "index": 0}, 400),
    ({"rater": "a/b", "index": 0, "label": "in-focus"}, 400),
    ({"rater": "a\\b", "index": 0, "label": "in-focus"}, 400),
    ({"rater": "alice\x1f", "index": 0, "label": "in-focus"}, 400),  # control characters
    ({"rater": "al\x00ice", "index": 0, "label": "in-focus"}, 400),
    ({"rater": "al\nice", "index": 0, "label": "in-focus"}, 400),
    ({"rater": "\u202ealice", "index": 0, "label": "in-focus"}, 400),  # bidi override
    ({"rater": "\u0301alice", "index": 0, "label": "in-focus"}, 400),  # leading mark
    ({"rater": "李" * 41, "index": 0, "label": "in-focus"}, 400),
    ({"rater": 7, "index": 0, "label": "in-focus"}, 400),
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


def test_duplicate_json_keys_cannot_label_as_another_rater(server: str) -> None:
    raw = b'{"rater": "alice", "index": 0, "label": "in-focus", "rater": "bob"}'
    status, _, body = http(server + "/api/label", method="POST", raw=raw, headers=JSON)
    assert status == 400 and json.loads(body) == {
        "error": "key 'rater' given more than once in the JSON body"}
    for rater in ("alice", "bob"):  # nothing was stored under either name
        assert get_json(f"{server}/api/state?rater={rater}&i=0")[1]["label"] is None
    nested = b'{"rater": "alice", "index": 0, "label": "in-focus", "x": {"a": 1, "a": 2}}'
    assert http(server + "/api/label", method="POST", raw=nested, headers=JSON)[0] == 400


def test_unicode_rater_names_are_stored_and_exported(folder: Path, tmp_path: Path) -> None:
    with serving(RatingApp(folder)) as url:
        status, p = get_json(url + "/api/session", method="POST", body={"rater": "Zoë"})
        assert status == 200 and p["rater"] == "Zoë"
        # the same rater in another case or in decomposed form (e + combining diaeresis)
        assert _label(url, "ZOË", 0, "in-focus")[0] == 200
        assert _label(url, "Zoe\u0308", 1, "out-focus")[0] == 200
        for rater in ("José", "李"):
            assert _label(url, rater, 0, "in-focus")[0] == 200
        status, s = get_json(url + "/api/state?rater=zo%C3%AB&i=0")
        assert status == 200 and s["label"] == "in-focus" and s["done"] == 2
        assert get_json(url + "/api/state?rater=%E6%9D%8E&i=0")[1]["done"] == 1
        assert get_json(url + "/api/state?rater=Jos%C3%A9&i=1")[1]["label"] is None
    labels = RatingStore(folder / "ratings.sqlite").all_labels()
    patch0 = next(iter(csv.DictReader((folder / "manifest.csv").open())))["patch"]
    assert labels[patch0] == {"Zoë": "in-focus", "José": "in-focus", "李": "in-focus"}
    stats = export_consensus(folder, tmp_path / "pool", min_raters=3)
    assert stats["consensus_in_focus"] == 1
    raw = (tmp_path / "pool" / "agreement.json").read_bytes()
    assert "Zoë".encode() in raw and "李".encode() in raw  # UTF-8, not \u escapes
    assert json.loads(raw.decode("utf-8"))["raters"] == {"José": 1, "Zoë": 2, "李": 1}


def _exchange(url: str, data: bytes, *, wait: float = 10.0) -> tuple[bytes, bool, float]:
    """Send raw bytes; (everything received, whether the server closed, seconds taken)."""
    import socket

    host, port = url.removeprefix("http://").rsplit(":", 1)
    t0 = time.monotonic()
    received, closed = b"", False
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except TimeoutError:
            pass
    return received, closed, time.monotonic() - t0


def test_false_content_length_does_not_hold_the_connection(folder: Path) -> None:
    head = (b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    with serving(RatingApp(folder), request_timeout_s=0.5) as url:
        got, closed, seconds = _exchange(url, head + b'{"rater": "alice"}')
        assert got.startswith(b"HTTP/1.1 408 ") and b"Connection: close\r\n" in got
        assert closed and seconds < 5
        # an idle connection that never sends a request is dropped too
        got, closed, seconds = _exchange(url, b"")
        assert got == b"" and closed and seconds < 5
    with pytest.raises(ConfigError, match="timeout"), serving(RatingApp(folder),
                                                             request_timeout_s=0):
        pass


def test_error_before_the_body_closes_the_connection(server: str) -> None:
    # the unread body must not be read as a second request on the same connection
    smuggled = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for host, status in ((b"evil.example", b"421"), (b"127.0.0.1", b"415")):
        request = (b"POST /api/label HTTP/1.1\r\nHost: " + host + b"\r\n"
                   b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(smuggled))
        got, closed, _ = _exchange(server, request + smuggled + smuggled)
        if status == b"421":  # refused before the body was read: one answer, then close
            assert got.count(b"HTTP/1.1 ") == 1 and b"Connection: close\r\n" in got
            assert got.startswith(b"HTTP/1.1 421 ") and closed
        else:  # the body was read: the connection stays usable for the next request
            assert got.startswith(b"HTTP/1.1 415 ") and got.count(b"HTTP/1.1 200 ") == 1
    too_big = (b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nContent-Length: 9999999\r\n\r\n")
    got, closed, _ = _exchange(server, too_big + smuggled)
    assert got.startswith(b"HTTP/1.1 413 ") and got.count(b"HTTP/1.1 ") == 1 and closed
    chunked = (b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\n{}\r\n0\r\n\r\n")
    got, closed, _ = _exchange(server, chunked + smuggled)
    assert got.startswith(b"HTTP/1.1 411 ") and got.count(b"HTTP/1.1 ") == 1 and closed
    # a request line the parser refuses gets a JSON answer too (never HTML), then close
    got, closed, _ = _exchange(server, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 414 ") and b"Connection: close\r\n" in got and closed
    assert json.loads(got.split(b"\r\n\r\n", 1)[1]) == {"error": "Request-URI Too Long"}


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
    assert not any(is_temp_name(p.name) for p in tmp_path.iterdir())


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


def test_body_too_large_logs_one_line_not_a_traceback(folder: Path) -> None:
    import socket
    import struct

    proc, url = _start(folder)
    try:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
                     + b" " * 1000)
        assert sock.recv(100).startswith(b"HTTP/1.1 413 ")
        # the client gives up with a reset while the server holds its unread upload
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        time.sleep(1.0)
        assert http(url + "/api/info")[0] == 200  # still serving
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert "Traceback" not in output and "Exception occurred" not in output, output
    lines = [line for line in output.splitlines() if "413" in line]
    assert lines == ["INFO: 127.0.0.1 POST /api/label -> 413 request body too large"], output


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
            _rate_in_browser(browser, url, "Zoë", bob)  # a non-ASCII name through the form
    finally:
        browser.close()
        pw.stop()
    pool = tmp_path / "pool"
    assert main(["rate", str(folder), "--export", str(pool), "--min-raters", "2"]) == 0
    assert "1 consensus in-focus patches of 3" in capsys.readouterr().out
    rows = list(csv.DictReader((pool / "manifest.csv").open()))
    assert [Path(r["patch"]).name for r in rows] == [names[0]]
    agreement = json.loads((pool / "agreement.json").read_text())
    assert agreement["raters"] == {"alice": 3, "Zoë": 3}
    # per patch: (2,0,0), (1,0,1), (0,2,0) -> P = 2/3, p = (1/2, 1/3, 1/6), Pe = 14/36
    assert agreement["fleiss_kappa"] == pytest.approx((2 / 3 - 14 / 36) / (1 - 14 / 36),
                                                      abs=1e-6)
