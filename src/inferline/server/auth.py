"""API keys to tenants. Keys are compared by SHA-256 digest, so the config may hold digests only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from inferline.config import ServerConfig
from inferline.server.errors import HTTPError
from inferline.types import Priority


@dataclass(frozen=True)
class Tenant:
    name: str
    priority: Priority


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, config: ServerConfig) -> None:
        self.keys: dict[str, Tenant] = {}
        for key in config.api_keys:
            self.keys[_digest(key)] = Tenant("default", Priority.CONVERSATIONAL)
        for tenant in config.tenants:
            for key in tenant.api_keys:
                digest = key.removeprefix("sha256:") if key.startswith("sha256:") else _digest(key)
                self.keys[digest.lower()] = Tenant(tenant.name, Priority.parse(tenant.priority))

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def tenant(self, authorization: str | None) -> Tenant:
        """The tenant a request's Authorization header names; 401 when keys are on and it names none."""
        if not self.enabled:
            return Tenant("default", Priority.CONVERSATIONAL)
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPError(
                401, "missing API key: send 'Authorization: Bearer <key>'", "authentication_error"
            )
        # Looked up by digest: timing reveals nothing about stored keys, only about the digest sent.
        tenant = self.keys.get(_digest(authorization[7:].strip()))
        if tenant is None:
            raise HTTPError(401, "invalid API key", "authentication_error")
        return tenant
