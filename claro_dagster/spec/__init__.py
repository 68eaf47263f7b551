"""The project spec (`claro.yaml`): typed models, the loader with line-numbered errors, checks."""

from .checks import SCHEDULABLE_OPERATIONS, cross_check, summarize
from .loader import DEMO_DIR, SpecError, SpecProblem, default_spec_path, load_spec
from .models import (
    ATTRIBUTE_TYPES,
    AttributeSpec,
    AttributeType,
    CatalogueSpec,
    DestinationSpec,
    NotificationsSpec,
    PipelineSpec,
    ProjectSpec,
    ScheduleSpec,
    SlackRoute,
    SourceSpec,
    SpecModel,
    ThresholdOverride,
    Thresholds,
    ThresholdsSpec,
    WebhookSpec,
)

__all__ = [
    "ATTRIBUTE_TYPES",
    "DEMO_DIR",
    "SCHEDULABLE_OPERATIONS",
    "AttributeSpec",
    "AttributeType",
    "CatalogueSpec",
    "DestinationSpec",
    "NotificationsSpec",
    "PipelineSpec",
    "ProjectSpec",
    "ScheduleSpec",
    "SlackRoute",
    "SourceSpec",
    "SpecError",
    "SpecModel",
    "SpecProblem",
    "ThresholdOverride",
    "Thresholds",
    "ThresholdsSpec",
    "WebhookSpec",
    "cross_check",
    "default_spec_path",
    "load_spec",
    "summarize",
]
