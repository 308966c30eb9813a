"""Redaction: secrets and personal data replaced before a prompt or answer is kept anywhere.

Design note: patterns are applied in order and each match becomes `[REDACTED:<kind>]`, so a reviewer still
sees that something was there and what it was. Cards come before phone numbers (a card number also looks
like a long phone number) and are confirmed by their Luhn checksum, so order ids and timestamps survive.
A phone number needs at least nine digits or a leading `+`, which keeps dates (2025-01-31) and versions
intact. Keys are matched by the prefixes providers give them, by `key=value` assignments, and by long
mixed-character tokens (a secret with no known prefix is still a long run of letters and digits). JSON
values (chat messages) are redacted string by string, keys untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?!\w)"
)
_KEYS = (
    re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}"),  # OpenAI-style and many others
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub tokens
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack tokens
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)\b(?:api[_-]?key|secret|token|password|passwd)\b\s*[:=]\s*[\"']?[^\s\"']{6,}"),
    re.compile(r"\b(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{32,}\b"),
)
MIN_PHONE_DIGITS = 9


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[REDACTED:card]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group()


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    num_digits = sum(c.isdigit() for c in text)
    international = text.startswith("+") and num_digits >= 7
    return "[REDACTED:phone]" if international or num_digits >= MIN_PHONE_DIGITS else text


class Redactor:
    """`redact(text)` and `redact_json(value)` with the built-in patterns plus `extra_patterns`."""

    def __init__(self, extra_patterns: Sequence[str] = ()) -> None:
        steps: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
            *((pattern, "[REDACTED:key]") for pattern in _KEYS),
            (_EMAIL, "[REDACTED:email]"),
            (_CARD, _card),
            (_PHONE, _phone),
        ]
        steps += [(re.compile(pattern), "[REDACTED:custom]") for pattern in extra_patterns]
        self._steps = steps

    def redact(self, text: str) -> str:
        for pattern, replacement in self._steps:
            text = pattern.sub(replacement, text)
        return text

    def redact_json(self, value: Any) -> Any:
        """Every string inside lists and dicts redacted (dict keys kept)."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list):
            return [self.redact_json(item) for item in value]
        if isinstance(value, dict):
            return {key: self.redact_json(item) for key, item in value.items()}
        return value
