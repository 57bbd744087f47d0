"""The monitor's dashboard: its JSON, ``/metrics``, its HTTP robustness, and the page in a real browser."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cdp_browser import Browser, chromium_binary
from monitor_helpers import Server, free_port, http_get, make_api, raw_request, wait_for
from prometheus_client.parser import text_string_to_metric_families


class Dashboard:
    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return http_get(self.url + path)

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, body
        return json.loads(body)


@pytest.fixture(scope="module")
def dashboard(launch: Callable[..., Server]) -> Dashboard:
    port = free_port()
    server = launch("--dashboard", str(port), "--task-queues", "default,dash-q")
    board = Dashboard(server, port)
    wait_for(lambda: board.get("/healthz")[0] == 200, 20, what="the dashboard to serve")
    return board


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        reason = "chromium is not installed: apt-get install -y chromium (make test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must test the dashboard in a real browser, but {reason}")
        pytest.skip(reason)
    browser = Browser(binary, tmp_path / "chromium-profile")
    try:
        yield browser.connect()
    finally:
        browser.close()


def test_the_page_shows_a_queued_task_run_live(dashboard: Dashboard, browser: Browser, tmp_path: Path) -> None:
    browser.navigate(dashboard.url + "/")
    browser.evaluate("window.loadedOnce = true")
    wait_for(lambda: browser.evaluate("document.getElementById('live').className") == "ok", 20,
             what="the page's first poll")
    wait_for(lambda: browser.evaluate("document.querySelectorAll('#actors tr[data-actor]').length") == 5, 20,
             what="the arbiter and its four actors on the page")
    api = make_api(dashboard.server.store)
    try:
        future = api.tasks.queue("asynchronous", lag=2, queue="dash-q")
        row = f"document.querySelector('tr[data-task-id=\"{future.task_id}\"]')"
        state = f"({row} || {{dataset: {{}}}}).dataset.status || ''"
        first = wait_for(lambda: browser.evaluate(state), 15, what="the task to appear on the page")
        assert first in ("QUEUED", "STARTED")
        assert future.task_id in browser.evaluate("document.body.innerText")
        wait_for(lambda: browser.evaluate(state) == "SUCCESS", 20, what="the page to show the task finished")
        assert future.wait(10).status_string == "SUCCESS"
    finally:
        api.close().wait(10)
    assert browser.evaluate(f"{row}.querySelector('td.status').textContent") == "SUCCESS"
    assert browser.evaluate("window.loadedOnce") is True  # updated in place, never reloaded
    shot = browser.screenshot(tmp_path / "dashboard.png")
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000


def test_json_endpoints(dashboard: Dashboard) -> None:
    api = make_api(dashboard.server.store)
    try:
        failed = api.tasks.queue("addition", a="x", b=1, queue="dash-q").wait(30)
    finally:
        api.close().wait(10)
    assert failed.status_string == "FAILURE"
    stats = dashboard.json("/api/stats")
    [server] = stats["servers"]
    assert server["pid"] == dashboard.server.pid and server["dashboard"] == dashboard.url + "/"
    assert "dash-q" in [q["name"] for q in stats["queues"]] and len(stats["consumers"]) == 2
    failures = wait_for(lambda: [f for f in dashboard.json("/api/failures")["failures"] if f["id"] == failed.id],
                        10, what="the failure in /api/failures")
    assert "TypeError" in failures[0]["exception"] and "Traceback" in failures[0]["stacktrace"]
    tasks = dashboard.json("/api/tasks")["tasks"]
    assert tasks[0]["id"] == failed.id and tasks[0]["status"] == "FAILURE"
    letters = wait_for(lambda: [d for d in dashboard.json("/api/dead-letters?limit=500")["dead_letters"]
                                if d["id"] == failed.id], 10, what="the dead letter")
    assert letters[0]["task"]["name"] == "addition"
    status, headers, body = dashboard.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<script>" in body
    assert b"http://" not in body.replace(b"http://www.w3.org", b"") and b"src=" not in body  # no external assets


def test_metrics_parse_as_prometheus_text(dashboard: Dashboard) -> None:
    actors = {"arbiter", "consumer-1", "consumer-2", "scheduler", "monitor"}

    def metrics() -> dict[str, Any] | None:
        status, headers, body = dashboard.get("/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        families = {family.name: family for family in text_string_to_metric_families(body.decode())}
        reported = {s.labels["actor"] for s in families["pq_actor_resident_memory_bytes"].samples}
        return families if actors <= reported else None

    # Each actor reports its figures with its first heartbeat after start.
    families = wait_for(metrics, 10, what="every actor in /metrics")
    ready = {s.labels["queue"]: s.value for s in families["pq_queue_ready"].samples}
    assert {"default", "dash-q"} <= set(ready)
    assert families["pq_tasks"].type == "counter"
    outcomes = {(s.labels["queue"], s.labels["outcome"]) for s in families["pq_tasks"].samples}
    assert ("dash-q", "success") in outcomes and ("dash-q", "failure") in outcomes
    assert families["pq_servers"].samples[0].value == 1
    memory = {s.labels["actor"]: s.value for s in families["pq_actor_resident_memory_bytes"].samples}
    assert all(value > 1024 * 1024 for value in memory.values())
    processed = families["pq_actor_tasks_processed"]
    assert processed.type == "counter" and {s.labels["kind"] for s in processed.samples} == {"consumer"}


def test_bad_requests_get_an_error_and_the_dashboard_goes_on(dashboard: Dashboard) -> None:
    cases = [
        (b"GARBAGE\r\n\r\n", b"400 Bad Request"),
        (b"GET / HTTP/2.0\r\n\r\n", b"505 HTTP Version Not Supported"),
        (b"GET /api/stats HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431 Request Header Fields Too Large"),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", b"400 Bad Request"),
        (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"400 Bad Request"),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"501 Not Implemented"),
        (b"POST /api/stats HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", b"405 Method Not Allowed"),
        (b"GET /nowhere HTTP/1.1\r\nConnection: close\r\n\r\n", b"404 Not Found"),
        (b"GET /api/dead-letters?limit=lots HTTP/1.0\r\n\r\n", b"400 Bad Request"),
        (b"\xff\xfe\r\n\r\n", b"400 Bad Request"),
        (b"GET /healthz HTTP/1.1\r\n", b"400 Bad Request"),  # hangs up mid-request
    ]
    for request, expected in cases:
        reply = raw_request(dashboard.port, request)
        assert reply.startswith(b"HTTP/1.1 " + expected), (request[:40], reply[:80])
        assert b"Traceback" not in reply
    two = raw_request(dashboard.port, b"GET /healthz HTTP/1.1\r\n\r\nHEAD /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert two.count(b"HTTP/1.1 200 OK") == 2 and two.endswith(b"\r\n\r\n")  # keep-alive; HEAD has no body
    assert dashboard.get("/healthz") == (200, dashboard.get("/healthz")[1], b"ok\n")


def test_broker_passwords_never_reach_the_page(launch: Callable[..., Server]) -> None:
    port = free_port()
    launch("--dashboard", str(port), "--message-broker", "memory://someone:s3cret@elsewhere/0", workers=1)
    board = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_get(board + "/healthz")[0] == 200, 20, what="the dashboard to serve")
    stats = json.loads(http_get(board + "/api/stats")[2])
    assert stats["broker"] == "memory://someone:***@elsewhere/0"
    wait_for(lambda: json.loads(http_get(board + "/api/stats")[2])["servers"], 10, what="the server's report")
    for path in ("/", "/api/stats", "/api/tasks", "/api/failures", "/api/dead-letters", "/metrics"):
        status, _, body = http_get(board + path)
        assert status == 200 and b"s3cret" not in body, path
