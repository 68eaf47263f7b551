"""`claro portal invite|tokens|revoke` and `claro review invite` through the console script, as a user types them."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cli_project
import pytest
from cli_project import claro, write_spec

from claro_dagster.catalogue.access import AccessDenied, AccessTokens
from claro_dagster.catalogue.opening import open_store
from claro_dagster.spec import load_spec

REVIEWERS = """
reviewers:
  pricing: [ann, raj]
"""
LINK = re.compile(r"^(https://claro\.example\.com/(portal|review)/login\?token=([A-Za-z0-9_-]{43}))$", re.M)


@pytest.fixture
def project(tmp_path) -> tuple[Path, Path]:
    spec = write_spec(tmp_path / "claro.yaml")
    spec.write_text(spec.read_text(encoding="utf-8") + REVIEWERS, encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    return spec, home


def tokens_of(spec: Path, home: Path):
    store = open_store(load_spec(spec), home=home)
    return store, AccessTokens(store)


def test_invite_list_and_revoke(project):
    spec, home = project
    portal = claro("portal", "invite", "shop_csv", "--expires", "2w", "--base-url", "https://claro.example.com/",
                   home=home, spec=spec, user="lead")
    assert portal.returncode == 0, portal.stderr
    assert "link 1 for portal shop_csv, valid until" in portal.stdout and "claro portal revoke 1" in portal.stdout
    (link, kind, secret), = LINK.findall(portal.stdout)
    assert kind == "portal"

    review = claro("review", "invite", "raj", "--expires", "30d", "--base-url", "https://claro.example.com",
                   home=home, spec=spec, user="lead")
    assert review.returncode == 0, review.stderr
    (_, review_kind, review_secret), = LINK.findall(review.stdout)
    assert review_kind == "review"

    listed = claro("portal", "tokens", "--format", "json", home=home, spec=spec)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["kind"], r["for"], r["status"], r["by"]) for r in rows] == [
        (1, "portal", "shop_csv", "active", "lead"), (2, "review", "raj", "active", "lead")]
    expires = datetime.fromisoformat(rows[0]["expires"]) - datetime.fromisoformat(rows[0]["created"])
    assert expires == timedelta(weeks=2)
    assert secret not in listed.stdout and review_secret not in listed.stdout
    only_review = json.loads(claro("portal", "tokens", "--kind", "review", "--format", "json", home=home,
                                   spec=spec).stdout)
    assert [r["id"] for r in only_review] == [2]

    store, tokens = tokens_of(spec, home)
    try:
        assert tokens.verify(secret, kind="portal", client="t").subject == "shop_csv"
        revoked = claro("portal", "revoke", "1", home=home, spec=spec)
        assert revoked.returncode == 0 and "revoked link 1 (portal shop_csv)" in revoked.stdout
        with pytest.raises(AccessDenied, match="revoked"):
            tokens.verify(secret, kind="portal", client="t")
        assert tokens.verify(review_secret, kind="review", client="t").subject == "raj"
    finally:
        store.dispose()
    table = claro("portal", "tokens", home=home, spec=spec).stdout
    assert re.search(r"1[\s│]+portal[\s│]+shop_csv[\s│]+revoked", table)
    assert re.search(r"2[\s│]+review[\s│]+raj[\s│]+active", table)


def test_the_base_url_comes_from_claro_web_url(project, monkeypatch):
    spec, home = project
    real_run = subprocess.run

    def with_web_url(args, env, **kw):  # claro() builds the environment; add the variable a deployment sets
        return real_run(args, env={**env, "CLARO_WEB_URL": "https://claro.example.com"}, **kw)

    monkeypatch.setattr(cli_project.subprocess, "run", with_web_url)
    answer = claro("review", "invite", "ann", home=home, spec=spec)
    assert answer.returncode == 0, answer.stderr
    assert len(LINK.findall(answer.stdout)) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["portal", "invite", "nowhere", "--base-url", "https://x"], "unknown source 'nowhere'; sources are: shop_csv"),
    (["review", "invite", "eve", "--base-url", "https://x"], "'eve' is not a reviewer of the spec; add them"),
    (["review", "invite", "pricing", "--base-url", "https://x"], "'pricing' is not a reviewer"),  # a group
    (["portal", "invite", "shop_csv", "--expires", "soon", "--base-url", "https://x"],
     "--expires 'soon' is not a duration such as 90d"),
    (["portal", "invite", "shop_csv"], "give the web app's address: --base-url"),
    (["portal", "revoke", "42"], "no access link with id 42; `claro portal tokens` lists them"),
    (["portal", "tokens", "--kind", "admin"], "--kind 'admin': kinds are portal, review"),
])
def test_mistakes_exit_1_with_one_line(project, args, message):
    spec, home = project
    answer = claro(*args, home=home, spec=spec)
    assert answer.returncode == 1, answer.stdout
    assert message in answer.stderr and "Traceback" not in answer.stderr


def test_an_expired_invite_is_listed_as_expired(project):
    spec, home = project
    store, tokens = tokens_of(spec, home)
    try:
        tokens.clock = lambda: datetime.now(UTC) - timedelta(days=2)
        tokens.issue("review", "ann", expires_in=timedelta(days=1), by="lead")
    finally:
        store.dispose()
    rows = json.loads(claro("portal", "tokens", "--format", "json", home=home, spec=spec).stdout)
    assert [(r["for"], r["status"]) for r in rows] == [("ann", "expired")]


def test_a_portal_link_is_only_for_upload_and_inbox_sources(project):
    spec, home = project
    text = spec.read_text(encoding="utf-8")
    spec.write_text(text.replace("  portal: {catalogue: products, kind: upload}\n",
                                 "  portal: {catalogue: products, kind: upload}\n"
                                 "  feed: {catalogue: products, kind: s3, bucket: b}\n"), encoding="utf-8")
    refused = claro("portal", "invite", "feed", "--base-url", "https://x", home=home, spec=spec)
    assert refused.returncode == 1 and "source 'feed' is a s3 source" in refused.stderr
    made = claro("portal", "invite", "portal", "--base-url", "https://claro.example.com", home=home, spec=spec)
    assert made.returncode == 0, made.stderr
    assert [m[1] for m in LINK.findall(made.stdout)] == ["portal"]
