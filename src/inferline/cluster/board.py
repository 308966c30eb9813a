"""This process's request routers, by deployment name, for the admin API and the metrics.

Ray builds each router itself, from a copy of its class that it pickles by value; module-level state of
routing.py would be copied with it. This module is reached by reference (`board.ROUTERS`), so the
routers Ray builds and the admin API of the same process share one table."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferline.cluster.routing import PrefixAffinityRouter

ROUTERS: dict[str, PrefixAffinityRouter] = {}
