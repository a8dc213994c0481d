import datetime
import http.server
import os

import pytest

import harness
import pki


class HTTPUpstream:
    def __init__(self):
        outer = self
        self.accepted = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self):
                outer.accepted += 1
                super().setup()

            def do_GET(self):
                body = b"hello from upstream\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server, self.port = harness.serve(http.server.ThreadingHTTPServer, Handler)

    def close(self):
        harness.stop(self.server)


class Env:
    """The PKI, upstreams and running ward shared by one test module."""


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("pki"))
    example = pki.ca("example.org root")
    partner = pki.ca("partner.org root")
    other = pki.ca("other.org root")
    intermediate = pki.ca("example.org intermediate", issuer=example)
    example_next = pki.ca("example.org root (next)")
    c_next = pki.write(example_next, folder, "example.org.next")
    for issued, name in [(example, "example.org.bundle"), (partner, "partner.org.bundle")]:
        pki.write(issued, folder, name)
    c = {"dir": folder, "example_ca": os.path.join(folder, "example.org.bundle.pem")}
    web = "spiffe://example.org/ns/prod/sa/web"
    specs = {
        "ward": (example, ["spiffe://example.org/ns/prod/sa/orders"], dict(ips=["127.0.0.1"], dns=["localhost"])),
        "web": (example, [web], {}),
        "web_rsa": (example, [web], dict(key_kind="rsa")),
        "batch": (example, ["spiffe://example.org/ns/dev/sa/batch"], {}),
        "prod_job": (example, ["spiffe://example.org/ns/prod/job/nightly"], {}),
        "billing": (partner, ["spiffe://partner.org/ns/prod/sa/billing"], {}),
        "unknown_domain": (other, ["spiffe://other.org/ns/prod/sa/web"], {}),
        "partner_by_example": (example, ["spiffe://partner.org/ns/prod/sa/billing"], {}),
        "example_by_partner": (partner, [web], {}),
        "two_uris": (example, [web, "spiffe://example.org/ns/prod/sa/admin"], {}),
        "no_uri": (example, [], dict(dns=["web.example.org"])),
        "not_spiffe": (example, ["https://example.org/ns/prod/sa/web"], {}),
        "root_id": (example, ["spiffe://example.org"], {}),
        "ca_leaf": (example, [web], dict(is_ca=True, cert_sign=True)),
        "bad_ku": (example, [web], dict(digital_signature=False, cert_sign=True)),
        "server_only_eku": (example, [web], dict(eku=[pki.ExtendedKeyUsageOID.SERVER_AUTH])),
        "expired": (example, [web], dict(not_before=pki.NOW - datetime.timedelta(hours=3))),
        "not_yet_valid": (example, [web], dict(not_before=pki.NOW + datetime.timedelta(hours=2))),
        "long_lived": (example, [web], dict(lifetime=datetime.timedelta(days=30))),
        "via_intermediate": (intermediate, ["spiffe://example.org/ns/prod/sa/worker"], {}),
    }
    for name, (issuer, uris, options) in specs.items():
        chain = [intermediate] if issuer is intermediate else []
        c[name] = pki.write(pki.leaf(issuer, uris, **options), folder, name, chain=chain)
    # Rotation and rollover material: a second server SVID, and a client of the next root.
    c["example_next_ca"] = c_next.cert_path
    c["ward_rotated"] = pki.write(
        pki.leaf(example, ["spiffe://example.org/ns/prod/sa/orders"], ips=["127.0.0.1"]), folder, "ward_rotated")
    c["web_next"] = pki.write(pki.leaf(example_next, [web]), folder, "web_next")
    c["ward_next"] = pki.write(
        pki.leaf(example_next, ["spiffe://example.org/ns/prod/sa/orders"], ips=["127.0.0.1"]), folder, "ward_next")
    # Six certificates sent (leaf + five intermediates): over max_chain_depth (5).
    deep, issuer = [], example
    for level in range(5):
        issuer = pki.ca(f"example.org level {level}", issuer=issuer)
        deep.append(issuer)
    c["deep_chain"] = pki.write(pki.leaf(issuer, [web]), folder, "deep_chain", chain=list(reversed(deep)))
    # A leaf of about 100 KB (DNS SANs): over max_cert_size.
    c["huge_cert"] = pki.write(
        pki.leaf(example, [web], dns=[f"h{i:05d}.{'x' * 40}.example.org" for i in range(1700)]), folder, "huge_cert")
    # A chain through an intermediate the client does not send: must fail.
    c["missing_intermediate"] = pki.write(
        pki.leaf(intermediate, ["spiffe://example.org/ns/prod/sa/worker"]), folder, "missing_intermediate")
    return c


@pytest.fixture(scope="module")
def env(certs, tmp_path_factory):
    e = Env()
    e.certs = certs
    e.echo = harness.Upstream("echo-line")
    e.until_eof = harness.Upstream("until-eof")
    e.http = HTTPUpstream()
    e.ports = {name: harness.free_port() for name in ["echo", "http", "halfclose", "down", "downstream"]}
    listeners = [
        ("echo", e.ports["echo"], e.echo.port),
        ("http", e.ports["http"], e.http.port),
        ("halfclose", e.ports["halfclose"], e.until_eof.port),
        ("down", e.ports["down"], e.ports["downstream"]),
    ]
    rules = """default: deny
rules:
  - name: web-everywhere
    action: allow
    from: [spiffe://example.org/ns/prod/sa/web, spiffe://example.org/ns/prod/sa/worker]
    to: ["*"]
  - name: billing-to-echo
    action: allow
    from: [spiffe://partner.org/ns/prod/sa/billing]
    to: [echo]
  - name: no-billing-on-http
    action: deny
    from: [spiffe://partner.org/ns/prod/sa/billing]
    to: [http, echo]
"""
    folder = str(tmp_path_factory.mktemp("ward"))
    e.ward = harness.Ward(folder, harness.config(certs["dir"], listeners, "handshake_timeout: 1s\n"), rules).start()
    yield e
    e.ward.stop()
    for server in (e.echo, e.until_eof, e.http):
        server.close()
