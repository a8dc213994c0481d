"""TLS protocol fuzzing (the CI subset of `scripts/fuzz tls`; generators in tlsfuzz.py).

Malformed, truncated, oversized, re-ordered and mistimed records at every stage of a real
handshake, against one Ward shared by the module. After every batch of cases Ward must still run,
still echo for a legitimate client, and have written only JSON lines; a failure names its case
and the bytes it sent (when Ward dies, the batch is replayed one case at a time to find it).
"""
import pytest

import tlsfuzz
from tlsfuzz import ALERT, STAGES, Plan, alert, as_client


@pytest.fixture(scope="module")
def fuzz(certs, tmp_path_factory):
    target = tlsfuzz.Target(certs, str(tmp_path_factory.mktemp("tlsfuzz")))
    runner = tlsfuzz.Runner(target)
    yield runner
    runner.pool.shutdown()
    target.close()


def check(runner, plans):
    failures = runner.run(plans)
    # The runner stops after its first few failures: enough to name the case, short enough to read.
    assert not failures, f"{len(failures)} failing cases:\n" + "\n".join(failures)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_every_plaintext_alert_right_after_client_hello(fuzz, version):
    # The crash this fuzzer was written for: `15 03 03 00 02 02 ff` after a ClientHello.
    check(fuzz, tlsfuzz.alert_plans("after_hello", version))


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_every_encrypted_alert_after_the_handshake(fuzz, version):
    check(fuzz, tlsfuzz.alert_plans("after_established", version))


@pytest.mark.parametrize("stage", STAGES[1:4])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_every_alert_inside_the_handshake(fuzz, stage, version):
    # After Ward's flight, after the client's Certificate, right behind the client's Finished.
    # In TLS 1.3 Ward still takes a plaintext alert right after its flight (a client may not
    # have read the ServerHello yet, RFC 8446 5): that path gets every alert in plaintext too.
    plans = tlsfuzz.alert_plans(stage, version)
    if version == "1.3" and stage == "after_server_flight":
        plans += tlsfuzz.alert_plans(stage, version, sealed=False)
    check(fuzz, plans)


def test_encrypted_alert_really_is_decrypted_by_ward(fuzz):
    # A known alert sealed by us must reach OpenSSL's alert handling, as Ward's log shows by its
    # name: else the 256 encrypted alerts above only tested bad_record_mac.
    target = fuzz.target
    for version in ("1.2", "1.3"):
        plan = Plan("unknown_ca", version, inject={"after_established": [as_client(ALERT, alert(2, 48))]})
        session, outcome = fuzz.one(plan)
        assert outcome.startswith("closed"), outcome
        closes = [r for r in target.logged(session, "close") if r["event"] == "close"]
        assert closes and closes[0].get("detail") == "tlsv1 alert unknown ca", (version, closes)


def test_record_layer_abuse(fuzz):
    check(fuzz, tlsfuzz.record_layer_plans())


def test_handshake_messages_out_of_order(fuzz):
    check(fuzz, tlsfuzz.out_of_order_plans())


def test_bad_certificate_verify_is_refused(fuzz):
    check(fuzz, tlsfuzz.bad_certificate_verify_plans())


def test_renegotiation_and_key_update_floods(fuzz):
    check(fuzz, tlsfuzz.flood_plans())



@pytest.mark.parametrize("version,message", [("1.2", 15), ("1.3", 20)])
def test_oversized_message_other_than_the_certificate_is_not_cert_too_large(fuzz, version, message):
    # A CertificateVerify (1.2) or Finished (1.3) whose length field claims 64 KiB: OpenSSL says
    # "excessive message size", but the certificate was fine: cert_too_large would mislead, and
    # handshake_too_large names what happened.
    plan = Plan(f"TLS {version} message {message} with length 00 ff ff", version, expect="refused",
                flight=lambda s, ms: [tlsfuzz.set_bytes(m, 1, b"\x00\xff\xff") if m[0] == message else m
                                      for m in ms])
    session, outcome = fuzz.one(plan)
    assert outcome.startswith("closed"), outcome
    errors = [r for r in fuzz.target.logged(session, "handshake_error") if r["event"] == "handshake_error"]
    assert errors and errors[0]["reason"] == "handshake_too_large", errors
