"""The docs carry the settings tables and the publish scripts exactly as the code declares them."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.config import CollectorConfig
from collectors.simulator.config import SimulatorConfig
from gateway.config import GatewayConfig
from shared.config import markdown_table
from shared.publisher import EXECUTION_SCRIPT, NOTIFICATION_SCRIPT
from stack.config import StackConfig

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"
PROTOCOL = Path(__file__).parents[2] / "docs" / "protocol.md"


@pytest.mark.parametrize("settings", [GatewayConfig, CollectorConfig, SimulatorConfig, StackConfig])
def test_table_is_current(settings: type) -> None:
    table = markdown_table(settings)
    assert table in DOC.read_text(), f"regenerate the {settings.__name__} table in {DOC}"


@pytest.mark.parametrize("script", [NOTIFICATION_SCRIPT, EXECUTION_SCRIPT])
def test_protocol_doc_shows_the_publish_scripts(script: str) -> None:
    assert script.strip() in PROTOCOL.read_text(), "copy the script from shared/publisher.py into docs/protocol.md"
