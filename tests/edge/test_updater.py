"""The edge updater against a real TUF repository served on loopback: what it accepts and what it refuses."""

import json
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer

from inferline.edge.updater import EdgeUpdater, RegistryUnreachableError, UpdateRejectedError
from inferline.registry.tuf_repo import ExpiryPolicy, TufRepository, make_bundle_archive
from inferline.registry.tuf_serve import RepositoryServer, start_repository_server


def _archive(tmp_path: Path, version: str) -> Path:
    bundle = tmp_path / "bundles" / version
    bundle.mkdir(parents=True)
    (bundle / "model.bin").write_bytes(f"weights of {version}".encode())
    return make_bundle_archive(bundle, tmp_path / "bundles" / f"{version}.tar")


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    repo = TufRepository.create(tmp_path / "repo", tmp_path / "keys", num_root_keys=3, root_threshold=2)
    repo.add_target("classifier", "1.0.0", _archive(tmp_path, "1.0.0"))
    repo.publish()
    return repo


@pytest.fixture
def server(repo: TufRepository) -> Iterator[RepositoryServer]:
    server = start_repository_server(repo.repo_dir)
    yield server
    server.close()


@pytest.fixture
def device(repo: TufRepository, server: RepositoryServer, tmp_path: Path) -> EdgeUpdater:
    # The device gets a copy of root v1, as if flashed at the factory.
    shipped_root = tmp_path / "device" / "root.json"
    shipped_root.parent.mkdir()
    shutil.copyfile(repo.trusted_root_path, shipped_root)
    return EdgeUpdater(server.url, shipped_root, tmp_path / "device" / "cache", labels={"ring": "fleet"})


def _write_signed(path: Path, metadata: Metadata) -> None:
    path.write_bytes(metadata.to_bytes(JSONSerializer(compact=False)))


def test_device_downloads_and_verifies_a_version(device: EdgeUpdater, tmp_path: Path) -> None:
    update = device.check("classifier")
    assert update is not None
    assert (update.name, update.version) == ("classifier", "1.0.0")

    archive = device.download(update)
    assert archive.read_bytes() == (tmp_path / "bundles" / "1.0.0.tar").read_bytes()
    with tarfile.open(archive) as tar:
        assert tar.extractfile("model.bin").read() == b"weights of 1.0.0"  # type: ignore[union-attr]
    assert device.check("no-such-model") is None


def test_later_versions_are_picked_up_in_version_order(
    repo: TufRepository, device: EdgeUpdater, tmp_path: Path
) -> None:
    assert device.check("classifier").version == "1.0.0"  # type: ignore[union-attr]
    repo.add_target("classifier", "1.9.0", _archive(tmp_path, "1.9.0"))
    repo.add_target("classifier", "1.10.0", _archive(tmp_path, "1.10.0"))
    repo.publish()

    update = device.check("classifier")
    assert update is not None
    assert update.version == "1.10.0"
    assert device.download(update).read_bytes() == (tmp_path / "bundles" / "1.10.0.tar").read_bytes()


def test_labelled_versions_reach_only_matching_devices_until_widened_to_the_fleet(
    repo: TufRepository, server: RepositoryServer, device: EdgeUpdater, tmp_path: Path
) -> None:
    archive = _archive(tmp_path, "2.0.0")
    repo.add_target("classifier", "2.0.0", archive, labels={"ring": "canary"})
    repo.publish()
    canary = EdgeUpdater(server.url, device.trusted_root, tmp_path / "canary", labels={"ring": "canary"})

    assert device.check("classifier").version == "1.0.0"  # type: ignore[union-attr]
    assert canary.check("classifier").version == "2.0.0"  # type: ignore[union-attr]

    # The canary ring is happy: widen 2.0.0 to the whole fleet; the same signed file, new metadata.
    repo.relabel("classifier", "2.0.0", {})
    repo.publish()
    update = device.check("classifier")
    assert update is not None
    assert (update.version, update.labels) == ("2.0.0", {})
    assert device.download(update).read_bytes() == archive.read_bytes()


def _flip_one_byte(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[600] ^= 0xFF  # one byte inside model.bin's contents (after the 512-byte tar header)
    return bytes(changed)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [(_flip_one_byte, "signed hash"), (lambda data: data + b"extra file", "longer than its signed length")],
    ids=["changed-byte", "appended-bytes"],
)
def test_tampered_target_is_refused(
    repo: TufRepository, device: EdgeUpdater, tamper: Callable[[bytes], bytes], message: str
) -> None:
    update = device.check("classifier")
    assert update is not None
    stored = next((repo.targets_dir / "classifier").glob("*.1.0.0.tar"))
    stored.write_bytes(tamper(stored.read_bytes()))

    with pytest.raises(UpdateRejectedError, match=message) as info:
        device.download(update)
    assert info.value.reason == "tampered"
    assert not (device.download_dir / "classifier" / "1.0.0.tar").exists()


def test_expired_timestamp_is_refused_as_a_freeze(repo: TufRepository, device: EdgeUpdater) -> None:
    assert device.check("classifier") is not None
    # The publisher stops refreshing: its last timestamp lapses while mirrors keep serving it.
    repo.expiry = ExpiryPolicy(timestamp_s=1)
    repo.refresh_timestamp()
    time.sleep(2.1)

    with pytest.raises(UpdateRejectedError, match="expired") as info:
        device.check("classifier")
    assert info.value.reason == "freeze"


def test_replayed_older_timestamp_is_refused_as_rollback(
    repo: TufRepository, device: EdgeUpdater, tmp_path: Path
) -> None:
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    repo.add_target("classifier", "1.1.0", _archive(tmp_path, "1.1.0"))
    repo.publish()
    assert device.check("classifier").version == "1.1.0"  # type: ignore[union-attr]

    (repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)
    with pytest.raises(UpdateRejectedError) as info:
        device.check("classifier")
    assert info.value.reason == "rollback"


def test_mixed_release_targets_are_refused(repo: TufRepository, device: EdgeUpdater, tmp_path: Path) -> None:
    assert device.check("classifier").version == "1.0.0"  # type: ignore[union-attr]
    repo.add_target("classifier", "1.1.0", _archive(tmp_path, "1.1.0"))
    repo.publish()
    # A mirror serves the new snapshot but the previous release's targets under the new name.
    shutil.copyfile(repo.metadata_dir / "2.targets.json", repo.metadata_dir / "3.targets.json")

    with pytest.raises(UpdateRejectedError, match="Expected targets v3, got v2") as info:
        device.check("classifier")
    assert info.value.reason == "rollback"


def test_target_signed_by_an_untrusted_key_is_refused(
    repo: TufRepository, device: EdgeUpdater, tmp_path: Path
) -> None:
    assert device.check("classifier") is not None
    repo.add_target("classifier", "1.1.0", _archive(tmp_path, "1.1.0"))
    repo.publish()
    # An attacker on the mirror swaps in a target of their own, signed with a key root never trusted.
    forged = Metadata[Targets].from_file(str(repo.metadata_dir / "3.targets.json"))
    evil = _archive(tmp_path, "9.9.9")
    forged.signed.targets["classifier/9.9.9.tar"] = TargetFile.from_file("classifier/9.9.9.tar", str(evil))
    forged.sign(CryptoSigner.generate_ed25519())
    _write_signed(repo.metadata_dir / "3.targets.json", forged)

    with pytest.raises(UpdateRejectedError, match="threshold") as info:
        device.check("classifier")
    assert info.value.reason == "untrusted"


def test_root_signed_below_threshold_is_refused(repo: TufRepository, device: EdgeUpdater) -> None:
    assert device.check("classifier") is not None
    # One stolen root key (of three, threshold two) tries to rotate every role to the attacker's key.
    stolen = TufRepository(repo.repo_dir, repo.keys_dir)._signers["root"][0]
    attacker = CryptoSigner.generate_ed25519()
    root = Metadata[Root].from_file(str(repo.metadata_dir / "1.root.json"))
    root.signed.version = 2
    for role in ("targets", "snapshot", "timestamp"):
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(attacker.public_key, role)
    root.signatures.clear()
    root.sign(stolen)
    _write_signed(repo.metadata_dir / "2.root.json", root)

    with pytest.raises(UpdateRejectedError) as info:
        device.check("classifier")
    assert info.value.reason == "untrusted"
    assert (
        json.loads((device.metadata_dir / "root_history" / "1.root.json").read_text())["signed"]["version"]
        == 1
    )
    assert not (device.metadata_dir / "root_history" / "2.root.json").exists()


def test_root_renewed_with_threshold_is_followed(repo: TufRepository, device: EdgeUpdater) -> None:
    assert device.check("classifier") is not None
    repo.renew_root()
    assert device.check("classifier") is not None
    assert (device.metadata_dir / "root_history" / "2.root.json").exists()


def test_unreachable_registry_is_not_a_rejection(
    device: EdgeUpdater, server: RepositoryServer, tmp_path: Path
) -> None:
    server.close()
    offline = EdgeUpdater(server.url, device.trusted_root, tmp_path / "offline")
    with pytest.raises(RegistryUnreachableError, match="keeping the current model"):
        offline.check("classifier")


def test_missing_trusted_root_says_what_to_ship(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"ship the registry's metadata/1.root.json"):
        EdgeUpdater("http://127.0.0.1:1", tmp_path / "absent.json", tmp_path / "cache")
