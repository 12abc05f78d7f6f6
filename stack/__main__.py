"""`fanout-local`: start the whole system on this host and print how to connect.

    fanout-local [--symbols BTC,SOL] [--config fanout-local.toml] ...   run the stack
    fanout-local token --user bob --teams red,blue --ttl 3600            mint a token for it

Everything the stack refuses (a bad setting, a port in use, a variable it
would override) is one line on stderr and exit status 2, before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from collectors.config import URL_SETTINGS, CollectorConfig
from collectors.exchanges import ADAPTERS
from collectors.simulator.config import PORT_ORDER, SimulatorConfig
from gateway.config import GatewayConfig
from shared.config import ConfigError
from shared.embedded_postgres import EmbeddedPostgres, EmbeddedPostgresError
from shared.embedded_redis import EmbeddedRedis, EmbeddedRedisError, free_port
from shared.logs import setup_logging
from shared.topics import Exchange
from stack.balancer import BalancerError, balancer_service
from stack.config import Simulate, StackConfig, load_stack_config, refused_variables
from stack.state import DEMO_TEAM, DEMO_USER, clear_running, mint_token, stack_secret, write_running
from stack.supervisor import Service, ServiceState, python_module, supervise

logger = logging.getLogger(__name__)

DEMO_TOKEN_TTL_S: Final = 24 * 3600
REACHABILITY_TIMEOUT_S: Final = 3.0
READY_POLL_S: Final = 0.25
STILL_WAITING_EVERY_S: Final = 15.0
# The settings class of each child module, to know which variables its flags override.
SETTINGS_OF: Final[dict[str, type]] = {
    "gateway": GatewayConfig,
    "collectors": CollectorConfig,
    "collectors.simulator": SimulatorConfig,
}
LOOPBACK: Final = "127.0.0.1"


class Refused(Exception):
    """The stack will not start; the message is the one line the user sees."""


def exchanges_reachable() -> bool:
    """Whether a real exchange answers (this machine may have no internet)."""
    host, port = urlsplit(ADAPTERS[Exchange.BINANCE].endpoints["ws"]).hostname, 9443
    try:
        with socket.create_connection((host, port), REACHABILITY_TIMEOUT_S):
            return True
    except OSError:
        return False


def simulated(url: str, exchange: Exchange, config: StackConfig) -> str:
    """The simulator's stand-in for one of an exchange's real URLs (same path, local port)."""
    parts = urlsplit(url)
    scheme = {"wss": "ws", "https": "http"}.get(parts.scheme, parts.scheme)
    port = config.simulator_port + PORT_ORDER.index(exchange)
    return urlunsplit((scheme, f"{LOOPBACK}:{port}", parts.path, parts.query, ""))


def gateway_ports(config: StackConfig) -> list[int]:
    first = config.port + 1 if config.balancer else config.port
    return [first + i for i in range(config.gateways)]


def embedded_redis(config: StackConfig) -> EmbeddedRedis | None:
    """The stack's own Redis when no REDIS_URL is given; a supervised child like the others."""
    return None if config.redis_url else EmbeddedRedis(port=config.redis_port)


def services(config: StackConfig, *, simulate: bool, workdir: Path) -> list[Service]:
    """Every process of the stack, in start order (Redis first, nginx last)."""
    log_level = config.log_level.lower()
    result = []
    redis = embedded_redis(config)
    if redis is not None:
        # Memory only, as before: a restarted Redis starts empty and the collectors fill it again.
        result.append(Service("redis", redis.command(str(workdir)), {}, binds=[(LOOPBACK, redis.port)]))
    if simulate and config.exchanges:
        result.append(
            python_module(
                "simulator",
                "collectors.simulator",
                *("--exchange", ",".join(config.exchanges), "--port", str(config.simulator_port)),
                *("--mode", "synthetic", "--rate", str(config.simulator_rate), "--log-level", log_level),
                binds=[(LOOPBACK, config.simulator_port + PORT_ORDER.index(e)) for e in config.exchanges],
            )
        )
    for index, exchange in enumerate(config.exchanges):
        admin_port = config.admin_port + index
        args = [
            *("--exchange", str(exchange), "--symbols", ",".join(config.symbols_of(exchange))),
            *("--channels", ",".join(config.channels), "--admin-port", str(admin_port), "--log-level", log_level),
        ]
        if simulate:
            for setting_name, endpoint in URL_SETTINGS.items():
                url = ADAPTERS[exchange].endpoints.get(endpoint)
                if url:
                    args += ["--" + setting_name.replace("_", "-"), simulated(url, exchange, config)]
        result.append(
            python_module(
                f"collector-{exchange}",
                "collectors",
                *args,
                env={"COLLECTOR_ON_DEMAND": str(config.on_demand).lower()},
                binds=[(LOOPBACK, admin_port)],
                ready_url=f"http://{LOOPBACK}:{admin_port}/healthz",
            )
        )
    for i, port in enumerate(gateway_ports(config)):
        result.append(
            python_module(
                f"gateway-{i + 1}",
                "gateway",
                env={
                    "GATEWAY_PORT": str(port),
                    "GATEWAY_HOST": config.host,
                    "GATEWAY_NODE_ID": f"gateway-{i + 1}",
                    "GATEWAY_LOG_LEVEL": log_level,
                    # Behind nginx every client would otherwise share nginx's address.
                    "GATEWAY_TRUST_FORWARDED_FOR": "true" if config.balancer else "false",
                    "GATEWAY_ON_DEMAND": str(config.on_demand).lower(),
                },
                binds=[(config.host, port)],
                ready_url=f"http://{_connectable(config.host)}:{port}/readyz",
            )
        )
    if config.balancer:
        backends = [(config.host, port) for port in gateway_ports(config)]
        result.append(balancer_service(config.port, backends, workdir / "nginx"))
    return result


def _connectable(host: str) -> str:
    return LOOPBACK if host in ("0.0.0.0", "") else host


def set_by_stack(started: Iterable[Service]) -> set[str]:
    """Every variable of a child's settings that the stack sets for it (by environment or flag)."""
    names: set[str] = set()
    for service in started:
        names.update(service.env)
        argv = list(service.argv)
        settings = SETTINGS_OF.get(argv[2]) if len(argv) > 2 and argv[1] == "-m" else None
        if settings is not None:
            env_of_flag = {field.metadata["flag"]: field.metadata["env"] for field in fields(settings)}
            names.update(env_of_flag[arg] for arg in argv[3:] if arg in env_of_flag)
    return names


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as probe:
        # As the servers do: a port whose last connections linger in TIME_WAIT is free to listen on.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


# The setting that moves each kind of service to other ports, by service name prefix.
PORT_SETTING: Final = {
    "redis": "--redis-port",
    "simulator": "--simulator-port",
    "collector": "--admin-port",
    "gateway": "--port",
    "nginx": "--port",
}


def check_ports(binds: Iterable[tuple[str, str, int]]) -> None:
    """Refuse to start when anything the stack would listen on is taken: (who, host, port)."""
    for who, host, port in binds:
        if port_in_use(host, port):
            setting = PORT_SETTING[who.split("-")[0]]
            raise Refused(f"port {port} on {host} ({who}) is in use; stop what holds it, or move it with {setting}")


class Announcer:
    """Keeps `<state dir>/stack.json` current: where the stack serves (once ready), each service's pid and restarts."""

    def __init__(self, state_dir: str, details: dict[str, object]) -> None:
        self._state_dir = state_dir
        self._details = details
        self._services: dict[str, object] = {}
        self._ready = False

    def services_changed(self, states: Mapping[str, ServiceState]) -> None:
        self._services = {name: state.as_json() for name, state in states.items()}
        if self._ready:
            self._write()

    def ready(self) -> None:
        self._ready = True
        self._write()
        logger.info("ready", extra=self._details)

    def _write(self) -> None:
        write_running(self._state_dir, {**self._details, "pid": os.getpid(), "services": self._services})


async def wait_until_ready(urls: Mapping[str, str]) -> None:
    """Poll every service's readiness URL until all answer 200."""
    pending = dict(urls)
    next_note = time.monotonic() + STILL_WAITING_EVERY_S
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while pending:
            for name, url in list(pending.items()):
                try:
                    async with http.get(url) as response:
                        if response.status == 200:
                            del pending[name]
                except (aiohttp.ClientError, TimeoutError):
                    pass
            if pending and time.monotonic() > next_note:
                logger.info("still waiting for", extra={"services": sorted(pending)})
                next_note = time.monotonic() + STILL_WAITING_EVERY_S
            if pending:
                await asyncio.sleep(READY_POLL_S)


def run_token(argv: Sequence[str]) -> int:
    """`fanout-local token`: print a token for any user and teams, signed with the stack's secret."""
    parser = argparse.ArgumentParser(prog="fanout-local token", description=run_token.__doc__)
    parser.add_argument("--user", default=DEMO_USER, help=f"the token's sub (default {DEMO_USER})")
    parser.add_argument("--teams", default=DEMO_TEAM, help=f"comma-separated team ids (default {DEMO_TEAM})")
    parser.add_argument("--ttl", type=int, default=DEMO_TOKEN_TTL_S, help="lifetime in seconds (default 24 h)")
    parser.add_argument("--state-dir", default=os.environ.get("STACK_STATE_DIR", ".fanout-local"))
    parser.add_argument("--jwt-secret", default=os.environ.get("GATEWAY_JWT_SECRET", ""))
    args = parser.parse_args(argv)
    teams = [team.strip() for team in args.teams.split(",") if team.strip()]
    try:
        print(mint_token(stack_secret(args.state_dir, args.jwt_secret), args.user, teams, args.ttl))
    except ConfigError as exc:
        print(f"fanout-local token: {exc}", file=sys.stderr)
        return 2
    return 0


def preflight(config: StackConfig, workdir: Path) -> tuple[list[Service], bool]:
    """The services to start and whether they are simulated; raises Refused when the stack must not start."""
    # Simulated or not, the same variables are refused: the answer must not depend on the network.
    refusal = refused_variables(os.environ, set_by_stack(services(config, simulate=True, workdir=workdir)))
    if refusal:
        raise Refused(refusal)
    simulate = config.simulate is Simulate.ALWAYS or (
        config.simulate is Simulate.AUTO and bool(config.exchanges) and not exchanges_reachable()
    )
    started = services(config, simulate=simulate, workdir=workdir)
    check_ports((service.name, host, port) for service in started for host, port in service.binds)
    return started, simulate


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        return run_token(args[1:])
    try:
        config = load_stack_config(args, os.environ)
        if not config.redis_url and not config.redis_port:
            config = replace(config, redis_port=free_port())  # chosen once: every child gets the same URL
        secret = stack_secret(config.state_dir, config.jwt_secret)
        with tempfile.TemporaryDirectory(prefix="fanout-local-") as workdir:
            started, simulate = preflight(config, Path(workdir))
            setup_logging(config.log_level)
            return run_stack(config, started, secret, simulate=simulate)
    except (ConfigError, Refused, BalancerError) as exc:
        print(f"fanout-local: {exc}", file=sys.stderr)
        return 2
    except EmbeddedRedisError as exc:
        print(f"fanout-local: cannot start an embedded redis: {exc}", file=sys.stderr)
        return 1
    except EmbeddedPostgresError as exc:
        print(f"fanout-local: cannot start an embedded postgresql: {exc}", file=sys.stderr)
        return 1


def run_stack(config: StackConfig, started: list[Service], secret: str, *, simulate: bool) -> int:
    """Start PostgreSQL (unless given) and every service; log `ready` once all serve; run until a signal."""
    redis = embedded_redis(config)
    redis_url = redis.url if redis is not None else config.redis_url
    postgres = None if config.database_url else EmbeddedPostgres().start()
    database_url = config.database_url or (postgres.url() if postgres else "")
    try:
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "GATEWAY_JWT_SECRET": secret,
            "GATEWAY_CORS_ORIGINS": ",".join(config.origins),
            # The local stack's status page needs no token; a deployment sets GATEWAY_ADMIN_TOKEN instead.
            "GATEWAY_STATUS_OPEN": "true",
        }
        demo_token = mint_token(secret, DEMO_USER, [DEMO_TEAM], DEMO_TOKEN_TTL_S)
        announcer = Announcer(
            config.state_dir,
            {
                "url": f"http://{_connectable(config.host)}:{config.port}",
                "gateways": [f"http://{_connectable(config.host)}:{port}" for port in gateway_ports(config)],
                "redis_url": redis_url,
                "database_url": database_url,
                "demo_user": DEMO_USER,
                "demo_team": DEMO_TEAM,
                "demo_token": demo_token,
                "demo_page": f"http://{_connectable(config.host)}:{config.port}/#token={demo_token}",
                "status_page": f"http://{_connectable(config.host)}:{config.port}/status",
                "cors_origins": config.origins,
                "simulated_exchanges": simulate,
                "token_command": "./run.sh token --user <id> --teams <a,b> --ttl <seconds>",
            },
        )
        logger.info("stack starting", extra={"services": [service.name for service in started]})
        urls = {service.name: service.ready_url for service in started if service.ready_url}

        async def announce_when_ready() -> None:
            await wait_until_ready(urls)
            announcer.ready()

        try:
            asyncio.run(supervise(started, env, announce_when_ready, announcer.services_changed))
        finally:
            clear_running(config.state_dir)
    finally:
        if postgres is not None:
            postgres.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
