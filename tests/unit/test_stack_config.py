"""The local stack's settings: precedence, validation, refused variables, its secret and tokens."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import jwt
import pytest

from shared.config import ConfigError
from stack.__main__ import services, set_by_stack
from stack.config import INSTEAD, StackConfig, load_stack_config, refused_variables
from stack.state import mint_token, stack_secret


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    config_file = tmp_path / "fanout-local.toml"
    config_file.write_text('port = 8100\nsymbols = ["SOL"]\nsimulator_rate = 5.0\ngateways = 2\n')
    env = {"STACK_PORT": "8200", "STACK_GATEWAYS": "3"}
    config = load_stack_config(["--config", str(config_file), "--gateways", "4"], env)
    assert config.gateways == 4  # flag over env and file
    assert config.port == 8200  # env over file
    assert config.symbols == ["SOL"] and config.simulator_rate == 5.0  # file over default
    assert config.admin_port == 9300  # default
    assert load_stack_config(["--config", str(config_file)], {"STACK_CONFIG": "ignored.toml"}).port == 8100


def test_config_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    config_file = tmp_path / "bad.toml"
    config_file.write_text("prot = 8100\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*prot"):
        load_stack_config(["--config", str(config_file)], {})
    with pytest.raises(ConfigError, match=r"nowhere\.toml"):
        load_stack_config(["--config", str(tmp_path / "nowhere.toml")], {})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--channels", "ticker,bogus"], "unknown channel 'bogus'"),
        (["--channels", "candles"], "needs a timeframe"),
        (["--symbols", "btc"], "BASE/QUOTE"),
        (["--symbols", ""], "at least one symbol"),
        (["--port", "70000"], "not a port"),
        (["--log-level", "loud"], "debug, info"),
    ],
)
def test_bad_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_stack_config(argv, {})


def test_bare_symbols_take_each_exchange_s_usual_quote() -> None:
    config = StackConfig(symbols=["SOL", "ETH/BTC"])
    assert config.symbols_of("binance") == ["SOL/USDT", "ETH/BTC"]  # type: ignore[arg-type]
    assert config.symbols_of("kraken") == ["SOL/USD", "ETH/BTC"]  # type: ignore[arg-type]


def test_the_stack_allows_dev_origins_and_its_own() -> None:
    assert StackConfig().origins == [
        "http://localhost:3000",
        "http://127.0.0.1:3000",
        "http://127.0.0.1:8000",
        "http://localhost:8000",
    ]
    assert StackConfig(cors_origins=["https://app.test"], port=8100).origins == [
        "https://app.test",
        "http://127.0.0.1:8100",
        "http://localhost:8100",
    ]


def test_every_variable_the_stack_sets_for_a_child_is_refused_with_advice(tmp_path: Path) -> None:
    started = services(StackConfig(balancer=True, gateways=2), simulate=True, workdir=tmp_path)
    overridden = set_by_stack(started)
    assert {"GATEWAY_PORT", "COLLECTOR_SYMBOLS", "COLLECTOR_CHANNELS", "SIM_PORT"} <= overridden
    own = {"REDIS_URL", "GATEWAY_JWT_SECRET", "GATEWAY_CORS_ORIGINS"}
    assert overridden - own <= set(INSTEAD), "say what to use instead of each overridden variable"
    message = refused_variables({"GATEWAY_PORT": "9000", "COLLECTOR_SYMBOLS": "SOL/USDT"}, overridden)
    assert message is not None
    assert "GATEWAY_PORT (use --port or STACK_PORT)" in message
    assert "COLLECTOR_SYMBOLS (use --symbols or STACK_SYMBOLS)" in message
    # The stack's own settings are honoured, and unrelated child settings pass through.
    assert refused_variables({"GATEWAY_CORS_ORIGINS": "*", "GATEWAY_EVENT_RATE": "5"}, overridden) is None


def test_the_secret_is_kept_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = stack_secret(str(state))
    assert stack_secret(str(state)) == first
    assert stat.S_IMODE((state / "secret").stat().st_mode) == 0o600
    assert stack_secret(str(state), "given-secret") == "given-secret"
    os.chmod(state / "secret", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        stack_secret(str(state))


def test_minted_tokens_carry_user_teams_and_lifetime() -> None:
    secret = "s" * 40
    claims = jwt.decode(mint_token(secret, "bob", ["red", "blue"], 3600), secret, algorithms=["HS256"])
    assert claims["sub"] == "bob" and claims["teams"] == ["red", "blue"]
    assert claims["exp"] - claims["iat"] == 3600
    with pytest.raises(ConfigError, match="not a user or team id"):
        mint_token(secret, "bob smith", [], 60)
    with pytest.raises(ConfigError, match="positive"):
        mint_token(secret, "bob", [], 0)
