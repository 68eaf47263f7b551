"""Structured logs: one JSON object per line, with the run, batch and source a line belongs to.

Set `CLARO_LOG_FORMAT=json` (default `text`) and every process of the project logs JSON lines on stderr:
Dagster runs (the code location's `console` logger; a run's lines carry its run id, job, step, and the batch
and source from its tags), `claro serve` (also `claro serve --log-format json`) and the webhook delivery loop.
A log shipper (Loki, CloudWatch, Datadog) then indexes `run_id`, `batch` and `source` without parsing text.

Fields: `time` (UTC, ISO 8601), `level`, `logger`, `message`, and when known `run_id`, `job`, `step`,
`batch`, `source`, `event` (the Dagster event type), `error` (the traceback).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys

import dagster as dg

LOG_FORMAT_ENV = "CLARO_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
#: Run tags a line takes its batch and source from (the partition key of an onboarding run is its batch).
BATCH_TAGS = ("claro/batch", "dagster/partition")
SOURCE_TAG = "claro/source"


def log_format(value: str | None = None) -> str:
    """The log format asked for (`value`, else $CLARO_LOG_FORMAT, else text); ValueError naming the choices."""
    fmt = (value or os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} (from {'--log-format' if value else LOG_FORMAT_ENV}) is not one of "
                         f"{', '.join(LOG_FORMATS)}")
    return fmt


class JsonLineFormatter(logging.Formatter):
    """A log record as one line of JSON, with its run, batch and source when the record knows them: from
    Dagster's metadata on a run's records, or from `extra={"run_id": ..., "batch": ..., "source": ...}`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name}
        meta = getattr(record, "dagster_meta", None)
        if meta:
            tags = meta.get("job_tags") or {}
            event = meta.get("dagster_event")
            line.update(message=meta.get("orig_message") or record.getMessage(), run_id=meta.get("run_id"),
                        job=meta.get("job_name"), step=meta.get("step_key"),
                        batch=next((tags[t] for t in BATCH_TAGS if tags.get(t)), None), source=tags.get(SOURCE_TAG),
                        event=getattr(event, "event_type_value", None))
        else:
            line["message"] = record.getMessage()
            for name in ("run_id", "batch", "source"):
                if getattr(record, name, None) is not None:
                    line[name] = getattr(record, name)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in line.items() if v is not None}, default=str, ensure_ascii=False)


@dg.logger(config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
           description="JSON lines on stderr with run id, job, step, batch and source (CLARO_LOG_FORMAT=json).")
def json_run_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("claro", level=init_context.logger_config["log_level"].upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    logger.addHandler(handler)
    return logger


def run_loggers() -> dict[str, dg.LoggerDefinition] | None:
    """The code location's loggers: the JSON console logger when CLARO_LOG_FORMAT=json, else Dagster's own."""
    return {"console": json_run_logger} if log_format() == "json" else None


def configure_logging(value: str | None = None, level: int = logging.INFO) -> str:
    """Log this process's records (the web app, uvicorn, the webhook loop) in the chosen format on stderr."""
    fmt = log_format(value)
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLineFormatter())
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(level)
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's own handlers print text
            logging.getLogger(name).handlers[:] = []
            logging.getLogger(name).propagate = True
    return fmt
