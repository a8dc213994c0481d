"""Live reload end to end: revocation, rollover, rotation, bad reloads, file triggers, reloads under load."""
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

import harness
from harness import write_atomically
from clients import context, exchange

ALLOW_WEB = """default: deny
rules:
  - name: web
    action: allow
    from: [spiffe://example.org/ns/prod/sa/web]
    to: [svc]
"""
ALLOW_PROD = """default: deny
rules:
  - name: prod
    action: allow
    from: [spiffe://example.org/ns/prod/**]
    to: [svc]
"""
DENY_ALL = "default: deny\nrules: []\n"


class Env:
    pass


@pytest.fixture
def env(certs, tmp_path):
    """A ward with its own copy of the PKI (so tests can rotate files) and a holding echo upstream."""
    e = Env()
    e.pki = str(tmp_path / "pki")
    shutil.copytree(certs["dir"], e.pki)
    e.certs = certs
    e.upstream = harness.Upstream("hold")
    e.listen = harness.free_port()
    e.folder = str(tmp_path)
    e.ward = harness.Ward(e.folder, harness.config(e.pki, [("svc", e.listen, e.upstream.port)]), ALLOW_WEB).start()
    e.rules_path = os.path.join(e.folder, "rules.yaml")
    yield e
    e.ward.stop()
    e.upstream.close()


def reload(e, expect_ok=True):
    out = subprocess.run([harness.WARD, "reload", "--config", e.ward.config_path], capture_output=True, text=True,
                         timeout=60)
    assert (out.returncode == 0) == expect_ok, out.stdout + out.stderr
    return out


def open_stream(e, name="web"):
    raw = socket.create_connection(("127.0.0.1", e.listen), timeout=10)
    tls = context(e.certs, name).wrap_socket(raw)
    tls.sendall(b"ping")
    assert tls.recv(4) == b"ping"
    return tls


def test_revocation_closes_the_connection_within_a_second(env):
    mark = env.ward.mark()
    stream = open_stream(env)
    allow = env.ward.wait_for(mark, event="allow")
    write_atomically(env.rules_path, DENY_ALL)
    started = time.monotonic()
    reload(env)
    stream.settimeout(5)
    assert stream.recv(1) == b""  # close_notify, not a reset
    assert time.monotonic() - started < 1.0
    revoke = env.ward.wait_for(mark, event="revoke", conn=allow["conn"])
    assert revoke["reason"] == "rule_denied" and revoke["rule"] == "default"
    assert revoke["close_cause"] == "revoked"
    assert env.ward.wait_for(mark, event="close", conn=allow["conn"])["close_cause"] == "revoked"


def test_connections_still_allowed_survive_a_reload(env):
    stream = open_stream(env)
    write_atomically(env.rules_path, ALLOW_PROD)
    reload(env)
    stream.sendall(b"still here")
    assert stream.recv(10) == b"still here"


def test_bundle_rollover_then_removal_revokes_old_ca_peers(env):
    bundle = os.path.join(env.pki, "example.org.bundle.pem")
    old_ca = open(bundle).read()
    new_ca = open(env.certs["example_next_ca"]).read()
    mark = env.ward.mark()
    old_peer = open_stream(env, "web")
    assert exchange(env.listen, context(env.certs, "web_next"), b"x").data == b""  # next root not trusted yet
    write_atomically(bundle, old_ca + new_ca)
    reload(env)
    new_peer = open_stream(env, "web_next")
    old_peer.sendall(b"both")
    assert old_peer.recv(4) == b"both"
    allow = [r for r in env.ward.lines(mark) if r.get("event") == "allow"][0]
    # Ward's own SVID moves to the next root too, or dropping the old root would strand it.
    shutil.copy(env.certs["ward_next"].cert_path, os.path.join(env.pki, "ward.pem"))
    shutil.copy(env.certs["ward_next"].key_path, os.path.join(env.pki, "ward.key"))
    write_atomically(bundle, new_ca)
    reload(env)
    old_peer.settimeout(5)
    assert old_peer.recv(1) == b""
    revoke = env.ward.wait_for(mark, event="revoke", conn=allow["conn"])
    assert revoke["reason"] == "untrusted_chain"
    new_peer.sendall(b"next")
    assert new_peer.recv(4) == b"next"


def served_serial(port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
        except (ssl.SSLError, OSError):
            pass
    from cryptography import x509
    return x509.load_der_x509_certificate(der).serial_number


def test_own_svid_rotation(env):
    stream = open_stream(env)
    before = served_serial(env.listen)
    rotated = env.certs["ward_rotated"]
    shutil.copy(rotated.key_path, os.path.join(env.pki, "ward.key.new"))
    shutil.copy(rotated.cert_path, os.path.join(env.pki, "ward.pem.new"))
    os.replace(os.path.join(env.pki, "ward.pem.new"), os.path.join(env.pki, "ward.pem"))
    os.replace(os.path.join(env.pki, "ward.key.new"), os.path.join(env.pki, "ward.key"))
    reload(env)
    assert before != rotated.cert.serial_number
    assert served_serial(env.listen) == rotated.cert.serial_number
    stream.sendall(b"old conn")
    assert stream.recv(8) == b"old conn"


@pytest.mark.parametrize("breakage", ["yaml", "unknown_listener", "key_mismatch", "missing_bundle", "listener_change"])
def test_bad_reload_keeps_the_old_state(env, breakage):
    mark = env.ward.mark()
    if breakage == "yaml":
        write_atomically(env.rules_path, ALLOW_WEB.replace("action: allow", "action: [allow"))
        expected = f"{env.rules_path}:4: invalid YAML"
    elif breakage == "unknown_listener":
        write_atomically(env.rules_path, ALLOW_WEB.replace("to: [svc]", "to: [svc, nope]"))
        expected = f"{env.rules_path}:6: unknown listener 'nope'"
    elif breakage == "key_mismatch":
        shutil.copy(os.path.join(env.pki, "web.key"), os.path.join(env.pki, "ward.key"))
        expected = f"{env.pki}/ward.key: private key does not match certificate {env.pki}/ward.pem"
    elif breakage == "missing_bundle":
        os.remove(os.path.join(env.pki, "partner.org.bundle.pem"))
        expected = f"{env.pki}/partner.org.bundle.pem: trust bundle of partner.org: cannot read"
    else:
        text = open(env.ward.config_path).read().replace(f"listen: 127.0.0.1:{env.listen}",
                                                          f"listen: 127.0.0.1:{harness.free_port()}")
        write_atomically(env.ward.config_path, text)
        expected = "restart required: listeners changed"
    out = reload(env, expect_ok=False)
    assert expected in out.stderr
    failed = env.ward.wait_for(mark, event="reload", ok=False, trigger="admin")
    assert expected in failed["error"]
    assert failed["generation"] == 1
    open_stream(env).close()  # the old rules and SVID still serve


def wait_generation(e, mark, generation):
    return e.ward.wait_for(mark, event="reload", ok=True, generation=generation)


def test_file_edit_triggers_a_reload(env):
    mark = env.ward.mark()
    write_atomically(env.rules_path, ALLOW_PROD)
    record = wait_generation(env, mark, 2)
    assert record["trigger"] == "file" and record["rules"] == 1
    assert len(record["sha256"]) == 64


def test_kubernetes_style_symlink_swap_triggers_a_reload(env, tmp_path):
    # The config's rules file is a symlink into ..data, as a ConfigMap volume lays it out.
    volume = tmp_path / "volume"
    volume.mkdir()
    first = volume / "..2026_11_22_1"
    first.mkdir()
    (first / "rules.yaml").write_text(ALLOW_WEB)
    os.symlink(first.name, volume / "..data")
    os.symlink("..data/rules.yaml", volume / "rules.yaml")
    text = open(env.ward.config_path).read().replace("rules: rules.yaml", f"rules: {volume}/rules.yaml")
    write_atomically(env.ward.config_path, text)
    mark = env.ward.mark()
    reload(env)
    wait_generation(env, mark, 2)
    second = volume / "..2026_11_22_2"
    second.mkdir()
    (second / "rules.yaml").write_text(ALLOW_PROD)
    os.symlink(second.name, volume / "..data_tmp")
    os.replace(volume / "..data_tmp", volume / "..data")
    record = wait_generation(env, mark, 3)
    assert record["trigger"] == "file" and record["rules"] == 1


def test_spiffe_helper_style_rotation_waits_for_a_matching_key(env):
    mark = env.ward.mark()
    rotated = env.certs["ward_rotated"]
    shutil.copy(rotated.cert_path, os.path.join(env.pki, "ward.pem"))  # cert first ...
    time.sleep(0.5)  # ... the key a moment later, past the debounce: Ward must wait, not fail
    shutil.copy(rotated.key_path, os.path.join(env.pki, "ward.key"))
    record = wait_generation(env, mark, 2)
    assert record["trigger"] == "file"
    assert not [r for r in env.ward.lines(mark) if r.get("event") == "reload" and not r["ok"]]
    assert served_serial(env.listen) == rotated.cert.serial_number


def test_reloads_under_load(env):
    """100 reloads (SIGHUP and file edits, two rule sets that both allow the traffic) while 20
    streams echo and new connections arrive at about 100/s: nothing fails, every byte comes back."""
    stop = threading.Event()
    failures = []
    counts = {"connections": 0, "echoes": 0}
    lock = threading.Lock()

    def stream_worker(seed):
        rng = random.Random(seed)
        try:
            stream = open_stream(env)
            stream.settimeout(10)
            while not stop.is_set():
                payload = rng.randbytes(rng.randint(1, 4096))
                stream.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = stream.recv(len(payload) - len(got))
                    if not chunk:
                        raise AssertionError("stream closed")
                    got += chunk
                if got != payload:
                    raise AssertionError("echo mismatch")
                with lock:
                    counts["echoes"] += 1
            stream.close()
        except Exception as error:  # noqa: BLE001 - every failure is collected and asserted on
            failures.append(f"stream {seed}: {error!r}")

    def connector():
        ctx = context(env.certs, "web")
        while not stop.is_set():
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", env.listen), timeout=10) as raw:
                    with ctx.wrap_socket(raw) as tls:
                        tls.sendall(b"hello")
                        if tls.recv(5) != b"hello":
                            raise AssertionError("bad echo")
                with lock:
                    counts["connections"] += 1
            except Exception as error:  # noqa: BLE001
                failures.append(f"connection: {error!r}")
            time.sleep(max(0.0, 0.02 - (time.monotonic() - started)))

    threads = [threading.Thread(target=stream_worker, args=(i,)) for i in range(20)]
    threads += [threading.Thread(target=connector) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        mark = env.ward.mark()
        for generation in range(2, 102):
            rules = ALLOW_PROD if generation % 2 == 0 else ALLOW_WEB
            write_atomically(env.rules_path, rules)
            if generation % 3 == 0:
                env.ward.process.send_signal(signal.SIGHUP)
            wait_generation(env, mark, generation)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not failures, failures[:5]
    assert counts["connections"] >= 100 and counts["echoes"] >= 1000, counts
    reloads = [r for r in env.ward.lines(mark) if r.get("event") == "reload"]
    assert all(r["ok"] for r in reloads)
    assert {r["trigger"] for r in reloads} == {"file", "sighup"}
    assert not [r for r in env.ward.lines(mark) if r.get("event") in ("revoke", "handshake_error", "deny")]
