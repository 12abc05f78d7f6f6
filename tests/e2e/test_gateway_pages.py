"""The gateway's own pages in Chromium, right after the local stack starts: the printed demo URL works.

The demo page connects with the demo token the stack puts in its URL, shows a collected symbol, then
one nobody collects, which on-demand collection starts; the status page lists the node and the
simulated collector. Screenshots land in tests/e2e/screenshots/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_stack import running_stack
from tests.e2e.test_web_example import CHROMIUM, SCREENSHOTS, Browser
from tests.harness import free_port_block

pytestmark = pytest.mark.e2e

CELLS = "document.querySelectorAll('#{table} td').length"


def test_the_demo_and_status_pages_work_right_after_the_stack_starts(tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), "chromium is required (test.sh installs it: apt-get install chromium)"
    SCREENSHOTS.mkdir(exist_ok=True)
    base = free_port_block(4)
    args = ["--port", str(base), "--admin-port", str(base + 1), "--simulator-port", str(base + 2)]
    args += ["--exchanges", "binance", "--symbols", "BTC", "--simulate", "always", "--simulator-rate", "5"]
    with running_stack(tmp_path, *args) as stack:
        browser = Browser(tmp_path / "browser.log")
        try:
            browser("open", "demo", url=stack.ready["demo_page"])
            browser.wait("demo", "document.getElementById('state').textContent === 'connected'")
            browser.wait("demo", CELLS.format(table="ticker") + " >= 4")
            browser.wait("demo", CELLS.format(table="book") + " >= 8")
            browser("screenshot", "demo", path=str(SCREENSHOTS / "gateway-demo.png"))
            # A symbol no collector was started with: collected on demand.
            browser("eval", "demo", js="document.getElementById('topic').value = 'binance:ticker:SOL/USDT'")
            browser("click", "demo", selector="#topic-form button")
            browser.wait("demo", "document.getElementById('collected').textContent.includes('not collected yet')")
            browser("screenshot", "demo", path=str(SCREENSHOTS / "gateway-demo-asked.png"))
            browser.wait("demo", CELLS.format(table="ticker") + " >= 4", timeout_s=45)
            browser.wait("demo", CELLS.format(table="trades") + " >= 4", timeout_s=45)
            browser("screenshot", "demo", path=str(SCREENSHOTS / "gateway-demo-on-demand.png"))

            browser("open", "status", url=stack.ready["status_page"])
            browser.wait("status", "document.getElementById('nodes').textContent.includes('gateway-1')")
            connected = "[...document.querySelectorAll('#collectors td')].some((td) => td.textContent === 'connected')"
            browser.wait("status", connected)
            browser.wait("status", "document.getElementById('collectors').textContent.includes('simulated')")
            browser.wait("status", "document.getElementById('topics').textContent.includes('SOL/USDT')")
            browser("screenshot", "status", path=str(SCREENSHOTS / "gateway-status.png"))
            assert browser("errors") == []
        finally:
            browser.close()
