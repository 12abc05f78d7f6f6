"""nginx in front of the local gateway processes, from the deploy template."""

from __future__ import annotations

import shutil
from pathlib import Path
from string import Template
from typing import Final

from stack.supervisor import Service

# The template lives with the other deployment files; the stack runs from a checkout.
TEMPLATE: Final = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "nginx.conf.template"


class BalancerError(RuntimeError):
    """nginx or its configuration template cannot be found."""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise BalancerError("nginx is not installed (Debian: apt-get install nginx)")
    return found


def render(listen_port: int, backends: list[tuple[str, int]], prefix: Path, *, listen_host: str = "127.0.0.1") -> str:
    """The nginx configuration: listen on `listen_host:listen_port`, spread clients over `backends`, sticky.

    The local stack keeps the loopback default; nginx in front of nodes on other hosts listens on an
    address those clients reach.
    """
    if not TEMPLATE.exists():
        raise BalancerError(f"no nginx template at {TEMPLATE}")
    servers = "\n        ".join(f"server {host}:{port} max_fails=0;" for host, port in backends)
    # safe_substitute: nginx's own $variables stay as they are.
    text = Template(TEMPLATE.read_text()).safe_substitute(
        LISTEN_HOST=listen_host, LISTEN_PORT=listen_port, UPSTREAM_SERVERS=servers, PREFIX=str(prefix)
    )
    if "${" in text:
        raise BalancerError(f"{TEMPLATE} has a placeholder the stack does not fill")
    return text


def balancer_service(listen_port: int, backends: list[tuple[str, int]], prefix: Path) -> Service:
    """A foreground nginx whose files all live under `prefix`."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render(listen_port, backends, prefix))
    return Service(
        "nginx",
        [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        {},
        binds=[("127.0.0.1", listen_port)],  # as the template's `listen`
        ready_url=f"http://127.0.0.1:{listen_port}/readyz",  # a gateway's, through nginx
    )
