"""ward check, start-up failures, idle timeout and graceful shutdown, against the real binary."""
import os
import shutil
import signal
import socket
import ssl

import harness
from harness import run_ward
import pki
import pytest
from clients import context, exchange


def make_ward(certs, tmp_path, upstream_port, extra="", rules=None):
    listen = harness.free_port()
    rules = rules or "default: deny\nrules:\n  - name: web\n    action: allow\n" \
        "    from: [spiffe://example.org/ns/prod/sa/web]\n    to: [svc]\n"
    ward = harness.Ward(str(tmp_path), harness.config(certs["dir"], [("svc", listen, upstream_port)], extra), rules)
    return ward, listen


def test_version():
    out = run_ward("--version")
    assert out.returncode == 0 and out.stdout.strip() == "0.1.0"


def test_check_accepts_a_valid_config(certs, tmp_path):
    ward, _ = make_ward(certs, tmp_path, 1)
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("\n") == 1
    assert "OK: 1 listener(s), 2 trust domain(s), 1 rule(s)" in out.stdout
    assert "identity spiffe://example.org/ns/prod/sa/orders" in out.stdout


def test_check_lists_every_problem_with_file_and_line(certs, tmp_path):
    rules = "default: deny\nrules:\n  - name: a\n    action: allow\n    from: [spiffe://example.org/x/]\n" \
        "    to: [nope]\n  - name: a\n    action: allow\n    from: [spiffe://example.org/y]\n    to: [svc]\n"
    ward, _ = make_ward(certs, tmp_path, 1, rules=rules)
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 1
    rules_path = os.path.join(str(tmp_path), "rules.yaml")
    lines = out.stdout.splitlines()
    assert f"{rules_path}:5: invalid pattern 'spiffe://example.org/x/': path may not end with \"/\"" in lines
    assert f"{rules_path}:6: unknown listener 'nope' (known: svc)" in lines
    assert f"{rules_path}:7: duplicate rule name 'a' (first at line 3)" in lines
    assert len(lines) == 3


def test_check_reports_bad_yaml_line(certs, tmp_path):
    ward, _ = make_ward(certs, tmp_path, 1)
    with open(ward.config_path, "a") as f:
        f.write("listeners: [oops\n")
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 1
    assert out.stdout.startswith(f"{ward.config_path}:"), out.stdout
    assert "invalid YAML" in out.stdout or "duplicate key" in out.stdout


def test_check_reports_key_that_does_not_match(certs, tmp_path):
    folder = str(tmp_path)
    pki_dir = os.path.join(folder, "pki")
    shutil.copytree(certs["dir"], pki_dir)
    shutil.copy(os.path.join(pki_dir, "web.key"), os.path.join(pki_dir, "ward.key"))
    ward = harness.Ward(folder, harness.config(pki_dir, [("svc", 1, 2)]), "rules: []\n")
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 1
    assert out.stdout == f"{pki_dir}/ward.key: private key does not match certificate {pki_dir}/ward.pem\n"


def test_own_svid_from_another_trust_domains_ca_is_refused(certs, tmp_path):
    folder = str(tmp_path)
    pki_dir = os.path.join(folder, "pki")
    shutil.copytree(certs["dir"], pki_dir)
    shutil.copy(certs["example_by_partner"].cert_path, os.path.join(pki_dir, "ward.pem"))
    shutil.copy(certs["example_by_partner"].key_path, os.path.join(pki_dir, "ward.key"))
    ward = harness.Ward(folder, harness.config(pki_dir, [("svc", 1, 2)]), "rules: []\n")
    out = run_ward("run", "--config", ward.config_path)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"ward: {pki_dir}/ward.pem: own SVID spiffe://example.org/ns/prod/sa/web is not valid for its "
        "trust domain: untrusted_chain (unable to get local issuer certificate)")


def test_missing_file_fails_start_with_one_line(certs, tmp_path):
    ward, _ = make_ward(certs, tmp_path, 1)
    os.remove(os.path.join(str(tmp_path), "rules.yaml"))
    out = run_ward("run", "--config", ward.config_path)
    assert out.returncode == 1
    assert out.stderr == f"ward: {tmp_path}/rules.yaml: cannot read: No such file or directory\n"


def test_port_in_use_fails_start(certs, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ward = harness.Ward(str(tmp_path), harness.config(certs["dir"], [("svc", port, 1)]), "rules: []\n")
        out = run_ward("run", "--config", ward.config_path)
    assert out.returncode == 1
    assert out.stderr == f"ward: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_idle_connection_is_closed(certs, tmp_path):
    upstream = harness.Upstream("hold")
    ward, listen = make_ward(certs, tmp_path, upstream.port, extra="idle_timeout: 1s\n")
    ward.start()
    try:
        mark = ward.mark()
        raw = socket.create_connection(("127.0.0.1", listen), timeout=10)
        with context(certs, "web").wrap_socket(raw) as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"
            assert tls.recv(1) == b""  # closed by Ward after a second of silence, with close_notify
        close = ward.wait_for(mark, event="close")
        assert close["close_cause"] == "idle_timeout"
        assert close["bytes_in"] == 4 and close["bytes_out"] == 4
    finally:
        ward.stop()
        upstream.close()


def test_sigterm_closes_listener_then_connections_with_close_notify(certs, tmp_path):
    upstream = harness.Upstream("hold")
    ward, listen = make_ward(certs, tmp_path, upstream.port)
    ward.start()
    try:
        mark = ward.mark()
        raw = socket.create_connection(("127.0.0.1", listen), timeout=10)
        tls = context(certs, "web").wrap_socket(raw)
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
        allow = ward.wait_for(mark, event="allow")
        assert ward.stop(signal.SIGTERM) == 0
        # A clean close_notify reads as b""; a bare FIN would raise SSLEOFError.
        assert tls.recv(1) == b""
        tls.close()
        close = ward.wait_for(mark, event="close", conn=allow["conn"])
        assert close["close_cause"] == "shutdown"
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", listen)) != 0
        assert "shutting down" in open(ward.stderr_path).read()
    finally:
        ward.stop()
        upstream.close()


def test_sigint_stops_cleanly(certs, tmp_path):
    ward, _ = make_ward(certs, tmp_path, 1)
    ward.start()
    assert ward.stop(signal.SIGINT) == 0


def test_world_writable_config_is_refused_for_root(certs, tmp_path):
    if os.getuid() != 0:
        pytest.skip("the check applies to root only")
    ward, _ = make_ward(certs, tmp_path, 1)
    os.chmod(ward.config_path, 0o666)
    out = run_ward("run", "--config", ward.config_path)
    assert out.returncode == 1
    assert "refusing to run as root with a world-writable config (mode 666)" in out.stderr


def test_readable_private_key_warns(certs, tmp_path):
    folder = str(tmp_path)
    pki_dir = os.path.join(folder, "pki")
    shutil.copytree(certs["dir"], pki_dir)
    os.chmod(os.path.join(pki_dir, "ward.key"), 0o644)
    ward = harness.Ward(folder, harness.config(pki_dir, [("svc", harness.free_port(), 1)]), "rules: []\n").start()
    try:
        text = open(ward.stderr_path).read()
        assert f"private key {pki_dir}/ward.key is readable by group or others (mode 644)" in text
    finally:
        ward.stop()


def test_drops_privileges_after_binding(certs, tmp_path):
    if os.getuid() != 0:
        pytest.skip("dropping privileges needs root")
    upstream = harness.Upstream("echo-line")
    ward, listen = make_ward(certs, tmp_path, upstream.port, extra="user: nobody\n")
    ward.start()
    try:
        status = open(f"/proc/{ward.process.pid}/status").read()
        uid_line = [line for line in status.splitlines() if line.startswith("Uid:")][0]
        assert uid_line.split()[1:] == ["65534"] * 4, uid_line
        assert "dropped privileges to uid 65534" in open(ward.stderr_path).read()
        assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"
    finally:
        ward.stop()
        upstream.close()
