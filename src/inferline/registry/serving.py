"""Deployments served from the signed registry: `source: registry:NAME:VERSION_OR_ALIAS`.

Design note: the reference is resolved and the bundle verified every time a version is loaded (at start and
at each hot swap), not only when it was pushed: the files on disk now are what the server loads, so they
are what must match a signature by a trusted key. A verified bundle is then an ordinary model folder (a
GGUF file or a Hugging Face folder beside the bundle's metadata) and loads like any local source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inferline.config import (
    DeploymentConfig,
    LocalDeploymentBase,
    LocalDeploymentConfig,
    RegistryServingConfig,
)
from inferline.errors import InferlineError
from inferline.registry.bundle import read_bundle
from inferline.registry.catalog import VersionRecord, open_catalog
from inferline.registry.signing import BundleVerificationError, verify_bundle

REGISTRY_PREFIX = "registry:"


class RegistrySourceError(InferlineError):
    """A registry source cannot be served: malformed, no trusted keys, or a bundle that does not verify."""


@dataclass(frozen=True)
class RegistrySource:
    """`registry:NAME:REF` split up; REF is a version or an alias such as `prod`."""

    name: str
    ref: str

    def __str__(self) -> str:
        return f"{REGISTRY_PREFIX}{self.name}:{self.ref}"


def parse_registry_source(source: str | None) -> RegistrySource | None:
    """The registry reference in a deployment's `source`, or None for any other kind of source."""
    if source is None or not source.startswith(REGISTRY_PREFIX):
        return None
    name, separator, ref = source.removeprefix(REGISTRY_PREFIX).partition(":")
    if not name or not separator or not ref or ":" in ref:
        raise RegistrySourceError(
            f"source {source!r} is not a registry reference: write 'registry:NAME:VERSION_OR_ALIAS', "
            "e.g. 'registry:support-bot:prod'"
        )
    return RegistrySource(name, ref)


class RegistrySources:
    """Turns deployments with a registry source into the verified bundle folders they load from."""

    def __init__(self, config: RegistryServingConfig, telemetry_database_url: str | None) -> None:
        self.trusted_public_keys = list(config.trusted_public_keys)
        self.database_url = config.database_url if config.database_url is not None else telemetry_database_url

    def prepare(self, deployment: DeploymentConfig) -> DeploymentConfig:
        """`deployment` as it loads (blocking: reads the catalog and hashes the bundle). Other sources
        pass through unchanged."""
        if not isinstance(deployment, LocalDeploymentBase):
            return deployment
        source = parse_registry_source(deployment.source)
        return deployment if source is None else self.resolve(deployment, source.ref)

    def resolve(self, deployment: LocalDeploymentConfig, ref: str) -> LocalDeploymentConfig:
        """The version `ref` of the registry model `deployment` serves, verified against the trusted keys,
        as a deployment whose source is the bundle folder and whose version is the bundle's."""
        source = parse_registry_source(deployment.source)
        if source is None:
            raise RegistrySourceError(
                f"deployment {deployment.name!r} loads {deployment.source!r}, not a registry model: "
                "give it `source: registry:NAME:VERSION_OR_ALIAS` to serve registry versions"
            )
        if not self.trusted_public_keys:
            raise RegistrySourceError(
                f"deployment {deployment.name!r} serves {source} but no key is trusted: list the signing "
                "key's .pub.pem under registry.trusted_public_keys in the server config"
            )
        with open_catalog(self.database_url) as catalog:
            record = catalog.resolve(source.name, ref)
        self._verify(deployment, record)
        return deployment.model_copy(
            update={"source": str(_model_path(deployment, record)), "version": record.version}
        )

    def _verify(self, deployment: LocalDeploymentConfig, record: VersionRecord) -> None:
        """Accept the bundle if any trusted key verifies it; otherwise raise the most telling failure (a
        changed file says more than 'signed by another key')."""
        failures: list[BundleVerificationError] = []
        for key in self.trusted_public_keys:
            try:
                verify_bundle(record.path, key)
            except BundleVerificationError as error:
                failures.append(error)
                continue
            break
        else:
            telling = next((f for f in failures if f.reason != "wrong_key"), failures[0])
            keys = ", ".join(str(k) for k in self.trusted_public_keys)
            raise RegistrySourceError(
                f"deployment {deployment.name!r} refuses {record.name}:{record.version}: {telling} "
                f"(trusted keys: {keys})"
            )
        metadata = read_bundle(record.path).metadata
        if (metadata.name, metadata.version) != (record.name, record.version):
            # A validly signed bundle of another version copied into this version's folder.
            raise RegistrySourceError(
                f"deployment {deployment.name!r} refuses {record.path}: the catalog lists it as "
                f"{record.name}:{record.version} but its signed metadata says {metadata.name}:"
                f"{metadata.version}; push the intended bundle again under a new version"
            )


def _model_path(deployment: LocalDeploymentConfig, record: VersionRecord) -> Path:
    """LLM and embedding models load from the bundle folder itself; an ONNX model from its one .onnx file."""
    if deployment.kind != "onnx":
        return record.path
    onnx_files = sorted(record.path.glob("*.onnx"))
    if len(onnx_files) != 1:
        raise RegistrySourceError(
            f"bundle {record.path} ({record.name}:{record.version}) holds {len(onnx_files)} .onnx files; "
            f"an onnx deployment ({deployment.name!r}) needs exactly one: push a bundle with a single model"
        )
    return onnx_files[0]
