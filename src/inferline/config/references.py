"""The checks across a server config's sections: every name a route, tenant or team uses is defined, and
no name is defined twice. ServerConfig runs them as part of its own validation."""

from __future__ import annotations

from collections.abc import Sequence

from inferline.config.deployments import DeploymentConfig
from inferline.config.routing import RouteConfig
from inferline.config.streams import StreamConfig
from inferline.config.tenants import ApiKeyConfig, OrganisationConfig, TeamConfig, TenantConfig

Location = tuple[str | int, ...]


class ConfigReferenceError(ValueError):
    """A name in the config that refers to nothing or is used twice; `loc` is the field's path."""

    def __init__(self, loc: Location, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def check_references(
    deployments: Sequence[DeploymentConfig],
    routes: Sequence[RouteConfig],
    tenants: Sequence[TenantConfig],
    teams: Sequence[TeamConfig],
    organisations: Sequence[OrganisationConfig],
    streams: Sequence[StreamConfig] = (),
) -> None:
    """Raise ConfigReferenceError at the first name that points nowhere or is used twice."""
    names: dict[str, Location] = {}
    for i, deployment in enumerate(deployments):
        for j, name in enumerate([deployment.name, *deployment.aliases]):
            loc: Location = ("deployments", i, "name") if j == 0 else ("deployments", i, "aliases", j - 1)
            _unique(names, name, loc)
    deployment_names = {d.name for d in deployments}
    for i, route in enumerate(routes):
        _unique(names, route.name, ("routes", i, "name"))
        _check_route(route, ("routes", i), deployment_names)
    _check_streams(streams, names)
    _check_unique_people(tenants, teams, organisations)
    team_names = {t.name for t in teams}
    for i, tenant in enumerate(tenants):
        if tenant.team is not None and tenant.team not in team_names:
            raise ConfigReferenceError(
                ("tenants", i, "team"), f"team {tenant.team!r} is not defined in `teams`"
            )
    organisation_names = {o.name for o in organisations}
    for i, team in enumerate(teams):
        if team.organisation is not None and team.organisation not in organisation_names:
            raise ConfigReferenceError(
                ("teams", i, "organisation"),
                f"organisation {team.organisation!r} is not defined in `organisations`",
            )


def _check_streams(streams: Sequence[StreamConfig], models: dict[str, Location]) -> None:
    seen: dict[str, Location] = {}
    for i, stream in enumerate(streams):
        _unique(seen, stream.name, ("streams", i, "name"))
        if stream.model not in models:
            known = ", ".join(sorted(models))
            raise ConfigReferenceError(
                ("streams", i, "model"), f"model {stream.model!r} is no route or deployment; defined: {known}"
            )


def _check_unique_people(
    tenants: Sequence[TenantConfig], teams: Sequence[TeamConfig], organisations: Sequence[OrganisationConfig]
) -> None:
    """Budgets and quotas are kept by name: two tenants, teams, organisations or keys of one name would
    share them by accident."""
    entries: tuple[tuple[str, Sequence[TenantConfig | TeamConfig | OrganisationConfig]], ...] = (
        ("tenants", tenants),
        ("teams", teams),
        ("organisations", organisations),
    )
    for field_name, group in entries:
        seen: dict[str, Location] = {}
        for i, entry in enumerate(group):
            _unique(seen, entry.name, (field_name, i, "name"))
    key_names: dict[str, Location] = {}
    for i, tenant in enumerate(tenants):
        for j, key in enumerate(tenant.api_keys):
            if isinstance(key, ApiKeyConfig):
                _unique(key_names, key.name, ("tenants", i, "api_keys", j, "name"))


def _unique(seen: dict[str, Location], name: str, loc: Location) -> None:
    if name in seen:
        where = ".".join(str(p) for p in seen[name])
        raise ConfigReferenceError(loc, f"name {name!r} is already used at {where}; names must be unique")
    seen[name] = loc


def _check_route(route: RouteConfig, loc: Location, deployments: set[str]) -> None:
    fields: list[tuple[Location, str]] = [
        ((*loc, "deployments", i), n) for i, n in enumerate(route.deployments)
    ]
    fields += [((*loc, "weights", n), n) for n in route.weights]
    fields += [((*loc, "fallbacks", i), n) for i, n in enumerate(route.fallbacks)]
    if route.degrade_to is not None:
        fields.append(((*loc, "degrade_to"), route.degrade_to))
    if route.canary is not None:
        fields += [((*loc, "canary", "baseline"), route.canary.baseline)]
        fields += [((*loc, "canary", "candidate"), route.canary.candidate)]
    for field_loc, name in fields:
        if name not in deployments:
            known = ", ".join(sorted(deployments))
            raise ConfigReferenceError(field_loc, f"deployment {name!r} is not defined; defined: {known}")
    needs = {
        "canary": (route.canary is not None, "a canary route needs `canary: {baseline, candidate, percent}`"),
        "weighted": (bool(route.weights), "a weighted route needs `weights: {deployment: share}`"),
        "fixed": (len(route.deployments) == 1, "a fixed route needs exactly one deployment"),
        "rag": (
            route.rag is not None and bool(route.deployments),
            "a rag route needs `rag: {vector_store}` and deployments",
        ),
        "cascade": (
            len(route.deployments) >= 2,
            "a cascade route needs two or more deployments, cheapest first",
        ),
    }
    ok, message = needs.get(
        route.policy, (bool(route.deployments), f"a {route.policy} route needs deployments")
    )
    if not ok:
        raise ConfigReferenceError((*loc, "policy"), message)
    if route.policy == "weighted" and sum(route.weights.values()) <= 0:
        raise ConfigReferenceError((*loc, "weights"), "weights must add up to more than 0")
