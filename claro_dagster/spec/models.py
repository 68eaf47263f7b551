"""Typed models of the project spec (`claro.yaml`).

These models are the contract every other layer reads: the store derives its tables from
`CatalogueSpec`, operations read `AttributeSpec` rules, factories read pipelines and sources.
Unknown keys are errors (`extra="forbid"`); the loader turns pydantic errors into messages
that name the file, line and key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

AttributeType = Literal["text", "number", "image", "date", "enum", "reference"]
ATTRIBUTE_TYPES: tuple[str, ...] = ("text", "number", "image", "date", "enum", "reference")


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Thresholds(SpecModel):
    """Confidence gates (0-100).

    confidence >= auto_apply -> applied; review <= confidence < auto_apply -> queued for review;
    confidence < reject -> rejected with the reason logged; reject <= confidence < review ->
    kept as a `suggested` change a reviewer may still approve (only when reject < review).
    """

    auto_apply: float = Field(90, ge=0, le=100)
    review: float = Field(50, ge=0, le=100)
    reject: float = Field(50, ge=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not (self.reject <= self.review <= self.auto_apply):
            raise ValueError(
                f"thresholds must satisfy reject <= review <= auto_apply, got reject={self.reject}, "
                f"review={self.review}, auto_apply={self.auto_apply}"
            )
        return self


class ThresholdOverride(SpecModel):
    """A partial override; unset keys fall back to the next level."""

    auto_apply: float | None = Field(None, ge=0, le=100)
    review: float | None = Field(None, ge=0, le=100)
    reject: float | None = Field(None, ge=0, le=100)


class ThresholdsSpec(SpecModel):
    """`thresholds:` section: defaults, then per operation, per attribute and per source overrides.

    Resolution order (most specific wins): source > attribute > operation > default.
    """

    default: Thresholds = Field(default_factory=Thresholds)
    operations: dict[str, ThresholdOverride] = Field(default_factory=dict)
    sources: dict[str, ThresholdOverride] = Field(default_factory=dict)


class AttributeSpec(SpecModel):
    type: AttributeType
    description: str | None = None
    required: bool = False
    default: str | float | int | bool | None = None
    # text / image / enum / reference
    regex: str | None = None
    min_length: int | None = Field(None, ge=0)
    max_length: int | None = Field(None, ge=0)
    # number
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    # date
    timezone: str | None = None
    # enum: canonical values, whether their order means something, synonyms canonical -> [synonym, ...]
    values: list[str] | None = None
    ordered: bool = False
    synonyms: dict[str, list[str]] = Field(default_factory=dict)
    # reference: the target catalogue (values are its keys) and the name of the reverse link
    target: str | None = None
    reverse: str | None = None
    # identifiers must stay text (leading zeros, no scientific notation); gtin adds check digits
    identifier: bool = False
    format: Literal["gtin", "url", "email"] | None = None
    # text cleaning
    strip_html: bool = False
    casing: Literal["upper", "lower", "title", "sentence"] | None = None
    importance: float = Field(1.0, ge=0)
    reviewers: list[str] = Field(default_factory=list)
    thresholds: ThresholdOverride | None = None
    aliases: list[str] = Field(default_factory=list, description="column names suppliers use for it")

    @field_validator("unit", "casing", mode="before")
    @classmethod
    def _none_word(cls, value: object) -> object:
        # YAML's null is `null`/`~`; people naturally write `casing: none`, which means the same.
        return None if isinstance(value, str) and value.strip().lower() == "none" else value


class CatalogueSpec(SpecModel):
    key: str
    description: str | None = None
    attributes: dict[str, AttributeSpec]


class SourceSpec(SpecModel):
    catalogue: str
    kind: Literal["upload", "inbox", "s3"] = "upload"
    description: str | None = None
    # inbox
    path: str | None = None
    # s3
    bucket: str | None = None
    prefix: str = ""
    endpoint_url_env: str | None = None
    # files
    sheet: str | int | None = None
    encoding: str | None = None
    delimiter: str | None = None
    contact: str | None = None
    thresholds: ThresholdOverride | None = None
    # How far this source is trusted when it would replace a different value already in the catalogue
    # (filling an empty field always counts as 100). Below the gate's auto_apply, overwrites wait for review.
    overwrite_confidence: float = Field(100, ge=0, le=100)
    # An empty cell on a record that exists already: `ignore` keeps the stored value (a blank is no
    # information), `clear` clears it, a change with its reason that goes through the gate like any other.
    # A column the file lacks is never written, and defaults fill only new records, whatever this says.
    empty_cells: Literal["ignore", "clear"] = "ignore"


class RoutingRule(SpecModel):
    """Branch on outcome: who decides held-back changes, and where alerts go. Every condition given must hold."""

    confidence_below: float | None = Field(None, ge=0, le=100, description="changes scored under this")
    attributes: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list, description="alerts this rule routes, e.g. batch.halted")
    reviewers: list[str] = Field(default_factory=list, description="people or reviewer groups who decide")
    notify: str | None = Field(None, description="a Slack channel that gets matching alerts")

    def matches_change(self, confidence: float, attribute: str, source: str | None) -> bool:
        return ((self.confidence_below is None or confidence < self.confidence_below)
                and (not self.attributes or attribute in self.attributes)
                and (not self.sources or source in self.sources))


class PipelineTrigger(SpecModel):
    """Start this pipeline when another catalogue's operation completes (e.g. suppliers/records)."""

    catalogue: str
    operation: str = "records"


class PipelineSpec(SpecModel):
    catalogue: str
    sources: list[str] = Field(default_factory=list)
    error_budget: float = Field(0.05, ge=0, le=1, description="share of rows that may fail validation")
    destinations: list[str] = Field(default_factory=list)
    description: str | None = None
    # A batch whose publishing queued changes for review goes no further (destinations) until they are decided.
    review_checkpoint: bool = False
    routing: list[RoutingRule] = Field(default_factory=list)
    # A triggered pipeline: when `after` completes, run `operations` on this catalogue's records matching `filter`,
    # then its destinations.
    after: PipelineTrigger | None = None
    operations: list[Literal["validate", "analyse", "export"]] = Field(default_factory=list)
    filter: str | None = None


class ScheduleSpec(SpecModel):
    target: str = Field(description="an operation (`<catalogue>/<operation>`) or a pipeline name")
    every: Literal["hourly", "daily", "weekly"] | None = None
    cron: str | None = None
    timezone: str = "UTC"
    filter: str | None = None
    paused: bool = False


class ShopifyMetafield(SpecModel):
    """One product metafield filled from an attribute (`type` is a Shopify metafield type)."""

    namespace: str = Field(min_length=3, max_length=255)
    key: str = Field(min_length=2, max_length=64)
    type: str
    attribute: str


class ShopifyImages(SpecModel):
    """Image attributes, in the order the product's media should have, and the attribute holding alt text."""

    attributes: list[str] = Field(min_length=1)
    alt: str | None = None


class DestinationSpec(SpecModel):
    kind: Literal["s3", "postgres", "shopify", "amazon", "bigquery", "sheets", "webhook"]
    catalogue: str
    filter: str | None = None
    columns: list[str] | None = None
    # s3
    bucket: str | None = None
    prefix: str = ""
    format: Literal["csv", "jsonl", "parquet"] = "parquet"
    endpoint_url_env: str | None = None
    # postgres
    url_env: str | None = None
    table: str | None = None
    # shopify: where and how (environment variable names, never the values), then the mapping of attributes
    shop_url_env: str | None = Field(None, description="variable holding the shop's base URL, "
                                                       "e.g. https://example.myshopify.com")
    token_env: str | None = Field(None, description="variable holding the Admin API access token")
    api_version: str = Field("2025-01", pattern=r"^\d{4}-\d{2}$", description="Admin API version written to")
    group_by: str | None = Field(None, description="attribute grouping records into one product (e.g. a style "
                                                   "code); unset: one product per record")
    options: list[str] = Field(default_factory=list, description="attributes that become product options "
                                                                 "(at most three)")
    title: str | None = None
    description: str | None = None
    vendor: str | None = None
    product_type: str | None = None
    tags: str | None = None
    status: str | None = Field(None, description="attribute whose value is active, draft or archived")
    price: str | None = None
    compare_at_price: str | None = None
    sku: str | None = Field(None, description="attribute holding the variant SKU (default: the catalogue key)")
    barcode: str | None = None
    metafields: list[ShopifyMetafield] = Field(default_factory=list)
    images: ShopifyImages | None = None
    bulk_threshold: int = Field(250, ge=1, description="pushes of more products than this use a bulk operation")
    # sheets: a named range of a Google spreadsheet, pushed and pulled (a destination that is also a source); `columns`
    # are its columns (key first), `endpoint_url_env` may name the Sheets API base URL (tests: a local server)
    spreadsheet_id: str | None = Field(None, description="the id in the spreadsheet's URL (/d/<id>/edit)")
    named_range: str | None = Field(None, description="the named range synced (created on the first sync)")
    worksheet: str | None = Field(None, description="tab the named range is created on (default: the first)")
    credentials_env: str | None = Field(None, description="variable holding the path of the service account's "
                                                          "JSON key file")
    confidence: float | None = Field(None, ge=0, le=100, description="confidence of edits pulled from the sheet; "
                                                                     "unset: every edit waits for review")


class SlackRoute(SpecModel):
    channel: str
    catalogues: list[str] = Field(default_factory=list)
    operations: list[str] = Field(default_factory=list)
    pipelines: list[str] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    verbosity: Literal["summary", "per_record"] = "summary"


class WebhookSpec(SpecModel):
    url: str
    events: list[str]
    secret_env: str
    mode: Literal["per_change", "batched", "scheduled"] = "per_change"
    max_batch: int = 100
    max_wait_seconds: float = 30
    cron: str | None = None


class SlackCommandsSpec(SpecModel):
    """Who may use each `/claro` slash command: Slack user ids (`U…`, `W…`), user-group ids (`S…`, members
    looked up with the bot token, which needs the `usergroups:read` scope) or `"*"` for every member of the
    workspace. Nobody listed means nobody: a command is refused until the spec names who may use it.
    `help` is open to everyone."""

    run: list[str] = Field(default_factory=list, description="launch runs: pipelines, operations, exports, "
                                                             "destinations")
    status: list[str] = Field(default_factory=list, description="read how runs and batches are doing")
    review: list[str] = Field(default_factory=list, description="read the review queue's counts")


class NotificationsSpec(SpecModel):
    slack_token_env: str | None = None
    # Every Slack Web API call goes here: Slack's own, a Slack-compatible gateway, or a local test server.
    slack_api_url: str = Field("https://slack.com/api/", description="Slack Web API base URL")
    # The channels the bot has been invited to; when listed, every route must use one of them.
    channels: list[str] = Field(default_factory=list)
    slack: list[SlackRoute] = Field(default_factory=list)
    slack_commands: SlackCommandsSpec = Field(default_factory=SlackCommandsSpec)
    webhooks: dict[str, WebhookSpec] = Field(default_factory=dict)

    @field_validator("slack_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1].strip("/")) == 0:
            raise ValueError(f"{value!r} is not an http(s) URL; Slack's own is https://slack.com/api/")
        return value if value.endswith("/") else value + "/"


class RetentionSpec(SpecModel):
    """How long what only serves delivery and re-runs is kept; a daily schedule prunes what is older. `null`
    keeps it forever. History, provenance, change sets, review decisions and batch records are never pruned
    (rollback and `claro history` read them)."""

    webhook_deliveries_days: int | None = Field(30, ge=1, description="delivered webhook deliveries (failed "
                                                                          "and dead ones are kept)")
    events_days: int | None = Field(90, ge=1, description="outbox events every webhook subscription has "
                                                          "received")
    stage_files_days: int | None = Field(14, ge=1, description="stage outputs (Parquet) of published batches")
    batches_days: int | None = Field(90, ge=1, description="Dagster partitions of published batches")
    cron: str = Field("30 3 * * *", description="when the daily prune runs (UTC)")


class ProjectSpec(SpecModel):
    """The whole `claro.yaml`."""

    name: str = "claro"
    catalogues: dict[str, CatalogueSpec]
    thresholds: ThresholdsSpec = Field(default_factory=ThresholdsSpec)
    reviewers: dict[str, list[str]] = Field(default_factory=dict, description="reviewer groups")
    sources: dict[str, SourceSpec] = Field(default_factory=dict)
    pipelines: dict[str, PipelineSpec] = Field(default_factory=dict)
    schedules: dict[str, ScheduleSpec] = Field(default_factory=dict)
    destinations: dict[str, DestinationSpec] = Field(default_factory=dict)
    notifications: NotificationsSpec = Field(default_factory=NotificationsSpec)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)

    def alert_routes(self) -> list[SlackRoute]:
        """The Slack routes of `notifications`, plus one per pipeline routing rule that names a channel
        (e.g. validation failures from one supplier go to that supplier's channel)."""
        derived = [SlackRoute(channel=rule.notify, catalogues=[pipe.catalogue], pipelines=[name],
                              sources=rule.sources, events=rule.events or ["batch.halted", "run.failed"])
                   for name, pipe in self.pipelines.items() for rule in pipe.routing if rule.notify]
        return [*self.notifications.slack, *derived]

    def reviewers_for(self, catalogue: str, attribute: str, confidence: float, source: str | None) -> list[str] | None:
        """Reviewers the first matching routing rule assigns to a held-back change (None: no rule matched)."""
        for pipe in self.pipelines.values():
            if pipe.catalogue != catalogue or (source and pipe.sources and source not in pipe.sources):
                continue
            for rule in pipe.routing:
                if rule.reviewers and rule.matches_change(confidence, attribute, source):
                    return list(rule.reviewers)
        return None

    # Set by the loader, never read from YAML: where the spec came from, so relative paths
    # (inbox folders, the project home) resolve against the spec's folder, not the cwd.
    _spec_path: Path | None = PrivateAttr(default=None)

    @property
    def spec_path(self) -> Path | None:
        """Absolute path of the loaded `claro.yaml` (None for a spec built in Python)."""
        return self._spec_path

    @property
    def base_dir(self) -> Path:
        """Folder relative paths in the spec are resolved against (the spec's folder, else the cwd)."""
        return self._spec_path.parent if self._spec_path else Path.cwd()

    def thresholds_for(self, operation: str, attribute: AttributeSpec | None = None,
                       source: str | None = None) -> Thresholds:
        """Resolve the gate for one change: default < operation < attribute < source."""
        merged = self.thresholds.default.model_dump()
        layers = [self.thresholds.operations.get(operation),
                  attribute.thresholds if attribute else None,
                  self.thresholds.sources.get(source) if source else None]
        if source and source in self.sources:
            layers.append(self.sources[source].thresholds)
        for layer in layers:
            if layer is not None:
                merged.update({k: v for k, v in layer.model_dump().items() if v is not None})
        return Thresholds(**merged)
