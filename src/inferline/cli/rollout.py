"""`inferline rollout`: a running server's staged rollouts, read and steered through its admin API.

A plan starts with the server: a route whose canary has a `rollout` section begins (or resumes) its plan
when `inferline serve` starts. These commands show where each plan stands (`status`) and let an operator
`pause`, `resume` or `abort` one, as GET /admin/rollouts and POST /admin/rollouts/{route} do.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from inferline.errors import InferlineError

ACTIONS = ("pause", "resume", "abort")
_KEY_HINT = "pass --admin-key (one of the server's admin_api_keys) or set INFERLINE_ADMIN_KEY"


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The admin API's JSON answer; an InferlineError that says what to fix otherwise."""
    import httpx

    if not args.admin_key:
        raise InferlineError(f"the rollout API needs an admin key: {_KEY_HINT}")
    url = args.url.rstrip("/") + path
    headers = {"authorization": f"Bearer {args.admin_key}"}
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=args.timeout_s)
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise InferlineError(
            f"cannot reach the server at {args.url} ({error}): is `inferline serve` running there? "
            "pass its address with --url or INFERLINE_URL"
        ) from None
    if response.is_success:
        return response.json()
    message = _error_message(response)
    if response.status_code in (401, 403):
        message = f"{message}; {_KEY_HINT}"
    raise InferlineError(f"{method} {path} refused with HTTP {response.status_code}: {message}")


def _error_message(response: Any) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return str(response.text[:300])
    return str(error.get("message") if isinstance(error, dict) else error)


def _rollout_status(args: argparse.Namespace) -> int:
    plans: dict[str, dict[str, Any]] = _call(args, "GET", "/admin/rollouts")["rollouts"]
    if args.route is not None:
        if args.route not in plans:
            known = ", ".join(sorted(plans)) or "none"
            raise InferlineError(f"route {args.route!r} has no rollout plan (routes with one: {known})")
        plans = {args.route: plans[args.route]}
    if args.json:
        print(json.dumps(plans, indent=2, sort_keys=True))
        return 0
    if not plans:
        print(f"no rollout plans on {args.url}: give a route's canary a `rollout` section in its config")
        return 0
    _print_plans(plans, args.url)
    return 0


def _print_plans(plans: dict[str, dict[str, Any]], url: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"rollouts on {url}")
    for column in ("route", "status", "percent", "step", "samples (base/cand)", "candidate", "reason"):
        table.add_column(column)
    for route, plan in sorted(plans.items()):
        samples = plan["step_samples"]
        table.add_row(
            route,
            plan["status"],
            f"{plan['percent']:g}%",
            f"{plan['step_index'] + 1}/{len(plan['steps'])}",
            f"{samples['baseline']}/{samples['candidate']} of {plan['min_samples']}",
            plan["candidate"],
            plan["reason"],
        )
    Console(width=160).print(table)


def _rollout_act(args: argparse.Namespace) -> int:
    plan = _call(args, "POST", f"/admin/rollouts/{args.route}", {"action": args.action})
    print(f"rollout on route {args.route}: {plan['status']} at {plan['percent']:g}% ({plan['reason']})")
    return 0


def add_rollout_parser(commands: Any) -> None:
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--url",
        default=os.environ.get("INFERLINE_URL", "http://127.0.0.1:8000"),
        help="the server (default: $INFERLINE_URL, else http://127.0.0.1:8000)",
    )
    server.add_argument(
        "--admin-key",
        default=os.environ.get("INFERLINE_ADMIN_KEY"),
        help="one of the server's admin_api_keys (default: $INFERLINE_ADMIN_KEY)",
    )
    server.add_argument("--timeout-s", type=float, default=10.0, help="seconds to wait for the server")

    rollout = commands.add_parser("rollout", help="a server's staged rollouts: status, pause, resume, abort")
    sub = rollout.add_subparsers(dest="rollout_command", required=True)
    status = sub.add_parser("status", parents=[server], help="each plan's step, share, samples and reason")
    status.add_argument("route", nargs="?", default=None, help="only this route")
    status.add_argument("--json", action="store_true", help="the admin API's JSON, as is")
    status.set_defaults(handler=_rollout_status)
    helps = {
        "pause": "hold the plan at its step (the canary keeps its share)",
        "resume": "go on from the step; its dwell and samples count again from now",
        "abort": "send every request back to the baseline and end the plan",
    }
    for action in ACTIONS:
        command = sub.add_parser(action, parents=[server], help=helps[action])
        command.add_argument("route", help="the route whose plan to change")
        command.set_defaults(handler=_rollout_act, action=action)
