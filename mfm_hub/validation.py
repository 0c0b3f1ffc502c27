"""The one way a value is refused: a `ValueError` that names the value and what is allowed.
Configs (`check`) and command-line arguments (`require`, `require_at_least`) both use it."""

from __future__ import annotations

from typing import Any


def check(condition: bool, message: str) -> None:
    """Raise `ValueError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(message)


def require(condition: bool, argument: str, value: Any, allowed: str) -> None:
    """Refuse a script argument that cannot give a meaningful result, naming it and what is allowed."""
    check(condition, f"{argument} must be {allowed}, got {value!r}.")


def require_at_least(arguments: object, minimum: int, *names: str) -> None:
    """Each of ``names`` (attributes of ``arguments``) is None or an int >= ``minimum``."""
    for name in names:
        value = getattr(arguments, name)
        require(value is None or (isinstance(value, int) and value >= minimum), f"--{name}", value, f"an integer >= {minimum}")


__all__ = ["check", "require", "require_at_least"]
