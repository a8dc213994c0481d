"""Ward against HAProxy in one run: H, T, M, L and handshakes/s, as `scripts/bench proxy` prints them.

Usage: scripts/bench proxy [--ward BIN] [--baseline BIN] [--runs N] [--workers 1,2] ...
(`python3 scripts/bench_proxy.py --help` lists every option). --ward is the Ward binary under test
(default .build/release/ward, which `scripts/bench proxy` builds unless --ward is given);
--baseline an older Ward binary measured in the same run by the same method, as the column
"Ward before". Every run measures Ward, Ward before and HAProxy in turn, so the machine's noise
hits them alike.

Method (docs/performance.md): the proxy under test is pinned to core 0 with taskset, the load
generator (bench/loadgen.c, OpenSSL) and the echo upstream (bench/echo.c) to core 1. CPU is the
proxy's own utime+stime from /proc/PID/stat. Workload: ECDSA P-256 certificates from
scripts/gen-dev-pki, TLS 1.3, AES-128-GCM, P-256 key exchange. Every run first checks that an
allowed client passes and a refused client is refused, so no figure comes from a broken setup.

  H  proxy CPU µs per connection: full mTLS handshake, upstream connect, 64-byte echo, close
  T  proxy CPU seconds per GiB forwarded (one connection, echoed both ways, counted once)
  M  KiB of proxy RSS per idle established connection (both legs); with the growth of the proxy's
     open fds per idle connection as a sanity check (2: the client's and the upstream's socket)
  L  added round-trip latency of a 64-byte echo, p50/p99 µs, everything on core 0
  syscalls per MiB forwarded: a separate, untimed throughput run of --syscall-mebibytes per proxy
     under `strace -f -c -p PID` (all threads), total and the three most frequent; never in the
     timed T run (ptrace stops the proxy at every syscall)

Ward runs beyond the comparison (H and handshakes/s): workers 1 and 2 (and any --workers), 100k
and 10 rules, TLS 1.3 resumption with workers 1 and 2. The load generator counts the connections
OpenSSL reports as resumed (SSL_session_reused); the table shows that count, so a resumption that
silently stopped working shows as resumed 0.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
WARDS = ("ward", "baseline")  # the Ward binaries, in the order they are measured


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


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def parse_strace_summary(text):
    """`strace -c` table -> ({syscall: calls}, total calls)."""
    calls, total = {}, 0
    for line in text.splitlines():
        parts = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall": calls is the fourth column.
        if len(parts) < 5 or not re.fullmatch(r"[\d.]+", parts[0]):
            continue
        if parts[-1] == "total":
            total = int(parts[3])
        else:
            calls[parts[-1]] = int(parts[3])
    return calls, total or sum(calls.values())


class Bench:
    def __init__(self, args):
        self.args = args
        self.binaries = {"ward": args.ward, "baseline": args.baseline}
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

    def close(self):
        self.echo.terminate()
        self.echo.wait()
        shutil.rmtree(self.work, ignore_errors=True)

    def client(self, name):
        p = self.pki
        return [f"{p}/{name}.pem", f"{p}/{name}.key", f"{p}/example.org.bundle.pem"]

    def loadgen_run(self, core, *args):
        return sh("taskset", "-c", core, self.loadgen, *args)

    # --- the proxies -------------------------------------------------------------------------
    def start_ward(self, port, binary, workers=1, rules=10, resumption=False, cores="0"):
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
        process = subprocess.Popen(["taskset", "-c", cores, binary, "run", "--config", config],
                                   stderr=subprocess.PIPE, text=True)
        while "ready:" not in (line := process.stderr.readline()):
            if not line:
                sys.exit(f"ward ({binary}) did not start: {process.stderr.read()}")
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

    def start(self, kind, port, **options):
        """Starts the proxy and checks that an allowed client passes and a refused one does not."""
        if kind == "haproxy":
            process, refused = self.start_haproxy(port)
        else:
            process, refused = self.start_ward(port, self.binaries[kind], **options)
        allowed = subprocess.run([self.loadgen, "check", "127.0.0.1", str(port), *self.client("web")]).returncode
        denied = subprocess.run([self.loadgen, "check", "127.0.0.1", str(port), *self.client(refused)]).returncode
        if allowed != 0 or denied == 0:
            process.terminate()
            sys.exit(f"{kind}: validity check failed (allowed exit {allowed}, refused exit {denied})")
        return process

    def measure(self, kind, port, full=True, **options):
        process = self.start(kind, port, **options)
        pid = process.pid
        try:
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
            result["connections"] = connections
            result["resumed"] = int(stats["resumed"])  # SSL_session_reused on the client
            if not full:
                return result
            mib = self.args.mebibytes
            before = cpu_seconds(pid)
            self.loadgen_run("1", "throughput", "127.0.0.1", str(port), *self.client("web"), str(mib))
            result["T"] = (cpu_seconds(pid) - before) / (mib / 1024)
            base, base_fds = rss_kib(pid), open_fds(pid)
            idle = subprocess.Popen(["taskset", "-c", "1", self.loadgen, "idle", "127.0.0.1", str(port),
                                     *self.client("web"), str(self.args.idle)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            assert idle.stdout.readline().startswith("ready")
            time.sleep(0.5)
            result["M"] = (rss_kib(pid) - base) / self.args.idle
            result["fds"] = (open_fds(pid) - base_fds) / self.args.idle
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

    def syscalls(self, kind, port):
        """Syscalls per MiB forwarded: one untimed throughput run under `strace -f -c -p PID`."""
        mib = self.args.syscall_mebibytes
        process = self.start(kind, port)
        summary = os.path.join(self.work, f"strace-{port}.txt")
        log = os.path.join(self.work, f"strace-{port}.log")
        tracer = None
        try:
            with open(log, "w") as err:
                tracer = subprocess.Popen(["strace", "-f", "-c", "-o", summary, "-p", str(process.pid)],
                                          stderr=err, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while "attached" not in open(log).read():
                if tracer.poll() is not None or time.monotonic() > deadline:
                    print(f"{kind}: strace could not attach: {open(log).read().strip()}", flush=True)
                    return None
                time.sleep(0.05)
            time.sleep(0.2)  # -f: every thread attached
            run = subprocess.run(["taskset", "-c", "1", self.loadgen, "throughput", "127.0.0.1", str(port),
                                  *self.client("web"), str(mib)], capture_output=True, text=True)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
            tracer = None
            if run.returncode != 0:
                sys.exit(f"{kind}: throughput under strace failed: {run.stdout}{run.stderr}")
            calls, total = parse_strace_summary(open(summary).read())
            top = sorted(calls.items(), key=lambda item: -item[1])[:3]
            return {"mebibytes": mib, "total": total, "per_mib": total / mib,
                    "top": [[name, count / mib] for name, count in top], "calls": calls}
        finally:
            if tracer is not None:
                tracer.send_signal(signal.SIGINT)
                tracer.wait()
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


def haproxy_label():
    match = re.search(r"version (\d+\.\d+)", sh("haproxy", "-v"))
    return f"HAProxy {match.group(1)}" if match else "HAProxy"


def medians(samples):
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def describe(result):
    return ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ward", default=os.path.join(REPO, ".build", "release", "ward"),
                        help="the Ward binary under test (default .build/release/ward)")
    parser.add_argument("--baseline", help="an older Ward binary measured in the same run, column \"Ward before\"")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--mebibytes", type=int, default=512, help="MiB streamed for T")
    parser.add_argument("--syscall-mebibytes", type=int, default=64,
                        help="MiB streamed under strace for the syscall counts (0: skip)")
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--out", default=os.path.join(REPO, "bench-results"))
    parser.add_argument("--workers", default="1,2", help="worker counts to sweep, e.g. 1,2 (1 and 2 always run)")
    args = parser.parse_args()
    args.ward = os.path.abspath(args.ward)
    args.baseline = args.baseline and os.path.abspath(args.baseline)
    for binary in filter(None, (args.ward, args.baseline)):
        if not os.access(binary, os.X_OK):
            sys.exit(f"not an executable: {binary}")
    if args.syscall_mebibytes and not shutil.which("strace"):
        print("strace missing (scripts/bench proxy installs it): syscall counts skipped", flush=True)
        args.syscall_mebibytes = 0
    bench = Bench(args)
    try:
        run_all(bench, args)
    finally:
        bench.close()


def run_all(bench, args):
    os.makedirs(args.out, exist_ok=True)
    wards = [kind for kind in WARDS if bench.binaries[kind]]
    kinds = wards + ["haproxy"]
    names = {"ward": "Ward", "baseline": "Ward before", "haproxy": haproxy_label()}
    print(f"ward: {args.ward}" + (f"; baseline (Ward before): {args.baseline}" if args.baseline else ""), flush=True)
    results = {kind: [] for kind in kinds}
    port = 19443
    # Interleaved: every run measures each proxy in turn, so noise hits them alike.
    for run in range(args.runs):
        for kind in kinds:
            port += 1
            results[kind].append(bench.measure(kind, port))
            print(f"run {run + 1} {kind}: {describe(results[kind][-1])}", flush=True)
    median = {kind: medians(runs) for kind, runs in results.items()}

    syscalls = {}
    if args.syscall_mebibytes:
        for kind in kinds:
            port += 1
            syscalls[kind] = bench.syscalls(kind, port)
            if syscalls[kind]:
                s = syscalls[kind]
                print(f"syscalls {kind}: {s['per_mib']:.1f} per MiB ({s['total']} in {s['mebibytes']} MiB); "
                      + ", ".join(f"{name} {per:.1f}" for name, per in s["top"]), flush=True)

    sweep = sorted(set([int(n) for n in args.workers.split(",") if n] + [1, 2]))

    def cores(n):  # one worker per core from core 0; past one, they share cores with the load generator
        return ",".join(str(c % os.cpu_count()) for c in range(n))

    extra_runs = [(f"workers {n}", {"workers": n, "cores": cores(n)}) for n in sweep]
    extra_runs += [("100k rules", {"rules": 100_000}), ("10 rules", {"rules": 10}),
                   ("resumed", {"resumption": True}),
                   ("resumed, workers 2", {"resumption": True, "workers": 2, "cores": cores(2)})]
    extras = {kind: {} for kind in wards}
    extra_samples = {kind: {} for kind in wards}
    for label, options in extra_runs:
        samples = {kind: [] for kind in wards}
        for _ in range(args.runs):
            for kind in wards:  # interleaved, as above
                port += 1
                samples[kind].append(bench.measure(kind, port, full=False, **options))
        for kind in wards:
            e = extras[kind][label] = medians(samples[kind])
            extra_samples[kind][label] = samples[kind]
            print(f"{label} {kind}: H={e['H']:.0f} µs, {e['hs_per_s']:.0f} handshakes/s, resumed "
                  + "/".join(f"{s['resumed']} of {s['connections']}" for s in samples[kind]), flush=True)

    crypto_h, crypto_t = crypto_limit()
    markdown = "\n".join(tables(args, kinds, wards, names, median, extras, extra_samples, syscalls,
                                crypto_h, crypto_t))
    print("\n" + markdown)
    open(os.path.join(args.out, "results.md"), "w").write(markdown + "\n")
    json.dump({"binaries": {kind: bench.binaries[kind] for kind in wards}, "haproxy": names["haproxy"],
               "median": median, "extras": extras.get("ward", {}), "extras_before": extras.get("baseline", {}),
               "syscalls": syscalls, "runs": results, "extra_runs": extra_samples},
              open(os.path.join(args.out, "results.json"), "w"), indent=1)
    if shutil.which("gnuplot"):
        chart(args, wards, median)


def tables(args, kinds, wards, names, median, extras, extra_samples, syscalls, crypto_h, crypto_t):
    h = median["haproxy"]
    ratios = [(kind, "haproxy") for kind in wards] + ([("ward", "baseline")] if "baseline" in wards else [])
    header = ([names[k] for k in kinds] + [f"{names[a]} / {names[b].split(' ')[0] if b == 'haproxy' else names[b]}"
                                           for a, b in ratios] + ["crypto limit"])
    lines = ["| figure | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]

    def row(label, key, fmt, limit="", ratio=True):
        values = [fmt.format(median[k][key]) for k in kinds]
        quotients = [f"{median[a][key] / median[b][key]:.2f}" if ratio and median[b][key] else "" for a, b in ratios]
        lines.append(f"| {label} | " + " | ".join(values + quotients + [limit]) + " |")

    row("H: CPU µs per connection", "H", "{:.0f}", f"{crypto_h:.0f}")
    row("handshakes/s (1 core)", "hs_per_s", "{:.0f}")
    row("T: CPU s per GiB", "T", "{:.3f}", f"{crypto_t:.3f}")
    row("M: KiB per idle connection", "M", "{:.1f}")
    row("fds per idle connection (sanity: 2)", "fds", "{:.2f}", ratio=False)
    lines.append("| L: added p50 / p99 µs | " + " | ".join(
        [f"{median[k]['L50']:.0f} / {median[k]['L99']:.0f}" for k in kinds]
        + [f"{median[a]['L50'] / max(median[b]['L50'], 0.1):.2f} / {median[a]['L99'] / max(median[b]['L99'], 0.1):.2f}"
           for a, b in ratios] + [""]) + " |")
    if syscalls and all(syscalls.get(k) for k in kinds):
        s = syscalls
        lines.append("| syscalls per MiB forwarded | " + " | ".join(
            [f"{s[k]['per_mib']:.1f}" for k in kinds]
            + [f"{s[a]['per_mib'] / s[b]['per_mib']:.2f}" for a, b in ratios] + [""]) + " |")
        lines.append("| top 3 syscalls per MiB | " + " | ".join(
            ["<br>".join(f"{name} {per:.1f}" for name, per in s[k]["top"]) for k in kinds]
            + [""] * len(ratios) + [""]) + " |")

    # The Ward runs: H and handshakes/s, and how many connections were resumed.
    lines.append("")
    if "baseline" in wards:
        lines += ["| Ward run | H µs | H µs before | H new / before | handshakes/s | handshakes/s before "
                  "| resumed / connections | resumed / connections before |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, e in extras["ward"].items():
            b = extras["baseline"][label]
            lines.append(f"| {label} | {e['H']:.0f} | {b['H']:.0f} | {e['H'] / b['H']:.2f} | {e['hs_per_s']:.0f} | "
                         f"{b['hs_per_s']:.0f} | {e['resumed']:.0f} / {e['connections']:.0f} | "
                         f"{b['resumed']:.0f} / {b['connections']:.0f} |")
    else:
        lines += ["| Ward run | H µs | handshakes/s | resumed / connections |", "|---|---:|---:|---:|"]
        lines += [f"| {label} | {e['H']:.0f} | {e['hs_per_s']:.0f} | {e['resumed']:.0f} / {e['connections']:.0f} |"
                  for label, e in extras["ward"].items()]

    notes, warnings = [f"Medians of {args.runs} runs (proxies interleaved within each run)."], []
    for kind in wards:
        x = extras[kind]
        suffix = " (before)" if kind == "baseline" else ""
        notes.append(f"Resumed H / full H{suffix}: workers 1 {x['resumed']['H'] / x['workers 1']['H']:.2f}, "
                     f"workers 2 {x['resumed, workers 2']['H'] / x['workers 2']['H']:.2f}. "
                     f"H with 100k rules / 10 rules{suffix}: {x['100k rules']['H'] / x['10 rules']['H']:.3f}. "
                     f"2 workers / 1 worker handshakes/s{suffix}: "
                     f"{x['workers 2']['hs_per_s'] / x['workers 1']['hs_per_s']:.2f} "
                     "(the load generator shares the second core).")
        for label in ("resumed", "resumed, workers 2"):
            shares = [s["resumed"] / s["connections"] for s in extra_samples[kind][label]]
            if min(shares) < 0.9:
                warnings.append(f"**WARNING{suffix}**: {label}: only {100 * min(shares):.0f}% of connections resumed in "
                             "some run; its H is not a resumed H.")
    if syscalls and all(syscalls.get(k) for k in kinds):
        notes.append(f"Syscalls: strace -f -c over one untimed {args.syscall_mebibytes} MiB throughput run per proxy, "
                     "all threads, divided by the MiB streamed (each MiB crosses the proxy both ways).")
    binaries = f"Ward: {args.ward}" + (f"; Ward before: {args.baseline}" if args.baseline else "")
    return lines + [""] + notes + [""] + [line for w in warnings for line in (w, "")] + [binaries]


def chart(args, wards, median):
    h = median["haproxy"]
    figures = [("H", "H"), ("T", "T"), ("M", "M"), ("L p50", "L50"), ("L p99", "L99")]
    data = os.path.join(args.out, "chart.dat")
    open(data, "w").write("\n".join(
        f"\"{name}\" " + " ".join(f"{median[kind][key] / h[key]:.3f}" for kind in wards)
        for name, key in figures) + "\n")
    titles = {"ward": "Ward", "baseline": "Ward before"}
    plots = ", ".join(f"'{data}' using {i + 2}" + (":xtic(1)" if i == 0 else "") + f" title '{titles[kind]}'"
                      for i, kind in enumerate(wards))
    key = "set key top left" if len(wards) > 1 else "unset key"
    subprocess.run(["gnuplot", "-e", f"""set terminal png size 640,360; set output '{args.out}/chart.png';
set title 'Ward / HAProxy (lower is better)'; set style data histograms; set style fill solid 0.6;
set yrange [0:*]; set grid ytics; {key}; plot {plots}, 1 with lines lc rgb 'red' notitle"""], check=False)
    print(f"chart: {args.out}/chart.png")


if __name__ == "__main__":
    main()
