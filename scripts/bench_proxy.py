"""Ward against HAProxy in one run: H, T, M, L and handshakes/s, as `scripts/bench proxy` prints them.

Method (docs/performance.md): the proxy under test is pinned to core 0 with taskset, the load
generator (bench/loadgen.c, OpenSSL) and the echo upstream (bench/echo.c) to core 1. CPU is the
proxy's own utime+stime from /proc/PID/stat. Workload: ECDSA P-256 certificates from
scripts/gen-dev-pki, TLS 1.3, AES-128-GCM, P-256 key exchange. Every run first checks that an
allowed client passes and a refused client is refused, so no figure comes from a broken setup.

  H  proxy CPU µs per connection: full mTLS handshake, upstream connect, 64-byte echo, close
  T  proxy CPU seconds per GiB forwarded (one connection, echoed both ways, counted once)
  M  KiB of proxy RSS per idle established connection (both legs)
  L  added round-trip latency of a 64-byte echo, p50/p99 µs, everything on core 0
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="ward-bench-")
        self.bin = os.path.join(REPO, ".build-bench")
        os.makedirs(self.bin, exist_ok=True)
        self.loadgen = os.path.join(self.bin, "loadgen")
        self.echo_bin = os.path.join(self.bin, "echo")
        sh("gcc", "-O2", "-o", self.loadgen, os.path.join(REPO, "bench", "loadgen.c"), "-lssl", "-lcrypto", "-lpthread")
        sh("gcc", "-O2", "-o", self.echo_bin, os.path.join(REPO, "bench", "echo.c"))
        self.pki = os.path.join(self.work, "pki")
        sh(os.path.join(REPO, "scripts", "gen-dev-pki"), self.pki)
        with open(os.path.join(self.pki, "ward.combined.pem"), "w") as out:
            out.write(open(os.path.join(self.pki, "ward.pem")).read() + open(os.path.join(self.pki, "ward.key")).read())
        self.echo = subprocess.Popen(["taskset", "-c", "1", self.echo_bin, "0"], stdout=subprocess.PIPE, text=True)
        self.upstream = int(self.echo.stdout.readline())

    def client(self, name):
        p = self.pki
        return [f"{p}/{name}.pem", f"{p}/{name}.key", f"{p}/example.org.bundle.pem"]

    def loadgen_run(self, core, *args):
        return sh("taskset", "-c", core, self.loadgen, *args)

    # --- the proxies -------------------------------------------------------------------------
    def start_ward(self, port, workers=1, rules=10, resumption=False, cores="0"):
        rules_path = os.path.join(self.work, f"rules-{rules}.yaml")
        if not os.path.exists(rules_path):
            lines = ["default: deny", "rules:",
                     "  - {name: web, action: allow, from: [spiffe://example.org/ns/prod/sa/web], to: [svc]}"]
            for i in range(rules - 1):
                lines.append(f"  - {{name: r{i}, action: allow, from: [spiffe://example.org/ns/n{i // 10}/sa/s{i}], "
                             "to: [svc]}")
            open(rules_path, "w").write("\n".join(lines) + "\n")
        config = os.path.join(self.work, f"ward-{port}.yaml")
        open(config, "w").write(f"""identity: {{cert: pki/ward.pem, key: pki/ward.key}}
trust_domains: {{example.org: pki/example.org.bundle.pem, partner.org: pki/partner.org.bundle.pem}}
listeners: [{{name: svc, listen: "127.0.0.1:{port}", upstream: "127.0.0.1:{self.upstream}"}}]
rules: {rules_path}
log: ward-{port}.log
admin: ward-{port}.sock
workers: {workers}
resumption: {"on" if resumption else "off"}
""")
        process = subprocess.Popen(["taskset", "-c", cores, os.path.join(REPO, ".build", "release", "ward"), "run",
                                    "--config", config], stderr=subprocess.PIPE, text=True)
        while "ready:" not in (line := process.stderr.readline()):
            if not line:
                sys.exit(f"ward did not start: {process.stderr.read()}")
        return process, "batch"  # refused by the rules

    def start_haproxy(self, port):
        config = os.path.join(self.work, f"haproxy-{port}.cfg")
        open(config, "w").write(f"""global
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:{port} ssl crt {self.pki}/ward.combined.pem ca-file {self.pki}/example.org.bundle.pem verify required ssl-min-ver TLSv1.2
  default_backend be
backend be
  server s1 127.0.0.1:{self.upstream}
""")
        process = subprocess.Popen(["taskset", "-c", "0", "haproxy", "-f", config], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run([self.loadgen, "check", "127.0.0.1", str(port), *self.client("web")]).returncode:
            if time.monotonic() > deadline:
                sys.exit("haproxy did not start")
            time.sleep(0.1)
        return process, "billing"  # another trust domain's CA: refused by verify required

    def measure(self, kind, port, full=True, **options):
        process, refused = self.start_ward(port, **options) if kind == "ward" else self.start_haproxy(port)
        pid = process.pid
        try:
            allowed = subprocess.run([self.loadgen, "check", "127.0.0.1", str(port), *self.client("web")]).returncode
            denied = subprocess.run([self.loadgen, "check", "127.0.0.1", str(port), *self.client(refused)]).returncode
            if allowed != 0 or denied == 0:
                sys.exit(f"{kind}: validity check failed (allowed exit {allowed}, refused exit {denied})")
            result = {}
            resume = ["resume"] if options.get("resumption") else []
            before = cpu_seconds(pid)
            out = self.loadgen_run("1", "handshake", "127.0.0.1", str(port), *self.client("web"),
                                   str(self.args.threads), str(self.args.seconds), *resume)
            used = cpu_seconds(pid) - before
            stats = dict(kv.split("=") for kv in out.split())
            connections = int(stats["connections"])
            if int(stats["failures"]):
                sys.exit(f"{kind}: {stats['failures']} failed connections")
            result["H"] = used / connections * 1e6
            result["hs_per_s"] = float(stats["rate"])
            result["resumed"] = int(stats["resumed"])
            if not full:
                return result
            mib = self.args.mebibytes
            before = cpu_seconds(pid)
            self.loadgen_run("1", "throughput", "127.0.0.1", str(port), *self.client("web"), str(mib))
            result["T"] = (cpu_seconds(pid) - before) / (mib / 1024)
            base = rss_kib(pid)
            idle = subprocess.Popen(["taskset", "-c", "1", self.loadgen, "idle", "127.0.0.1", str(port),
                                     *self.client("web"), str(self.args.idle)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            assert idle.stdout.readline().startswith("ready")
            time.sleep(0.5)
            result["M"] = (rss_kib(pid) - base) / self.args.idle
            idle.stdin.close()
            idle.wait()
            direct = self.latency(self.upstream, plain=True)
            proxied = self.latency(port)
            result["L50"] = proxied[0] - direct[0]
            result["L99"] = proxied[1] - direct[1]
            return result
        finally:
            process.terminate()
            process.wait()

    def latency(self, port, plain=False):
        args = ["plain", "-", "-"] if plain else self.client("web")
        out = self.loadgen_run("0", "latency", "127.0.0.1", str(port), *args, str(self.args.rounds))
        values = dict(kv.split("=") for kv in out.split())
        return float(values["p50_us"]), float(values["p99_us"])


def crypto_limit():
    """Server-side crypto per handshake from `openssl speed`: one ECDSA P-256 sign, two verifies
    (the client's CertificateVerify and its certificate), one P-256 ECDH, in µs."""
    out = sh("openssl", "speed", "-seconds", "1", "ecdsap256", "ecdhp256")
    sign = verify = ecdh = None
    for line in out.splitlines():
        parts = line.split()
        # Use the ops/s columns: the seconds columns are rounded to 0.0001 s.
        if "ecdsa" in line and "nistp256" in line:
            sign, verify = 1e6 / float(parts[-2]), 1e6 / float(parts[-1])
        if "ecdh" in line and "nistp256" in line:
            ecdh = 1e6 / float(parts[-1])
    aes = sh("openssl", "speed", "-seconds", "1", "-evp", "aes-128-gcm")
    last = [l for l in aes.splitlines() if l.upper().startswith("AES-128-GCM")][-1].split()
    gib_per_s = float(last[-1].rstrip("k")) * 1000 / 2**30  # 16 KiB blocks
    return sign + 2 * verify + ecdh, 2 / gib_per_s  # decrypt one leg, encrypt the other


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--mebibytes", type=int, default=512)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--out", default=os.path.join(REPO, "bench-results"))
    parser.add_argument("--workers", default="1,2", help="worker counts to sweep, e.g. 1,2")
    args = parser.parse_args()
    bench = Bench(args)
    os.makedirs(args.out, exist_ok=True)
    results = {"ward": [], "haproxy": []}
    port = 19443
    for run in range(args.runs):
        for kind in ("ward", "haproxy"):
            port += 1
            results[kind].append(bench.measure(kind, port))
            print(f"run {run + 1} {kind}: " + ", ".join(f"{k}={v:.1f}" for k, v in results[kind][-1].items()),
                  flush=True)
    median = {kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for kind, runs in results.items()}
    extras = {}
    sweep = [int(n) for n in args.workers.split(",") if n]
    # One worker per core from core 0; past one, the workers share cores with the load generator.
    runs = [(f"workers {n}", {"workers": n, "cores": ",".join(str(c % os.cpu_count()) for c in range(n))})
            for n in sweep]
    runs += [("100k rules", {"rules": 100_000}), ("10 rules", {"rules": 10}), ("resumed", {"resumption": True})]
    for label, options in runs:
        samples = []
        for _ in range(args.runs):
            port += 1
            samples.append(bench.measure("ward", port, full=False, **options))
        extras[label] = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
        print(f"{label}: H={extras[label]['H']:.0f} µs, {extras[label]['hs_per_s']:.0f} handshakes/s, "
              f"resumed={extras[label]['resumed']}", flush=True)
    crypto_h, crypto_t = crypto_limit()
    w, h = median["ward"], median["haproxy"]
    table = [
        "| figure | Ward | HAProxy 2.6 | Ward / HAProxy | crypto limit |",
        "|---|---:|---:|---:|---:|",
        f"| H: CPU µs per connection | {w['H']:.0f} | {h['H']:.0f} | {w['H'] / h['H']:.2f} | {crypto_h:.0f} |",
        f"| handshakes/s (1 core) | {w['hs_per_s']:.0f} | {h['hs_per_s']:.0f} | {w['hs_per_s'] / h['hs_per_s']:.2f} | |",
        f"| T: CPU s per GiB | {w['T']:.3f} | {h['T']:.3f} | {w['T'] / h['T']:.2f} | {crypto_t:.3f} |",
        f"| M: KiB per idle connection | {w['M']:.1f} | {h['M']:.1f} | {w['M'] / h['M']:.2f} | |",
        f"| L: added p50 / p99 µs | {w['L50']:.0f} / {w['L99']:.0f} | {h['L50']:.0f} / {h['L99']:.0f} | "
        f"{w['L50'] / max(h['L50'], 0.1):.2f} / {w['L99'] / max(h['L99'], 0.1):.2f} | |",
        "",
        "| Ward run | H µs | handshakes/s |",
        "|---|---:|---:|",
    ] + [f"| {label} | {e['H']:.0f} | {e['hs_per_s']:.0f} |" for label, e in extras.items()]
    ratio_resumed = extras["resumed"]["H"] / extras["10 rules"]["H"]
    ratio_rules = extras["100k rules"]["H"] / extras["10 rules"]["H"]
    scaling = ""
    if f"workers {sweep[0]}" in extras and len(sweep) > 1:
        first, last = extras[f"workers {sweep[0]}"], extras[f"workers {sweep[-1]}"]
        scaling = (f" {sweep[-1]} workers / {sweep[0]} worker handshakes/s: {last['hs_per_s'] / first['hs_per_s']:.2f}"
                   " (the load generator shares the second core).")
    table += ["", f"Medians of {args.runs} runs. Resumed H / full H: {ratio_resumed:.2f}. "
              f"H with 100k rules / 10 rules: {ratio_rules:.3f}.{scaling}"]
    markdown = "\n".join(table)
    print("\n" + markdown)
    open(os.path.join(args.out, "results.md"), "w").write(markdown + "\n")
    json.dump({"median": median, "extras": extras, "runs": results}, open(os.path.join(args.out, "results.json"), "w"),
              indent=1)
    if shutil.which("gnuplot"):
        data = os.path.join(args.out, "chart.dat")
        open(data, "w").write(
            "\n".join(f"\"{name}\" {w[key] / h[key]:.3f}" for name, key in
                      [("H", "H"), ("T", "T"), ("M", "M"), ("L p50", "L50"), ("L p99", "L99")]) + "\n")
        subprocess.run(["gnuplot", "-e", f"""set terminal png size 640,360; set output '{args.out}/chart.png';
set title 'Ward / HAProxy 2.6 (lower is better)'; set style data histograms; set style fill solid 0.6;
set yrange [0:*]; set grid ytics; unset key; plot '{data}' using 2:xtic(1), 1 with lines lc rgb 'red'"""],
                       check=False)
        print(f"chart: {args.out}/chart.png")
    bench.echo.terminate()


if __name__ == "__main__":
    main()
