"""Signing and verification in the OpenSSF model signing format: a round trip, and every tamper refused."""

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from inferline.registry.bundle import SIGNATURE_FILE, BundleMetadata, build_bundle
from inferline.registry.signing import (
    BundleVerificationError,
    KeyPair,
    SigningKeyError,
    generate_key_pair,
    public_key_pem,
    sign_bundle,
    verify_bundle,
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return generate_key_pair(tmp_path / "keys")


@pytest.fixture
def signed(tmp_path: Path, keys: KeyPair) -> Path:
    source = tmp_path / "model"
    (source / "tokenizer").mkdir(parents=True)
    (source / "config.json").write_text('{"hidden_size": 8}')
    (source / "model.safetensors").write_bytes(bytes(range(256)) * 16)
    (source / "tokenizer" / "tokenizer.json").write_text("{}")
    bundle = build_bundle(source, tmp_path / "bundle", BundleMetadata(name="bot", version="1")).path
    sign_bundle(bundle, keys.private_key)
    return bundle


def refusal(bundle: Path, public_key: Path) -> BundleVerificationError:
    with pytest.raises(BundleVerificationError) as caught:
        verify_bundle(bundle, public_key)
    assert str(bundle) in str(caught.value)  # every refusal names the bundle
    return caught.value


def test_a_signed_bundle_verifies_with_the_signers_public_key(signed: Path, keys: KeyPair) -> None:
    verify_bundle(signed, keys.public_key)
    # The signature is an OpenSSF model signing (Sigstore bundle) file over every file but itself.
    envelope = json.loads((signed / SIGNATURE_FILE).read_text())["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    signed_names = sorted(resource["name"] for resource in statement["predicate"]["resources"])
    assert signed_names == [
        "config.json",
        "inferline-bundle.json",
        "model.safetensors",
        "tokenizer/tokenizer.json",
    ]


def test_a_moved_bundle_still_verifies(signed: Path, keys: KeyPair, tmp_path: Path) -> None:
    moved = signed.rename(tmp_path / "elsewhere")
    verify_bundle(moved, keys.public_key)


def test_one_changed_weight_byte_is_refused(signed: Path, keys: KeyPair) -> None:
    weights = signed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0x01
    weights.write_bytes(bytes(data))

    error = refusal(signed, keys.public_key)
    assert (error.reason, error.files) == ("changed", ("model.safetensors",))
    assert "changed since signing: model.safetensors" in str(error)


def test_changed_metadata_is_refused(signed: Path, keys: KeyPair) -> None:
    metadata = signed / "inferline-bundle.json"
    metadata.write_text(metadata.read_text().replace('"version": "1"', '"version": "2"'))
    assert refusal(signed, keys.public_key).files == ("inferline-bundle.json",)


def test_an_added_file_is_refused(signed: Path, keys: KeyPair) -> None:
    (signed / "tokenizer" / "extra.py").write_text("import os")
    error = refusal(signed, keys.public_key)
    assert (error.reason, error.files) == ("added", ("tokenizer/extra.py",))
    assert "remove the files that were added" in str(error)


def test_a_removed_file_is_refused(signed: Path, keys: KeyPair) -> None:
    (signed / "config.json").unlink()
    error = refusal(signed, keys.public_key)
    assert (error.reason, error.files) == ("missing", ("config.json",))


def test_a_wrong_key_is_refused(signed: Path, tmp_path: Path) -> None:
    other = generate_key_pair(tmp_path / "other")
    error = refusal(signed, other.public_key)
    assert error.reason == "wrong_key"
    assert "public key of the key that signed it" in str(error)


def test_an_unsigned_bundle_is_refused(signed: Path, keys: KeyPair) -> None:
    (signed / SIGNATURE_FILE).unlink()
    error = refusal(signed, keys.public_key)
    assert error.reason == "unsigned"
    assert "inferline registry push" in str(error)


def test_a_forged_signature_is_refused(signed: Path, keys: KeyPair) -> None:
    signature_path = signed / SIGNATURE_FILE
    document = json.loads(signature_path.read_text())
    signature = document["dsseEnvelope"]["signatures"][0]
    raw = bytearray(base64.b64decode(signature["sig"]))
    raw[12] ^= 0x01
    signature["sig"] = base64.b64encode(bytes(raw)).decode()
    signature_path.write_text(json.dumps(document))

    assert refusal(signed, keys.public_key).reason == "bad_signature"


def test_a_garbled_signature_file_is_refused(signed: Path, keys: KeyPair) -> None:
    (signed / SIGNATURE_FILE).write_text("not a signature")
    assert refusal(signed, keys.public_key).reason == "bad_signature"


def test_keygen_writes_an_owner_only_p256_key_and_never_overwrites(tmp_path: Path, keys: KeyPair) -> None:
    assert stat.S_IMODE(os.stat(keys.private_key).st_mode) == 0o600
    key = serialization.load_pem_private_key(keys.private_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert public_key_pem(keys.private_key) == keys.public_key.read_bytes()
    with pytest.raises(SigningKeyError, match="already exists"):
        generate_key_pair(keys.private_key.parent)


def write_key(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "not an EC P-256 key"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "not an EC P-256 key"),
    ],
)
def test_signing_refuses_keys_of_another_kind(
    signed: Path, tmp_path: Path, make_key: Callable[[], PrivateKey], message: str
) -> None:
    with pytest.raises(SigningKeyError, match=message):
        sign_bundle(signed, write_key(tmp_path / "other.pem", make_key()))


def test_signing_with_a_missing_or_garbled_key_names_the_file(signed: Path, tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="cannot read private key .*nope.pem"):
        sign_bundle(signed, tmp_path / "nope.pem")
    (tmp_path / "garbled.pem").write_text("hello")
    with pytest.raises(SigningKeyError, match="garbled.pem is not an unencrypted PEM private key"):
        sign_bundle(signed, tmp_path / "garbled.pem")
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        verify_bundle(signed, tmp_path / "garbled.pem")
