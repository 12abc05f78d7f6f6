"""The example Next.js app's production build in Debian's Chromium, against a real stack and gateway.

The stack (simulator -> binance collector -> Redis) feeds market data; the page talks to a
gateway process of this test's own, so the test can restart it mid-session. Tokens live
12 seconds, so the page must refresh its token over the socket to stay connected.
Screenshots land in tests/e2e/screenshots/ for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.events import ExecutionStatus, ExecutionUpdate, Notification
from shared.publisher import SyncPublisher
from tests.e2e.test_stack import running_stack
from tests.harness import free_port_block

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
WEB = ROOT / "web"
APP = WEB / "apps" / "example"
DRIVER = Path(__file__).parent / "web" / "driver.mjs"
SCREENSHOTS = Path(__file__).parent / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TOKEN_TTL_S = 12
# Next.js would otherwise try to send usage telemetry: a test makes no outside connection.
NEXT_ENV = {**os.environ, "NEXT_TELEMETRY_DISABLED": "1"}
LIVE = "document.querySelector('[data-testid=connection]')?.textContent === 'live'"


class Browser:
    """The driver script: one JSON command per line, one JSON answer per line."""

    def __init__(self, log: Path) -> None:
        self._stderr = log.open("w")
        self.process = subprocess.Popen(
            ["node", str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "CHROMIUM": CHROMIUM},
        )

    def __call__(self, cmd: str, page: str = "a", **args: Any) -> Any:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps({"cmd": cmd, "page": page, **args}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the browser driver exited"
        answer = json.loads(line)
        assert answer["ok"], f"{cmd} on {page}: {answer['error']}"
        return answer["value"]

    def wait(self, page: str, js: str, timeout_s: float = 30) -> Any:
        return self(cmd="wait", page=page, js=js, timeout=int(timeout_s * 1000))

    def close(self) -> None:
        assert self.process.stdin
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self._stderr.close()


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, deadline_s: float = 60) -> None:
    """Until `url` answers 200 (generous: the machine is shared)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited early: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered: {log.read_text()[-3000:]}")


@contextmanager
def process(argv: list[str], log: Path, ready_url: str, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("a") as sink:
        child = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, **popen)
    try:
        wait_http(ready_url, child, log)
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@pytest.fixture(scope="module")
def app_build() -> None:
    assert shutil.which("node"), "node is required (test.sh installs it)"
    assert (WEB / "node_modules" / "next").is_dir(), "run `npm ci` in web/ (test.sh does)"
    assert Path(CHROMIUM).exists(), "chromium is required (test.sh installs it: apt-get install chromium)"
    build = subprocess.run(
        ["npm", "run", "build"], cwd=WEB, capture_output=True, text=True, timeout=600, env=NEXT_ENV, check=False
    )
    assert build.returncode == 0, f"next build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"


def note(n: str) -> Notification:
    return Notification(
        id=n, user_id="demo", type="info", title=f"Note {n}", message="from the e2e test",
        created_at=int(time.time() * 1000),
    )  # fmt: skip


def execution(
    execution_id: str, version: int, status: ExecutionStatus, progress: float, **more: Any
) -> ExecutionUpdate:
    return ExecutionUpdate(
        execution_id=execution_id, team_id="demo", status=status, progress=progress,
        updated_at=int(time.time() * 1000), version=version, **more,
    )  # fmt: skip


def text_of(testid: str) -> str:
    return f"document.querySelector('[data-testid={testid}]')?.textContent"


def titled(title: str) -> str:
    """JS: how many notifications of the list carry `title`."""
    items = "[...document.querySelectorAll('[data-testid=notifications] li')]"
    return f"{items}.filter((li) => li.textContent.includes({json.dumps(title)})).length"


SOCKET_ID = "document.querySelector('[data-testid=connection]').dataset.socketId"
# Prices of each side of the rendered book, best first, once both sides show five levels.
BOOK = """(() => {
    const side = (s) => [...document.querySelectorAll(`[data-testid=book] tr[data-side=${s}] td:first-child`)]
        .map((td) => Number(td.textContent));
    const asks = side('ask').reverse(), bids = side('bid');
    return asks.length >= 5 && bids.length >= 5 && {asks, bids};
})()"""


def check_market(browser: Browser) -> str:
    """The ticker changes, the book is sorted and uncrossed, candles and trades show; returns the first bid."""
    browser.wait("a", LIVE)
    first = str(browser.wait("a", f"/\\d/.test({text_of('ticker-bid')}) && {text_of('ticker-bid')}"))
    browser.wait("a", f"{text_of('ticker-bid')} !== {json.dumps(first)}")
    book = browser.wait("a", BOOK)
    bids, asks = book["bids"], book["asks"]
    assert bids == sorted(set(bids), reverse=True), bids
    assert asks == sorted(set(asks)), asks
    assert bids[0] < asks[0], book
    browser.wait("a", "Number(document.querySelector('[data-testid=chart]')?.dataset.candles) >= 1")
    browser.wait("a", "document.querySelectorAll('[data-testid=trades] tbody tr').length >= 1", 60)
    return first


def check_read_marks_across_tabs(browser: Browser, publisher: SyncPublisher, app_url: str) -> None:
    publisher.publish(note("n-1"))
    browser.wait("a", f"{text_of('unread')} === '1'")
    browser("open", "b", url=app_url + "/notifications")
    browser.wait("b", LIVE)
    browser.wait("b", "document.querySelector('[data-testid=notifications] li.unread')")
    assert browser("eval", "b", js=titled("Note n-1")) == 1
    browser("screenshot", "b", path=str(SCREENSHOTS / "notifications.png"))
    browser("click", "b", selector="[data-testid=mark-all-read]")
    browser.wait("a", "!document.querySelector('[data-testid=unread]')")  # the other tab
    browser.wait("b", "!document.querySelector('[data-testid=notifications] li.unread')")


def check_missed_notifications_shown_once(browser: Browser) -> None:
    """After the gateway came back: the three published while it was down, each once, in both tabs."""
    browser.wait("a", LIVE, 60)
    browser.wait("b", LIVE, 60)
    browser.wait("a", f"{text_of('unread')} === '3'")
    browser.wait("b", "document.querySelectorAll('[data-testid=notifications] li.unread').length === 3")
    for title in ("Note m-1", "Note m-2", "Note m-3", "Note n-1"):
        assert browser("eval", "b", js=titled(title)) == 1, title


def check_token_refresh(browser: Browser, first_bid: str) -> None:
    """The same socket stays connected (and live) past its first token's expiry."""
    socket_id = browser("eval", "a", js=SOCKET_ID)
    assert socket_id
    time.sleep(TOKEN_TTL_S * 1.5)
    browser.wait("a", LIVE)
    assert browser("eval", "a", js=SOCKET_ID) == socket_id
    browser.wait("a", f"{text_of('ticker-bid')} !== {json.dumps(first_bid)}")


def check_executions(browser: Browser, publisher: SyncPublisher, app_url: str) -> None:
    publisher.publish(execution("backtest-7", 1, ExecutionStatus.RUNNING, 10, current_step="replaying 2026-11"))
    publisher.publish(execution("backtest-7", 2, ExecutionStatus.RUNNING, 65, current_step="replaying 2026-11"))
    publisher.publish(execution("rebalance-2", 1, ExecutionStatus.FAILED, 40, error="venue rejected the order"))
    browser("goto", "b", url=app_url + "/executions")
    browser.wait("b", "document.querySelectorAll('[data-testid=executions] tr').length === 2")
    assert "65%" in browser("eval", "b", js="document.querySelector('tr[data-status=running]').textContent")
    browser("screenshot", "b", path=str(SCREENSHOTS / "executions.png"))


def test_example_app_in_chromium(app_build: None, tmp_path: Path) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    base = free_port_block(5)
    gateway_port, next_port = base, base + 1
    stack_args = ["--port", str(base + 2), "--admin-port", str(base + 3), "--simulator-port", str(base + 4)]
    stack_args += ["--exchanges", "binance", "--symbols", "BTC", "--simulate", "always", "--simulator-rate", "5"]
    with running_stack(tmp_path, *stack_args) as stack:
        secret = (tmp_path / "state" / "secret").read_text().strip()
        redis_client = redis.Redis.from_url(stack.ready["redis_url"])
        publisher = SyncPublisher(redis_client)
        app_url = f"http://127.0.0.1:{next_port}"
        gateway_env = {
            **os.environ,
            "REDIS_URL": stack.ready["redis_url"],
            "GATEWAY_JWT_SECRET": secret,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(gateway_port),
            "GATEWAY_CORS_ORIGINS": app_url,
            "GATEWAY_JWT_LEEWAY_S": "0",  # a token expires when it says
        }
        gateway_cmd = [sys.executable, "-m", "gateway"]
        gateway_ready = f"http://127.0.0.1:{gateway_port}/readyz"
        app_env = {
            **NEXT_ENV,
            "FANOUT_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
            "FANOUT_JWT_SECRET": secret,
            "FANOUT_TOKEN_TTL_S": str(TOKEN_TTL_S),
        }
        next_cmd = [str(WEB / "node_modules" / ".bin" / "next"), "start", "--port", str(next_port), "-H", "127.0.0.1"]
        browser = Browser(tmp_path / "browser.log")
        try:
            with (
                process(next_cmd, tmp_path / "next.log", app_url + "/api/token", cwd=APP, env=app_env),
                process(gateway_cmd, tmp_path / "gateway.log", gateway_ready, env=gateway_env) as gateway,
            ):
                browser("open", "a", url=app_url + "/")
                first_bid = check_market(browser)
                browser("screenshot", "a", path=str(SCREENSHOTS / "market.png"))
                check_read_marks_across_tabs(browser, publisher, app_url)

                gateway.send_signal(signal.SIGTERM)  # a gateway restart mid-session
                assert gateway.wait(30) == 0
                browser.wait("a", f"{text_of('connection')} !== 'live'")
                for n in ("m-1", "m-2", "m-3"):
                    publisher.publish(note(n))
                with process(gateway_cmd, tmp_path / "gateway.log", gateway_ready, env=gateway_env):
                    check_missed_notifications_shown_once(browser)
                    check_token_refresh(browser, first_bid)
                    check_executions(browser, publisher, app_url)
                    assert browser("errors") == []
        finally:
            browser.close()
            redis_client.close()
