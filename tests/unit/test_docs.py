"""The docs carry the settings tables and the publish scripts exactly as the code declares them."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from collectors.config import CollectorConfig
from collectors.simulator.config import SimulatorConfig
from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics
from shared.config import markdown_table
from shared.events import ExecutionUpdate, Notification
from shared.publisher import EXECUTION_SCRIPT, NOTIFICATION_SCRIPT
from shared.record_checks import limits_table
from stack.config import StackConfig

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"
PROTOCOL = Path(__file__).parents[2] / "docs" / "protocol.md"
SCRIPTS = Path(__file__).parents[2] / "docs" / "scripts"


@pytest.mark.parametrize("settings", [GatewayConfig, CollectorConfig, SimulatorConfig, StackConfig])
def test_table_is_current(settings: type) -> None:
    table = markdown_table(settings)
    assert table in DOC.read_text(), f"regenerate the {settings.__name__} table in {DOC}"


@pytest.mark.parametrize(("name", "script"), [("notification", NOTIFICATION_SCRIPT), ("execution", EXECUTION_SCRIPT)])
def test_the_published_scripts_are_the_ones_the_library_runs(name: str, script: str) -> None:
    path = SCRIPTS / f"{name}.lua"
    header = (
        f"-- Generated from shared/publisher.py ({name.upper()}_SCRIPT); tests/unit/test_docs.py keeps it current.\n"
    )
    assert path.read_text() == header + script + "\n", f"regenerate {path} from shared/publisher.py"


@pytest.mark.parametrize("record", [Notification, ExecutionUpdate])
def test_protocol_doc_lists_every_record_limit(record: type[msgspec.Struct]) -> None:
    assert limits_table(record) in PROTOCOL.read_text(), f"regenerate the {record.__name__} limits in {PROTOCOL}"


def test_operations_doc_lists_every_gateway_metric() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    names = {metric.name for metric in GatewayMetrics().registry.collect()}
    missing = sorted(name for name in names if f"`{name}" not in doc)
    assert not missing, f"document these metrics in docs/operations.md: {missing}"
