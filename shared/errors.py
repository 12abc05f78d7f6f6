"""Errors of the shared contract; each also subclasses the matching stdlib type."""


class ContractError(ValueError):
    """Input does not follow the documented contract (topic grammar, event shape)."""


class TopicError(ContractError):
    """A topic string does not follow the topic grammar."""


class PayloadError(ContractError):
    """An event payload is not valid JSON or does not match its schema."""
