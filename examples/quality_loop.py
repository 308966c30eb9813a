"""The quality loop end to end, on this machine, from scratch (about 5 minutes on 2 CPU cores):

    python examples/quality_loop.py --workdir /tmp/inferline-loop

serve -> traffic with planted hard cases -> capture and flag (thumbs-down feedback) -> export -> teacher
answers -> fine-tune -> evaluation gate -> signed push -> staged canary -> promote (or roll back when the
gate or the canary says no) -> an edge agent receives the new version over TUF.

The planted cases are questions about a shop the default model (SmolLM2-135M) has never heard of. The
"teacher" is the same model given the shop's facts in a system message: it answers what the served model
cannot, and fine-tuning moves that knowledge into the weights (context distillation); any stronger
OpenAI-compatible route can be the teacher instead (`inferline data teach --base-url`). Everything runs
through the `inferline` command line, as an operator would run it; the script only strings the steps
together and prints what each one measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

ADMIN_KEY = "sk-loop-admin"
USER_KEY = "sk-loop-user"
FACTS = (
    "Tidewater Bikes facts: returns are accepted within 45 days of delivery. The headquarters are in "
    "Lisbon. The warranty covers the frame for 10 years. The loyalty programme is called Tidewater Miles."
)
TEACHER_SYSTEM = f"{FACTS} Answer the customer's question in one short sentence using these facts."
HARD_CASES = [
    "How many days do I have to return a Tidewater Bikes order?",
    "What is the return window at Tidewater Bikes?",
    "In which city is Tidewater Bikes headquartered?",
    "Where are the Tidewater Bikes headquarters?",
    "How long does the Tidewater Bikes warranty cover the frame?",
    "What does the Tidewater Bikes warranty cover?",
    "What is the Tidewater Bikes loyalty programme called?",
    "What's the name of the loyalty programme of Tidewater Bikes?",
]
EVAL_CASES = [  # held-out phrasings of the planted facts, and general knowledge the model must keep
    {"prompt": "Tidewater Bikes: within how many days can I send a bike back?", "contains": ["45"]},
    {"prompt": "Which city hosts the head office of Tidewater Bikes?", "contains": ["Lisbon"]},
    {"prompt": "For how many years is a Tidewater Bikes frame covered?", "contains": ["10"]},
    {"prompt": "Name the Tidewater Bikes loyalty programme.", "contains": ["Tidewater Miles"]},
    {"prompt": "What is the capital of France?", "contains": ["Paris"]},
]
ORDINARY = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Loop:
    def __init__(self, workdir: Path, steps: int) -> None:
        self.workdir = workdir
        self.steps = steps
        self.home = workdir / "home"
        self.env = {**os.environ, "INFERLINE_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        self.keys = workdir / "keys"

    def cli(self, *args: str) -> str:
        """One `inferline` command; its output, or the script stops with the command's own error."""
        command = [sys.executable, "-m", "inferline.cli", *args]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"inferline {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout + done.stderr

    @contextmanager
    def process(self, name: str, *args: str) -> Iterator[Path]:
        log = self.workdir / f"{name}.log"
        with log.open("w") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "inferline.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        try:
            yield log
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    @contextmanager
    def server(self, name: str, config: dict[str, Any]) -> Iterator[str]:
        port = free_port()
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**config, "port": port}))
        url = f"http://127.0.0.1:{port}"
        with self.process(name, "serve", "--config", str(path)) as log:
            wait_until(lambda: _ready(url), 180, log)
            yield url

    def base_config(self, deployments: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "admin_api_keys": [ADMIN_KEY],
            "tenants": [{"name": "shop", "api_keys": [USER_KEY]}],
            "deployments": deployments,
            "registry": {"trusted_public_keys": [str(self.keys / "inferline-signing.pub.pem")]},
            "telemetry": {"record_mean_logprob": True, "log_format": "text"},
            **extra,
        }


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(condition: Any, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out; see {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def chat(url: str, model: str, question: str, key: str | None = USER_KEY) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 40,
        "temperature": 0,
    }
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    response.raise_for_status()
    return response


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(loop: Loop) -> dict[str, Any]:
    from inferline.models.store import resolve

    step("1. sign and push the default model as bot:1, alias prod")
    loop.cli("registry", "keygen", "--out", str(loop.keys))
    key = str(loop.keys / "inferline-signing.key.pem")
    loop.cli(
        "registry", "push", str(resolve("default").path), "--name", "bot", "--version", "1", "--key", key
    )
    loop.cli("registry", "promote", "bot:1", "--alias", "prod")

    step("2. serve bot:prod with capture on; traffic with planted hard cases; users rate them down")
    capture = {"capture": {"enabled": True, "sample_rate": 0.0}, "drift": {"enabled": True, "window": 20}}
    config = loop.base_config(
        [{"name": "bot", "kind": "llm", "source": "registry:bot:prod"}], quality=capture
    )
    with loop.server("serve-v1", config) as url:
        for question in ORDINARY:
            chat(url, "bot", question)
        for question in HARD_CASES:
            response = chat(url, "bot", question)
            print(f"  {question} -> {response.json()['choices'][0]['message']['content']!r}")
            rating = {
                "request_id": response.headers["x-request-id"],
                "label": "thumbs_down",
                "comment": "wrong",
            }
            httpx.post(
                f"{url}/v1/feedback", json=rating, headers={"authorization": f"Bearer {USER_KEY}"}
            ).raise_for_status()

        step("3. export the flagged cases; the teacher answers them")
        flagged = loop.workdir / "flagged.jsonl"
        print(" ", loop.cli("data", "export", "-o", str(flagged), "--flag", "thumbs_down").strip())
        train = loop.workdir / "train.jsonl"
        loop.cli(
            "data",
            "teach",
            str(flagged),
            "-o",
            str(train),
            "--base-url",
            f"{url}/v1",
            "--model",
            "bot",
            "--api-key",
            USER_KEY,
            "--system",
            TEACHER_SYSTEM,
            "--max-tokens",
            "40",
        )
        for row in map(json.loads, train.read_text().splitlines()):
            print(f"  teacher: {row['prompt'][-1]['content']} -> {row['completion'][0]!r}")

    step("4. fine-tune bot:1 on the teacher's answers (LoRA, CPU)")
    tuned = loop.workdir / "bot-2"
    bundle_1 = loop.home / "registry" / "bot" / "1"
    print(
        " ",
        loop.cli(
            "finetune",
            "--base",
            str(bundle_1),
            "--dataset",
            str(train),
            "-o",
            str(tuned),
            "--steps",
            str(loop.steps),
            "--max-seq-len",
            "128",
        )
        .strip()
        .splitlines()[0],  # "wrote FOLDER: N examples, ... loss A -> B in S s" (stdout comes first)
    )
    loop.cli("registry", "push", str(tuned), "--name", "bot", "--version", "2", "--parent", "1", "--key", key)

    step("5. evaluation gate: both versions on held-out cases, scores stored in the registry")
    cases = loop.workdir / "eval.jsonl"
    cases.write_text("".join(json.dumps(case) + "\n" for case in EVAL_CASES))
    scores = {}
    # Each version as it will be served (`quantization: auto`): bot:1 is a Q4_1 GGUF, run in int4; the
    # fine-tuned folder names int8 in its config.json (int4 would lose most of what LoRA learned).
    for version in ("1", "2"):
        out = loop.cli(
            "eval",
            f"registry:bot:{version}",
            "--dataset",
            str(cases),
            "--metrics",
            "contains",
            "--max-tokens",
            "40",
        )
        scores[version] = json.loads(out.splitlines()[0])["scores"]
        print(f"  bot:{version} {scores[version]}")

    step("6. staged canary: bot:prod -> bot:2 in steps of 50 % and 100 %, refused if its scores are lower")
    canary = {
        "baseline": "bot-prod",
        "candidate": "bot-next",
        "min_samples": 3,
        "rollout": {"steps": [50, 100], "dwell_s": 1, "min_samples": 3, "min_score_ratio": 1.0},
    }
    deployments = [
        {"name": "bot-prod", "kind": "llm", "source": "registry:bot:prod"},
        {"name": "bot-next", "kind": "llm", "source": "registry:bot:2"},  # int8, as its config.json says
    ]
    route = {"name": "bot", "policy": "canary", "sticky_by": "none", "canary": canary}
    with loop.server("serve-canary", loop.base_config(deployments, routes=[route])) as url:
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        deadline = time.monotonic() + 300
        questions = itertools.cycle(case["prompt"] for case in EVAL_CASES)
        while True:
            plan = httpx.get(f"{url}/admin/rollouts", headers=admin).json()["rollouts"]["bot"]
            if plan["status"] != "running" or time.monotonic() > deadline:
                break
            chat(url, "bot", next(questions))
        print(f"  rollout {plan['status']}: {plan['reason']}")
    if plan["status"] != "completed":
        print("  the gate or the canary said no: prod stays on bot:1, nothing is published to the fleet")
        return {"scores": scores, "rollout": plan["status"]}

    answer = publish_to_edge(loop)
    return {"scores": scores, "rollout": plan["status"], "edge_version": "2", "edge_answer": answer}


def publish_to_edge(loop: Loop) -> str:
    """Step 7; the edge's answer to a planted question."""
    step("7. publish bot:prod to the fleet over TUF; an edge agent installs it")
    repo, repo_keys = loop.workdir / "repo", loop.workdir / "repo-keys"
    loop.cli("registry", "repo-init", "--repo", str(repo), "--keys", str(repo_keys))
    loop.cli(
        "registry",
        "publish",
        "bot:prod",
        "--repo",
        str(repo),
        "--keys",
        str(repo_keys),
        "--label",
        "ring=canary",
    )
    registry_port, edge_port = free_port(), free_port()
    edge_home = loop.workdir / "device"
    with (
        loop.process("registry", "registry", "serve", "--repo", str(repo), "--port", str(registry_port)),
        loop.process(
            "edge",
            "edge",
            "--registry",
            f"http://127.0.0.1:{registry_port}",
            "--device-id",
            "robot-1",
            "--labels",
            "ring=canary",
            "--model",
            "bot",
            "--trusted-root",
            str(repo / "metadata" / "1.root.json"),
            "--pubkey",
            str(loop.keys / "inferline-signing.pub.pem"),
            "--home",
            str(edge_home),
            "--port",
            str(edge_port),
            "--poll-s",
            "1",
        ) as log,
    ):
        edge = f"http://127.0.0.1:{edge_port}"

        def installed() -> bool:
            try:
                return httpx.get(f"{edge}/edge/state", timeout=2).json().get("current_version") == "2"
            except (httpx.TransportError, ValueError):
                return False

        wait_until(installed, 300, log)
        answer = chat(edge, "bot", EVAL_CASES[1]["prompt"], key=None).json()["choices"][0]["message"][
            "content"
        ]
        print(f"  the edge serves bot:2: {EVAL_CASES[1]['prompt']} -> {answer!r}")
    return str(answer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", default="inferline-loop", help="everything is written here (emptied first)"
    )
    parser.add_argument("--steps", type=int, default=40, help="fine-tuning steps")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    # A stopped script (Ctrl-C, a timeout's SIGTERM) still stops the servers and the agent it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    summary = run(Loop(workdir, args.steps))
    print(f"\n{json.dumps(summary)}\ndone in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
