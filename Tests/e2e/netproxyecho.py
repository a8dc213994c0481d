"""A PROXY v2 upstream for test_multihost.py, run inside the `orders` namespace: reads Ward's
header, then answers the first line with one JSON line: the header's source, destination and
SPIFFE ID (TLV 0xE0), and the line. Prints "ready" once it listens. Usage: netproxyecho.py PORT"""
import json
import sys
import threading

from proxyv2 import SPIFFE_TLV, ProxyUpstream


class Reporting(ProxyUpstream):
    def reply(self, header, line):
        (src, sport), (dst, dport), tlvs = header
        spiffe_id = dict(tlvs).get(SPIFFE_TLV, b"").decode()
        return json.dumps({"source": f"{src}:{sport}", "destination": f"{dst}:{dport}", "id": spiffe_id,
                           "line": line.decode(errors="replace")}).encode() + b"\n"


Reporting("127.0.0.1", int(sys.argv[1]))
print("ready", flush=True)
threading.Event().wait()
