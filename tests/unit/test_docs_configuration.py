"""docs/configuration.md carries each component's settings table exactly as the code declares it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from shared.config import markdown_table
from stack.config import StackConfig

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


@pytest.mark.parametrize("settings", [GatewayConfig, StackConfig])
def test_table_is_current(settings: type) -> None:
    table = markdown_table(settings)
    assert table in DOC.read_text(), f"regenerate the {settings.__name__} table in {DOC}"
