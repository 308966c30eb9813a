"""API keys to tenants. Keys are compared by SHA-256 digest, so the config may hold digests only."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from inferline.config import ApiKeyConfig, ServerConfig
from inferline.router.limits import Principal
from inferline.server.errors import HTTPError
from inferline.types import Priority


@dataclass(frozen=True)
class Tenant:
    name: str
    priority: Priority
    principal: Principal


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def stored_digest(key: str) -> str:
    """A configured key's digest: given as 'sha256:<hex>', or hashed here from the plain key."""
    return key.removeprefix("sha256:").lower() if key.startswith("sha256:") else _digest(key)


_DEFAULT = Tenant("default", Priority.CONVERSATIONAL, Principal("default"))


class Authenticator:
    def __init__(self, config: ServerConfig) -> None:
        self.keys: dict[str, Tenant] = {}
        for key in config.api_keys:
            self.keys[_digest(key)] = _DEFAULT
        for tenant in config.tenants:
            for entry in tenant.api_keys:
                key, key_name = (entry.key, entry.name) if isinstance(entry, ApiKeyConfig) else (entry, None)
                principal = Principal.from_config(config, tenant.name, key_name)
                self.keys[stored_digest(key)] = Tenant(
                    tenant.name, Priority.parse(tenant.priority), principal
                )
        self.admin_keys = {stored_digest(key) for key in config.admin_api_keys}

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def tenant(self, authorization: str | None) -> Tenant:
        """The tenant a request's Authorization header names; 401 when keys are on and it names none."""
        if not self.enabled:
            return _DEFAULT
        tenant = self.keys.get(_digest(_bearer(authorization)))
        if tenant is None:
            raise HTTPError(401, "invalid API key", "authentication_error")
        return tenant

    def admin(self, authorization: str | None) -> None:
        """401/403 unless the header carries one of admin_api_keys; 404-like refusal when none are set."""
        if not self.admin_keys:
            raise HTTPError(
                403, "the admin API is off: set admin_api_keys in the server config", "permission_error"
            )
        if _digest(_bearer(authorization)) not in self.admin_keys:
            raise HTTPError(403, "this key is not an admin key (admin_api_keys)", "permission_error")


def _bearer(authorization: str | None) -> str:
    # Looked up by digest: timing reveals nothing about stored keys, only about the digest sent.
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPError(401, "missing API key: send 'Authorization: Bearer <key>'", "authentication_error")
    return authorization[7:].strip()
