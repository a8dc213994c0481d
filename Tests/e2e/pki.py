"""A test PKI built in code: each helper makes one kind of certificate the SVID rules judge."""
import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


@dataclass
class Issued:
    cert: x509.Certificate
    key: object
    cert_path: str = ""
    key_path: str = ""


def _name(text):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _key(kind, rsa_bits=2048):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return ec.generate_private_key(ec.SECP256R1())


def ca(name, issuer=None, days=30, uris=(), not_before=None, not_after=None):
    """A CA valid from `not_before` (default 5 minutes ago) until `not_after` (default `days` from now)."""
    key = _key("ec")
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer.cert.subject if issuer else _name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def _key_usage(digital_signature=False, cert_sign=False, key_encipherment=False):
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=key_encipherment,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False)


def leaf(issuer, uris, *, key_kind="ec", rsa_bits=2048, is_ca=False, digital_signature=True, cert_sign=False,
         eku=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH),
         not_before=None, lifetime=datetime.timedelta(hours=1), ips=(), dns=()):
    key = _key(key_kind, rsa_bits)
    not_before = not_before or NOW - datetime.timedelta(minutes=5)
    sans = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    sans += [x509.DNSName(d) for d in dns]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("svid"))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=digital_signature, cert_sign=cert_sign,
                       key_encipherment=key_kind == "rsa"), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def _der(tag, content):
    """One DER TLV."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + content


def _der_children(der):
    """The raw TLVs inside one DER SEQUENCE."""
    def header(i):
        first = der[i + 1]
        if first < 0x80:
            return i + 2, first
        count = first & 0x7F
        return i + 2 + count, int.from_bytes(der[i + 2:i + 2 + count], "big")
    start, length = header(0)
    children, i = [], start
    while i < start + length:
        body, size = header(i)
        children.append(der[i:body + size])
        i = body + size
    return children


def resign_sha1(issued, issuer):
    """`issued` re-signed by `issuer` with SHA-1 (cryptography refuses SHA-1 in its builder, so the
    TBS is re-assembled by hand and signed through hazmat). Returns a new Issued with the same key."""
    if isinstance(issuer.key, rsa.RSAPrivateKey):
        algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010105")) + b"\x05\x00")  # sha1WithRSA
        sign = lambda data: issuer.key.sign(data, padding.PKCS1v15(), hashes.SHA1())
    else:
        algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a8648ce3d0401")))  # ecdsa-with-SHA1
        sign = lambda data: issuer.key.sign(data, ec.ECDSA(hashes.SHA1()))
    parts = _der_children(issued.cert.tbs_certificate_bytes)
    at = 2 if parts[0][0] == 0xA0 else 1  # [0] version, serial, then the signature algorithm
    tbs = _der(0x30, b"".join(parts[:at] + [algorithm] + parts[at + 1:]))
    der = _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + sign(tbs)))
    cert = x509.load_der_x509_certificate(der)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA1)
    return Issued(cert, issued.key)


def write(issued, folder, name, chain=()):
    """Writes NAME.pem (leaf then `chain`) and NAME.key; returns `issued` with the paths set."""
    issued.cert_path = os.path.join(folder, name + ".pem")
    issued.key_path = os.path.join(folder, name + ".key")
    with open(issued.cert_path, "wb") as out:
        for cert in (issued.cert, *[c.cert for c in chain]):
            out.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.open(issued.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(issued.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return issued


def load(cert_path, key_path):
    """An Issued read back from files `write` made (e.g. a CA of the session PKI, to issue more)."""
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    return Issued(cert, key, cert_path, key_path)


def crl(issuer, serials=(), *, days=7):
    """A CRL signed by `issuer` (an Issued CA) that lists `serials`, valid from 5 minutes ago."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(NOW - datetime.timedelta(minutes=5))
        .next_update(NOW + datetime.timedelta(days=days))
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(NOW - datetime.timedelta(minutes=5)).build())
    return builder.sign(issuer.key, hashes.SHA256())


def write_crls(path, crls, der=False):
    """Writes `crls` to `path` atomically: PEM blocks one after another, or (der=True) one DER CRL."""
    if der:
        assert len(crls) == 1, "a DER file holds a single CRL"
        data = crls[0].public_bytes(serialization.Encoding.DER)
    else:
        data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in crls)
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
    return path
