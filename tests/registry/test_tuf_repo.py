"""The publisher's TUF repository: real keys, real files, real HTTP on loopback."""

import json
import stat
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from inferline.registry.tuf_repo import (
    ExpiryPolicy,
    TufRepository,
    TufRepositoryError,
    make_bundle_archive,
)
from inferline.registry.tuf_serve import serve_repository, start_repository_server


def _bundle_archive(tmp_path: Path, version: str) -> Path:
    bundle = tmp_path / f"bundle-{version}"
    (bundle / "weights").mkdir(parents=True, exist_ok=True)
    (bundle / "weights" / "model.bin").write_bytes(f"weights of {version}".encode())
    (bundle / "config.json").write_text(json.dumps({"version": version}))
    return make_bundle_archive(bundle, tmp_path / f"{version}.tar")


def _signed(path: Path) -> dict:
    return json.loads(path.read_text())["signed"]


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    return TufRepository.create(tmp_path / "repo", tmp_path / "keys", num_root_keys=3, root_threshold=2)


def test_create_writes_threshold_root_and_private_keys_apart(repo: TufRepository) -> None:
    root = Metadata[Root].from_file(str(repo.trusted_root_path))
    assert root.signed.roles["root"].threshold == 2
    assert len(root.signed.roles["root"].keyids) == 3
    assert len(root.signatures) == 3
    assert root.signed.consistent_snapshot
    keys = sorted(path.name for path in repo.keys_dir.iterdir())
    assert keys == ["root-1.pem", "root-2.pem", "root-3.pem", "snapshot.pem", "targets.pem", "timestamp.pem"]
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in repo.keys_dir.iterdir())
    assert not list(repo.repo_dir.rglob("*.pem"))
    root.verify_delegate("root", root)  # the threshold of root signatures is met


def test_publish_bumps_versions_and_stores_hash_prefixed_targets(repo: TufRepository, tmp_path: Path) -> None:
    archive = _bundle_archive(tmp_path, "1.0.0")
    path = repo.add_target("classifier", "1.0.0", archive, labels={"ring": "canary"})
    repo.publish()

    assert path == "classifier/1.0.0.tar"
    targets = _signed(repo.metadata_dir / "2.targets.json")
    entry = targets["targets"][path]
    assert entry["custom"] == {"name": "classifier", "version": "1.0.0", "labels": {"ring": "canary"}}
    stored = repo.targets_dir / "classifier" / f"{entry['hashes']['sha256']}.1.0.0.tar"
    assert stored.read_bytes() == archive.read_bytes()
    assert _signed(repo.metadata_dir / "2.snapshot.json")["meta"]["targets.json"]["version"] == 2
    assert _signed(repo.metadata_dir / "timestamp.json")["meta"]["snapshot.json"]["version"] == 2

    repo.refresh_timestamp()
    timestamp = _signed(repo.metadata_dir / "timestamp.json")
    assert timestamp["version"] == 3
    assert timestamp["meta"]["snapshot.json"]["version"] == 2


def test_reopened_repository_continues_from_disk(repo: TufRepository, tmp_path: Path) -> None:
    repo.add_target("classifier", "1.0.0", _bundle_archive(tmp_path, "1.0.0"))
    repo.publish()

    reopened = TufRepository(repo.repo_dir, repo.keys_dir)
    reopened.add_target("classifier", "1.1.0", _bundle_archive(tmp_path, "1.1.0"))
    reopened.publish()

    targets = _signed(repo.metadata_dir / "3.targets.json")
    assert sorted(targets["targets"]) == ["classifier/1.0.0.tar", "classifier/1.1.0.tar"]
    with pytest.raises(TufRepositoryError, match="already published"):
        reopened.add_target("classifier", "1.1.0", _bundle_archive(tmp_path, "1.1.0"))


def test_archives_are_reproducible(tmp_path: Path) -> None:
    first = _bundle_archive(tmp_path / "a", "1.0.0")
    second = _bundle_archive(tmp_path / "b", "1.0.0")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert sorted(tar.getnames()) == ["config.json", "weights", "weights/model.bin"]


def test_unsafe_names_and_thresholds_are_refused(repo: TufRepository, tmp_path: Path) -> None:
    with pytest.raises(TufRepositoryError, match="target path segment"):
        repo.add_target("../etc", "1.0.0", _bundle_archive(tmp_path, "1.0.0"))
    with pytest.raises(TufRepositoryError, match="root_threshold 4"):
        TufRepository.create(tmp_path / "r2", tmp_path / "k2", num_root_keys=3, root_threshold=4)
    with pytest.raises(TufRepositoryError, match="already holds"):
        TufRepository.create(repo.repo_dir, tmp_path / "k3")
    with pytest.raises(TufRepositoryError, match="timestamp_s is 0"):
        ExpiryPolicy(timestamp_s=0)


def test_a_foreign_key_file_is_refused(repo: TufRepository) -> None:
    (repo.keys_dir / "targets.pem").unlink()
    (repo.keys_dir / "targets.pem").write_bytes(CryptoSigner.generate_ed25519().private_bytes)
    with pytest.raises(TufRepositoryError, match="is not a targets key"):
        TufRepository(repo.repo_dir, repo.keys_dir)


def test_root_renewal_needs_the_threshold_of_root_keys(repo: TufRepository) -> None:
    repo.renew_root()
    assert _signed(repo.metadata_dir / "root.json")["version"] == 2
    assert len(json.loads((repo.metadata_dir / "2.root.json").read_text())["signatures"]) == 3

    (repo.keys_dir / "root-2.pem").unlink()
    (repo.keys_dir / "root-3.pem").unlink()
    offline = TufRepository(repo.repo_dir, repo.keys_dir)
    with pytest.raises(TufRepositoryError, match="root needs 2 signatures"):
        offline.renew_root()
    assert not (repo.metadata_dir / "3.root.json").exists()


def test_server_exposes_only_metadata_and_targets(repo: TufRepository) -> None:
    (repo.repo_dir / "notes.txt").write_text("not for devices")
    server = start_repository_server(repo.repo_dir)
    try:
        with urllib.request.urlopen(f"{server.url}/metadata/timestamp.json") as response:
            assert json.loads(response.read())["signed"]["_type"] == "timestamp"
        for path in ("/notes.txt", "/metadata/", "/targets/"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"{server.url}{path}")
            assert info.value.code == 404
            info.value.close()
    finally:
        server.close()


def test_serving_a_folder_without_a_repository_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(TufRepositoryError, match="create the repository first"):
        serve_repository(tmp_path, port=0)
