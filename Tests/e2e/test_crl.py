"""Certificate revocation lists in files mode: `crls:` maps a trust domain to a file of PEM CRLs or one
DER CRL. A peer whose leaf serial is listed by a CRL of the leaf's issuer is refused with
`certificate_revoked`, inbound and outbound; CRL files reload like bundles, and a reload that revokes
an open connection's peer closes it. `ward check` rejects CRLs of unknown trust domains, CRLs signed
outside the trust domain's bundle, and files that hold no CRL."""
import contextlib
import hashlib
import os
import shutil
import socket

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

import harness
from harness import reload_ward as reload, run_ward, write_atomically
import pki
from clients import context, exchange
from test_outbound import TLSServer, app_exchange, entry, ward_a

WEB = "spiffe://example.org/ns/prod/sa/web"
ORDERS = "spiffe://example.org/ns/prod/sa/orders"

RULES = f"""default: deny
rules:
  - name: web
    action: allow
    from: [{WEB}]
    to: [svc]
"""


class Env:
    pass


def crls_yaml(crls):
    """The `crls:` section for {trust domain: path} (nothing for an empty or None mapping)."""
    if not crls:
        return ""
    return "crls:\n" + "".join(f"  {domain}: {path}\n" for domain, path in crls.items())


def cert_sha256(issued):
    return hashlib.sha256(issued.cert.public_bytes(Encoding.DER)).hexdigest()


@pytest.fixture
def env(certs, tmp_path):
    """A private copy of the PKI, two fresh WEB client SVIDs (`revoked` and `kept`) whose serials the
    test knows, a holding echo upstream, and `start(crls)` that runs a ward with that `crls:` map."""
    e = Env()
    e.pki = str(tmp_path / "pki")
    shutil.copytree(certs["dir"], e.pki)
    e.example = pki.load(os.path.join(e.pki, "example.org.bundle.pem"), os.path.join(e.pki, "example.org.bundle.key"))
    e.certs = dict(certs)
    for name in ("revoked", "kept"):
        e.certs[name] = pki.write(pki.leaf(e.example, [WEB]), e.pki, "crl_" + name)
    assert e.certs["revoked"].cert.serial_number != e.certs["kept"].cert.serial_number
    e.upstream = harness.Upstream("hold")
    e.listen = harness.free_port()
    e.folder = str(tmp_path / "ward")
    os.makedirs(e.folder)
    e.ward = None

    def start(crls=None):
        e.ward = harness.Ward(e.folder, harness.config(e.pki, [("svc", e.listen, e.upstream.port)], crls_yaml(crls)),
                              RULES)
        return e.ward.start()

    e.start = start
    yield e
    if e.ward:
        e.ward.stop()
    e.upstream.close()


def open_stream(e, name):
    """A TLS stream through Ward to the holding upstream that has echoed once."""
    raw = socket.create_connection(("127.0.0.1", e.listen), timeout=10)
    tls = context(e.certs, name).wrap_socket(raw)
    tls.sendall(b"ping")
    assert tls.recv(4) == b"ping"
    return tls


def allow_of(e, mark, stream):
    """The `allow` line of the connection `stream` (matched on the client's address)."""
    return e.ward.wait_for(mark, event="allow", peer_addr="127.0.0.1:%d" % stream.getsockname()[1])


def assert_refused_as_revoked(e, name, mark):
    """`name` connects and is refused: nothing comes back and the log says certificate_revoked."""
    before = e.upstream.accepted
    out = exchange(e.listen, context(e.certs, name), b"x\n")
    assert out.data == b"", out
    record = e.ward.wait_for(mark, event="handshake_error", peer_addr=f"127.0.0.1:{out.local_port}")
    assert record["reason"] == "certificate_revoked", record
    assert record.get("peer_id") == WEB, record
    assert record["cert_sha256"] == cert_sha256(e.certs[name]), record
    assert not [r for r in e.ward.lines(mark)
                if r.get("event") == "allow" and r.get("peer_addr") == f"127.0.0.1:{out.local_port}"]
    assert e.upstream.accepted == before
    return record


# ---------------------------------------------------------------- 1, 2. inbound refusal


@pytest.mark.parametrize("der", [False, True], ids=["pem", "der"])
def test_revoked_client_is_refused_and_others_with_the_same_id_are_not(env, der):
    crl_path = pki.write_crls(os.path.join(env.pki, "example.org.crl" + (".der" if der else ".pem")),
                              [pki.crl(env.example, [env.certs["revoked"].cert.serial_number, 424242])], der=der)
    env.start({"example.org": crl_path})
    mark = env.ward.mark()
    assert_refused_as_revoked(env, "revoked", mark)
    kept = open_stream(env, "kept")
    assert allow_of(env, mark, kept)["peer_id"] == WEB
    kept.close()
    # The session's own `web` SVID (another serial) is not listed either.
    open_stream(env, "web").close()


def test_a_crl_applies_only_to_leaves_of_its_own_issuer(env):
    # example.org's bundle holds two roots; the CRL file holds one CRL of each. Root B's CRL lists the
    # serial of `kept` (issued by the first root): it must not revoke `kept`.
    root_b = pki.ca("example.org root B")
    bundle = os.path.join(env.pki, "example.org.bundle.pem")
    with open(bundle, "ab") as f:
        f.write(root_b.cert.public_bytes(Encoding.PEM))
    env.certs["b_revoked"] = pki.write(pki.leaf(root_b, [WEB]), env.pki, "crl_b_revoked")
    env.certs["b_kept"] = pki.write(pki.leaf(root_b, [WEB]), env.pki, "crl_b_kept")
    crl_path = pki.write_crls(os.path.join(env.pki, "example.org.crl.pem"), [
        pki.crl(env.example, [env.certs["revoked"].cert.serial_number]),
        pki.crl(root_b, [env.certs["b_revoked"].cert.serial_number, env.certs["kept"].cert.serial_number]),
    ])
    env.start({"example.org": crl_path})
    mark = env.ward.mark()
    assert_refused_as_revoked(env, "revoked", mark)
    assert_refused_as_revoked(env, "b_revoked", mark)
    open_stream(env, "kept").close()
    open_stream(env, "b_kept").close()


# ---------------------------------------------------------------- 3. reloads


def test_reload_adding_a_crl_cuts_the_open_connection_and_removing_it_lets_the_client_back(env):
    env.start()
    mark = env.ward.mark()
    doomed = open_stream(env, "revoked")
    doomed_allow = allow_of(env, mark, doomed)
    kept = open_stream(env, "kept")
    kept_allow = allow_of(env, mark, kept)
    assert doomed_allow["peer_id"] == WEB and doomed_allow["conn"] != kept_allow["conn"]

    crl_path = pki.write_crls(os.path.join(env.pki, "example.org.crl.pem"),
                              [pki.crl(env.example, [env.certs["revoked"].cert.serial_number])])
    plain = open(env.ward.config_path).read()
    write_atomically(env.ward.config_path, plain + crls_yaml({"example.org": crl_path}))
    reload(env.ward)
    doomed.settimeout(harness.DEADLINE)
    assert doomed.recv(1) == b""  # close_notify, not a reset
    revoke = env.ward.wait_for(mark, event="revoke", conn=doomed_allow["conn"])
    assert revoke["reason"] == "certificate_revoked", revoke
    close = env.ward.wait_for(mark, event="close", conn=doomed_allow["conn"])
    assert close["close_cause"] == "revoked", close
    # The other client with the same ID keeps its connection.
    kept.sendall(b"still here")
    assert kept.recv(10) == b"still here"
    revoked_conns = {r.get("conn") for r in env.ward.lines(mark) if r.get("event") == "revoke"}
    assert revoked_conns == {doomed_allow["conn"]}, revoked_conns
    # A reconnect is refused.
    assert_refused_as_revoked(env, "revoked", env.ward.mark())

    # Without `crls:` the client is let in again.
    write_atomically(env.ward.config_path, plain)
    reload(env.ward)
    back = open_stream(env, "revoked")
    back.sendall(b"again")
    assert back.recv(5) == b"again"
    back.close()
    kept.close()


def test_crl_file_edit_triggers_a_reload_that_revokes(env):
    crl_path = pki.write_crls(os.path.join(env.pki, "example.org.crl.pem"), [pki.crl(env.example, [])])
    env.start({"example.org": crl_path})
    mark = env.ward.mark()
    doomed = open_stream(env, "revoked")
    allow = allow_of(env, mark, doomed)
    kept = open_stream(env, "kept")
    kept_allow = allow_of(env, mark, kept)
    pki.write_crls(crl_path, [pki.crl(env.example, [env.certs["revoked"].cert.serial_number])])
    reloaded = env.ward.wait_for(mark, event="reload", ok=True)
    assert reloaded["trigger"] == "file", reloaded
    doomed.settimeout(harness.DEADLINE)
    assert doomed.recv(1) == b""
    assert env.ward.wait_for(mark, event="revoke", conn=allow["conn"])["reason"] == "certificate_revoked"
    assert env.ward.wait_for(mark, event="close", conn=allow["conn"])["close_cause"] == "revoked"
    kept.sendall(b"still here")
    assert kept.recv(10) == b"still here"
    assert not [r for r in env.ward.lines(mark) if r.get("event") == "revoke" and r.get("conn") == kept_allow["conn"]]
    kept.close()
    assert_refused_as_revoked(env, "revoked", env.ward.mark())
    # An emptied CRL (file edit again) lets the client back in.
    mark = env.ward.mark()
    pki.write_crls(crl_path, [pki.crl(env.example, [])])
    env.ward.wait_for(mark, event="reload", ok=True)
    open_stream(env, "revoked").close()


# ---------------------------------------------------------------- 4. ward check


def check_ward(certs, folder, crls):
    text = harness.config(certs["dir"], [("svc", 8453, 8080)], crls_yaml(crls))
    return harness.Ward(folder, text, RULES), text


def test_check_accepts_pem_and_der_crls(certs, tmp_path):
    example = pki.load(os.path.join(certs["dir"], "example.org.bundle.pem"),
                       os.path.join(certs["dir"], "example.org.bundle.key"))
    partner = pki.load(os.path.join(certs["dir"], "partner.org.bundle.pem"),
                       os.path.join(certs["dir"], "partner.org.bundle.key"))
    pem = pki.write_crls(str(tmp_path / "example.crl.pem"), [pki.crl(example, [1, 2, 3])])
    der = pki.write_crls(str(tmp_path / "partner.crl"), [pki.crl(partner, [4])], der=True)
    ward, _ = check_ward(certs, str(tmp_path), {"example.org": pem, "partner.org": der})
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_check_reports_a_crl_of_an_unknown_trust_domain_with_file_and_line(certs, tmp_path):
    example = pki.load(os.path.join(certs["dir"], "example.org.bundle.pem"),
                       os.path.join(certs["dir"], "example.org.bundle.key"))
    good = pki.write_crls(str(tmp_path / "example.crl.pem"), [pki.crl(example, [1])])
    ward, text = check_ward(certs, str(tmp_path), {"example.org": good, "nowhere.org": good})
    line = text.splitlines().index(f"  nowhere.org: {good}") + 1
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 1, out.stdout + out.stderr
    found = [l for l in out.stdout.splitlines() if l.startswith(f"{ward.config_path}:{line}: ")]
    assert found and "nowhere.org" in found[0], out.stdout


@pytest.mark.parametrize("kind", ["other_ca", "partner_ca", "certificate", "garbage", "empty"])
def test_check_refuses_a_file_that_is_no_crl_of_the_trust_domain(certs, tmp_path, kind):
    path = str(tmp_path / "example.crl.pem")
    if kind == "other_ca":
        pki.write_crls(path, [pki.crl(pki.ca("example.org root"), [1])])  # same name, another key
    elif kind == "partner_ca":  # a CA Ward trusts, of another trust domain
        partner = pki.load(os.path.join(certs["dir"], "partner.org.bundle.pem"),
                           os.path.join(certs["dir"], "partner.org.bundle.key"))
        pki.write_crls(path, [pki.crl(partner, [1])])
    elif kind == "certificate":
        shutil.copy(certs["web"].cert_path, path)
    elif kind == "garbage":
        with open(path, "wb") as f:
            f.write(b"\x30\x03\x02\x01\x01 this is not a CRL\n")
    else:
        open(path, "wb").close()
    ward, _ = check_ward(certs, str(tmp_path), {"example.org": path})
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 1, out.stdout + out.stderr
    found = [l for l in out.stdout.splitlines()
             if (l.startswith(f"{path}:") or l.startswith(f"{ward.config_path}:")) and "CRL" in l]
    assert found, out.stdout
    # `ward run` refuses the same config.
    run = run_ward("run", "--config", ward.config_path, timeout=harness.DEADLINE)
    assert run.returncode != 0 and "CRL" in run.stdout + run.stderr


# ---------------------------------------------------------------- 5. outbound


def test_outbound_server_with_a_revoked_svid_is_refused(certs, tmp_path):
    example = pki.load(os.path.join(certs["dir"], "example.org.bundle.pem"),
                       os.path.join(certs["dir"], "example.org.bundle.key"))
    folder = str(tmp_path / "pki")
    os.makedirs(folder)
    revoked = pki.write(pki.leaf(example, [ORDERS]), folder, "orders_revoked")
    kept = pki.write(pki.leaf(example, [ORDERS]), folder, "orders_kept")
    crl_path = pki.write_crls(os.path.join(folder, "example.org.crl.pem"),
                              [pki.crl(example, [revoked.cert.serial_number])])
    with contextlib.ExitStack() as stack:
        bad = TLSServer(revoked, certs["example_ca"])
        stack.callback(bad.close)
        good = TLSServer(kept, certs["example_ca"])
        stack.callback(good.close)
        entries = [entry("revoked", bad.port, [ORDERS]), entry("kept", good.port, [ORDERS])]
        a = ward_a(str(tmp_path / "a"), certs["dir"], entries, crls_yaml({"example.org": crl_path}))
        stack.callback(a.stop)
        a.start()
        mark = a.mark()
        out = app_exchange(entries[0]["listen"], b"secret request\n")
        assert out.data == b"" and out.error is None, out
        record = a.wait_for(mark, event="handshake_error", app_addr=out.addr)
        assert record["reason"] == "certificate_revoked", record
        assert record["direction"] == "outbound" and record["listener"] == "revoked"
        assert record.get("peer_id") == ORDERS, record
        assert not [r for r in a.lines(mark) if r.get("event") == "allow" and r.get("app_addr") == out.addr]
        seen = bad.wait_records(1)
        assert len(seen) == 1 and seen[0]["data"] == b"", seen  # not one byte of the app's
        ok = app_exchange(entries[1]["listen"], b"hello\n")
        assert ok.data == b"echo: hello\n", ok
        assert a.wait_for(mark, event="allow", app_addr=ok.addr)["peer_id"] == ORDERS
