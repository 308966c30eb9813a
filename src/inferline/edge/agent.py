"""`inferline edge`: keep one model up to date from the registry and serve it on loopback, offline or not.

Design note: one process, one event loop. uvicorn serves `EdgeApp`, which forwards every request to the
version currently installed (a `LocalModel`) and answers GET /edge/state and POST /edge/feedback itself.
Beside it, the agent polls the registry: TUF check and download, unpack and signature check
(install.py), then the new version is loaded and health-checked beside the old one and swapped in by
replacing one reference; the old one drains and unloads. Blocking work (network, hashing, tar) runs in
threads so serving never waits on an update. An update that fails anywhere is recorded in the state and
never retried; the version that served before keeps serving. The registry being unreachable is routine,
not an error worth stopping for. Usage and flagged cases (failed requests, user feedback, answers whose
mean token log-probability is below a threshold: cases.py) go to an on-disk outbox through a writer thread
(SQLite's fsync stays off the event loop), and a thread uploads them to the registry whenever it is
reachable (outbox.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import uvicorn
from starlette.types import Receive, Scope, Send

from inferline.asgi import lifespan, read_body, respond
from inferline.edge.cases import GENERATION_PATHS, low_confidence_case, note_usage, watched
from inferline.edge.config import AgentConfig
from inferline.edge.install import Installer, InstallError, write_json_atomic
from inferline.edge.local_model import AppFactory, HealthCheckError, LocalModel, ModelSpec
from inferline.edge.outbox import Outbox, OutboxError, OutboxWriter, Uploader
from inferline.edge.updater import EdgeUpdater, ModelUpdate, RegistryUnreachableError, UpdateRejectedError
from inferline.errors import InferlineError
from inferline.registry.bundle import BundleError
from inferline.registry.signing import BundleVerificationError, verify_bundle
from inferline.types import UsageRecord

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
# Failures that condemn one version (recorded as rejected) rather than the registry or the device.
_VERSION_FAILURES = (
    UpdateRejectedError,
    BundleVerificationError,
    BundleError,
    InstallError,
    HealthCheckError,
)


@dataclass
class EdgeState:
    """What the agent reports, in `state.json` and at GET /edge/state."""

    device_id: str
    labels: dict[str, str]
    model: str
    current_version: str | None = None  # the version answering requests now
    last_good: str | None = None  # the newest version that passed a health check
    last_check: str | None = None  # when the registry was last asked (UTC, ISO 8601)
    last_error: str | None = None  # the last failure, with its cause; None after a clean check
    rejected: dict[str, str] = field(default_factory=dict)  # version -> why it was refused


class EdgeApp:
    """ASGI app: /edge/state, and everything else forwarded to the current version (503 before the first)."""

    def __init__(self, state: EdgeState, writer: OutboxWriter, low_confidence: float | None) -> None:
        self.state = state
        self.writer = writer
        self.low_confidence = low_confidence
        self.model: LocalModel | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the models' own lifespans are run by the agent
            await lifespan(receive, send)
            return
        if scope["type"] == "http" and scope["path"] == "/edge/state":
            await _send_json(send, 200, asdict(self.state))
            return
        if scope["type"] == "http" and scope["path"] == "/edge/feedback" and scope["method"] == "POST":
            await self._feedback(receive, send)
            return
        model = self.model
        if model is None:
            detail = self.state.last_error or "the first version is still being installed"
            await _send_json(send, 503, {"error": {"message": f"no model installed yet: {detail}"}})
            return
        model.in_flight += 1
        try:
            if (
                self.low_confidence is not None
                and scope["type"] == "http"
                and scope["path"] in GENERATION_PATHS
            ):
                await self._answer_judged(model, self.low_confidence, scope, receive, send)
            else:
                await model.app(scope, receive, send)
        finally:
            model.in_flight -= 1

    async def _answer_judged(
        self, model: LocalModel, threshold: float, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Forward a generation request; once answered, flag it upstream if it was not confident."""
        with watched(receive, send) as (exchange, copy_receive, copy_send):
            await model.app(scope, copy_receive, copy_send)
        case = low_confidence_case(exchange, threshold)
        if case is not None:
            self.writer.submit({**case, "model": self.state.model})

    async def _feedback(self, receive: Receive, send: Send) -> None:
        """A user's verdict on an answer ({"request_id", "rating", "comment"}): a flagged case upstream."""
        body = await read_body(receive)
        try:
            feedback = json.loads(body or b"{}")
        except ValueError:
            feedback = None
        if not isinstance(feedback, dict) or not isinstance(feedback.get("request_id"), str):
            hint = (
                'send a JSON object with "request_id" (the x-request-id of the answer), "rating", "comment"'
            )
            await _send_json(send, 400, {"error": {"message": hint, "param": "request_id"}})
            return
        version = self.state.current_version
        if version is None:
            await _send_json(send, 409, {"error": {"message": "no model version is serving yet"}})
            return
        fields = {k: feedback[k] for k in ("request_id", "rating", "comment") if k in feedback}
        record = {
            "kind": "flagged",
            "reason": "feedback",
            "model": self.state.model,
            "model_version": version,
        }
        try:  # 202 once it is on disk: the user's verdict survives a crash that follows
            await asyncio.wrap_future(self.writer.submit({**record, "ts": time.time(), **fields}))
        except OutboxError as error:
            await _send_json(send, 400, {"error": {"message": str(error)}})
            return
        await _send_json(send, 202, {"queued": True})


async def _send_json(send: Send, status: int, body: object) -> None:
    await respond(send, status, json.dumps(body).encode())


class EdgeAgent:
    def __init__(self, config: AgentConfig, app_factory: AppFactory) -> None:
        self.config = config
        self.app_factory = app_factory
        if not config.public_key.is_file():
            raise InferlineError(
                f"--pubkey {config.public_key} does not exist: pass the publisher's .pub.pem (written by"
                " `inferline registry keygen`), which every bundle must verify against"
            )
        config.home.mkdir(parents=True, exist_ok=True)
        self.installer = Installer(config.home, config.public_key)
        self.updater = EdgeUpdater(
            config.registry_url, config.trusted_root, config.home / "tuf", config.labels
        )
        self.pointer = self.installer.read_pointer()
        self.state = EdgeState(config.device_id, dict(config.labels), config.model)
        self.outbox = Outbox(config.home / "outbox.db", config.outbox_max_records)
        self.writer = OutboxWriter(self.outbox)
        self.uploader = Uploader(self.outbox, config.registry_url, config.device_id, interval_s=config.poll_s)
        self.app = EdgeApp(self.state, self.writer, config.low_confidence_mean_logprob)

    async def run(self) -> None:
        """Serve until uvicorn is told to stop (SIGINT/SIGTERM), polling the registry meanwhile."""
        server = uvicorn.Server(
            uvicorn.Config(self.app, host=self.config.host, port=self.config.port, log_config=None)
        )
        serving = asyncio.create_task(server.serve())
        self.uploader.start()
        try:
            await self.start_installed()
            while not serving.done():
                await self.poll_once()
                await asyncio.wait({serving}, timeout=self.config.poll_s)
        finally:
            server.should_exit = True
            await serving
            if self.app.model is not None:
                await self.app.model.close()
            await asyncio.to_thread(self.writer.close)  # every record on disk before the process ends
            await asyncio.to_thread(self.uploader.stop)

    async def start_installed(self) -> None:
        """Serve the installed version: the current one, else the last good one (a crash or a failed check
        can leave `current` unusable; never both, since `last_good` is only replaced after a health check)."""
        for leftover in self.installer.recover():
            logger.warning("removed %s, left by an update that was interrupted", leftover)
        candidates = dict.fromkeys(v for v in (self.pointer.current, self.pointer.last_good) if v is not None)
        for version in candidates:
            try:
                await asyncio.to_thread(
                    verify_bundle, self.installer.version_dir(version), self.config.public_key
                )
                await self._serve(version)
                return
            except (*_VERSION_FAILURES, OSError) as error:
                self._record_failure(version, error, reject=version != self.pointer.last_good)
        # Nothing installed can serve: let the next poll install the registry's version afresh.
        self.pointer.current = None
        self.installer.write_pointer(self.pointer)
        self._save()

    async def poll_once(self) -> None:
        """One registry check; installs a newer version if there is one. Never raises for a bad update."""
        self.state.last_check = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            update = await asyncio.to_thread(self.updater.check, self.config.model)
        except RegistryUnreachableError as error:
            self.state.last_error = f"{str(error).rstrip(': ')} (registry {self.config.registry_url})"
            logger.warning("%s", self.state.last_error)
            self._save()
            return
        except UpdateRejectedError as error:
            self._record_failure(None, error, reject=False)
            self._save()
            return
        self.state.last_error = None
        if update is not None and self._is_new(update.version):
            await self._install(update)
        self._save()

    def _is_new(self, version: str) -> bool:
        return version != self.pointer.current and version not in self.pointer.rejected

    async def _install(self, update: ModelUpdate) -> None:
        try:
            archive = await asyncio.to_thread(self.updater.download, update)
            await asyncio.to_thread(self.installer.unpack, archive, update.version)
        except (RegistryUnreachableError, UpdateRejectedError) as error:
            # A dropped or tampered download says nothing against the version (a mirror may be at fault):
            # recorded, and retried at the next poll.
            self._record_failure(update.version, error, reject=False)
            return
        except _VERSION_FAILURES as error:
            self._record_failure(update.version, error, reject=True)
            return
        previous = self.pointer.current
        # Pointer first: a crash during the health check restarts on this version, and falls back to
        # last_good if it fails there too.
        self.pointer.current = update.version
        self.installer.write_pointer(self.pointer)
        try:
            await self._serve(update.version)
        except (HealthCheckError, InstallError) as error:
            self.pointer.current = previous
            self._record_failure(update.version, error, reject=True)
            self.installer.remove(update.version)
            return
        logger.info("now serving %s %s", self.config.model, update.version)

    async def _serve(self, version: str) -> None:
        spec = ModelSpec(self.config.model, version, self.installer.model_file(version), self.config.home)
        try:
            model = LocalModel(spec, self.app_factory)
            await model.start()
            # After its health check, which is not a client's request.
            model.app.state.router.listeners.extend([note_usage, self._record_usage])
        except HealthCheckError:
            raise
        except Exception as error:  # whatever breaks a new version, the one serving must stay up
            raise HealthCheckError(f"version {version} could not start: {error}") from error
        previous, self.app.model = self.app.model, model
        self.pointer.current = self.pointer.last_good = version
        self.installer.write_pointer(self.pointer)
        self.state.current_version = version
        self._save()
        if previous is not None:
            await previous.close()

    def _record_usage(self, record: UsageRecord) -> None:
        """Every answered request goes upstream as usage; a failed one also as a flagged case."""
        base = {
            "model": self.config.model,
            "model_version": record.model_version or "unknown",
            "ts": record.finished_at,
        }
        usage = {
            "request_id": record.request_id,
            "outcome": record.outcome,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "ttft_s": record.ttft_s,
            "latency_s": record.latency_s,
            "mean_logprob": record.mean_logprob,
        }
        self.writer.submit({"kind": "usage", **base, **usage})
        if record.outcome == "error":
            self.writer.submit(
                {"kind": "flagged", "reason": "error", **base, "error_type": record.error_type}
            )

    def _record_failure(self, version: str | None, error: Exception, reject: bool) -> None:
        subject = f"version {version}" if version is not None else "the registry's metadata"
        message = f"{subject} refused: {error}"
        logger.error("%s", message)
        self.state.last_error = message
        if reject and version is not None:
            self.pointer.rejected[version] = str(error)
        self.installer.write_pointer(self.pointer)

    def _save(self) -> None:
        """The state on disk, and upstream through the outbox: the registry sees each device's versions."""
        self.state.last_good = self.pointer.last_good
        self.state.rejected = dict(self.pointer.rejected)
        state = asdict(self.state)
        write_json_atomic(self.config.home / STATE_FILE, state)
        del state["device_id"]  # every upload names its device
        version = self.state.current_version or "none"
        self.writer.submit({"kind": "state", **state, "model_version": version, "ts": time.time()})


def run_agent(config: AgentConfig, app_factory: AppFactory) -> int:
    agent = EdgeAgent(config, app_factory)  # configuration errors surface here, before the server starts
    # uvicorn re-raises the SIGTERM it handled once it has stopped; with this no-op handler in place the
    # agent unloads and exits 0, as a clean stop should (same as `inferline serve`).
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    # Offline is routine for a device: one line per poll from the agent, not three retry lines from urllib3.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    asyncio.run(agent.run())
    return 0
