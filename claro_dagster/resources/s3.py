"""S3 connector: incremental listing for inbound sensors and versioned snapshots for outbound exports.

`S3Connection` is a `dg.ConfigurableResource` on top of dagster-aws's `S3Resource`, so the endpoint
can point at any S3-compatible server (a moto server in tests: `S3Connection(endpoint_url=...)`; in
a project, `endpoint_url=dg.EnvVar(spec.endpoint_url_env)`).

## Incremental listing (`list_since` and `S3Cursor`)

S3 lists keys in key order, never in time order, so "everything newer than the last object I saw"
cannot be read off the front of a listing. Instead the listing runs in *passes*:

* A pass is one full listing of the prefix, one page per call (`page_size` keys). The cursor keeps
  the resume key (`start_after`, S3's `StartAfter`) so a large bucket is paged across sensor ticks;
  a call never returns more than one page.
* On every page, an object is returned when its `LastModified` is at or after the watermark
  (`S3Cursor.last_modified`) and its `(key, ETag)` is not already in the cursor's memory
  (`S3Cursor.seen`, key -> [etag, last_modified]). Each returned object is remembered, so the same
  `(key, ETag)` is never returned twice while it is remembered, and a re-upload with new content
  (new ETag) is returned again. The objects of one call are sorted by `(last_modified, key)`.
* When a pass completes (a page that is not truncated), the watermark advances to
  `pass start - settle_seconds`, where the pass start is the server's clock (the `Date` header of
  the pass's first page), and remembered objects older than the new watermark are forgotten
  (they are filtered by the watermark from then on, so forgetting them cannot cause a repeat).

Why not advance the watermark to the newest object seen? Because an object written during a pass
onto a page that was already listed would then fall behind the watermark and be lost. With the
pass start as the watermark, that object is found by the next pass. `settle_seconds` (default
15 minutes) also covers objects that become visible after their `LastModified` (S3 stamps a
multipart upload with the time it was *initiated*) and coarse (1 s) `LastModified` resolution.
Guarantee: an object that is visible within `settle_seconds` of its `LastModified` is returned
exactly once per `(key, ETag)` while the cursor is kept. An identical re-upload after it has been
forgotten (new `LastModified`, same ETag) is returned again; sensors make that harmless by using the
ETag in the run key, which Dagster never launches twice.

Why `StartAfter` rather than the opaque `ContinuationToken`? It is stateless on the server, never
expires between ticks, survives a code-server restart and is readable in the sensor's cursor.

The cursor is JSON (`S3Cursor.to_json()` / `S3Cursor.from_json()`), small: its memory holds only
the objects modified in roughly the last `settle_seconds` plus one pass.
"""

from __future__ import annotations

import email.utils
import functools
import io
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import dagster as dg
import pandas as pd
from botocore.exceptions import ClientError

SnapshotFormat = Literal["csv", "jsonl", "parquet"]

_EXTENSIONS: dict[str, str] = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}
_CONTENT_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")
_UNSAFE_RUN_ID = re.compile(r"[^A-Za-z0-9_.-]+")
DEFAULT_SETTLE_SECONDS = 900.0


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return _utc(value).isoformat()


def _parse_iso(value: str) -> datetime:
    return _utc(datetime.fromisoformat(value))


@dataclass(frozen=True)
class S3Object:
    """One listed object. `etag` has its quotes stripped; `last_modified` is timezone-aware UTC."""

    key: str
    etag: str
    last_modified: datetime
    size: int
    bucket: str = ""

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name


@dataclass(frozen=True)
class S3Cursor:
    """Listing state for `S3Connection.list_since` (see the module docstring).

    last_modified: the watermark (ISO, UTC); objects modified before it are done.
    start_after: the last key listed in the current pass (S3 `StartAfter`); None between passes.
    pass_started: server time (ISO) at which the current pass started; None between passes.
    seen: key -> [etag, last_modified ISO] of returned objects not older than the watermark.
    """

    last_modified: str | None = None
    start_after: str | None = None
    pass_started: str | None = None
    seen: dict[str, list[str]] = field(default_factory=dict)

    @property
    def in_pass(self) -> bool:
        """True when the next call continues a pass rather than starting a new one."""
        return self.start_after is not None

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "last_modified": self.last_modified,
                "start_after": self.start_after,
                "pass_started": self.pass_started,
                "seen": self.seen,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> S3Cursor:
        """Parse a cursor; None or "" is the empty cursor (list from the beginning).

        Anything else that is not a cursor raises ValueError, so a corrupt cursor fails the tick
        visibly instead of silently listing the whole bucket again.
        """
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not an S3 cursor: {text[:80]!r}") from exc
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError(f"not an S3 cursor (version 1 expected): {text[:80]!r}")
        seen = data.get("seen") or {}
        return cls(
            last_modified=data.get("last_modified"),
            start_after=data.get("start_after"),
            pass_started=data.get("pass_started"),
            seen={str(k): [str(v[0]), str(v[1])] for k, v in seen.items()},
        )


class S3NotConfigured(RuntimeError):
    """An S3 connection whose endpoint variable is not set where it is used."""


class S3Connection(dg.ConfigurableResource):
    """An S3 (or S3-compatible) endpoint. Leave credentials unset to use the default AWS chain."""

    endpoint_url: str | None = None
    endpoint_url_env: str | None = None
    """The environment variable holding the endpoint, read when a client is made (a sensor tick or a run),
    so a source whose variable is not set fails where it is used, saying so, and nowhere else."""
    region_name: str | None = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    profile_name: str | None = None
    max_attempts: int = 5
    conditional_writes: bool = True
    """Use `If-None-Match: *` so a snapshot never overwrites an object. Servers that do not
    support conditional writes can turn this off; a HEAD check is done instead (racy)."""


    @classmethod
    def from_env(cls, endpoint_url_env: str | None = None, **kwargs: Any) -> S3Connection:
        """Resource for a spec's `endpoint_url_env` (resolved at run time via `dg.EnvVar`)."""
        if endpoint_url_env:
            kwargs["endpoint_url"] = dg.EnvVar(endpoint_url_env)
        return cls(**kwargs)

    def client(self) -> Any:
        """A boto3 S3 client built by dagster-aws's `S3Resource`.

        Clients are cached per configuration for the life of the process: building one costs
        0.5-1 s, and Dagster hands a sensor a fresh resource object on every tick. boto3 clients
        are thread-safe.
        """
        return _client_for(self.endpoint(), self.region_name, self.aws_access_key_id,
                           self.aws_secret_access_key, self.aws_session_token, self.profile_name,
                           self.max_attempts)

    def endpoint(self) -> str | None:
        """`endpoint_url`, else the value of `endpoint_url_env`; None means AWS itself."""
        if self.endpoint_url or not self.endpoint_url_env:
            return self.endpoint_url
        value = os.environ.get(self.endpoint_url_env)
        if not value:
            raise S3NotConfigured(f"the S3 endpoint variable {self.endpoint_url_env} is not set in this environment: "
                                  "set it to the endpoint's URL, or leave endpoint_url_env out of the spec to use "
                                  "AWS itself")
        return value

    # -- listing -------------------------------------------------------------------------------

    def list_since(
        self,
        bucket: str,
        prefix: str,
        cursor: S3Cursor | None,
        page_size: int = 1000,
        *,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    ) -> tuple[list[S3Object], S3Cursor]:
        """List one page; return the objects not yet returned (in (last_modified, key) order) and
        the cursor for the next call. See the module docstring for the guarantees."""
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be 1..1000, got {page_size}")
        cursor = cursor or S3Cursor()
        params: dict[str, Any] = {"Bucket": bucket, "MaxKeys": page_size}
        if prefix:
            params["Prefix"] = prefix
        if cursor.start_after is not None:
            params["StartAfter"] = cursor.start_after
        response = self.client().list_objects_v2(**params)

        pass_started = cursor.pass_started if cursor.in_pass else None
        if pass_started is None:
            pass_started = _iso(_server_time(response))
        watermark = _parse_iso(cursor.last_modified) if cursor.last_modified else None
        # Objects older than this fall behind the watermark when the pass completes, and a pass
        # lists each key once, so they need not be remembered (keeps the first pass's cursor small).
        remember_from = _parse_iso(pass_started) - timedelta(seconds=settle_seconds)
        seen = dict(cursor.seen)

        contents = response.get("Contents") or []
        fresh: list[S3Object] = []
        for item in contents:
            obj = S3Object(
                key=item["Key"],
                etag=str(item.get("ETag", "")).strip('"'),
                last_modified=_utc(item["LastModified"]),
                size=int(item.get("Size", 0)),
                bucket=bucket,
            )
            if watermark is not None and obj.last_modified < watermark:
                continue
            if seen.get(obj.key, [None])[0] == obj.etag:
                continue
            if obj.last_modified >= remember_from:
                seen[obj.key] = [obj.etag, _iso(obj.last_modified)]
            else:
                seen.pop(obj.key, None)
            fresh.append(obj)
        fresh.sort(key=lambda o: (o.last_modified, o.key))

        if response.get("IsTruncated") and contents:
            next_cursor = S3Cursor(
                last_modified=cursor.last_modified,
                start_after=contents[-1]["Key"],
                pass_started=pass_started,
                seen=seen,
            )
        else:
            candidate = remember_from
            if watermark is not None and watermark > candidate:
                candidate = watermark
            next_cursor = S3Cursor(
                last_modified=_iso(candidate),
                start_after=None,
                pass_started=None,
                seen={k: v for k, v in seen.items() if _parse_iso(v[1]) >= candidate},
            )
        return fresh, next_cursor

    # -- objects -------------------------------------------------------------------------------

    def download(self, bucket: str, key: str, dest: Path) -> Path:
        """Download an object to `dest` (a file path, or an existing folder to keep the key's name).

        boto3 writes to a temporary file beside `dest` and renames it, so `dest` is never partial.
        """
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / PurePosixPath(key).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.client().download_file(bucket, key, str(dest))
        return dest

    def ensure_bucket(self, bucket: str) -> bool:
        """Create the bucket if it does not exist; True when it was created."""
        client = self.client()
        try:
            client.head_bucket(Bucket=bucket)
            return False
        except ClientError as exc:
            if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise
        params: dict[str, Any] = {"Bucket": bucket}
        if self.region_name and self.region_name != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region_name}
        try:
            client.create_bucket(**params)
        except ClientError as exc:
            if _error_code(exc) in {"BucketAlreadyOwnedByYou"}:
                return False
            raise
        return True

    def put_snapshot(
        self,
        frame: pd.DataFrame,
        bucket: str,
        prefix: str,
        name: str,
        fmt: SnapshotFormat,
        run_id: str,
        *,
        ensure_bucket: bool = False,
    ) -> str:
        """Write `frame` to `<prefix>/<name>/<UTC timestamp>_<run_id>.<ext>` and return that key.

        The versioned object is written with `If-None-Match: *`, so an existing object is never
        overwritten (FileExistsError). `<prefix>/<name>/latest.json` is then (over)written to point
        at it: {"key", "uri", "format", "rows", "columns", "run_id", "written_at"}. The bucket is
        created only when `ensure_bucket=True`.
        """
        if fmt not in _EXTENSIONS:
            raise ValueError(f"unknown snapshot format {fmt!r}; expected one of {sorted(_EXTENSIONS)}")
        if not _SAFE_NAME.match(name):
            raise ValueError(f"snapshot name {name!r} must match {_SAFE_NAME.pattern}")
        if ensure_bucket:
            self.ensure_bucket(bucket)
        written_at = datetime.now(UTC)
        safe_run = _UNSAFE_RUN_ID.sub("_", run_id).strip("_") or "run"
        folder = snapshot_folder(prefix, name)
        key = f"{folder}/{written_at.strftime('%Y%m%dT%H%M%S%fZ')}_{safe_run}.{_EXTENSIONS[fmt]}"
        body = serialise_frame(frame, fmt)
        client = self.client()
        params: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "Body": body,
            "ContentType": _CONTENT_TYPES[fmt],
            "Metadata": {"claro-run-id": safe_run, "claro-rows": str(len(frame))},
        }
        if self.conditional_writes:
            params["IfNoneMatch"] = "*"
        elif self._exists(bucket, key):
            raise FileExistsError(f"s3://{bucket}/{key} already exists")
        try:
            client.put_object(**params)
        except ClientError as exc:
            if _error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                raise FileExistsError(f"s3://{bucket}/{key} already exists") from exc
            raise
        pointer = {
            "key": key,
            "uri": f"s3://{bucket}/{key}",
            "format": fmt,
            "rows": len(frame),
            "columns": [str(c) for c in frame.columns],
            "run_id": run_id,
            "written_at": written_at.isoformat(),
        }
        client.put_object(
            Bucket=bucket,
            Key=f"{folder}/latest.json",
            Body=json.dumps(pointer, indent=2).encode("utf-8"),
            ContentType="application/json",
        )
        return key

    def latest(self, bucket: str, prefix: str, name: str) -> dict[str, Any] | None:
        """The `latest.json` pointer of a snapshot series, or None if none was written."""
        try:
            body = self.client().get_object(Bucket=bucket, Key=f"{snapshot_folder(prefix, name)}/latest.json")
        except ClientError as exc:
            if _error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise
        return json.loads(body["Body"].read())

    def read_snapshot(self, bucket: str, key: str) -> pd.DataFrame:
        """Read a snapshot back into a DataFrame (format from the key's extension)."""
        data = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        ext = PurePosixPath(key).suffix.lstrip(".")
        if ext == "parquet":
            return pd.read_parquet(io.BytesIO(data))
        if ext == "jsonl":
            return pd.read_json(io.BytesIO(data), lines=True, dtype=False)
        if ext == "csv":
            return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        raise ValueError(f"cannot tell the format of {key!r}")

    def _exists(self, bucket: str, key: str) -> bool:
        try:
            self.client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise


def source_resource_key(source: str) -> str:
    """The key of an S3 source's own connection resource: each source reaches its own endpoint."""
    return "s3_source_" + re.sub(r"[^A-Za-z0-9_]", "_", source)


def snapshot_folder(prefix: str, name: str) -> str:
    """`<prefix>/<name>` without leading, trailing or doubled slashes."""
    parts = [p for p in prefix.split("/") if p] + [name]
    return "/".join(parts)


def serialise_frame(frame: pd.DataFrame, fmt: SnapshotFormat) -> bytes:
    """CSV (UTF-8, no index), JSON Lines (one object per row) or Parquet (pyarrow, no index)."""
    if fmt == "csv":
        return frame.to_csv(index=False).encode("utf-8")
    if fmt == "jsonl":
        if frame.empty:
            return b""
        text = frame.to_json(orient="records", lines=True, date_format="iso", force_ascii=False)
        return (text if text.endswith("\n") else text + "\n").encode("utf-8")
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False, engine="pyarrow")
        return buffer.getvalue()
    raise ValueError(f"unknown snapshot format {fmt!r}")


@functools.lru_cache(maxsize=16)
def _client_for(
    endpoint_url: str | None,
    region_name: str | None,
    aws_access_key_id: str | None,
    aws_secret_access_key: str | None,
    aws_session_token: str | None,
    profile_name: str | None,
    max_attempts: int,
) -> Any:
    from dagster_aws.s3 import S3Resource

    return S3Resource(
        endpoint_url=endpoint_url,
        region_name=region_name,
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        aws_session_token=aws_session_token,
        profile_name=profile_name,
        max_attempts=max_attempts,
    ).get_client()


def _server_time(response: dict[str, Any]) -> datetime:
    """The server's clock from the response's `Date` header (local UTC now if it is missing)."""
    header = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if header:
        try:
            return _utc(email.utils.parsedate_to_datetime(header))
        except (TypeError, ValueError):
            pass
    return datetime.now(UTC)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
