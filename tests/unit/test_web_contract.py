"""The TypeScript contract in web/ is generated from shared/ and committed: it must not drift."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from shared.topics import Topic

SCRIPT = Path(__file__).parents[2] / "web" / "scripts" / "generate_contract.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_contract", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_typescript_contract_is_current() -> None:
    module = generator()
    assert module.OUTPUT.read_text() == module.render(), (
        "web/packages/client/src/contract.generated.ts is stale: run .venv/bin/python web/scripts/generate_contract.py"
    )


@pytest.mark.parametrize(
    "text",
    ["binance:ticker:BTC/USDT", "okx:candles.1h:ETH/USDT", "Binance:ticker:BTC/USDT", "binance:candles:BTC/USDT",
     "binance:book:btc/usdt", "kraken:trades:BTC-USD", "coinbase:ticker:BTC/USD:x"],
)  # fmt: skip
def test_generated_topic_pattern_accepts_what_the_grammar_accepts(text: str) -> None:
    try:
        Topic.parse(text)
        parses = True
    except ValueError:
        parses = False
    assert bool(re.fullmatch(generator().topic_pattern(), text)) == parses
