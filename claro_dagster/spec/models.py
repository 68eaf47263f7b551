"""Typed models of the project spec (`claro.yaml`).

These models are the contract every other layer reads: the store derives its tables from
`CatalogueSpec`, operations read `AttributeSpec` rules, factories read pipelines and sources.
Unknown keys are errors (`extra="forbid"`); the loader turns pydantic errors into messages
that name the file, line and key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

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


class EnrichMethodSpec(SpecModel):
    """One way to fill an attribute's missing or weak values (operations/enrich.py); an attribute's methods are
    tried in order and the first that proposes a value wins (the others still count as agreement)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    method: Literal["rules", "lookup", "similar", "model"]
    # How far this method is trusted (0-100): the starting point of its confidence (default per method:
    # rules 80, lookup 95 through a reference / 90 from a file, similar 75, model 70).
    reliability: float | None = Field(None, ge=0, le=100)
    # rules: the attributes whose text is searched (e.g. [title, description]), earlier ones trusted more
    from_: list[str] = Field(default_factory=list, alias="from")
    # rules: regular expressions tried in order; the named group `value` (else the whole match) is the value.
    # Unset: enum attributes match their values and synonyms as words; number attributes with a unit match
    # a number followed by any unit of the same dimension (converted with pint).
    patterns: list[str] = Field(default_factory=list)
    # lookup through a reference: the reference attribute of this catalogue whose target record holds `field`
    via: str | None = None
    # lookup: the attribute of the referenced catalogue (via), or the column of the reference file (file)
    field: str | None = None
    # lookup from a reference file (CSV, relative to the spec's folder): `key` is the attribute of this
    # catalogue looked up, in the file's `key_column`
    file: str | None = None
    key: str | None = None
    key_column: str | None = None
    # lookup by prefix (e.g. GTIN company prefixes): the key's prefixes of these lengths are looked up, longest first
    prefix_lengths: list[int] = Field(default_factory=list)
    # similar: records near-identical in these attributes (rapidfuzz similarity >= min_similarity on each)
    match_on: list[str] = Field(default_factory=lambda: ["title", "brand"])
    min_similarity: float = Field(90, ge=0, le=100)
    min_records: int = Field(2, ge=1, description="at least this many near-identical records must agree")
    # model: an OpenAI-compatible chat-completions API; the variables hold its base URL (e.g.
    # https://api.openai.com/v1) and API key; `prompt` is a template with {attribute} placeholders of the record
    url_env: str | None = None
    api_key_env: str | None = None
    model: str | None = None
    prompt: str | None = None
    timeout_seconds: float = Field(30, gt=0)
    max_attempts: int = Field(3, ge=1, le=10)


class EnrichSpec(SpecModel):
    """`enrich:` of an attribute: how Bulk Enrichment fills it (`claro enrich`, `<catalogue>/enrich`)."""

    # A stored value whose provenance confidence is under this counts as weak and is enriched too (unset: only
    # missing values are filled).
    weak_below: float | None = Field(None, ge=0, le=100)
    methods: list[EnrichMethodSpec] = Field(default_factory=list)


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
    enrich: EnrichSpec | None = None  # how Bulk Enrichment fills missing or weak values

    @field_validator("unit", "casing", mode="before")
    @classmethod
    def _none_word(cls, value: object) -> object:
        # YAML's null is `null`/`~`; people naturally write `casing: none`, which means the same.
        return None if isinstance(value, str) and value.strip().lower() == "none" else value


class DedupeBlockingSpec(SpecModel):
    """Which attributes find candidate pairs (`<catalogue>/dedupe`); only pairs sharing one are scored. Unset keys
    are read from the catalogue: the attribute with `format: gtin`, and those named `mpn`, `brand` and `title`."""

    gtin: str | None = None  # same GTIN (digits, leading zeros ignored)
    mpn: str | None = None  # same manufacturer part number (letters and digits, case ignored)
    brand: str | None = None  # same brand and similar title tokens (with `title`)
    title: str | None = None


class DedupeSpec(SpecModel):
    """`dedupe:` of a catalogue: Find Duplicates (operations/dedupe.py). Candidate pairs from blocking are scored
    on `attributes` (attribute -> weight; the weighted mean of per-field similarity over the fields both records
    have, 0-100); pairs scoring at least `threshold` become merge proposals in the review queue."""

    attributes: dict[str, float] = Field(default_factory=dict, description="attribute -> weight (> 0)")
    threshold: float = Field(80, ge=0, le=100)
    blocking: DedupeBlockingSpec = Field(default_factory=DedupeBlockingSpec)
    # How an approved merge retires the duplicate: this attribute (e.g. status) is set to `retire_value` (e.g.
    # archived) through the change-set writer, so destinations archive it too; unset: the duplicate keeps its
    # values and is only marked merged (`claro duplicates list --status merged`).
    retire_attribute: str | None = None
    retire_value: str | None = None


class CatalogueSpec(SpecModel):
    key: str
    description: str | None = None
    attributes: dict[str, AttributeSpec]
    dedupe: DedupeSpec | None = None  # Find Duplicates settings; unset: defaults read from the attributes



# http: ----------------------------------------------------------------------------------------------------
class HttpAuthSpec(SpecModel):
    """How an HTTP connector (an http source, a rest destination) authenticates (resources/http_auth.py); every
    secret is named by an `_env` key (the variable holding it)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["bearer", "basic", "api_key", "oauth2_client_credentials"]
    token_env: str | None = None  # bearer
    username_env: str | None = None  # basic
    password_env: str | None = None
    key_env: str | None = None  # api_key: sent in a header or the query, under `name`
    in_: Literal["header", "query"] = Field("header", alias="in")
    name: str = "X-API-Key"
    client_id_env: str | None = None  # oauth2_client_credentials
    client_secret_env: str | None = None
    token_url: str | None = None
    token_url_env: str | None = None  # or the variable holding it
    scope: str | None = None


class HttpPaginateSpec(SpecModel):
    """How the next page is asked for; a pull stops at an empty or short page, a missing cursor/next link, or
    `max_pages` (an error: a feed that long is more likely a loop)."""

    style: Literal["none", "page", "offset", "cursor", "next_url", "link_header"] = "none"
    page_param: str = "page"
    start_page: int = 1
    offset_param: str = "offset"
    limit_param: str | None = "limit"  # page / offset: the page-size parameter (None: not sent)
    page_size: int = Field(100, gt=0)
    cursor_param: str = "cursor"
    cursor_path: str | None = None  # cursor: JMESPath of the next cursor in the JSON body
    next_url_path: str | None = None  # next_url: JMESPath of the next page's URL in the JSON body
    max_pages: int = Field(10_000, gt=0)


class HttpIncrementalSpec(SpecModel):
    """Pull only what changed: `param` carries the stored watermark; the max of `field` over a pull is stored
    (as the source's cursor) once its batch file is written."""

    field: str
    param: str | None = None  # None: only as the `{watermark}` placeholder of the URL
    initial: str | None = None


class HttpPullSpec(SpecModel):
    url: str = Field(description="placeholders: {page}, {offset}, {limit}, {cursor}, {watermark}")
    url_env: str | None = None  # a variable holding the URL's start (scheme://host[:port]) when `url` is a path
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str | int | float | bool] = Field(default_factory=dict)
    body: dict | list | None = None
    auth: HttpAuthSpec | None = None
    format: Literal["json", "csv", "xlsx", "xml"] = "json"
    records: str | None = Field(None, description="JSON: JMESPath of the record list; XML: element path")
    paginate: HttpPaginateSpec = Field(default_factory=HttpPaginateSpec)
    incremental: HttpIncrementalSpec | None = None
    # ETag / Last-Modified of the first page kept and sent back, so an unchanged feed costs one 304. Unset: only for
    # an unpaginated feed (a paged feed's first page says nothing about the others); true: also for a paged feed
    # whose server's validators cover the whole feed; false: never.
    conditional: bool | None = None
    # each record's page URL, as a column of the batch (left unmapped unless an attribute is meant to hold it)
    source_url_column: str | None = "_source_url"
    rate_limit: float | None = Field(None, gt=0, description="requests per second to the host")
    timeout_seconds: float = Field(30, gt=0)
    max_attempts: int = Field(5, ge=1)
    every: Literal["minutely", "quarter_hourly", "hourly", "daily", "weekly"] | None = None
    interval_seconds: int | None = Field(None, ge=30)
    cron: str | None = None  # pull at these times instead (checked every minute), in `timezone`
    timezone: str = "UTC"


# email: ---------------------------------------------------------------------------------------------------
class EmailReplySpec(SpecModel):
    """Where the summary reply to a mailed file's sender is sent from (SMTP)."""

    host: str
    port: int | None = Field(None, gt=0, lt=65536, description="465 with ssl, 587 with starttls, else 25")
    tls: Literal["ssl", "starttls", "none"] = "starttls"
    user_env: str | None = None  # unset: no login (a relay on this machine)
    password_env: str | None = None
    from_address: str


class EmailSourceSpec(SpecModel):
    """An IMAP mailbox whose mails' CSV / XLSX attachments (also inside a ZIP) become batches
    (resources/email_source.py). `tls: none` is for a server on this machine only."""

    host: str
    port: int | None = Field(None, gt=0, lt=65536, description="993 with ssl, else 143")
    tls: Literal["ssl", "starttls", "none"] = "ssl"
    ca_file: str | None = None  # a CA bundle to trust instead of the system's (a server with a company certificate)
    user_env: str
    password_env: str
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    quarantine_folder: str = "Quarantine"
    allowed_senders: list[str] = Field(default_factory=list, description="addresses or @domains")
    max_attachments: int = Field(20, ge=1, le=500, description="a mail with more is quarantined")
    max_attachment_mb: float = Field(25, gt=0)
    interval_seconds: int = Field(300, ge=30, description="how often the mailbox is polled")
    reply: EmailReplySpec | None = None  # set: each mailed file's sender gets its result by mail


class SourceSpec(SpecModel):
    catalogue: str
    kind: Literal["upload", "inbox", "s3", "drive", "bigquery", "scrape", "postgres", "supabase", "http",
                  "email"] = "upload"
    description: str | None = None
    # inbox
    path: str | None = None
    # s3
    bucket: str | None = None
    prefix: str = ""
    endpoint_url_env: str | None = None
    # drive: a folder (optionally in a shared drive) followed through the changes feed. `endpoint_url_env` names
    # the variable holding the API root (Google's when unset), `credentials_env` the service-account key file.
    folder_id: str | None = None
    drive_id: str | None = None
    credentials_env: str | None = None
    max_file_mb: float = Field(100, gt=0, description="larger files are refused, with the reason kept")
    # upload (the Supplier Portal, `claro serve`): `max_file_mb` (above) is also the upload size limit (an upload
    # over it is refused before it is stored in full). `supplier` is the key of the supplier this source speaks
    # for, named by the catalogue's reference attribute `supplier_attribute`: rows naming another supplier, and
    # rows for records whose stored supplier is another, are rejected (checked by the pipeline too); rows naming
    # none are given this one.
    supplier: str | None = None
    supplier_attribute: str = "supplier"
    # bigquery: a table (`dataset` + `table`) or a `query`, pulled incrementally by `watermark` (ties broken by
    # `key`); `credentials_env` (above) names the variable holding a service-account key file (unset: application
    # default credentials); `endpoint_url_env` (above) points the client at another endpoint (tests)
    project: str | None = None
    dataset: str | None = None
    table: str | None = None
    query: str | None = None
    key: str | None = Field(None, description="column identifying a row (the tie-breaker at the watermark)")
    watermark: str | None = Field(None, description="column that grows with every change (e.g. updated_at)")
    # scrape: pages from `urls`, a `url_template` filled from the catalogue's records matching `filter`, or a
    # `sitemap`; `extract` maps columns to schema.org Product fields (JSON-LD, microdata, OpenGraph), `selectors`
    # columns to CSS selectors (used where structured data gives nothing); robots.txt obeyed for `user_agent`,
    # `delay_seconds` between requests to a host; `allow_hosts` may be fetched even at private addresses
    urls: list[str] = Field(default_factory=list)
    url_template: str | None = None
    filter: str | None = None
    sitemap: str | None = None
    extract: dict[str, str] = Field(default_factory=dict)
    selectors: dict[str, str] = Field(default_factory=dict)
    user_agent: str | None = None
    delay_seconds: float = Field(1.0, ge=0)
    allow_hosts: list[str] = Field(default_factory=list)
    # postgres / supabase: a `table` (`name` or `schema.name`) or a `query` (above) of the database whose URL is in
    # `url_env` (Supabase: its database URL), pulled incrementally by `watermark` (ties broken by `key`, above) and
    # streamed `chunk_rows` at a time, at most `max_rows_per_pull` rows per batch (more wait for the next pull).
    # `soft_delete` names a column marking deleted rows (set: not NULL, not false): with `soft_delete_sets` (e.g.
    # {status: archived}) those columns are set on them so the record is archived through the gate; without it
    # they are left out of the batch and reported. A pull never deletes a catalogue record.
    url_env: str | None = None
    soft_delete: str | None = None
    soft_delete_sets: dict[str, str] = Field(default_factory=dict)
    chunk_rows: int = Field(10_000, gt=0, le=1_000_000)
    max_rows_per_pull: int = Field(100_000, gt=0)
    # http: a scheduled pull of an HTTP API (see HttpPullSpec)
    http: HttpPullSpec | None = None
    # email: a mailbox polled for mailed spreadsheets (see EmailSourceSpec)
    email: EmailSourceSpec | None = None
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
    operations: list[str] = Field(default_factory=list, description="changes proposed by these operations, "
                                                                    "e.g. enrich")
    events: list[str] = Field(default_factory=list, description="alerts this rule routes, e.g. batch.halted")
    reviewers: list[str] = Field(default_factory=list, description="people or reviewer groups who decide")
    notify: str | None = Field(None, description="a Slack channel that gets matching alerts")

    def matches_change(self, confidence: float, attribute: str, source: str | None,
                       operation: str | None = None) -> bool:
        return ((self.confidence_below is None or confidence < self.confidence_below)
                and (not self.attributes or attribute in self.attributes)
                and (not self.sources or source in self.sources)
                and (not self.operations or operation in self.operations))


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
    # A `batch_enriched` stage between batch_normalized and records: each batch's missing values are enriched
    # (the attributes' `enrich` methods) and published with it, through the `enrich` gate.
    batch_enrichment: bool = False
    routing: list[RoutingRule] = Field(default_factory=list)
    # A triggered pipeline: when `after` completes, run `operations` on this catalogue's records matching `filter`,
    # then its destinations.
    after: PipelineTrigger | None = None
    # validate or a schedulable operation (analyse, export, ...), or a monitor of this catalogue (`monitors:`);
    # `claro check` says which exist (spec/checks.py)
    operations: list[str] = Field(default_factory=list)
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


# Amazon attribute shapes (`AmazonAttribute.shape`): how catalogue values are laid out in Amazon's attribute structure.
AMAZON_SHAPES: tuple[str, ...] = ("text", "value", "offer", "money", "identifier", "image", "list", "quantity")
# The shape an Amazon attribute takes when the mapping gives just a catalogue attribute name; any other: `text`.
AMAZON_DEFAULT_SHAPES: dict[str, str] = {
    "purchasable_offer": "offer", "list_price": "money", "fulfillment_availability": "quantity",
    "externally_assigned_product_identifier": "identifier", "main_product_image_locator": "image",
    "bullet_point": "list",
}
AMAZON_IDENTIFIER_TYPES: tuple[str, ...] = ("ean", "gtin", "upc", "isbn")


class AmazonProductTypeFrom(SpecModel):
    """`product_type: {attribute: <attr>}`: each record's Amazon product type is the value of this attribute."""

    attribute: str


class AmazonAttribute(SpecModel):
    """One Amazon attribute filled from the catalogue, with its shape (each item also gets the marketplace id):

    text: [{value, language_tag}]; value: [{value}] (numbers, codes: no language tag);
    offer: [{currency, our_price: [{schedule: [{value_with_tax}]}]}]; money: [{currency, value_with_tax}];
    identifier: [{type, value}]; image: [{media_location}]; list: one {value, language_tag} per attribute of
    `attributes` (or per `separator`-split part of `attribute`); quantity: [{fulfillment_channel_code, quantity}].
    """

    attribute: str | None = Field(None, description="the catalogue attribute holding the value")
    attributes: list[str] = Field(default_factory=list, description="list shape: several attributes, one item "
                                                                    "each, in order (e.g. bullet points)")
    shape: Literal["text", "value", "offer", "money", "identifier", "image", "list", "quantity"] | None = Field(
        None, description="unset: the Amazon attribute's usual shape (AMAZON_DEFAULT_SHAPES), else text")
    type: Literal["ean", "gtin", "upc", "isbn"] = Field("ean", description="identifier shape: the identifier's "
                                                                           "type")
    separator: str | None = Field(None, description="list shape from one attribute: split its value on this")
    fulfillment_channel_code: str = Field("DEFAULT", description="quantity shape: DEFAULT is seller-fulfilled")

    @model_validator(mode="after")
    def _one_source(self) -> AmazonAttribute:
        if bool(self.attribute) == bool(self.attributes):
            raise ValueError("give either 'attribute' (one catalogue attribute) or 'attributes' (a list, for the "
                             "list shape), not both or neither")
        if self.attributes and self.shape not in (None, "list"):
            raise ValueError(f"'attributes' (several catalogue attributes) makes a list; shape {self.shape!r} "
                             "takes one 'attribute'")
        return self


def amazon_attribute(name: str, entry: str | AmazonAttribute) -> AmazonAttribute:
    """A mapping entry of an amazon destination with its shape resolved (a plain name: the usual shape)."""
    if isinstance(entry, str):
        entry = AmazonAttribute(attribute=entry)
    if entry.shape is None:
        usual = "image" if name.startswith("other_product_image_locator_") else AMAZON_DEFAULT_SHAPES.get(name)
        entry = entry.model_copy(update={"shape": "list" if entry.attributes else usual or "text"})
    return entry


class BigQueryPartition(SpecModel):
    """How a BigQuery table is partitioned: by a date attribute (`granularity`), by an integer range of a number
    attribute (`start`, `end`, `interval`), or by ingestion time (`ingestion_time: true`, with `granularity`)."""

    attribute: str | None = None
    granularity: Literal["DAY", "HOUR", "MONTH", "YEAR"] | None = None
    start: int | None = None
    end: int | None = None
    interval: int | None = Field(None, gt=0)
    ingestion_time: bool = False


class RestSuccessSpec(SpecModel):
    """What counts as success for a REST destination: one of `status`, and no error in the JSON body."""

    status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])
    error_path: str | None = Field("error", description="dotted path in the JSON answer that, when present and "
                                                        "not null/false/empty, is the record's error")
    ok_path: str | None = Field(None, description="dotted path that must equal ok_value")
    ok_value: Any = None


def rest_body_attributes(template: Any) -> set[str]:
    """The attribute names a rest destination's body template reads: leaf strings and `{attribute: name}`;
    `{value: ...}` and non-string leaves are literals."""
    if isinstance(template, str):
        return {template}
    if isinstance(template, dict):
        if set(template) == {"attribute"}:
            return {str(template["attribute"])}
        if set(template) == {"value"}:
            return set()
        return set().union(*(rest_body_attributes(v) for v in template.values()))
    if isinstance(template, list):
        return set().union(*(rest_body_attributes(v) for v in template))
    return set()


def url_placeholders(url: str) -> list[str]:
    """The `{attribute}` placeholders of a URL template."""
    import string

    return [name for _, name, _, _ in string.Formatter().parse(url) if name]


class DestinationSpec(SpecModel):
    kind: Literal["s3", "postgres", "shopify", "amazon", "bigquery", "sheets", "webhook", "supabase", "rest"]
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
    # bigquery: `project`.`dataset`.`table` (reuses `table` and `endpoint_url_env`); `credentials_env` names the
    # variable holding a service-account key file (unset: application default credentials)
    project: str | None = None
    dataset: str | None = None
    mode: Literal["append", "replace", "merge", "sql", "rest"] = Field(
        "merge", description="bigquery: append, replace or merge; supabase: sql or rest")
    partition_by: BigQueryPartition | None = None
    cluster_by: list[str] = Field(default_factory=list, description="up to four attributes")
    credentials_env: str | None = None
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
    product_type: str | AmazonProductTypeFrom | None = Field(
        None, description="shopify: the attribute holding the product type; amazon: a fixed Amazon product type "
                          "(`product_type: LUGGAGE`) or `{attribute: <attr>}` to read it from each record")
    tags: str | None = None
    status: str | None = Field(None, description="attribute whose value is active, draft or archived")
    price: str | None = None
    compare_at_price: str | None = None
    sku: str | None = Field(None, description="attribute holding the variant SKU (default: the catalogue key)")
    barcode: str | None = None
    metafields: list[ShopifyMetafield] = Field(default_factory=list)
    images: ShopifyImages | None = None
    bulk_threshold: int = Field(250, ge=1, description="pushes of more products (Shopify) or listings (Amazon) "
                                                       "than this use a bulk operation / a JSON_LISTINGS_FEED")
    # amazon: the seller and marketplaces, where (environment variable names, never the values), then the mapping
    # from Amazon attribute names to catalogue attributes. Reuses `endpoint_url_env` (the SP-API endpoint),
    # `filter`, `sku`, `status` (archived deletes the listing) and `bulk_threshold`.
    seller_id: str | None = Field(None, description="the selling partner id (merchant token) the listings belong to")
    marketplace_ids: list[str] = Field(default_factory=list, description="e.g. ATVPDKIKX0DER (amazon.com), "
                                                                         "A1F83G8C2ARO7P (amazon.co.uk)")
    client_id_env: str | None = Field(None, description="variable holding the SP-API application's LWA client id")
    client_secret_env: str | None = Field(None, description="variable holding the LWA client secret")
    refresh_token_env: str | None = Field(None, description="variable holding the seller's LWA refresh token")
    token_url_env: str | None = Field(None, description="variable holding the Login with Amazon token URL "
                                                        "(unset: Amazon's own)")
    language_tag: str | None = Field(None, pattern=r"^[a-z]{2}_[A-Z]{2}$", description="language of text "
                                                                                       "values, e.g. en_GB")
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$", description="currency of money values, e.g. GBP")
    attributes: dict[str, str | AmazonAttribute] = Field(
        default_factory=dict, description="Amazon attribute name -> a catalogue attribute (its usual shape) or "
                                          "{attribute, shape, ...} (see AmazonAttribute)")

    @model_validator(mode="after")
    def _product_type_from_attribute_is_amazon_only(self) -> DestinationSpec:
        if isinstance(self.product_type, AmazonProductTypeFrom) and self.kind != "amazon":
            raise ValueError(f"product_type {{attribute: ...}} is for amazon destinations; for {self.kind} "
                             "write the attribute's name (product_type: category)")
        return self
    # sheets: a named range of a Google spreadsheet, pushed and pulled (a destination that is also a source); `columns`
    # are its columns (key first), `credentials_env` (above) names the variable holding the path of the service
    # account's JSON key file, `endpoint_url_env` may name the Sheets API base URL (tests: a local server)
    spreadsheet_id: str | None = Field(None, description="the id in the spreadsheet's URL (/d/<id>/edit)")
    named_range: str | None = Field(None, description="the named range synced (created on the first sync)")
    worksheet: str | None = Field(None, description="tab the named range is created on (default: the first)")
    confidence: float | None = Field(None, ge=0, le=100, description="confidence of edits pulled from the sheet; "
                                                                     "unset: every edit waits for review")
    # supabase: `mode: sql` upserts through the database URL in `url_env` (as postgres); `mode: rest` through
    # PostgREST at `rest_url_env` (or `url_env` + /rest/v1) with the key in `api_key_env`. Reuses `table`.
    # rest: a custom REST endpoint (resources/rest_destination.py). Reuses `url_env` (optional base URL `url` is
    # joined to) and `batch_size`.
    rest_url_env: str | None = Field(None, description="supabase rest: variable holding the PostgREST URL "
                                                       "(e.g. https://xyz.supabase.co/rest/v1)")
    api_key_env: str | None = Field(None, description="supabase rest: variable holding the project's API key")
    batch_size: int = Field(500, ge=1, le=100_000, description="records per request (supabase rest, rest per batch)")
    url: str | None = Field(None, description="rest: URL template filled from the record, e.g. "
                                              "https://erp.example/api/items/{sku}")
    method: Literal["POST", "PUT", "PATCH"] = "PUT"
    per: Literal["record", "batch"] = "record"
    body: dict[str, Any] | None = Field(None, description="rest: the receiver's JSON; leaves are attribute names, "
                                                          "{attribute: name} or {value: literal}")
    auth: HttpAuthSpec | None = None
    success: RestSuccessSpec = Field(default_factory=lambda: RestSuccessSpec())


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
    # A batch still received or validated (or whose run still waits in Dagster's queue) this long after its last
    # step is stuck: announced once as `batch.stuck` (outbox and Slack) and counted by `claro_batches_stuck`.
    batch_stuck_after_seconds: int = Field(3600, description="age in seconds after which an unfinished batch "
                                                             "is stuck (alerted once as batch.stuck)")

    @field_validator("batch_stuck_after_seconds", mode="before")
    @classmethod
    def _stuck_after(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 60:
            raise ValueError(f"{value!r} is not an age in seconds: give a whole number of seconds, at least 60, "
                             "after which a batch still received, validated or queued is alerted as stuck "
                             "(default 3600, one hour)")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1].strip("/")) == 0:
            raise ValueError(f"{value!r} is not an http(s) URL; Slack's own is https://slack.com/api/")
        return value if value.endswith("/") else value + "/"


# monitors: ------------------------------------------------------------------------------------------------
class MonitorRuleSpec(SpecModel):
    """One rule of a price monitor; each detection it makes is a `monitor.drift` event (operations/monitor.py)."""

    kind: Literal["threshold", "absolute", "anomaly", "competitor_gap"]
    # threshold: an observed price moved more than `percent` % since the last observation of the same record and
    # source; competitor_gap: a matched competitor is cheaper than the catalogue price by more than `percent` %
    percent: float | None = Field(None, gt=0)
    # absolute: a condition over the record's attributes that is a detection when true, e.g. 'price < cost * 1.2'
    # (numbers, attribute names, + - * / %, comparisons, and/or/not; nothing else is evaluated)
    expression: str | None = None
    # anomaly: an observation whose robust z-score (median and MAD of that record's history from the same
    # source) exceeds `max_z`, once the history has `min_history` earlier observations
    max_z: float = Field(3.5, gt=0)
    min_history: int = Field(5, ge=2)


class PriceObserveSpec(SpecModel):
    """Where a price monitor reads observed prices; exactly one of `channel`, `file` or `source`."""

    # a marketplace destination (shopify, amazon, rest): the price its channel state holds, i.e. what the
    # channel last accepted for the record
    channel: str | None = None
    # a CSV of competitor listings, relative to the spec's folder: columns competitor, price and any of gtin, mpn,
    # name, brand, url, observed_at (ISO time; default: the file's modification time)
    file: str | None = None
    # a source of the spec of kind http (records are competitor listings, columns as for `file`, renamed by
    # `columns`) or scrape with a `url_template` (each page is the record's listing at that site; its `extract`
    # must give a `price` column)
    source: str | None = None
    columns: dict[str, str] = Field(default_factory=dict, description="http: listing field -> the record's column, "
                                                                      "e.g. {price: amount, gtin: ean}")
    name: str | None = None  # the source's name in the price history (default: the channel, file stem or source)
    competitor: str | None = None  # a scrape's competitor name (default: the source's name)


class MonitorMatchSpec(SpecModel):
    """The catalogue attributes competitor listings are matched by (GTIN, else MPN, else name plus brand); a key
    set to null is not used. Unset keys use the attribute of that name when the catalogue has it."""

    gtin: str | None = "gtin"
    mpn: str | None = "mpn"
    name: str | None = "title"
    brand: str | None = "brand"
    name_similarity: float = Field(90, ge=50, le=100, description="rapidfuzz token-sort ratio names must reach")


class DriftToleranceSpec(SpecModel):
    """How far a figure may fall below its baseline (the median over `baseline_runs` previous runs) unseen."""

    fill_rate: float = Field(0.05, ge=0, le=1, description="a field's fill rate, as a share (0.05 = 5 points)")
    score: float = Field(2.0, ge=0, le=100, description="the quality score, in points of 100")
    distribution: float = Field(0.2, ge=0, le=1, description="an enum attribute's value shares: total variation "
                                                              "distance from the previous run")
    new_values: bool = True  # a value of an enum attribute no previous run had is a drift


class MonitorSpec(SpecModel):
    """`monitors.<name>`: a schedulable asset `<catalogue>/<name>` (job `<catalogue>_<name>`)."""

    kind: Literal["price", "drift"]
    catalogue: str
    description: str | None = None
    filter: str | None = None  # only records matching this record filter are watched
    # price: the catalogue's price attribute, where observed prices come from, and the rules
    price: str | None = None
    observe: list[PriceObserveSpec] = Field(default_factory=list)
    rules: list[MonitorRuleSpec] = Field(default_factory=list)
    match: MonitorMatchSpec = Field(default_factory=MonitorMatchSpec)
    # drift: tolerances, and how many previous runs make the baseline
    tolerance: DriftToleranceSpec = Field(default_factory=DriftToleranceSpec)
    baseline_runs: int = Field(1, ge=1, le=100)


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


class ApiClientSpec(SpecModel):
    """`api.clients.<token name>`: settings of one external system, by the name of its API token."""

    # The most confidence this client's proposals may claim (unset: `api.max_confidence`).
    max_confidence: float | None = Field(None, ge=0, le=100)


class ApiSpec(SpecModel):
    """`api:` the REST API of `claro serve` (`/api/v1`)."""

    # The most confidence a change proposed through the API may claim; a higher stated confidence is lowered to
    # this before the gate. Below `thresholds.default.auto_apply` (90), proposals wait for a reviewer.
    max_confidence: float = Field(80, ge=0, le=100)
    # Per external system (the API token's name): its own cap, e.g. a trusted ERP that may apply directly.
    clients: dict[str, ApiClientSpec] = Field(default_factory=dict)


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
    monitors: dict[str, MonitorSpec] = Field(default_factory=dict)
    api: ApiSpec = Field(default_factory=ApiSpec)  # the REST API (`/api/v1`): proposal confidence caps

    def alert_routes(self) -> list[SlackRoute]:
        """The Slack routes of `notifications`, plus one per pipeline routing rule that names a channel
        (e.g. validation failures from one supplier go to that supplier's channel)."""
        derived = [SlackRoute(channel=rule.notify, catalogues=[pipe.catalogue], pipelines=[name],
                              sources=rule.sources, events=rule.events or ["batch.halted", "run.failed"])
                   for name, pipe in self.pipelines.items() for rule in pipe.routing if rule.notify]
        return [*self.notifications.slack, *derived]

    def reviewers_for(self, catalogue: str, attribute: str, confidence: float, source: str | None,
                      operation: str | None = None) -> list[str] | None:
        """Reviewers the first matching routing rule assigns to a held-back change (None: no rule matched)."""
        rule = self.routing_rule_for(catalogue, attribute, confidence, source, operation, lambda r: bool(r.reviewers))
        return list(rule.reviewers) if rule is not None else None

    def routing_rule_for(self, catalogue: str, attribute: str, confidence: float, source: str | None,
                         operation: str | None = None, wanted=lambda rule: True) -> RoutingRule | None:
        """The first routing rule (of the catalogue's pipelines, `wanted` ones only) matching a held-back change;
        rules naming `operations` are tried first, so an operation's own rule wins over a general one."""
        rules = [rule for pipe in self.pipelines.values()
                 if pipe.catalogue == catalogue and not (source and pipe.sources and source not in pipe.sources)
                 for rule in pipe.routing if wanted(rule)]
        for rule in sorted(rules, key=lambda r: not r.operations):  # stable: spec order within each group
            if rule.matches_change(confidence, attribute, source, operation):
                return rule
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
