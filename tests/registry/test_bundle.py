"""Bundles: built from a model folder or a GGUF file, described by inferline-bundle.json, checked on read."""

import json
from pathlib import Path

import pytest

from inferline.registry.bundle import (
    METADATA_FILE,
    SIGNATURE_FILE,
    BundleError,
    BundleMetadata,
    build_bundle,
    read_bundle,
)


def make_model_folder(path: Path) -> Path:
    (path / "tokenizer").mkdir(parents=True)
    (path / "config.json").write_text('{"hidden_size": 8}')
    (path / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (path / "tokenizer" / "tokenizer.json").write_text("{}")
    return path


def test_bundle_from_a_model_folder_keeps_every_file_and_reads_back_its_metadata(tmp_path: Path) -> None:
    source = make_model_folder(tmp_path / "model")
    (source / SIGNATURE_FILE).write_text("an old signature")  # signed again by the next pusher
    metadata = BundleMetadata(
        name="support-bot", version="1.1.0", parent_version="1.0.0", scores={"mmlu": 0.4}
    )

    bundle = build_bundle(source, tmp_path / "bundle", metadata)

    files = sorted(str(p.relative_to(bundle.path)) for p in bundle.path.rglob("*") if p.is_file())
    assert files == ["config.json", METADATA_FILE, "model.safetensors", "tokenizer/tokenizer.json"]
    assert (bundle.path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert read_bundle(bundle.path).metadata == metadata


def test_bundle_from_a_single_gguf_file(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.Q4_0.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))

    bundle = build_bundle(gguf, tmp_path / "bundle", BundleMetadata(name="tiny", version="1"))

    assert (bundle.path / "tiny.Q4_0.gguf").read_bytes() == gguf.read_bytes()
    assert read_bundle(bundle.path).metadata.name == "tiny"


@pytest.mark.parametrize(
    ("source_name", "message"),
    [("missing", "does not exist"), ("weights.bin", "neither a model folder nor a .gguf file")],
)
def test_build_refuses_what_is_not_a_model(tmp_path: Path, source_name: str, message: str) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=message):
        build_bundle(tmp_path / source_name, tmp_path / "out", BundleMetadata(name="m", version="1"))


def test_build_refuses_to_overwrite_an_existing_folder(tmp_path: Path) -> None:
    source = make_model_folder(tmp_path / "model")
    (tmp_path / "out").mkdir()
    with pytest.raises(BundleError, match="already exists"):
        build_bundle(source, tmp_path / "out", BundleMetadata(name="m", version="1"))


def test_a_model_folder_without_metadata_is_not_a_bundle(tmp_path: Path) -> None:
    source = make_model_folder(tmp_path / "model")
    with pytest.raises(BundleError, match=f"has no {METADATA_FILE}.*registry push"):
        read_bundle(source)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        (json.dumps({"name": "m", "version": "../../etc"}), "version: String should match pattern"),
        (json.dumps({"name": "m"}), "version: Field required"),
        (json.dumps({"name": "m", "version": "1", "scores": {"acc": "high"}}), "scores.acc"),
        (json.dumps({"name": "m", "version": "1", "owner": "me"}), "owner: Extra inputs"),
    ],
)
def test_bad_metadata_names_the_file_and_the_field(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / METADATA_FILE).write_text(content)
    with pytest.raises(BundleError, match=message) as caught:
        read_bundle(tmp_path)
    assert str(tmp_path / METADATA_FILE) in str(caught.value)
