"""Admin endpoints, metrics, log rotation, tamper evidence, ward logs and ward suggest, end to end."""
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

import harness
from clients import context, exchange

RULES = """default: deny
rules:
  - name: web
    action: allow
    from: [spiffe://example.org/ns/prod/sa/web]
    to: [svc]
  - name: billing-trial
    action: deny
    mode: audit
    from: [spiffe://partner.org/**]
    to: [svc]
"""


def admin_get(ward, path, method="GET"):
    """One HTTP/1.0 request over the admin Unix socket: (status, body)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(os.path.join(ward.folder, "admin.sock"))
        s.sendall(f"{method} {path} HTTP/1.0\r\nHost: ward\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def parse_metrics(text):
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def start(certs, tmp_path, extra="", rules=RULES, upstream_mode="echo-line"):
    upstream = harness.Upstream(upstream_mode)
    listen = harness.free_port()
    ward = harness.Ward(str(tmp_path), harness.config(certs["dir"], [("svc", listen, upstream.port)], extra), rules)
    return ward.start(), listen, upstream


def test_metrics_match_the_connections_made(certs, tmp_path):
    ward, listen, upstream = start(certs, tmp_path)
    try:
        mark = ward.mark()
        for _ in range(3):
            assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"
        for _ in range(2):
            assert exchange(listen, context(certs, "batch"), b"hi\n").data == b""
        assert exchange(listen, context(certs, "billing"), b"audit\n").data == b"echo: audit\n"
        assert exchange(listen, context(certs), b"x").data == b""
        assert exchange(listen, context(certs, "expired"), b"x").data == b""
        # 3 allowed and 1 audit-passed connections each end with a close line.
        deadline = time.monotonic() + 10
        def logged(event):
            return len([r for r in ward.lines(mark) if r["event"] == event])

        while (logged("close") < 4 or logged("handshake_error") < 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        status, body = admin_get(ward, "/metrics")
        assert status == 200
        m = parse_metrics(body)
        assert m['ward_connections_total{listener="svc",decision="allow"}'] == 3
        assert m['ward_connections_total{listener="svc",decision="deny"}'] == 2
        assert m['ward_connections_total{listener="svc",decision="audit_deny"}'] == 1
        assert m['ward_handshake_errors_total{listener="svc",reason="no_client_cert"}'] == 1
        assert m['ward_handshake_errors_total{listener="svc",reason="expired"}'] == 1
        assert m['ward_active_connections{listener="svc"}'] == 0
        assert m['ward_bytes_total{listener="svc",direction="in"}'] == 3 * 3 + 6
        assert m['ward_bytes_total{listener="svc",direction="out"}'] == 3 * 9 + 12
        assert m["ward_handshake_duration_seconds_count"] == 6
        assert m['ward_handshake_duration_seconds_bucket{le="+Inf"}'] == 6
        assert m["ward_peer_svid_remaining_seconds_count"] == 6
        assert m["ward_rules_generation"] == 1
        assert m["ward_log_dropped_total"] == 0
        assert m["ward_svid_expiry_timestamp_seconds"] == certs["ward"].cert.not_valid_after_utc.timestamp()
        # Nothing changed on disk: the reload succeeds but publishes no new generation.
        subprocess.run([harness.WARD, "reload", "--config", ward.config_path], check=True, capture_output=True)
        m = parse_metrics(admin_get(ward, "/metrics")[1])
        assert m['ward_reloads_total{result="ok"}'] == 1 and m["ward_rules_generation"] == 1
    finally:
        ward.stop()
        upstream.close()


def test_rules_and_connections_endpoints(certs, tmp_path):
    ward, listen, upstream = start(certs, tmp_path, upstream_mode="hold")
    try:
        status, body = admin_get(ward, "/rules")
        rules = json.loads(body)
        assert status == 200 and rules["generation"] == 1 and rules["rules"] == 2
        assert rules["listeners"] == {"svc": 2}
        assert rules["sources"]["rules"] == os.path.join(ward.folder, "rules.yaml")
        expected = hashlib.sha256()
        for path in (ward.config_path, rules["sources"]["rules"]):
            data = open(path, "rb").read()
            expected.update(len(data).to_bytes(8, "big") + data)
        assert rules["sha256"] == expected.hexdigest()
        raw = socket.create_connection(("127.0.0.1", listen), timeout=10)
        tls = context(certs, "web").wrap_socket(raw)
        tls.sendall(b"12345")
        assert tls.recv(5) == b"12345"
        connections = json.loads(admin_get(ward, "/connections")[1])["connections"]
        assert len(connections) == 1
        c = connections[0]
        assert c["peer_id"] == "spiffe://example.org/ns/prod/sa/web" and c["listener"] == "svc"
        assert c["peer_addr"] == f"127.0.0.1:{tls.getsockname()[1]}"
        assert c["bytes_in"] == 5 and c["bytes_out"] == 5 and c["since"].endswith("Z")
        tls.close()
        assert admin_get(ward, "/nope")[0] == 404
        assert admin_get(ward, "/metrics", method="POST")[0] == 405
    finally:
        ward.stop()
        upstream.close()


def test_healthz_fails_when_own_svid_is_about_to_expire(certs, tmp_path):
    # The test PKI's own SVID lives 1h: demanding 2h left must flip /healthz to 503.
    ward, _, upstream = start(certs, tmp_path, extra="svid_min_remaining: 2h\n")
    try:
        status, body = admin_get(ward, "/healthz")
        assert status == 503
        health = json.loads(body)
        assert health["status"] == "unhealthy"
        assert any("own SVID expires in" in reason for reason in health["reasons"])
    finally:
        ward.stop()
        upstream.close()


def test_healthz_ok(certs, tmp_path):
    ward, _, upstream = start(certs, tmp_path)
    try:
        status, body = admin_get(ward, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        ward.stop()
        upstream.close()


def test_admin_refuses_a_non_loopback_bind(certs, tmp_path):
    config = harness.config(certs["dir"], [("svc", 1, 2)]).replace("admin: admin.sock", "admin: 0.0.0.0:9901")
    ward = harness.Ward(str(tmp_path), config, RULES)
    out = subprocess.run([harness.WARD, "run", "--config", ward.config_path], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1
    assert "admin '0.0.0.0:9901' is not loopback or a Unix socket; set admin_allow_remote: true" in out.stderr
    with open(ward.config_path, "a") as f:
        f.write("admin_allow_remote: true\n")
    check = subprocess.run([harness.WARD, "check", "--config", ward.config_path], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def traffic(listen, certs, count):
    for _ in range(count):
        assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"


def wait_lines(paths, count, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = sum(len(open(p).read().splitlines()) for p in paths if os.path.exists(p))
        if total >= count:
            return total
        time.sleep(0.02)
    return total


def test_log_rotation_loses_no_line(certs, tmp_path):
    ward, listen, upstream = start(certs, tmp_path)
    try:
        import threading
        done = threading.Event()
        made = []

        def client():
            while not done.is_set():
                traffic(listen, certs, 1)
                made.append(1)

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(0.3)
        rotated = ward.log_path + ".1"
        os.rename(ward.log_path, rotated)  # what logrotate does, then its postrotate signal
        ward.process.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        done.set()
        thread.join()
        expected = 2 * len(made)  # allow + close per connection
        assert wait_lines([rotated, ward.log_path], expected) == expected
        assert os.path.getsize(ward.log_path) > 0 and os.path.getsize(rotated) > 0
    finally:
        ward.stop()
        upstream.close()


def verify(*paths, bundle=None, require_close=False):
    args = [harness.WARD, "audit", "verify", *paths]
    if bundle:
        args += ["--bundle", bundle]
    if require_close:
        args.append("--require-close")
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def events(lines):
    return [json.loads(line)["event"] for line in lines]


def test_chained_log_detects_tampering_and_continues_across_rotation(certs, tmp_path):
    ward, listen, upstream = start(certs, tmp_path, extra="log_chain: true\nlog_checkpoint_lines: 4\n")
    try:
        traffic(listen, certs, 3)
        assert wait_lines([ward.log_path], 8) >= 8
        rotated = ward.log_path + ".1"
        os.rename(ward.log_path, rotated)
        ward.process.send_signal(signal.SIGUSR1)
        traffic(listen, certs, 3)
        assert wait_lines([ward.log_path], 7) >= 7
    finally:
        ward.stop()
        upstream.close()
    old = open(rotated, "rb").read().splitlines()
    new = open(ward.log_path, "rb").read().splitlines()
    # Each file opens with a genesis checkpoint and ends with a close one; the new file's first
    # line links to the old file's last.
    assert events(old)[0] == events(new)[0] == "checkpoint" and json.loads(old[0])["kind"] == "genesis"
    assert json.loads(old[-1])["kind"] == json.loads(new[-1])["kind"] == "close"
    assert events(old).count("allow") == events(new).count("allow") == 3
    assert json.loads(new[0])["prev"] == hashlib.sha256(old[-1]).hexdigest()
    for i in range(1, len(new)):
        assert json.loads(new[i])["prev"] == hashlib.sha256(new[i - 1]).hexdigest()
    out = verify(rotated, ward.log_path, bundle=certs["example_ca"], require_close=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(new)} lines, chain intact" in out.stdout and "signed by spiffe://example.org/ns/prod/sa/orders" in out.stdout
    # The signer must chain to the bundle given: another trust domain's bundle refuses it.
    other = verify(ward.log_path, bundle=os.path.join(certs["dir"], "partner.org.bundle.pem"))
    assert other.returncode == 1 and "signature does not verify" in other.stdout

    combined = str(tmp_path / "combined.log")
    open(combined, "wb").write(b"\n".join(old + new) + b"\n")
    assert verify(combined).returncode == 0

    lines = old + new

    def check(name, tampered, **options):
        path = str(tmp_path / f"{name}.log")
        open(path, "wb").write(b"\n".join(tampered) + b"\n")
        return verify(path, **options), path

    edited = list(lines)
    middle = next(i for i in range(4, len(lines)) if b'"listener":"svc"' in lines[i])
    edited[middle] = edited[middle].replace(b'"listener":"svc"', b'"listener":"svd"')
    out, path = check("edited", edited)
    assert out.returncode == 1 and out.stdout.startswith(f"{path}:{middle + 1}: ")

    out, _ = check("deleted", lines[:4] + lines[5:])
    assert out.returncode == 1 and "removed" in out.stdout

    # The first lines removed: the file no longer opens with a signed genesis checkpoint.
    out, path = check("head-cut", old[3:])
    assert out.returncode == 1 and out.stdout.startswith(f"{path}:1: ") and "genesis" in out.stdout

    # The last lines of a rotated file removed: it no longer ends with its close checkpoint,
    # and the next file no longer follows it.
    out, path = check("tail-cut", old[:-2], require_close=True)
    assert out.returncode == 1 and "close checkpoint" in out.stdout
    cut = str(tmp_path / "tail-cut-pair.log")
    open(cut, "wb").write(b"\n".join(old[:-2]) + b"\n")
    out = verify(cut, ward.log_path)
    assert out.returncode == 1

    # A deny rewritten as an allow with every later hash recomputed (the chain has no key):
    # the next checkpoint's signature no longer covers the chain.
    target = next(i for i, line in enumerate(old) if json.loads(line)["event"] == "close")
    rewritten = [json.loads(line) for line in old]
    rewritten[target]["close_cause"] = "forged"
    previous = rewritten[0]["prev"]
    forged = []
    for record in rewritten:
        record["prev"] = previous
        line = json.dumps(record, separators=(",", ":")).encode()
        forged.append(line)
        previous = hashlib.sha256(line).hexdigest()
    out, _ = check("rewritten", forged)
    assert out.returncode == 1 and "signature does not verify" in out.stdout


def test_ward_logs_filters_and_renders(certs, tmp_path):
    ward, listen, upstream = start(certs, tmp_path)
    try:
        traffic(listen, certs, 2)
        exchange(listen, context(certs, "batch"), b"x\n")
        wait_lines([ward.log_path], 5)
    finally:
        ward.stop()
        upstream.close()
    run = lambda *a: subprocess.run([harness.WARD, "logs", ward.log_path, *a], capture_output=True, text=True)
    allows = run("--event", "allow").stdout.splitlines()
    assert len(allows) == 2 and all(" allow " in line and "rule=web" in line for line in allows)
    assert "\x1b[" not in "".join(allows)  # no colour when not a terminal
    denied = run("--peer", "spiffe://example.org/ns/dev/**").stdout.splitlines()
    assert len(denied) == 1 and "deny" in denied[0] and "reason=rule_denied" in denied[0]
    as_json = [json.loads(line) for line in run("--json", "--listener", "svc", "--event", "close").stdout.splitlines()]
    assert len(as_json) == 2 and {r["event"] for r in as_json} == {"close"}
    assert run("--peer", "spiffe://example.org/ns/we*").returncode == 1


def test_suggest_turns_observed_traffic_into_rules(certs, tmp_path):
    # Discovery: everything in audit mode, traffic recorded, then rules suggested from the log.
    audit_rules = "default: deny\nmode: audit\nrules: []\n"
    ward, listen, upstream = start(certs, tmp_path, rules=audit_rules)
    try:
        traffic(listen, certs, 2)
        assert exchange(listen, context(certs, "billing"), b"x\n").data == b"echo: x\n"
        wait_lines([ward.log_path], 6)
    finally:
        ward.stop()
        upstream.close()
    out = subprocess.run([harness.WARD, "suggest", "--from-log", ward.log_path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "# 2 connection(s), first" in out.stdout
    with open(os.path.join(ward.folder, "rules.yaml"), "w") as f:
        f.write(out.stdout)
    explain = lambda peer: subprocess.run(
        [harness.WARD, "explain", "--config", ward.config_path, "--from", peer, "--to", "svc"], capture_output=True,
        text=True)
    assert explain("spiffe://example.org/ns/prod/sa/web").returncode == 0
    assert explain("spiffe://partner.org/ns/prod/sa/billing").returncode == 0
    assert explain("spiffe://example.org/ns/dev/sa/batch").returncode == 3
    assert explain("spiffe://example.org/ns/prod/sa/other").returncode == 3
    check = subprocess.run([harness.WARD, "check", "--config", ward.config_path], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_ward_logs_follows_across_rotation(tmp_path):
    path = str(tmp_path / "connections.log")
    record = lambda n: json.dumps({"ts": "2026-11-22T00:00:00.000Z", "event": "allow", "conn": n,
                                   "listener": "svc", "peer_id": "spiffe://example.org/a"}) + "\n"
    open(path, "w").write(record(1))
    follower = subprocess.Popen([harness.WARD, "logs", path, "--follow", "--json"], stdout=subprocess.PIPE, text=True)
    import threading
    guard = threading.Timer(15, follower.kill)  # a hung follower ends the test instead of the run
    guard.start()
    try:
        assert json.loads(follower.stdout.readline())["conn"] == 1
        with open(path, "a") as f:
            f.write(record(2))
        assert json.loads(follower.stdout.readline())["conn"] == 2
        os.rename(path, path + ".1")
        with open(path + ".1", "a") as f:
            f.write(record(3))  # written to the old file after the move, before the reopen
        open(path, "w").write(record(4))
        assert [json.loads(follower.stdout.readline())["conn"] for _ in range(2)] == [3, 4]
    finally:
        guard.cancel()
        follower.kill()
        follower.wait()
