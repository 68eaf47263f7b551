"""A local BigQuery that checks every request against Google's BigQuery v2 discovery document.

`FakeBigQuery` runs a `RecordingServer` (loopback, one thread per connection) and answers as the BigQuery
REST API documents (cloud.google.com/bigquery/docs/reference/rest), for what the connector uses:

* every request is matched to a method of `tests/contracts/google/bigquery.v2.json` (HTTP method + path
  template under `/bigquery/v2/`, or the method's `mediaUpload` path under `/upload/bigquery/v2/` with an
  `uploadType` its protocols allow); its path and required query parameters must be present, every query
  parameter must be one the method or the API declares (typed: integer, boolean, enum), and the JSON body
  (or the metadata part of an upload) must match the method's request schema: no unknown property, the
  declared types, enum values. The check is written from the document, not per method. A request that fails
  it gets 400 and is listed in `contract_errors`, which every test asserts empty; every JSON answer the fake
  gives is held to the method's response schema the same way;
* datasets get/insert, tables get/insert/patch/delete (partitioning and clustering rules: a time partition
  column is DATE, TIMESTAMP or DATETIME (DATE not by HOUR), an integer-range column is INTEGER with
  start < end and interval > 0, at most four clustering columns of clusterable types; a patch may add
  NULLABLE columns but never change a type);
* jobs.insert: load jobs by multipart or resumable upload of a Parquet file (parsed with pyarrow; rows kept),
  honouring writeDisposition (WRITE_APPEND / WRITE_TRUNCATE / WRITE_EMPTY), createDisposition and
  schemaUpdateOptions (ALLOW_FIELD_ADDITION only with WRITE_APPEND, or WRITE_TRUNCATE on a partition
  decorator), checking each row against the table (REQUIRED, STRING maxLength) and failing the whole job on
  a bad row (nothing written); query jobs running SELECT (evaluated by SQLite on the kept rows, table names
  translated) and the MERGE the connector sends (BigQuery's semantics on the kept rows, including "a target
  row must match at most one source row"); 409 for a job id already used;
* jobs.get: a job is PENDING, then RUNNING, then DONE (with `errorResult`/`errors` when it failed) over
  successive reads; its effect lands when it becomes DONE; jobs.getQueryResults pages the result rows;
* an OAuth token endpoint (`/token`) for service-account keys made by `service_account_key()`: the JWT
  assertion is verified with the key's public half; `revoke()` makes it answer `invalid_grant`;
* `fail(method_id, status, reason, times, retry_after)` queues error answers (429 rateLimitExceeded,
  403 quotaExceeded, 503 backendError) for one method, in BigQuery's error format.

Everything received is kept: `requests` (method id, params, body), `uploads` (Parquet tables per job),
`tables[(project, dataset, table)]` (resource and rows), `jobs`.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import sqlite3
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from tests.http_fakes import RecordingServer, Request

CONTRACT = Path(__file__).parent / "contracts" / "google" / "bigquery.v2.json"
_CLUSTER_TYPES = {"STRING", "INTEGER", "INT64", "DATE", "DATETIME", "TIMESTAMP", "BOOLEAN", "BOOL", "NUMERIC",
                  "BIGNUMERIC", "GEOGRAPHY", "RANGE"}
_TIME_PARTITION_TYPES = {"DATE", "TIMESTAMP", "DATETIME"}
_ARROW_TYPES = {"STRING": ("string", "large_string"), "FLOAT": ("double", "float"), "FLOAT64": ("double",),
                "INTEGER": ("int64", "int32"), "INT64": ("int64",), "DATE": ("date32[day]",),
                "TIMESTAMP": ("timestamp[us, tz=UTC]", "timestamp[us]", "timestamp[ns, tz=UTC]"),
                "BOOLEAN": ("bool",)}


class BigQueryApiError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


# -- the discovery document --------------------------------------------------------------------------------


@dataclass
class Method:
    id: str
    http_method: str
    pattern: re.Pattern
    upload_pattern: re.Pattern | None
    upload_protocols: dict
    parameters: dict
    request_ref: str | None
    literal: int
    response_ref: str | None = None


class Contract:
    """The methods and schemas of a Google discovery document, and a generic request check."""

    def __init__(self, path: Path = CONTRACT):
        self.doc = json.loads(path.read_text())
        self.schemas = self.doc["schemas"]
        self.global_params = self.doc["parameters"]
        self.base = self.doc["basePath"]  # /bigquery/v2/
        self.methods: list[Method] = []
        for resource in self.doc["resources"].values():
            for m in resource.get("methods", {}).values():
                upload = m.get("mediaUpload", {}).get("protocols", {})
                simple = upload.get("simple", {}).get("path")
                self.methods.append(Method(
                    m["id"], m["httpMethod"], self._pattern(self.base + m["path"]),
                    self._pattern(simple) if simple else None, upload, m.get("parameters", {}),
                    m.get("request", {}).get("$ref"), len(re.sub(r"\{[^}]+\}", "", m["path"])),
                    m.get("response", {}).get("$ref")))
        self.methods.sort(key=lambda m: -m.literal)

    @staticmethod
    def _pattern(template: str) -> re.Pattern:
        out, pos = "", 0
        for match in re.finditer(r"\{\+?([A-Za-z0-9_]+)\}", template):
            out += re.escape(template[pos:match.start()]) + f"(?P<{match.group(1)}>[^/]+?)"
            pos = match.end()
        return re.compile(out + re.escape(template[pos:]) + "$")

    def match(self, http_method: str, path: str, query: dict[str, str]) -> tuple[Method, dict[str, str], bool]:
        """(method, path parameters, is upload) for a request, or ContractError."""
        upload = path.startswith("/upload/")
        # The bytes of a resumable session go by PUT to the session URI the upload's POST answered with (the
        # resumable upload protocol, not a method of its own): they belong to the method that opened it.
        session = upload and http_method == "PUT" and "upload_id" in query
        for m in self.methods:
            if session and not m.upload_protocols.get("resumable"):
                continue
            if not session and m.http_method != http_method:
                continue
            pattern = m.upload_pattern if upload else m.pattern
            found = pattern.match(path) if pattern else None
            if found:
                return m, found.groupdict(), upload
        raise ContractError(f"{http_method} {path} is no method of the BigQuery v2 discovery document")

    def _method(self, method_id: str) -> Method:
        return next(m for m in self.methods if m.id == method_id)

    def check_params(self, method: Method, path_params: dict[str, str], query: dict[str, str], upload: bool) -> None:
        for name, spec in method.parameters.items():
            if spec.get("required") and name not in path_params and name not in query:
                raise ContractError(f"{method.id}: required parameter {name!r} missing")
        for name, value in query.items():
            spec = method.parameters.get(name) or self.global_params.get(name)
            if spec is None and (method.id, name) in UNDECLARED_BUT_SENT:
                other, param = UNDECLARED_BUT_SENT[(method.id, name)]
                spec = self._method(other).parameters[param]
            if spec is None and upload and name == "upload_id":
                continue  # the resumable session's own parameter, handed out by the server
            if spec is None:
                raise ContractError(f"{method.id}: unknown query parameter {name!r}")
            if spec.get("location") == "path":
                raise ContractError(f"{method.id}: path parameter {name!r} sent in the query")
            self._check_scalar(f"{method.id}?{name}", value, spec, from_query=True)
        if upload:
            kind = query.get("uploadType")
            allowed = {"multipart", "media"} if method.upload_protocols.get("simple") else set()
            if method.upload_protocols.get("resumable"):
                allowed.add("resumable")
            if kind not in allowed:
                raise ContractError(f"{method.id}: uploadType {kind!r} not among {sorted(allowed)}")

    def check_body(self, method: Method, body: Any) -> None:
        if method.request_ref is None:
            if body not in (None, b"", {}):
                raise ContractError(f"{method.id} takes no request body")
            return
        self.check_value(method.request_ref, body, {"$ref": method.request_ref})

    def check_value(self, where: str, value: Any, schema: dict) -> None:
        if "$ref" in schema:
            schema = self.schemas[schema["$ref"]]
        kind = schema.get("type")
        if value is None:
            return
        if kind == "object":
            if not isinstance(value, dict):
                raise ContractError(f"{where}: expected an object, got {type(value).__name__}")
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            for name, item in value.items():
                if name in props:
                    self.check_value(f"{where}.{name}", item, props[name])
                elif extra is not None:
                    self.check_value(f"{where}[{name!r}]", item, extra)
                else:
                    raise ContractError(f"{where}: unknown field {name!r} (Invalid JSON payload received)")
        elif kind == "array":
            if not isinstance(value, list):
                raise ContractError(f"{where}: expected an array")
            for i, item in enumerate(value):
                self.check_value(f"{where}[{i}]", item, schema.get("items", {}))
        else:
            self._check_scalar(where, value, schema)

    @staticmethod
    def _check_scalar(where: str, value: Any, spec: dict, from_query: bool = False) -> None:
        kind, fmt = spec.get("type"), spec.get("format")
        if kind == "string" and fmt in ("int64", "uint64"):
            ok = isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value))
        elif kind == "string":
            ok = isinstance(value, str)
        elif kind == "integer":
            ok = isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value))
        elif kind == "number":
            ok = isinstance(value, int | float) or (from_query and _is_float(value))
        elif kind == "boolean":
            # query booleans are read case-insensitively by Google's front end; the SDK sends Python's `True`
            ok = isinstance(value, bool) or (from_query and str(value).lower() in ("true", "false"))
        elif kind == "any" or kind is None:
            ok = True
        else:
            ok = False
        if not ok:
            raise ContractError(f"{where}: {value!r} is not a {kind}{f' ({fmt})' if fmt else ''}")
        if "enum" in spec and value not in spec["enum"]:
            raise ContractError(f"{where}: {value!r} not one of {spec['enum']}")


def _is_float(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


class ContractError(Exception):
    pass


# Query parameters google-cloud-bigquery sends that the method's discovery entry does not declare, and the API
# accepts: the ONLY exceptions to the check, each with the documented parameter it mirrors.
UNDECLARED_BUT_SENT = {
    ("bigquery.jobs.get", "projection"): ("bigquery.jobs.list", "projection"),  # job.reload() asks for 'full'
}


# -- the fake ----------------------------------------------------------------------------------------------


@dataclass
class Job:
    resource: dict
    reads_until_done: int
    effect: Any  # a callable run when the job becomes DONE; returns statistics or raises BigQueryApiError
    state: str = "PENDING"
    result_rows: list[dict] = field(default_factory=list)
    result_schema: list[dict] = field(default_factory=list)


@dataclass
class Received:
    method_id: str
    params: dict
    body: Any


class FakeBigQuery:
    def __init__(self, *, reads_until_done: int = 2, contract: Contract | None = None):
        self.contract = contract or Contract()
        self.reads_until_done = reads_until_done
        self.server = RecordingServer(self._handle)
        self.url = self.server.url
        self.requests: list[Received] = []
        self.contract_errors: list[str] = []
        self.datasets: dict[tuple[str, str], dict] = {}
        self.tables: dict[tuple[str, str, str], dict] = {}
        self.jobs: dict[tuple[str, str], Job] = {}
        self.uploads: dict[str, pa.Table] = {}
        self.faults: dict[str, deque] = defaultdict(deque)
        self._resumable: dict[str, dict] = {}
        self._keys: dict[str, Any] = {}  # client_email -> public key
        self._tokens: dict[str, str] = {}  # access token -> client_email
        self.revoked: set[str] = set()
        self.lock = threading.RLock()
        self.server_seconds = 0.0  # time spent answering (parsing uploads, running jobs): benchmarks subtract it

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> FakeBigQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- test helpers ----------------------------------------------------------------------------------------

    def fail(self, method_id: str, status: int, reason: str, times: int = 1, retry_after: float | None = None):
        for _ in range(times):
            self.faults[method_id].append((status, reason, retry_after))

    def rows(self, project: str, dataset: str, table: str) -> list[dict]:
        """The table's rows, every column present (NULL for a column added after a row was written)."""
        entry = self.tables[(project, dataset, table)]
        names = [f["name"] for f in entry["resource"]["schema"]["fields"]]
        return [{n: row.get(n) for n in names} for row in entry["rows"]]

    def schema(self, project: str, dataset: str, table: str) -> dict[str, str]:
        return {f["name"]: f["type"] for f in self.tables[(project, dataset, table)]["resource"]["schema"]["fields"]}

    def calls(self, method_id: str) -> list[Received]:
        return [r for r in self.requests if r.method_id == method_id]

    def create_table(self, project: str, dataset: str, table: str, fields: list[dict], rows: list[dict]) -> None:
        """A table someone else made (a source to pull from): typed rows as Python values."""
        self.datasets.setdefault((project, dataset), {"datasetReference": {"projectId": project,
                                                                           "datasetId": dataset}})
        self.tables[(project, dataset, table)] = {"resource": self._table_resource(project, dataset, table, {
            "schema": {"fields": fields}}), "rows": list(rows)}

    def service_account_key(self, email: str = "claro@test-project.iam.gserviceaccount.com") -> dict:
        """A service-account key file (JSON) whose token_uri is this fake's token endpoint."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        self._keys[email] = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
        return {"type": "service_account", "project_id": "test-project", "private_key_id": uuid.uuid4().hex,
                "private_key": pem, "client_email": email, "client_id": "1",
                "token_uri": f"{self.url}/token", "auth_uri": f"{self.url}/auth"}

    def revoke(self, email: str = "claro@test-project.iam.gserviceaccount.com") -> None:
        self.revoked.add(email)

    # -- dispatch --------------------------------------------------------------------------------------------

    def _handle(self, req: Request):
        start = time.perf_counter()
        try:
            return self._answer(req)
        finally:
            self.server_seconds += time.perf_counter() - start

    def _answer(self, req: Request):
        parts = urlsplit(req.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if parts.path == "/token":
            return self._token(req)
        try:
            method, path_params, upload = self.contract.match(req.method, parts.path, query)
            self.contract.check_params(method, path_params, query, upload)
            body = self._body(method, req, query, upload)
        except ContractError as exc:
            self.contract_errors.append(str(exc))
            return _error(400, "invalid", f"contract: {exc}")
        self.requests.append(Received(method.id, {**path_params, **query}, body))
        with self.lock:
            auth = self._check_auth(req)
            if auth is not None:
                return auth
            if self.faults[method.id]:
                status, reason, retry_after = self.faults[method.id].popleft()
                reply = _error(status, reason, f"Exceeded rate limits: too many requests ({reason})")
                if retry_after is not None:
                    reply[1]["Retry-After"] = str(retry_after)
                return reply
            try:
                reply = self._serve(method.id, path_params, query, body, req)
            except BigQueryApiError as exc:
                return _error(exc.status, exc.reason, exc.message)
            if reply[0] == 200 and method.response_ref and isinstance(reply[2], dict):
                try:  # what the fake answers is held to the document too
                    self.contract.check_value(f"response of {method.id}", reply[2], {"$ref": method.response_ref})
                except ContractError as exc:
                    self.contract_errors.append(str(exc))
            return reply

    def _body(self, method: Method, req: Request, query: dict, upload: bool) -> Any:
        if upload and query.get("uploadType") == "multipart":
            meta, data = _multipart(req)
            self.contract.check_body(method, meta)
            return {"metadata": meta, "data": data}
        if upload and "upload_id" in query:  # a resumable session's bytes
            return {"data": req.body}
        body = json.loads(req.body) if req.body else None
        self.contract.check_body(method, body)
        return body

    def _token(self, req: Request):
        import google.auth.jwt

        form = dict(parse_qsl(req.body.decode()))
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or "assertion" not in form:
            return 400, {}, {"error": "unsupported_grant_type"}
        claims = google.auth.jwt.decode(form["assertion"], verify=False)
        email = claims.get("iss")
        if email not in self._keys:
            return 400, {}, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        # signed by the key's private half, for Google's token endpoint (the audience google-auth always uses)
        google.auth.jwt.decode(form["assertion"], certs=self._keys[email].decode(),
                               audience="https://oauth2.googleapis.com/token")
        if email in self.revoked:
            return 400, {}, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        token = uuid.uuid4().hex
        self._tokens[token] = email
        return 200, {}, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _check_auth(self, req: Request):
        header = req.headers.get("Authorization") or req.headers.get("authorization")
        if not header:
            return None  # anonymous (a local endpoint without credentials)
        token = header.removeprefix("Bearer ").strip()
        email = self._tokens.get(token)
        if email is None or email in self.revoked:
            return _error(401, "authError", "Request had invalid authentication credentials.")
        return None

    def _serve(self, method_id: str, p: dict, query: dict, body: Any, req: Request):
        if method_id == "bigquery.datasets.get":
            return 200, {}, self._dataset(p["projectId"], p["datasetId"])
        if method_id == "bigquery.datasets.insert":
            ref = body["datasetReference"]
            if (ref["projectId"], ref["datasetId"]) in self.datasets:
                raise BigQueryApiError(409, "duplicate", f"Already Exists: Dataset {ref['projectId']}:"
                                                         f"{ref['datasetId']}")
            resource = {**body, "id": f"{ref['projectId']}:{ref['datasetId']}", "kind": "bigquery#dataset"}
            self.datasets[(ref["projectId"], ref["datasetId"])] = resource
            return 200, {}, resource
        if method_id == "bigquery.tables.get":
            return 200, {}, self._table(p["projectId"], p["datasetId"], p["tableId"])["resource"]
        if method_id == "bigquery.tables.insert":
            return 200, {}, self._insert_table(p["projectId"], p["datasetId"], body)
        if method_id == "bigquery.tables.patch":
            return 200, {}, self._patch_table(p["projectId"], p["datasetId"], p["tableId"], body)
        if method_id == "bigquery.tables.delete":
            self._table(p["projectId"], p["datasetId"], p["tableId"])
            del self.tables[(p["projectId"], p["datasetId"], p["tableId"])]
            return 204, {}, b""
        if method_id == "bigquery.jobs.insert":
            return self._insert_job(p["projectId"], query, body, req)
        if method_id == "bigquery.jobs.get":
            return 200, {}, self._read_job(p["projectId"], p["jobId"]).resource
        if method_id == "bigquery.jobs.getQueryResults":
            return 200, {}, self._query_results(p["projectId"], p["jobId"], query)
        raise BigQueryApiError(501, "notImplemented", f"the fake does not serve {method_id}")

    # -- datasets and tables ---------------------------------------------------------------------------------

    def _dataset(self, project: str, dataset: str) -> dict:
        if (project, dataset) not in self.datasets:
            raise BigQueryApiError(404, "notFound", f"Not found: Dataset {project}:{dataset}")
        return self.datasets[(project, dataset)]

    def _table(self, project: str, dataset: str, table: str) -> dict:
        if (project, dataset, table) not in self.tables:
            raise BigQueryApiError(404, "notFound", f"Not found: Table {project}:{dataset}.{table}")
        return self.tables[(project, dataset, table)]

    def _table_resource(self, project: str, dataset: str, table: str, body: dict) -> dict:
        now = str(int(time.time() * 1000))
        return {**body, "kind": "bigquery#table", "id": f"{project}:{dataset}.{table}", "etag": uuid.uuid4().hex,
                "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
                "creationTime": now, "lastModifiedTime": now, "type": "TABLE",
                "schema": body.get("schema") or {"fields": []}}

    def _insert_table(self, project: str, dataset: str, body: dict) -> dict:
        self._dataset(project, dataset)
        table = body["tableReference"]["tableId"]
        if (project, dataset, table) in self.tables:
            raise BigQueryApiError(409, "duplicate", f"Already Exists: Table {project}:{dataset}.{table}")
        _check_layout(body)
        resource = self._table_resource(project, dataset, table, body)
        self.tables[(project, dataset, table)] = {"resource": resource, "rows": []}
        return resource

    def _patch_table(self, project: str, dataset: str, table: str, body: dict) -> dict:
        entry = self._table(project, dataset, table)
        resource = entry["resource"]
        if "schema" in body:
            old = {f["name"].lower(): f for f in resource["schema"]["fields"]}
            new = {f["name"].lower(): f for f in body["schema"]["fields"]}
            for name, f in old.items():
                if name not in new:
                    raise BigQueryApiError(400, "invalid", f"Provided Schema does not match Table "
                                                           f"{project}:{dataset}.{table}. Field {f['name']} is missing "
                                                           "in new schema")
                if _norm(new[name]["type"]) != _norm(f["type"]):
                    raise BigQueryApiError(400, "invalid", f"Provided Schema does not match Table "
                                                           f"{project}:{dataset}.{table}. Field {f['name']} has "
                                                           f"changed type from {f['type']} to {new[name]['type']}")
            for name, f in new.items():
                if name not in old and f.get("mode", "NULLABLE") == "REQUIRED":
                    raise BigQueryApiError(400, "invalid", f"Provided Schema does not match Table "
                                                           f"{project}:{dataset}.{table}. Cannot add required "
                                                           f"fields to an existing schema. (field: {f['name']})")
        resource.update({k: v for k, v in body.items() if k not in ("tableReference", "id", "kind")})
        resource["etag"] = uuid.uuid4().hex
        _check_layout(resource)
        return resource

    # -- jobs ------------------------------------------------------------------------------------------------

    def _insert_job(self, project: str, query: dict, body: dict, req: Request):
        upload = query.get("uploadType")
        if upload == "resumable" and "upload_id" not in query:
            self._new_job_id(project, body)  # a used id is refused before any byte is sent
            session = uuid.uuid4().hex
            self._resumable[session] = {"metadata": body, "data": b""}
            return 200, {"Location": f"{self.url}/upload/bigquery/v2/projects/{project}/jobs?uploadType=resumable"
                                     f"&upload_id={session}"}, b""
        if upload == "resumable":
            session = self._resumable[query["upload_id"]]
            session["data"] += body["data"]
            match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", req.headers.get("Content-Range", ""))
            if match and match.group(3) != "*" and int(match.group(2)) + 1 < int(match.group(3)):
                return 308, {"Range": f"bytes=0-{len(session['data']) - 1}"}, b""
            del self._resumable[query["upload_id"]]
            return 200, {}, self._start_job(project, session["metadata"], session["data"])
        if upload == "multipart":
            return 200, {}, self._start_job(project, body["metadata"], body["data"])
        return 200, {}, self._start_job(project, body, None)

    def _new_job_id(self, project: str, body: dict) -> str:
        job_id = (body.get("jobReference") or {}).get("jobId") or f"job_{uuid.uuid4().hex}"
        if (project, job_id) in self.jobs:
            raise BigQueryApiError(409, "duplicate", f"Already Exists: Job {project}:US.{job_id}")
        return job_id

    def _start_job(self, project: str, body: dict, data: bytes | None) -> dict:
        job_id = self._new_job_id(project, body)
        config = body.get("configuration", {})
        if "load" in config:
            if data is None:
                raise BigQueryApiError(400, "invalid", "a load job without a source URI needs an upload")
            effect = self._load_effect(project, job_id, config["load"], data)
        elif "query" in config:
            effect = self._query_effect(project, config["query"])
        else:
            raise BigQueryApiError(400, "invalid", "the fake runs load and query jobs only")
        resource = {"kind": "bigquery#job", "id": f"{project}:US.{job_id}", "etag": uuid.uuid4().hex,
                    "jobReference": {"projectId": project, "jobId": job_id, "location": "US"},
                    "configuration": config, "status": {"state": "PENDING"},
                    "statistics": {"creationTime": str(int(time.time() * 1000))}}
        job = Job(resource, self.reads_until_done, effect)
        self.jobs[(project, job_id)] = job
        return resource

    def _read_job(self, project: str, job_id: str) -> Job:
        job = self.jobs.get((project, job_id))
        if job is None:
            raise BigQueryApiError(404, "notFound", f"Not found: Job {project}:US.{job_id}")
        if job.state != "DONE":
            job.reads_until_done -= 1
            if job.reads_until_done > 0:
                job.state = "RUNNING"
            else:
                job.state = "DONE"
                try:
                    stats = job.effect(job) or {}
                    job.resource["statistics"].update(stats)
                except BigQueryApiError as exc:
                    error = {"reason": exc.reason, "message": exc.message}
                    job.resource["status"]["errorResult"] = error
                    job.resource["status"]["errors"] = getattr(exc, "errors", None) or [error]
            job.resource["status"]["state"] = job.state
        return job

    def _query_results(self, project: str, job_id: str, query: dict) -> dict:
        job = self._read_job(project, job_id)
        out = {"kind": "bigquery#getQueryResultsResponse", "jobReference": job.resource["jobReference"],
               "jobComplete": job.state == "DONE"}
        if job.state != "DONE" or "errorResult" in job.resource["status"]:
            return out
        if not job.result_schema:  # DML: no rows
            out["numDmlAffectedRows"] = job.resource["statistics"].get("query", {}).get("numDmlAffectedRows", "0")
            return out
        start = int(query.get("pageToken") or query.get("startIndex") or 0)
        size = int(query["maxResults"]) if "maxResults" in query else len(job.result_rows)
        page = job.result_rows[start:start + size]
        out.update({"schema": {"fields": job.result_schema}, "totalRows": str(len(job.result_rows)),
                    "rows": [{"f": [{"v": _wire(row[f["name"]], f["type"], query)} for f in job.result_schema]}
                             for row in page]})
        if start + size < len(job.result_rows):
            out["pageToken"] = str(start + size)
        if size == 0:
            out.pop("rows")
        return out

    # -- load ------------------------------------------------------------------------------------------------

    def _load_effect(self, project: str, job_id: str, load: dict, data: bytes):
        if load.get("sourceFormat") != "PARQUET":
            raise BigQueryApiError(400, "invalid", "the fake loads PARQUET only")
        table = pq.read_table(io.BytesIO(data))  # an unreadable file is refused at once, as BigQuery does
        self.uploads[job_id] = table

        def run(job: Job) -> dict:
            ref = load["destinationTable"]
            key = (ref["projectId"], ref["datasetId"], ref["tableId"].split("$")[0])
            write = load.get("writeDisposition", "WRITE_APPEND")
            options = load.get("schemaUpdateOptions", [])
            if options and not (write == "WRITE_APPEND" or (write == "WRITE_TRUNCATE" and "$" in ref["tableId"])):
                raise BigQueryApiError(400, "invalid", "Schema update options should only be specified with "
                                                       "WRITE_APPEND disposition, or with WRITE_TRUNCATE "
                                                       "disposition on a table partition.")
            fields = (load.get("schema") or {}).get("fields") or _fields_of(table)
            _check_file(table, fields)
            entry = self.tables.get(key)
            if entry is None:
                if load.get("createDisposition", "CREATE_IF_NEEDED") == "CREATE_NEVER":
                    raise BigQueryApiError(404, "notFound", f"Not found: Table {key[0]}:{key[1]}.{key[2]}")
                self._dataset(key[0], key[1])
                resource = self._table_resource(*key, {"schema": {"fields": fields}})
                for name in ("timePartitioning", "rangePartitioning", "clustering"):
                    if name in load:
                        resource[name] = load[name]
                _check_layout(resource)
                entry = self.tables[key] = {"resource": resource, "rows": []}
            have = {f["name"].lower(): f for f in entry["resource"]["schema"]["fields"]}
            new_fields = []
            for f in fields:
                old = have.get(f["name"].lower())
                if old is None:
                    new_fields.append(f)
                elif _norm(old["type"]) != _norm(f["type"]) and write != "WRITE_TRUNCATE":
                    raise BigQueryApiError(400, "invalid", f"Provided Schema does not match Table {key[0]}:"
                                                           f"{key[1]}.{key[2]}. Field {f['name']} has changed type "
                                                           f"from {old['type']} to {f['type']}")
            if new_fields and write == "WRITE_APPEND" and "ALLOW_FIELD_ADDITION" not in options:
                raise BigQueryApiError(400, "invalid", f"Provided Schema does not match Table {key[0]}:{key[1]}."
                                                       f"{key[2]}. Cannot add fields (field: {new_fields[0]['name']})")
            if write == "WRITE_EMPTY" and entry["rows"]:
                raise BigQueryApiError(409, "duplicate", f"Already Exists: Table {key[0]}:{key[1]}.{key[2]}")
            target_fields = fields if write == "WRITE_TRUNCATE" else \
                [*entry["resource"]["schema"]["fields"], *({**f, "mode": "NULLABLE"} for f in new_fields)]
            rows = table.to_pylist()
            _check_rows(rows, target_fields)
            if write == "WRITE_TRUNCATE":
                entry["resource"]["schema"] = {"fields": fields}
                entry["rows"] = rows
            else:
                entry["resource"]["schema"] = {"fields": target_fields}
                entry["rows"].extend(rows)
            entry["resource"]["numRows"] = str(len(entry["rows"]))
            return {"load": {"outputRows": str(len(rows)), "inputFiles": "1",
                             "inputFileBytes": str(len(data))}}

        return run

    # -- query -----------------------------------------------------------------------------------------------

    def _query_effect(self, project: str, config: dict):
        sql = config["query"]
        if config.get("useLegacySql", True) is not False:
            raise BigQueryApiError(400, "invalid", "the fake runs standard SQL only (useLegacySql: false)")
        params = {p["name"]: p for p in config.get("queryParameters", [])}

        def run(job: Job) -> dict:
            if sql.lstrip().upper().startswith("MERGE"):
                return self._merge(sql)
            if not sql.lstrip().upper().startswith("SELECT"):
                raise BigQueryApiError(400, "invalid", "the fake evaluates SELECT and the connector's MERGE only")
            job.result_schema, job.result_rows = self._select(sql, params)
            return {"query": {"totalBytesProcessed": "0", "statementType": "SELECT"}}

        return run

    _REF = re.compile(r"`([A-Za-z0-9_-]+)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_$]+)`")
    _MERGE = re.compile(
        r"MERGE (`[^`]+`) T USING (`[^`]+`) S ON T\.`(\w+)` = S\.`(\w+)`"
        r"(?: WHEN MATCHED THEN UPDATE SET (?P<sets>.+?))?"
        r" WHEN NOT MATCHED THEN INSERT \((?P<cols>[^)]*)\) VALUES \((?P<vals>[^)]*)\)$")

    def _ref(self, quoted: str) -> tuple[str, str, str]:
        match = self._REF.fullmatch(quoted)
        if not match:
            raise BigQueryApiError(400, "invalid", f"Syntax error: {quoted} is not a `project.dataset.table`")
        return match.group(1), match.group(2), match.group(3)

    def _merge(self, sql: str) -> dict:
        """BigQuery's MERGE ... WHEN MATCHED THEN UPDATE SET ... WHEN NOT MATCHED THEN INSERT, on the kept rows."""
        match = self._MERGE.fullmatch(sql.strip())
        if not match:
            raise BigQueryApiError(400, "invalid", f"the fake evaluates the connector's MERGE shape only: {sql}")
        target, source = self._table(*self._ref(match.group(1))), self._table(*self._ref(match.group(2)))
        tkey, skey = match.group(3), match.group(4)
        sets = [tuple(s.strip() for s in part.split(" = ")) for part in (match.group("sets") or "").split(", ")
                if part]
        cols = [c.strip().strip("`") for c in match.group("cols").split(",")]
        vals = [v.strip() for v in match.group("vals").split(",")]
        target_cols = {f["name"] for f in target["resource"]["schema"]["fields"]}
        for col in [c.strip("`") for c, _ in sets] + cols:
            if col not in target_cols:
                raise BigQueryApiError(400, "invalid", f"Name {col} not found inside T")
        source_rows = source["rows"]
        by_key: dict[Any, list[int]] = defaultdict(list)
        for i, row in enumerate(target["rows"]):
            by_key[row.get(tkey)].append(i)
        matched_once: set[int] = set()
        updated = inserted = 0
        new_rows = [dict(r) for r in target["rows"]]
        for srow in source_rows:
            hits = by_key.get(srow.get(skey), [])
            if hits:
                for i in hits:
                    if i in matched_once:
                        raise BigQueryApiError(400, "invalidQuery", "UPDATE/MERGE must match at most one source "
                                                                    "row for each target row")
                    matched_once.add(i)
                    if sets:
                        for col, val in sets:
                            new_rows[i][col.strip("`")] = srow.get(val.removeprefix("S.").strip("`"))
                        updated += 1
            else:
                new_rows.append({c: srow.get(v.removeprefix("S.").strip("`")) for c, v in zip(cols, vals, strict=True)})
                inserted += 1
        _check_rows(new_rows, target["resource"]["schema"]["fields"])
        target["rows"] = new_rows
        return {"query": {"statementType": "MERGE", "numDmlAffectedRows": str(updated + inserted),
                          "dmlStats": {"insertedRowCount": str(inserted), "updatedRowCount": str(updated),
                                       "deletedRowCount": "0"}}}

    def _select(self, sql: str, params: dict) -> tuple[list[dict], list[dict]]:
        """A SELECT evaluated by SQLite over the kept rows (DATE as ISO text, TIMESTAMP as microseconds)."""
        db = sqlite3.connect(":memory:")
        types: dict[str, str] = {}
        for quoted in set(self._REF.findall(sql)):
            entry = self._table(*quoted)
            fields = entry["resource"]["schema"]["fields"]
            name = ".".join(quoted)
            db.execute(f'CREATE TABLE "{name}" ({", ".join(chr(34) + f["name"] + chr(34) for f in fields)})')
            db.executemany(f'INSERT INTO "{name}" VALUES ({", ".join("?" for _ in fields)})',
                           [[_to_sql(r.get(f["name"]), f["type"]) for f in fields] for r in entry["rows"]])
            types.update({f["name"]: f["type"] for f in fields})
        text = self._REF.sub(lambda m: f'"{m.group(1)}.{m.group(2)}.{m.group(3)}"', sql)
        values = {name: _param(p) for name, p in params.items()}
        try:
            cursor = db.execute(text, values)
        except sqlite3.Error as exc:
            raise BigQueryApiError(400, "invalidQuery", f"Syntax error: {exc}") from exc
        names = [d[0] for d in cursor.description]
        schema = [{"name": n, "type": types.get(n, "STRING"), "mode": "NULLABLE"} for n in names]
        rows = [{n: _from_sql(v, types.get(n, "STRING")) for n, v in zip(names, row, strict=True)}
                for row in cursor.fetchall()]
        return schema, rows


# -- rules -------------------------------------------------------------------------------------------------


def _norm(kind: str) -> str:
    return {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN"}.get(kind.upper(), kind.upper())


def _check_layout(resource: dict) -> None:
    fields = {f["name"]: _norm(f["type"]) for f in resource.get("schema", {}).get("fields", [])}
    part = resource.get("timePartitioning")
    if part:
        if part.get("type") not in ("DAY", "HOUR", "MONTH", "YEAR"):
            raise BigQueryApiError(400, "invalid", f"Invalid time partitioning type {part.get('type')!r}")
        column = part.get("field")
        if column is not None:
            if column not in fields:
                raise BigQueryApiError(400, "invalid", f"The field specified for time partitioning can only be of "
                                                       f"type TIMESTAMP, DATE or DATETIME. The type found is: none "
                                                       f"({column} is not a column)")
            if fields[column] not in _TIME_PARTITION_TYPES:
                raise BigQueryApiError(400, "invalid", f"The field specified for time partitioning can only be of "
                                                       f"type TIMESTAMP, DATE or DATETIME. The type found is: "
                                                       f"{fields[column]}.")
            if fields[column] == "DATE" and part["type"] == "HOUR":
                raise BigQueryApiError(400, "invalid", "HOUR partitioning is not supported for a DATE column")
    rng = resource.get("rangePartitioning")
    if rng:
        column, spec = rng.get("field"), rng.get("range", {})
        if fields.get(column) != "INTEGER":
            raise BigQueryApiError(400, "invalid", f"Range partitioning column {column} must be of type INTEGER")
        start, end, interval = (int(spec.get(k, 0)) for k in ("start", "end", "interval"))
        if interval <= 0 or start >= end:
            raise BigQueryApiError(400, "invalid", "Range partitioning needs start < end and interval > 0")
    if part and rng:
        raise BigQueryApiError(400, "invalid", "A table can have time partitioning or range partitioning, not both")
    clustering = (resource.get("clustering") or {}).get("fields") or []
    if len(clustering) > 4:
        raise BigQueryApiError(400, "invalid", f"Too many clustering fields: {len(clustering)}, only 4 allowed")
    for column in clustering:
        if column not in fields:
            raise BigQueryApiError(400, "invalid", f"The field specified for clustering cannot be found: {column}")
        if fields[column] not in _CLUSTER_TYPES:
            raise BigQueryApiError(400, "invalid", f"Field {column} is of type {fields[column]} which is not "
                                                   "supported for clustering")


def _fields_of(table: pa.Table) -> list[dict]:
    names = {"string": "STRING", "large_string": "STRING", "double": "FLOAT", "int64": "INTEGER",
             "date32[day]": "DATE", "bool": "BOOLEAN"}
    return [{"name": f.name, "type": names.get(str(f.type), "STRING"), "mode": "NULLABLE"} for f in table.schema]


def _check_file(table: pa.Table, fields: list[dict]) -> None:
    """The Parquet file's columns against the schema the job gives: present and of a matching physical type."""
    file_types = {f.name: str(f.type) for f in table.schema}
    for f in fields:
        if f["name"] not in file_types:
            if f.get("mode") == "REQUIRED":
                raise BigQueryApiError(400, "invalid", f"Error while reading data, error message: Parquet file has "
                                                       f"no column {f['name']}, which is REQUIRED")
            continue
        if file_types[f["name"]] not in _ARROW_TYPES.get(_norm(f["type"]), ()):
            raise BigQueryApiError(400, "invalid", f"Error while reading data, error message: Parquet column "
                                                   f"'{f['name']}' has type {file_types[f['name']]} which does not "
                                                   f"match the target type {f['type']}")


def _check_rows(rows: list[dict], fields: list[dict]) -> None:
    """Every row against the table's columns; the first bad row fails the job (nothing is written)."""
    errors = []
    for n, row in enumerate(rows, start=1):
        for f in fields:
            value = row.get(f["name"])
            if value is None and f.get("mode") == "REQUIRED":
                errors.append(f"Error while reading data, error message: Required field {f['name']} cannot be null "
                              f"in row {n}")
            elif isinstance(value, str) and f.get("maxLength") and len(value) > int(f["maxLength"]):
                errors.append(f"Error while reading data, error message: Field {f['name']}: STRING("
                              f"{f['maxLength']}) has maximum length {f['maxLength']} but got a value with length "
                              f"{len(value)} in row {n}")
    if errors:
        exc = BigQueryApiError(400, "invalid", errors[0])
        exc.errors = [{"reason": "invalid", "message": e} for e in errors[:5]]
        raise exc


def _to_sql(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if _norm(kind) == "TIMESTAMP":
        return int(value.timestamp() * 1_000_000) if isinstance(value, dt.datetime) else value
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _from_sql(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if _norm(kind) == "TIMESTAMP":
        return dt.datetime.fromtimestamp(value / 1_000_000, dt.UTC)
    if _norm(kind) == "DATE":
        return dt.date.fromisoformat(value)
    return value


def _param(p: dict) -> Any:
    kind, value = p["parameterType"]["type"], p["parameterValue"].get("value")
    if value is None:
        return None
    if kind == "TIMESTAMP":
        stamp = dt.datetime.fromisoformat(value.replace(" ", "T"))
        return int(stamp.replace(tzinfo=stamp.tzinfo or dt.UTC).timestamp() * 1_000_000)
    if kind in ("INT64", "INTEGER"):
        return int(value)
    if kind in ("FLOAT64", "FLOAT"):
        return float(value)
    return value


def _wire(value: Any, kind: str, query: dict) -> Any:
    """A cell as getQueryResults sends it: text; TIMESTAMP as microseconds with useInt64Timestamp, else
    seconds."""
    if value is None:
        return None
    if _norm(kind) == "TIMESTAMP":
        micros = int(value.timestamp() * 1_000_000)
        if str(query.get("formatOptions.useInt64Timestamp")).lower() == "true":
            return str(micros)
        return f"{micros / 1_000_000:.6f}"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _multipart(req: Request) -> tuple[dict, bytes]:
    """(metadata, data) of a multipart/related upload: a JSON part, then the file."""
    ctype = req.headers.get("Content-Type") or req.headers.get("content-type") or ""
    match = re.search(r'boundary="?([^";]+)"?', ctype)
    if not ctype.startswith("multipart/related") or not match:
        raise ContractError(f"a multipart upload needs Content-Type multipart/related with a boundary, got {ctype!r}")
    boundary = b"--" + match.group(1).encode()
    parts = [p for p in req.body.split(boundary) if p.strip(b"\r\n") and p.strip() != b"--"]
    if len(parts) != 2:
        raise ContractError(f"a multipart upload has two parts (metadata, data), got {len(parts)}")
    out = []
    for part in parts:
        _, _, content = part.partition(b"\r\n\r\n")
        out.append(content.removesuffix(b"\r\n"))
    return json.loads(out[0]), out[1]


def _error(status: int, reason: str, message: str):
    kind = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
            409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}.get(status, "UNKNOWN")
    return status, {}, {"error": {"code": status, "message": message, "status": kind,
                                  "errors": [{"message": message, "domain": "global", "reason": reason}]}}


__all__ = ["FakeBigQuery", "Contract", "ContractError", "base64"]
