#!/usr/bin/env python3
"""Writes the binary seed files of fuzz/seeds/ (run once; the output is committed).

Protobuf seeds are written with a few lines of wire format (field numbers from
proto/proto/strait/discovery/v1), so the fuzz crate needs no extra binary to make them.
"""
import os, struct

here = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(here, target); os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f: f.write(data)

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f; n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n: return bytes(out)

def field(num, value):
    if isinstance(value, int): return varint(num << 3) + varint(value)
    if isinstance(value, str): value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value

# detect: first byte picks the read size, the rest is what a client sends first.
put('detect', 'http1', b'\x03GET /orders HTTP/1.1\r\nHost: orders.demo:8080\r\n\r\n')
put('detect', 'connect', b'\x07CONNECT orders.demo:8080 HTTP/1.1\r\n\r\n')
put('detect', 'h2', b'\x05PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00')
put('detect', 'tls', b'\x02\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03' + bytes(32))
put('detect', 'opaque', b'\x01\x00\x00\x00\x01SSH-2.0-OpenSSH_9.2\r\n')
# transport header: magic, length 3, port, framing.
for proto, name in ((1, 'http2'), (2, 'http1'), (3, 'opaque')):
    put('transport_header', name, b'strait\x00\x01' + struct.pack('>HHB', 3, 8080, proto))
put('transport_header', 'long', b'strait\x00\x01' + struct.pack('>H', 200) + bytes(200))
# discovery: a meshed service with a policy, as the controller sends it.
ep = field(1, '10.0.0.5:8080') + field(2, '10.0.0.5:7143') + field(4, 1) + field(5, 'spiffe://cluster.local/ns/demo/sa/orders') + field(6, 'orders-1')
retry = field(1, '5xx') + field(2, 14) + field(3, 2) + field(4, 500) + field(5, 20) + field(6, 10)
circuit = field(1, 5)
policy = field(1, 2000) + field(2, retry) + field(3, circuit)
svc = field(1, 'orders') + field(2, 'demo') + field(3, 'orders.demo.svc.cluster.local') + field(4, '10.96.0.20') + field(5, 8080) + field(7, ep) + field(7, ep.replace(b'10.0.0.5', b'10.0.0.6')) + field(9, policy)
put('discovery_service', 'meshed', svc)
put('discovery_service', 'zero-budget', svc.replace(field(5, 20), field(5, 0)).replace(field(6, 10), field(6, 0)))
put('discovery_service', 'huge-budget', svc.replace(field(5, 20), field(5, 4000000000)))
put('discovery_messages', 'service', svc)
