"""`notifications.slack_commands` in claro.yaml: who may use each slash command, checked when the spec loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from claro_dagster.spec import SpecError, load_spec

BASE = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text}
notifications:
"""


def load(tmp_path: Path, notifications: str):
    path = tmp_path / "claro.yaml"
    path.write_text(BASE + notifications, encoding="utf-8")
    return load_spec(path)


def test_user_ids_group_ids_and_a_star_are_accepted(tmp_path):
    spec = load(tmp_path, "  slack_token_env: SLACK_BOT_TOKEN\n  slack_commands:\n"
                          "    run: [U0123ABCD, S0CATALOG]\n    status: ['*']\n")
    commands = spec.notifications.slack_commands
    assert commands.run == ["U0123ABCD", "S0CATALOG"] and commands.status == ["*"] and commands.review == []


def test_without_the_key_nobody_may_use_a_command(tmp_path):
    spec = load(tmp_path, "  slack_token_env: SLACK_BOT_TOKEN\n")
    assert spec.notifications.slack_commands.model_dump() == {"run": [], "status": [], "review": []}


@pytest.mark.parametrize(("notifications", "expected"), [
    ("  slack_commands:\n    run: [roadrunner]\n",
     "claro.yaml:8 notifications.slack_commands.run[0]: 'roadrunner' is not a Slack user id (U0123ABCD, from the "
     "member's profile: ⋮ > Copy member ID), a user-group id (S0123ABCD) or '*' (every member of the workspace)"),
    ("  slack_commands:\n    review: [S0CATALOG]\n",
     "claro.yaml:6 notifications.slack_token_env: user groups in 'slack_commands' need 'slack_token_env': the bot "
     "token (with the usergroups:read scope) looks up their members"),
    ("  slack_commands:\n    export: [U0123ABCD]\n", "export"),
])
def test_a_bad_entry_says_where_and_what_is_allowed(tmp_path, notifications, expected):
    with pytest.raises(SpecError) as info:
        load(tmp_path, notifications)
    assert expected in str(info.value)
