"""Reload latency with 100k rules: from the trigger (`ward reload`) to the new rules deciding.

Run by `scripts/bench reload`. Starts the release ward on a generated dev PKI and a rules file of
N rules (70% exact, 25% `*`, 5% `**`), then alternates between two versions of the file that
differ in whether the probe workload (web) is allowed, and measures for each reload:
  - trigger_to_effect_ms: from starting `ward reload` until a probe connection sees the new decision;
  - reload_ms: the `ward reload` command's own wall time (returns after publication);
  - build_ms: Ward's `duration_ms` (parse, compile, TLS contexts, publish).
"""
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARD = os.path.join(REPO, ".build", "release", "ward")


def rules_text(count, allow_probe):
    lines = ["default: deny", "rules:"]
    action = "allow" if allow_probe else "deny"
    lines += ["  - name: probe", f"    action: {action}", "    from: [spiffe://example.org/ns/prod/sa/web]",
              "    to: [svc]"]
    for i in range(count - 1):
        ns = f"ns{i // 10}"
        kind = i % 20
        if kind == 0:
            pattern = f"spiffe://example.org/ns/{ns}/**"
        elif kind <= 5:
            pattern = f"spiffe://example.org/ns/{ns}/sa/*"
        else:
            pattern = f"spiffe://example.org/ns/{ns}/sa/svc{i}"
        lines += [f"  - name: r{i}", "    action: allow", f"    from: [{pattern}]", "    to: [svc]"]
    return "\n".join(lines) + "\n"


def probe(port, pki):
    """True if the probe workload gets its echo back, False if it is refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(f"{pki}/example.org.bundle.pem")
    ctx.load_cert_chain(f"{pki}/web.pem", f"{pki}/web.key")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            tls.sendall(b"x")
            return tls.recv(1) == b"x"
    except (ssl.SSLError, OSError):
        return False


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    work = tempfile.mkdtemp(prefix="ward-bench-reload-")
    pki = os.path.join(work, "pki")
    subprocess.run([os.path.join(REPO, "scripts", "gen-dev-pki"), pki], check=True, capture_output=True)
    echo = socket.socket()
    echo.bind(("127.0.0.1", 0))
    echo.listen(64)
    upstream_port = echo.getsockname()[1]
    import threading

    def serve():
        while True:
            conn, _ = echo.accept()
            threading.Thread(target=lambda c=conn: [c.sendall(d) for d in iter(lambda: c.recv(4096), b"")],
                             daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    versions = [rules_text(count, True), rules_text(count, False)]
    rules_path = os.path.join(work, "rules.yaml")
    with open(rules_path, "w") as f:
        f.write(versions[0])
    config = os.path.join(work, "ward.yaml")
    with open(config, "w") as f:
        f.write(f"""identity: {{cert: {pki}/ward.pem, key: {pki}/ward.key}}
trust_domains: {{example.org: {pki}/example.org.bundle.pem}}
listeners: [{{name: svc, listen: "127.0.0.1:{port}", upstream: "127.0.0.1:{upstream_port}"}}]
rules: rules.yaml
log: connections.log
admin: admin.sock
""")
    started = time.monotonic()
    ward = subprocess.Popen([WARD, "run", "--config", config], stderr=subprocess.PIPE, text=True)
    while "ready:" not in (line := ward.stderr.readline()):
        if not line:
            sys.exit("ward did not start")
    print(f"rules: {count}; start-up to ready: {(time.monotonic() - started) * 1000:.0f} ms")
    assert probe(port, pki)
    effects, commands = [], []
    for round_ in range(1, rounds + 1):
        expected = round_ % 2 == 0
        with open(rules_path + ".tmp", "w") as f:
            f.write(versions[0 if expected else 1])
        os.replace(rules_path + ".tmp", rules_path)
        t0 = time.monotonic()
        out = subprocess.run([WARD, "reload", "--config", config], capture_output=True, text=True)
        t1 = time.monotonic()
        assert out.returncode == 0, out.stderr
        while probe(port, pki) != expected:
            pass
        t2 = time.monotonic()
        commands.append((t1 - t0) * 1000)
        effects.append((t2 - t0) * 1000)
    ward.terminate()
    ward.wait()
    builds = [json.loads(line)["duration_ms"] for line in open(os.path.join(work, "connections.log"))
              if '"event":"reload"' in line and '"trigger":"admin"' in line]
    print(f"reloads: {rounds}")
    print(f"trigger_to_effect_ms: median {statistics.median(effects):.0f}, max {max(effects):.0f}")
    print(f"reload_ms (ward reload wall time): median {statistics.median(commands):.0f}, max {max(commands):.0f}")
    print(f"build_ms (parse, compile, TLS contexts, publish): median {statistics.median(builds):.0f}, "
          f"max {max(builds):.0f}")


if __name__ == "__main__":
    main()
