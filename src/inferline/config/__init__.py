"""The configuration schema: every field typed, bounded and documented. One module per topic; every
public name is importable from here."""

from inferline.config.batch import BatchConfig, CarbonConfig
from inferline.config.deployments import (
    BatchedDeploymentBase,
    CircuitBreakerConfig,
    DeploymentBase,
    DeploymentConfig,
    DeploymentKind,
    EmbeddingDeploymentConfig,
    LLMDeploymentConfig,
    LocalDeploymentBase,
    LocalDeploymentConfig,
    OnnxDeploymentConfig,
    RemoteDeploymentConfig,
    default_deployments,
)
from inferline.config.engine import EngineConfig, SpeculativeConfig
from inferline.config.retrieval import CacheConfig, RagConfig, VectorStoresConfig
from inferline.config.routing import (
    CanaryConfig,
    CascadeConfig,
    RolloutPlanConfig,
    RouteConfig,
    RoutePolicy,
    SloConfig,
)
from inferline.config.server import OnLoadFailure, RegistryServingConfig, ResponsesConfig, ServerConfig
from inferline.config.telemetry import TelemetryConfig, TracingConfig
from inferline.config.tenants import (
    AdmissionConfig,
    ApiKeyConfig,
    BudgetConfig,
    OrganisationConfig,
    Period,
    PriorityName,
    QuotaConfig,
    TeamConfig,
    TenantConfig,
)

__all__ = [
    "AdmissionConfig",
    "ApiKeyConfig",
    "BatchConfig",
    "BatchedDeploymentBase",
    "BudgetConfig",
    "CacheConfig",
    "CanaryConfig",
    "CarbonConfig",
    "CascadeConfig",
    "CircuitBreakerConfig",
    "DeploymentBase",
    "DeploymentConfig",
    "DeploymentKind",
    "EmbeddingDeploymentConfig",
    "EngineConfig",
    "LLMDeploymentConfig",
    "LocalDeploymentBase",
    "LocalDeploymentConfig",
    "OnLoadFailure",
    "OnnxDeploymentConfig",
    "OrganisationConfig",
    "Period",
    "PriorityName",
    "QuotaConfig",
    "RagConfig",
    "RegistryServingConfig",
    "RemoteDeploymentConfig",
    "ResponsesConfig",
    "RolloutPlanConfig",
    "RouteConfig",
    "RoutePolicy",
    "ServerConfig",
    "SloConfig",
    "SpeculativeConfig",
    "TeamConfig",
    "TelemetryConfig",
    "TenantConfig",
    "TracingConfig",
    "VectorStoresConfig",
    "default_deployments",
]
