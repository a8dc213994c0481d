"""The rules engine end to end: patterns, deny rules by name, audit mode, ward explain, check warnings."""
import json
import subprocess

import pytest

import harness
from clients import context, exchange

RULES = """default: deny
rules:
  - name: prod-services
    action: allow
    from: [spiffe://example.org/ns/prod/sa/*]
    to: [svc]
  - name: no-batch-anywhere
    action: deny
    from: [spiffe://example.org/ns/*/sa/batch]
    to: "*"
  - name: partner-trial-deny
    action: deny
    mode: audit
    from: [spiffe://partner.org/**]
    to: [svc]
  - name: partner
    action: allow
    from: [spiffe://partner.org/ns/prod/sa/billing]
    to: [svc]
  - name: workers-by-night
    action: allow
    from: [spiffe://example.org/ns/prod/**]
    to: [svc]
    when:
      source: [192.0.2.0/24]
"""


@pytest.fixture(scope="module")
def rules_env(certs, tmp_path_factory):
    upstream = harness.Upstream("echo-line")
    listen = harness.free_port()
    folder = str(tmp_path_factory.mktemp("rules"))
    ward = harness.Ward(folder, harness.config(certs["dir"], [("svc", listen, upstream.port)]), RULES).start()
    yield ward, listen, upstream, certs
    ward.stop()
    upstream.close()


def test_pattern_allowed_peer_connects(rules_env):
    ward, listen, upstream, certs = rules_env
    mark = ward.mark()
    out = exchange(listen, context(certs, "web"), b"hi\n")
    assert out.data == b"echo: hi\n", out.error
    allow = ward.wait_for(mark, event="allow", peer_addr=f"127.0.0.1:{out.local_port}")
    assert allow["rule"] == "prod-services"


def test_pattern_denied_peer_is_refused_naming_the_deny_rule(rules_env):
    ward, listen, upstream, certs = rules_env
    before = upstream.accepted
    mark = ward.mark()
    out = exchange(listen, context(certs, "batch"), b"hi\n")
    assert out.data == b""
    deny = ward.wait_for(mark, event="deny", peer_addr=f"127.0.0.1:{out.local_port}")
    assert deny["reason"] == "rule_denied"
    assert deny["rule"] == "no-batch-anywhere"
    assert deny["enforced"] is True
    assert upstream.accepted == before


def test_audit_mode_denial_reaches_upstream_and_is_logged_unenforced(rules_env):
    ward, listen, upstream, certs = rules_env
    before = upstream.accepted
    mark = ward.mark()
    out = exchange(listen, context(certs, "billing"), b"audit me\n")
    assert out.data == b"echo: audit me\n", out.error
    deny = ward.wait_for(mark, event="deny", peer_addr=f"127.0.0.1:{out.local_port}")
    assert deny["rule"] == "partner-trial-deny"
    assert deny["enforced"] is False
    assert deny["reason"] == "rule_denied"
    assert upstream.accepted == before + 1
    close = ward.wait_for(mark, event="close", conn=deny["conn"])
    assert close["bytes_in"] == len(b"audit me\n")


def test_condition_that_does_not_hold_does_not_match(rules_env):
    # workers-by-night needs a 192.0.2.0/24 source; loopback is not in it, so the default decides.
    ward, listen, upstream, certs = rules_env
    mark = ward.mark()
    out = exchange(listen, context(certs, "prod_job"), b"x\n")
    assert out.data == b""
    deny = ward.wait_for(mark, event="deny", peer_addr=f"127.0.0.1:{out.local_port}")
    assert deny["rule"] == "default"


def explain(ward, *args):
    return subprocess.run([harness.WARD, "explain", "--config", ward.config_path, *args],
                          capture_output=True, text=True, timeout=30)


def test_explain_allowed(rules_env):
    ward = rules_env[0]
    out = explain(ward, "--from", "spiffe://example.org/ns/prod/sa/web", "--to", "svc")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "spiffe://example.org/ns/prod/sa/web -> svc: allow"
    assert f"decided by: prod-services ({ward.folder}/rules.yaml:3)" in out.stdout
    assert "workers-by-night" in out.stdout and "when.source condition does not hold" in out.stdout


def test_explain_condition_met_json(rules_env):
    ward = rules_env[0]
    out = explain(ward, "--from", "spiffe://example.org/ns/prod/job/nightly", "--to", "svc", "--addr", "192.0.2.9",
                  "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["decision"] == "allow" and result["rule"] == "workers-by-night"
    assert result["location"] == f"{ward.folder}/rules.yaml:20"


def test_explain_denied_names_losers(rules_env):
    ward = rules_env[0]
    out = explain(ward, "--from", "spiffe://example.org/ns/prod/sa/batch", "--to", "svc", "--json")
    assert out.returncode == 3
    result = json.loads(out.stdout)
    assert (result["decision"], result["rule"], result["enforced"]) == ("deny", "no-batch-anywhere", True)
    losers = {m["rule"]: m for m in result["matches"] if m["outcome"] == "lost"}
    assert losers["prod-services"]["reason"] == "a matching deny wins over any allow (no-batch-anywhere)"
    assert losers["workers-by-night"]["condition_failed"] == "source"


def test_explain_audit_denial_exits_3(rules_env):
    ward = rules_env[0]
    out = explain(ward, "--from", "spiffe://partner.org/ns/prod/sa/billing", "--to", "svc")
    assert out.returncode == 3
    assert "deny (audit mode: not enforced, let through)" in out.stdout


def test_explain_rejects_bad_input(rules_env):
    ward = rules_env[0]
    out = explain(ward, "--from", "spiffe://example.org/ns/prod/sa/web/", "--to", "svc")
    assert out.returncode == 1
    assert "path may not end with \"/\"" in out.stderr
    assert explain(ward, "--from", "spiffe://example.org/a", "--to", "nope").returncode == 1
    assert explain(ward, "--from", "spiffe://example.org/a", "--to", "svc", "--at", "yesterday").returncode == 1


def test_explain_hours_condition(certs, tmp_path):
    rules = "rules:\n  - name: night\n    action: allow\n    from: [spiffe://example.org/**]\n    to: [svc]\n" \
        "    when:\n      hours: \"22:00-06:00\"\n"
    ward = harness.Ward(str(tmp_path), harness.config(certs["dir"], [("svc", 1, 2)]), rules)
    at_night = explain(ward, "--from", "spiffe://example.org/a", "--to", "svc", "--at", "2026-11-22T23:59:59Z")
    by_day = explain(ward, "--from", "spiffe://example.org/a", "--to", "svc", "--at", "2026-11-22T06:00:00Z")
    assert (at_night.returncode, by_day.returncode) == (0, 3)


def test_check_warns_without_failing(certs, tmp_path):
    rules = """default: deny
rules:
  - name: web
    action: allow
    from: [spiffe://example.org/ns/prod/sa/web]
    to: [a]
  - name: deny-prod
    action: deny
    from: [spiffe://example.org/ns/prod/**, spiffe://example.org/ns/prod/**]
    to: "*"
"""
    ward = harness.Ward(str(tmp_path), harness.config(certs["dir"], [("a", 1, 2), ("b", 3, 4)]), rules)
    out = subprocess.run([harness.WARD, "check", "--config", ward.config_path], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    rules_path, config_path = f"{tmp_path}/rules.yaml", f"{tmp_path}/ward.yaml"
    lines = out.stdout.splitlines()
    assert f"{rules_path}:3: warning: rule 'web' can never decide: 'deny-prod' ({rules_path}:7) decides every " \
        "connection it matches" in lines
    assert f"{rules_path}:9: warning: duplicate pattern 'spiffe://example.org/ns/prod/**': already at " \
        f"{rules_path}:9 earlier in this rule" in lines
    assert f"{config_path}:11: warning: no rule allows listener 'b': with default deny, every connection to it " \
        "is refused" in lines
    assert lines[-1].endswith("3 warning(s)")
