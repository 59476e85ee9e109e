#!/usr/bin/env python3
"""Counts full and resumed TLS 1.3 handshakes in a pcap, for bench/tls.sh.

    tlsresume.py CAPTURE.pcap SERVER_PORT

Reads the ServerHello messages sent from SERVER_PORT (TLS 1.3 sends them in the clear): a ServerHello
that carries the pre_shared_key extension (41) accepted a resumption ticket; one without it is a full
handshake (certificates, signatures). HelloRetryRequests are skipped. Prints JSON {full, resumed}.
Only the first segment of each server flight is needed, so a small snap length suffices.
"""

import json
import struct
import sys

HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


def packets(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off : off + 16])
        off += 16
        yield linktype, data[off : off + incl]
        off += incl


def tcp_payload(linktype, frame):
    if linktype == 1:  # Ethernet (Linux loopback)
        if len(frame) < 14 or frame[12:14] != b"\x08\x00":
            return None
        ip = frame[14:]
    elif linktype == 113:  # Linux cooked
        ip = frame[16:]
    elif linktype == 276:  # Linux cooked v2
        ip = frame[20:]
    elif linktype in (0, 108):  # BSD loopback
        ip = frame[4:]
    else:
        return None
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
        return None
    ihl = (ip[0] & 0x0F) * 4
    tcp = ip[ihl:]
    if len(tcp) < 20:
        return None
    sport = struct.unpack(">H", tcp[0:2])[0]
    doff = (tcp[12] >> 4) * 4
    return sport, tcp[doff:]


def server_hello_resumed(payload):
    """None if the payload does not start with a ServerHello, else whether it accepted a PSK."""
    if len(payload) < 9 or payload[0] != 0x16 or payload[5] != 0x02:
        return None
    body = payload[9:]
    if len(body) < 35:
        return None
    if body[2:34] == HRR_RANDOM:
        return None
    pos = 34
    sid_len = body[pos]
    pos += 1 + sid_len + 2 + 1  # session id, cipher suite, compression
    if pos + 2 > len(body):
        return None
    ext_end = pos + 2 + struct.unpack(">H", body[pos : pos + 2])[0]
    pos += 2
    while pos + 4 <= min(ext_end, len(body)):
        etype, elen = struct.unpack(">HH", body[pos : pos + 4])
        if etype == 41:
            return True
        pos += 4 + elen
    return False


def main():
    path, port = sys.argv[1], int(sys.argv[2])
    full = resumed = 0
    for linktype, frame in packets(path):
        parsed = tcp_payload(linktype, frame)
        if not parsed or parsed[0] != port:
            continue
        r = server_hello_resumed(parsed[1])
        if r is True:
            resumed += 1
        elif r is False:
            full += 1
    print(json.dumps({"full": full, "resumed": resumed}))


if __name__ == "__main__":
    main()
