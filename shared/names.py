"""Redis channel and key names: the public Redis contract.

Per-user and per-team keys and channels carry a ``{hash tag}`` so that, on
Redis Cluster, every key of one user (or team) and the channel announcing
its records live in one slot: the publish script stores and announces
(sharded, SPUBLISH) atomically on the owner's node.
"""

from __future__ import annotations

from typing import Final

from shared.topics import Topic

MARKET_PREFIX: Final = "md:"
LATEST_PREFIX: Final = "md:last:"
USER_PREFIX: Final = "user:"
TEAM_PREFIX: Final = "team:"
COLLECTOR_STATUS_CHANNEL: Final = "collector:status"
COLLECTOR_STATUS_PREFIX: Final = "collector:status:"
GATEWAY_STATUS_PREFIX: Final = "gateway:status:"
# Every gateway node listens here for revocations.
CONTROL_CHANNEL: Final = "gateway:control"


def market_channel(topic: Topic | str) -> str:
    """Pub/sub channel of one market topic, e.g. ``md:binance:ticker:BTC/USDT``."""
    return f"{MARKET_PREFIX}{topic}"


def latest_key(topic: Topic | str) -> str:
    """String key holding the latest event of a snapshot topic (with a TTL)."""
    return f"{LATEST_PREFIX}{topic}"


def user_channel(user_id: str) -> str:
    """Pub/sub channel of one user's notifications and read marks, e.g. ``user:{alice}``."""
    return f"{USER_PREFIX}{{{user_id}}}"


def team_channel(team_id: str) -> str:
    """Pub/sub channel of one team's execution updates, e.g. ``team:{red}``."""
    return f"{TEAM_PREFIX}{{{team_id}}}"


def channel_owner(channel: str) -> str:
    """The user or team id of a ``user:{id}`` or ``team:{id}`` channel ("" when it is not one)."""
    _, _, tagged = channel.partition(":")
    return tagged[1:-1] if tagged.startswith("{") and tagged.endswith("}") else ""


def notification_ids(user_id: str) -> str:
    """Sorted set of the ids of a user's stored notifications (score: ms): a republished id is not stored twice."""
    return f"notifications:{{{user_id}}}:ids"


def connection_set(user_id: str) -> str:
    """Sorted set of a user's open connections on every node: "<node> <sid>" -> expiry (ms)."""
    return f"connections:{{{user_id}}}"


def notification_stream(user_id: str) -> str:
    """Stream of one user's notifications; entry ids are their positions."""
    return f"notifications:{{{user_id}}}"


def unread_notifications(user_id: str) -> str:
    """Sorted set of the positions of a user's unread notifications (score: position's milliseconds)."""
    return f"notifications:{{{user_id}}}:unread"


def execution_stream(team_id: str) -> str:
    """Stream of one team's execution updates; entry ids are their positions."""
    return f"executions:{{{team_id}}}"


def execution_states(team_id: str) -> str:
    """Hash of a team's latest execution states: execution id -> "version position json"."""
    return f"executions:{{{team_id}}}:latest"


def finished_executions(team_id: str) -> str:
    """Sorted set of a team's finished executions, scored by when their state expires (ms)."""
    return f"executions:{{{team_id}}}:finished"


def collector_status_key(collector_id: str) -> str:
    return f"{COLLECTOR_STATUS_PREFIX}{collector_id}"


def gateway_status_key(node_id: str) -> str:
    """String key holding one gateway node's status record (with a TTL)."""
    return f"{GATEWAY_STATUS_PREFIX}{node_id}"


def collector_demand_key(exchange: str) -> str:
    """Sorted set of one exchange's topics gateways want collected: topic -> lease expiry (ms)."""
    return f"collector:demand:{exchange}"


def presence_topic(topic: Topic | str) -> str:
    """Hash of one market topic's subscribers per gateway node: node -> "<subscribers> <expiry ms>"."""
    return f"presence:topic:{topic}"


def presence_team(team_id: str) -> str:
    """Sorted set of a team's users online on any gateway node, scored by expiry (ms)."""
    return f"presence:{{{team_id}}}"


def revoked_user(user_id: str) -> str:
    """String key: tokens of this user issued (iat) before the stored time (ms) are refused."""
    return f"revoked:user:{user_id}"


def revoked_token(token_id: str) -> str:
    """String key: the token with this `jti` is refused (expires with the token)."""
    return f"revoked:token:{token_id}"
