"""Three hosts in network namespaces joined by veth pairs: web and evil reach orders, where Ward
guards an echo upstream; and Ward to Ward, web's Ward calling out (outbound) to orders' Ward. Real
addresses, real routing, all inside this test's own sandbox."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

import harness

HERE = os.path.dirname(os.path.abspath(__file__))


def sh(*args):
    return subprocess.run(args, capture_output=True, text=True)


@pytest.fixture
def hosts():
    tag = uuid.uuid4().hex[:6]
    names = {role: f"w{role[:3]}{tag}" for role in ("web", "orders", "evil")}
    if shutil.which("ip") is None or sh("ip", "netns", "add", names["orders"]).returncode != 0:
        pytest.skip("cannot create network namespaces here (needs iproute2 and CAP_NET_ADMIN)")
    created = [names["orders"]]
    try:
        for role, subnet in (("web", "10.77.1"), ("evil", "10.77.2")):
            ns = names[role]
            assert sh("ip", "netns", "add", ns).returncode == 0
            created.append(ns)
            a, b = f"v{role[:2]}{tag}a", f"v{role[:2]}{tag}b"
            for command in (
                ["ip", "link", "add", a, "type", "veth", "peer", "name", b],
                ["ip", "link", "set", a, "netns", ns],
                ["ip", "link", "set", b, "netns", names["orders"]],
                ["ip", "-n", ns, "addr", "add", f"{subnet}.2/24", "dev", a],
                ["ip", "-n", names["orders"], "addr", "add", f"{subnet}.1/24", "dev", b],
                ["ip", "-n", ns, "link", "set", a, "up"],
                ["ip", "-n", names["orders"], "link", "set", b, "up"],
                ["ip", "-n", ns, "link", "set", "lo", "up"],
            ):
                result = sh(*command)
                assert result.returncode == 0, f"{command}: {result.stderr}"
        assert sh("ip", "-n", names["orders"], "link", "set", "lo", "up").returncode == 0
        yield names
    finally:
        for ns in created:
            sh("ip", "netns", "del", ns)


def test_three_hosts(hosts, certs, tmp_path):
    orders = hosts["orders"]
    echo = subprocess.Popen(["ip", "netns", "exec", orders, sys.executable, os.path.join(HERE, "netecho.py"), "9000"])
    rules = """default: deny
rules:
  - name: web-host-only
    action: allow
    from: [spiffe://example.org/ns/prod/sa/web]
    to: [svc]
    when:
      source: [10.77.1.0/24]
"""
    config = harness.config(certs["dir"], [("svc", 8443, 9000)]).replace("listen: 127.0.0.1:8443",
                                                                        "listen: 0.0.0.0:8443")
    ward = harness.Ward(str(tmp_path), config, rules)
    ward.stderr = open(ward.stderr_path, "w")
    ward.process = subprocess.Popen(["ip", "netns", "exec", orders, harness.WARD, "run", "--config", ward.config_path],
                                    stdout=subprocess.DEVNULL, stderr=ward.stderr)
    try:
        ward.wait_for_stderr("ready:")
        time.sleep(0.3)  # the echo upstream binds in parallel; the first check below retries anyway

        def client(role, cert):
            c = certs[cert]
            return sh("ip", "netns", "exec", hosts[role], sys.executable, os.path.join(HERE, "netclient.py"),
                      "10.77.1.1" if role == "web" else "10.77.2.1", "8443", c.cert_path, c.key_path,
                      certs["example_ca"])

        mark = ward.mark()
        deadline = time.monotonic() + 10
        while (allowed := client("web", "web")).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert allowed.returncode == 0 and allowed.stdout.strip() == "ping", allowed.stdout + allowed.stderr
        record = ward.wait_for(mark, event="allow", rule="web-host-only")
        assert record["peer_addr"].startswith("10.77.1.2:")

        foreign = client("evil", "unknown_domain")  # a certificate from a CA Ward does not trust
        assert foreign.returncode == 1
        refused = ward.wait_for(mark, event="handshake_error", reason="unknown_trust_domain")
        assert refused["peer_addr"].startswith("10.77.2.2:")

        stolen = client("evil", "web")  # a valid SVID, from the wrong host
        assert stolen.returncode == 1
        denied = ward.wait_for(mark, event="deny", rule="default")
        assert denied["peer_addr"].startswith("10.77.2.2:") and denied["reason"] == "rule_denied"
    finally:
        ward.stop()
        echo.terminate()
        echo.wait()


def run_in(namespace, ward):
    """Starts `ward` inside a network namespace and waits for its readiness line."""
    ward.stderr = open(ward.stderr_path, "w")
    ward.process = subprocess.Popen(["ip", "netns", "exec", namespace, harness.WARD, "run", "--config",
                                     ward.config_path], stdout=subprocess.DEVNULL, stderr=ward.stderr)
    ward.wait_for_stderr("ready:")
    return ward


def test_ward_to_ward_across_hosts(hosts, certs, tmp_path):
    # The app on web speaks plaintext to Ward A's outbound port on web's loopback; A calls Ward B
    # on orders over mTLS; B's upstream reads B's PROXY v2 header: A's address and A's SPIFFE ID.
    web_id, orders_id = "spiffe://example.org/ns/prod/sa/web", "spiffe://example.org/ns/prod/sa/orders"
    upstream = subprocess.Popen(["ip", "netns", "exec", hosts["orders"], sys.executable,
                                 os.path.join(HERE, "netproxyecho.py"), "9000"], stdout=subprocess.PIPE, text=True)
    guard = threading.Timer(harness.DEADLINE, upstream.kill)  # no "ready" line: the readline below ends
    guard.start()
    wards = []
    try:
        assert upstream.stdout.readline().strip() == "ready", "the upstream in orders never listened"
        guard.cancel()
        rules = """default: deny
rules:
  - name: web-host-only
    action: allow
    from: [spiffe://example.org/ns/prod/sa/web]
    to: [svc]
    when:
      source: [10.77.1.0/24]
"""
        os.makedirs(tmp_path / "b")
        os.makedirs(tmp_path / "a")
        b_config = harness.config(certs["dir"], [("svc", 8443, 9000, {"proxy_protocol": "v2"})]).replace(
            "listen: 127.0.0.1:8443", "listen: 0.0.0.0:8443")
        b = harness.Ward(str(tmp_path / "b"), b_config, rules)
        wards.append(b)
        run_in(hosts["orders"], b)
        a_config = harness.config(certs["dir"], [], identity="web", rules=False, outbound=[
            {"name": "orders-api", "listen": 9001, "target": "10.77.1.1:8443", "server_id": [orders_id]}])
        a = harness.Ward(str(tmp_path / "a"), a_config, None)
        wards.append(a)
        run_in(hosts["web"], a)

        mark_a, mark_b = a.mark(), b.mark()
        app = sh("ip", "netns", "exec", hosts["web"], sys.executable, os.path.join(HERE, "netapp.py"),
                 "127.0.0.1", "9001")
        assert app.returncode == 0, app.stdout + app.stderr
        reply = json.loads(app.stdout)
        assert reply["line"] == "ping\n"
        assert reply["id"] == web_id
        assert reply["source"].startswith("10.77.1.2:") and reply["destination"] == "10.77.1.1:8443"

        allow = a.wait_for(mark_a, event="allow", listener="orders-api")
        assert allow["direction"] == "outbound" and allow["rule"] == "orders-api"
        assert allow["peer_id"] == orders_id and allow["peer_addr"] == "10.77.1.1:8443"
        assert allow["app_addr"].startswith("127.0.0.1:")
        inbound = b.wait_for(mark_b, event="allow", rule="web-host-only")
        assert inbound["direction"] == "inbound" and inbound["peer_id"] == web_id
        assert inbound["peer_addr"] == reply["source"]
        close = a.wait_for(mark_a, event="close", conn=allow["conn"])
        assert close["bytes_in"] == 5 and close["bytes_out"] == len(app.stdout.strip()) + 1
    finally:
        guard.cancel()
        for ward in wards:
            ward.stop()
        upstream.kill()
        upstream.wait()
