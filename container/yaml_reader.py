"""Strict reading of a parsed YAML document: each value checked for its kind and range, and every error
one line naming the file, the key's path and what is wrong (control characters escaped)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from container.errors import BootstrapError
from container.settings import IPNetwork


class Reader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> BootstrapError:
        """The one-line error: control characters in keys and values (a newline) are escaped."""
        text = f"{self.source}: {where}: {message}"
        return BootstrapError("".join(c if c.isprintable() else ascii(c)[1:-1] for c in text))

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...] | None,
                required: tuple[str, ...]) -> dict[Any, Any]:
        """A mapping with only `allowed` keys (any keys where allowed is None) and every `required` one."""
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {kind(value)}")
        for key in value:
            if allowed is not None and key not in allowed:
                raise self.fail(f"{where}.{key}", f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                raise self.fail(where, f"missing key {key}")
        return value

    def listing(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {kind(value)}")
        return value

    def text(self, value: Any, where: str, pattern: re.Pattern[str] | None = None, expected: str = "") -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(where, f"expected a string, got {kind(value)}")
        text = str(value)
        if pattern is not None and not pattern.fullmatch(text):
            raise self.fail(where, f"{text!r} is not {expected}")
        return text

    def integer(self, value: Any, where: str, low: int, high: int, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected {what} ({low}-{high}), got {kind(value)} {value!r}")
        if not low <= value <= high:
            raise self.fail(where, f"{value} is out of range: expected {what} ({low}-{high})")
        return value

    def network(self, value: Any, where: str, kind: type[IPNetwork], example: str) -> IPNetwork:
        """An IPv4Network or IPv6Network, without host bits."""
        text = self.text(value, where)
        try:
            return kind(text)
        except ValueError:
            version = 4 if kind is ipaddress.IPv4Network else 6
            raise self.fail(where, f"{text!r} is not an IPv{version} network such as {example}") from None

    def ipv6(self, value: Any, where: str) -> ipaddress.IPv6Address:
        text = self.text(value, where)
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise self.fail(where, f"{text!r} is not an IPv6 address") from None


def kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )
