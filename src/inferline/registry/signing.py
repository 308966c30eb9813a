"""Signing and verifying bundles in the OpenSSF model signing format, with EC P-256 keys.

Design note: `model-signing` hashes every file of the folder (SHA-256), signs that manifest as an in-toto
statement inside a DSSE envelope and writes a Sigstore bundle. We keep its format untouched, so that
`model_signing verify key ...` checks our bundles too, and only translate its errors into ours: which bundle,
what failed (a file changed, added or missing; the wrong key; no signature) and what to do about it. The
signature lives inside the bundle as `inferline-bundle.sig`, the one path the manifest ignores.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from inferline.errors import InferlineError
from inferline.registry.bundle import SIGNATURE_FILE, BundleError

PRIVATE_KEY_FILE = "inferline-signing.key.pem"
PUBLIC_KEY_FILE = "inferline-signing.pub.pem"

FailureReason = Literal["unsigned", "bad_signature", "wrong_key", "changed", "added", "missing"]

_FIXES: dict[str, str] = {
    "unsigned": "sign it with `inferline registry push` (or model_signing sign key) and copy it again",
    "bad_signature": "the signature file is damaged: copy the bundle again from the registry",
    "wrong_key": "verify with the public key of the key that signed it, or re-push it signed with your key",
    "changed": "the bundle was altered after signing: copy it again from the registry, or re-push it",
    "added": "remove the files that were added after signing, or re-push the bundle to sign them",
    "missing": "the copy is incomplete: copy the bundle again from the registry",
}


class SigningKeyError(InferlineError):
    """A key file is missing, unreadable, or not an EC P-256 key."""


class BundleVerificationError(InferlineError):
    """A bundle does not match its signature under the given public key. `reason` says why and `files`
    lists the files concerned (changed, added or missing ones)."""

    def __init__(self, bundle: Path, reason: FailureReason, files: tuple[str, ...] = (), detail: str = ""):
        listed = f": {', '.join(files)}" if files else ""
        what = {
            "unsigned": f"has no signature ({SIGNATURE_FILE} is missing)",
            "bad_signature": f"has a signature that cannot be trusted ({detail})",
            "wrong_key": "was not signed by the key whose public half was given",
            "changed": f"has files that changed since signing{listed}",
            "added": f"has files added since signing{listed}",
            "missing": f"lacks files that were signed{listed}",
        }[reason]
        super().__init__(f"bundle {bundle} {what}; {_FIXES[reason]}")
        self.bundle = bundle
        self.reason = reason
        self.files = files


@dataclass(frozen=True)
class KeyPair:
    """Where `generate_key_pair` wrote the two halves."""

    private_key: Path
    public_key: Path


def generate_key_pair(out_dir: Path) -> KeyPair:
    """A new EC P-256 key pair as PEM files in `out_dir`; the private key is readable by its owner only."""
    pair = KeyPair(out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE)
    for path in (pair.private_key, pair.public_key):
        if path.exists():
            raise SigningKeyError(
                f"{path} already exists: pick another --out folder or move the old key away"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created with mode 0600 from the start: a chmod after writing would leave a window where others read it.
    descriptor = os.open(pair.private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(private_pem)
    pair.public_key.write_bytes(_public_pem(key.public_key()))
    return pair


def public_key_pem(private_key: Path) -> bytes:
    """The PEM of the public half of the private key file `private_key`."""
    return _public_pem(_load_private_key(private_key).public_key())


def sign_bundle(bundle: Path, private_key: Path) -> Path:
    """Sign every file of the bundle folder; returns the signature file written inside it."""
    _load_private_key(private_key)  # our error for a bad key, before model-signing hashes gigabytes
    from model_signing import hashing, signing  # 0.17 s with sigstore: only when signing, not per start

    signature = bundle / SIGNATURE_FILE
    (
        signing.Config()
        .set_hashing_config(hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE]))
        .use_elliptic_key_signer(private_key=private_key)
        .sign(bundle, signature)
    )
    return signature


def verify_bundle(bundle: Path, public_key: Path) -> None:
    """Raise BundleVerificationError unless every file of `bundle` matches its signature under
    `public_key`."""
    _load_public_key(public_key)
    if not bundle.is_dir():
        raise BundleError(f"{bundle} is not a folder: pass the bundle folder to verify")
    signature = bundle / SIGNATURE_FILE
    if not signature.is_file():
        raise BundleVerificationError(bundle, "unsigned")
    from model_signing import verifying  # 0.17 s with sigstore: a server verifies only when it installs

    config = verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    try:
        config.verify(bundle, signature)
    except (json.JSONDecodeError, KeyError) as error:
        raise BundleVerificationError(bundle, "bad_signature", detail=f"not a signature: {error}") from None
    except InvalidSignature:
        detail = "it does not verify under this public key: damaged or forged"
        raise BundleVerificationError(bundle, "bad_signature", detail=detail) from None
    except ValueError as error:
        raise _classify(bundle, str(error)) from None


def signature_sha256(bundle: Path) -> str:
    return _file_sha256(bundle / SIGNATURE_FILE)


def _classify(bundle: Path, message: str) -> BundleVerificationError:
    """Name the failure model-signing reported as a ValueError: the wrong key, or which files differ."""
    if message.startswith("Key mismatch"):
        return BundleVerificationError(bundle, "wrong_key")
    try:
        signed, ignored = _signed_manifest(bundle / SIGNATURE_FILE)
    except (ValueError, KeyError, TypeError):
        return BundleVerificationError(bundle, "bad_signature", detail=message)
    actual = {
        name: _file_sha256(file)
        for file in sorted(bundle.rglob("*"))
        if file.is_file() and not _is_ignored(name := file.relative_to(bundle).as_posix(), ignored)
    }
    changed = tuple(name for name in signed if name in actual and actual[name] != signed[name])
    added = tuple(name for name in actual if name not in signed)
    missing = tuple(name for name in signed if name not in actual)
    found: tuple[tuple[FailureReason, tuple[str, ...]], ...] = (
        ("changed", changed),
        ("added", added),
        ("missing", missing),
    )
    for reason, files in found:
        if files:
            return BundleVerificationError(bundle, reason, files)
    return BundleVerificationError(bundle, "bad_signature", detail=message)


def _signed_manifest(signature: Path) -> tuple[dict[str, str], frozenset[str]]:
    """The file digests and ignored paths of the in-toto statement inside the signature. Read only after
    model-signing has checked the envelope's signature, so its content is the signer's."""
    envelope = json.loads(signature.read_text())["dsseEnvelope"]
    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    digests = {str(resource["name"]): str(resource["digest"]) for resource in predicate["resources"]}
    return digests, frozenset(predicate["serialization"].get("ignore_paths", ()))


def _file_sha256(path: Path) -> str:
    with path.open("rb") as file:  # streamed: weights can be larger than memory
        return hashlib.file_digest(file, "sha256").hexdigest()


def _is_ignored(name: str, ignored: frozenset[str]) -> bool:
    return any(name == path or name.startswith(f"{path}/") for path in ignored)


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise SigningKeyError(f"cannot read private key {path}: {error.strerror}") from None
    except (ValueError, TypeError) as error:
        raise SigningKeyError(
            f"{path} is not an unencrypted PEM private key ({error}); "
            "create one with `inferline registry keygen --out DIR`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"{path} is not an EC P-256 key: create one with `inferline registry keygen`")
    return key


def _load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as error:
        raise SigningKeyError(f"cannot read public key {path}: {error.strerror}") from None
    except ValueError as error:
        raise SigningKeyError(
            f"{path} is not a PEM public key ({error}); "
            "pass the .pub.pem written by `inferline registry keygen`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"{path} is not an EC P-256 public key: pass the key pair's .pub.pem")
    return key


def _public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
