"""The engine's contract, checked with the public anira.testing.check_policy for
every installed halting policy: the built-ins, and third-party ones wherever their
entry points load (the test run's ANIRA_LOAD_PLUGINS decides which; conftest.py
loads none by default). A new built-in is covered without editing this file."""

import sys

import pytest

from anira import build_registry
from anira.testing import check_policy

REGISTRY = build_registry()  # entry points included, as ANIRA_LOAD_PLUGINS allows
#: options a policy needs to be built at all (the others run with their defaults)
OPTIONS = {"pattern": {"depths": [3, 1, 4, 2]}}


@pytest.mark.parametrize("policy", REGISTRY.names("policy"))
def test_every_installed_policy_keeps_the_contract(policy):
    report = check_policy(REGISTRY.policy(policy), options=OPTIONS.get(policy, {}))
    assert len(report.checks) == 9


def test_third_party_policies_are_collected(tmp_path, monkeypatch):
    """With ANIRA_LOAD_PLUGINS naming it, an installed plugin's policy is among those
    the contract test runs on (the example plugin, installed as pip would)."""
    from test_plugins import EXAMPLE, _fake_distribution

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ANIRA_LOAD_PLUGINS", "fixed-k")
    _fake_distribution(tmp_path, "anira-fixed-k", "fixed-k", "anira_fixed_k", (EXAMPLE / "anira_fixed_k.py").read_text())
    try:
        registry = build_registry()
        assert "fixed-k" in registry.names("policy")
        check_policy(registry.policy("fixed-k"), options={"k": 2})
    finally:
        sys.modules.pop("anira_fixed_k", None)
