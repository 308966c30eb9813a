"""`inferline registry`: signed model bundles, their versions and aliases, and the TUF update repository
that edge devices fetch them from."""

from __future__ import annotations

import argparse
from typing import Any

from inferline.cli.options import key_values
from inferline.errors import InferlineError


def _split_ref(text: str, *, version_required: bool) -> tuple[str, str | None]:
    """`name:version` (or `name:alias`) → (name, version); `name` alone where the version is optional."""
    name, _, version = text.partition(":")
    if not name or (version_required and not version):
        example = "support-bot:1.2.0" if version_required else "support-bot or support-bot:1.2.0"
        raise InferlineError(f"{text!r} is not a model reference: write NAME:VERSION, e.g. {example}")
    return name, version or None


def _parse_score(text: str) -> tuple[str, float]:
    metric, _, value = text.partition("=")
    try:
        return metric, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--score {text!r}: write METRIC=NUMBER, e.g. mmlu=0.41") from None


def _registry_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from inferline.registry.signing import generate_key_pair

    pair = generate_key_pair(Path(args.out))
    print(f"private key (keep secret, sign with --key): {pair.private_key}")
    print(f"public key (give to verifiers, --pubkey): {pair.public_key}")
    return 0


def _registry_push(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from inferline.registry.bundle import METADATA_FILE, build_bundle, read_bundle, validate_metadata
    from inferline.registry.catalog import open_catalog
    from inferline.registry.signing import public_key_pem, sign_bundle

    source, key = Path(args.path), Path(args.key)
    # A folder that already is a bundle keeps its lineage and scores; the command line adds to them.
    base = read_bundle(source).metadata if (source / METADATA_FILE).is_file() else None
    fields = {
        "name": args.name,
        "version": args.version,
        "parent_version": args.parent or (base.parent_version if base else None),
        "scores": {**(base.scores if base else {}), **dict(args.score)},
        **({"created_at": base.created_at} if base else {}),
    }
    metadata = validate_metadata(fields, "cannot push: fix --name, --version or --parent")
    catalog = open_catalog(args.database_url)
    with tempfile.TemporaryDirectory(prefix="inferline-push-") as scratch:
        bundle = build_bundle(source, Path(scratch) / "bundle", metadata)
        sign_bundle(bundle.path, key)
        public_key = Path(scratch) / "signer.pub.pem"
        public_key.write_bytes(public_key_pem(key))
        try:
            record = catalog.push(bundle.path, public_key)
        finally:
            catalog.close()
    print(
        f"pushed {record.name}:{record.version} to {record.path} (signature sha256 {record.signature_sha256})"
    )
    return 0


def _registry_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from inferline.registry.catalog import open_catalog

    catalog = open_catalog(args.database_url)
    try:
        table = Table(title=f"registry ({catalog.url})")
        for column in ("name", "version", "parent", "aliases", "created", "scores"):
            table.add_column(column)
        for record in catalog.versions():
            aliases = [a.alias for a in catalog.aliases(record.name) if a.version == record.version]
            table.add_row(
                record.name,
                record.version,
                record.parent_version or "-",
                ", ".join(aliases) or "-",
                datetime.fromtimestamp(record.created_at, UTC).strftime("%Y-%m-%d %H:%M"),
                ", ".join(f"{metric}={value:g}" for metric, value in sorted(record.scores.items())) or "-",
            )
    finally:
        catalog.close()
    Console().print(table)
    return 0


def _registry_show(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from inferline.registry.catalog import open_catalog

    name, ref = _split_ref(args.ref, version_required=False)
    catalog = open_catalog(args.database_url)
    try:
        aliases = {
            a.alias: {"version": a.version, "previous": list(a.previous_versions)}
            for a in catalog.aliases(name)
        }
        if ref is None:
            versions = [record.version for record in catalog.versions(name)]
            if not versions:
                raise InferlineError(
                    f"no model {name!r} in the registry: `inferline registry list` shows them"
                )
            shown: dict[str, object] = {"name": name, "versions": versions, "aliases": aliases}
        else:
            record = catalog.resolve(name, ref)
            shown = {
                "name": record.name,
                "version": record.version,
                "parent_version": record.parent_version,
                "aliases": sorted(
                    alias for alias, info in aliases.items() if info["version"] == record.version
                ),
                "created_at": datetime.fromtimestamp(record.created_at, UTC).isoformat(),
                "pushed_at": datetime.fromtimestamp(record.pushed_at, UTC).isoformat(),
                "path": str(record.path),
                "signature_sha256": record.signature_sha256,
                "scores": record.scores,
            }
    finally:
        catalog.close()
    print(json.dumps(shown, indent=2))
    return 0


def _registry_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from inferline.registry.bundle import read_bundle
    from inferline.registry.signing import verify_bundle

    path = Path(args.path)
    verify_bundle(path, Path(args.pubkey))
    metadata = read_bundle(path).metadata
    print(f"verified: {path} is {metadata.name}:{metadata.version}, signed by {args.pubkey}, unaltered")
    return 0


def _registry_promote(args: argparse.Namespace) -> int:
    from inferline.registry.catalog import open_catalog

    name, version = _split_ref(args.ref, version_required=True)
    with open_catalog(args.database_url) as catalog:
        record = catalog.promote(name, str(version), args.alias)
    before = f" (was {record.previous_versions[-1]})" if record.previous_versions else ""
    print(f"{name}:{args.alias} -> {record.version}{before}")
    return 0


def _registry_rollback(args: argparse.Namespace) -> int:
    from inferline.registry.catalog import open_catalog

    with open_catalog(args.database_url) as catalog:
        record = catalog.rollback(args.name, args.alias)
    print(f"{args.name}:{args.alias} rolled back to {record.version}")
    return 0


def _repo_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from inferline.registry.tuf_repo import TufRepository

    repo = TufRepository.create(
        Path(args.repo), Path(args.keys), num_root_keys=args.root_keys, root_threshold=args.root_threshold
    )
    print(f"TUF repository in {repo.repo_dir}, signing keys in {repo.keys_dir} (keep them off the server)")
    print(f"ship this root to every device (inferline edge --trusted-root): {repo.trusted_root_path}")
    return 0


def _repo_publish(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from inferline.registry.catalog import open_catalog
    from inferline.registry.tuf_repo import TufRepository, make_bundle_archive

    name, ref = _split_ref(args.ref, version_required=True)
    with open_catalog(args.database_url) as catalog:
        record = catalog.resolve(name, str(ref))
    labels = key_values(args.label, "--label", "ring=canary")
    repo = TufRepository(Path(args.repo), Path(args.keys))
    with tempfile.TemporaryDirectory() as tmp:
        archive = make_bundle_archive(record.path, Path(tmp) / "bundle.tar")
        target = repo.add_target(name, record.version, archive, labels)
    repo.publish()
    rings = ", ".join(f"{k}={v}" for k, v in labels.items()) or "every device"
    print(f"published {target} (for {rings}); targets version {repo.targets.signed.version}")
    return 0


def _repo_relabel(args: argparse.Namespace) -> int:
    from pathlib import Path

    from inferline.registry.tuf_repo import TufRepository

    name, version = _split_ref(args.ref, version_required=True)
    labels = key_values(args.label, "--label", "ring=fleet")
    repo = TufRepository(Path(args.repo), Path(args.keys))
    target = repo.relabel(name, str(version), labels)
    repo.publish()
    rings = ", ".join(f"{k}={v}" for k, v in labels.items()) or "every device"
    print(f"{target} is now for {rings}; targets version {repo.targets.signed.version}")
    return 0


def _repo_refresh(args: argparse.Namespace) -> int:
    from pathlib import Path

    from inferline.registry.tuf_repo import TufRepository

    repo = TufRepository(Path(args.repo), Path(args.keys))
    repo.refresh_timestamp()
    print(f"timestamp version {repo.timestamp.signed.version}, expires {repo.timestamp.signed.expires}")
    return 0


def _repo_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from inferline.registry.dataset import open_dataset
    from inferline.registry.tuf_serve import TELEMETRY_PATH, serve_repository

    with open_dataset(args.database_url) as dataset:
        print(
            f"serving {args.repo} on http://{args.host}:{args.port} (metadata/ and targets/; telemetry "
            f"uploads at {TELEMETRY_PATH} into {dataset.url})",
            flush=True,
        )
        serve_repository(Path(args.repo), args.host, args.port, dataset)
    return 0


def _dataset_export(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from inferline.registry.dataset import export_records, open_dataset
    from inferline.telemetry.usage_store import parse_since

    since = parse_since(args.since, time.time()) if args.since else None
    with open_dataset(args.database_url) as dataset:
        num_written = export_records(dataset.records(args.model, since), Path(args.out), args.format)
        dropped = dataset.dropped_counts()
    print(f"wrote {num_written} record(s) to {args.out} ({args.format})")
    lost = {device: count for device, count in dropped.items() if count}
    if lost:
        listed = ", ".join(f"{device}: {count}" for device, count in sorted(lost.items()))
        print(f"records dropped on devices before upload (queue full): {listed}")
    return 0


def _add_dataset_parser(sub: Any, database: argparse.ArgumentParser) -> None:
    """The telemetry the fleet uploaded (usage records and flagged cases) as a dataset."""
    from inferline.registry.dataset import EXPORT_FORMATS

    dataset = sub.add_parser("dataset", help="the telemetry edge devices uploaded")
    dataset_sub = dataset.add_subparsers(dest="dataset_command", required=True)
    export = dataset_sub.add_parser(
        "export", parents=[database], help="write the records with the model version that produced each"
    )
    export.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl")
    export.add_argument("--out", required=True, help="the file to write (replaced)")
    export.add_argument("--model", default=None, help="only records of this model name")
    export.add_argument(
        "--since", default=None, help="only records from then on: 30m, 24h, 7d or an ISO date"
    )
    export.set_defaults(handler=_dataset_export)


def _add_repository_parsers(sub: Any, database: argparse.ArgumentParser) -> None:
    """The TUF update repository: created once, published to per version, served to the fleet."""
    repo = argparse.ArgumentParser(add_help=False)
    repo.add_argument("--repo", required=True, help="the TUF repository folder (metadata/, targets/)")
    keys = argparse.ArgumentParser(add_help=False)
    keys.add_argument("--keys", required=True, help="the folder with the repository's signing keys")

    init = sub.add_parser(
        "repo-init", parents=[repo, keys], help="create a TUF update repository and its keys"
    )
    init.add_argument("--root-keys", type=int, default=3, help="number of root keys")
    init.add_argument("--root-threshold", type=int, default=2, help="root keys needed to sign a new root")
    init.set_defaults(handler=_repo_init)

    publish = sub.add_parser(
        "publish", parents=[database, repo, keys], help="publish a stored version to the update repository"
    )
    publish.add_argument("ref", metavar="NAME:VERSION", help="a version or alias, e.g. support-bot:prod")
    publish.add_argument("--label", action="append", default=[], help="devices it is for, e.g. ring=canary")
    publish.set_defaults(handler=_repo_publish)

    relabel = sub.add_parser(
        "relabel", parents=[repo, keys], help="widen a published version to the next ring (no --label: all)"
    )
    relabel.add_argument("ref", metavar="NAME:VERSION")
    relabel.add_argument("--label", action="append", default=[], help="devices it is for, e.g. ring=fleet")
    relabel.set_defaults(handler=_repo_relabel)

    refresh = sub.add_parser(
        "refresh", parents=[repo, keys], help="re-sign the timestamp (run well within its 1-day expiry)"
    )
    refresh.set_defaults(handler=_repo_refresh)

    serve = sub.add_parser(
        "serve", parents=[database, repo], help="serve the update repository and take telemetry uploads"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8081)
    serve.set_defaults(handler=_repo_serve)


def add_registry_parser(commands: Any) -> None:
    """`inferline registry ...`, under the main parser's `commands`."""
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL of the registry database (default: inferline.db in $INFERLINE_HOME)",
    )
    registry = commands.add_parser("registry", help="signed model bundles, their versions and aliases")
    sub = registry.add_subparsers(dest="registry_command", required=True)

    keygen = sub.add_parser("keygen", help="write a new EC P-256 signing key pair (PEM)")
    keygen.add_argument("--out", required=True, help="folder for inferline-signing.{key,pub}.pem")
    keygen.set_defaults(handler=_registry_keygen)

    push = sub.add_parser("push", parents=[database], help="bundle, sign, verify and store a model version")
    push.add_argument("path", help="a model folder, a .gguf file, or a bundle folder")
    push.add_argument("--name", required=True, help="model name, e.g. support-bot")
    push.add_argument("--version", required=True, help="new version, e.g. 1.2.0")
    push.add_argument("--key", required=True, help="EC P-256 private key PEM (registry keygen writes one)")
    push.add_argument("--parent", default=None, help="the version this one derives from")
    push.add_argument(
        "--score", type=_parse_score, action="append", default=[], help="evaluation score METRIC=NUMBER"
    )
    push.set_defaults(handler=_registry_push)

    sub.add_parser("list", parents=[database], help="every stored version").set_defaults(
        handler=_registry_list
    )

    show = sub.add_parser("show", parents=[database], help="a model's versions and aliases, or one version")
    show.add_argument("ref", metavar="NAME[:VERSION]", help="a name, or NAME:VERSION or NAME:ALIAS")
    show.set_defaults(handler=_registry_show)

    verify = sub.add_parser("verify", help="check a bundle folder against its signature and a public key")
    verify.add_argument("path", help="the bundle folder")
    verify.add_argument("--pubkey", required=True, help="the signer's public key PEM")
    verify.set_defaults(handler=_registry_verify)

    promote = sub.add_parser("promote", parents=[database], help="point an alias at a version")
    promote.add_argument("ref", metavar="NAME:VERSION")
    promote.add_argument("--alias", required=True, help="e.g. prod or canary")
    promote.set_defaults(handler=_registry_promote)

    rollback = sub.add_parser(
        "rollback", parents=[database], help="point an alias back at its previous version"
    )
    rollback.add_argument("name")
    rollback.add_argument("--alias", required=True, help="e.g. prod")
    rollback.set_defaults(handler=_registry_rollback)

    _add_repository_parsers(sub, database)
    _add_dataset_parser(sub, database)
