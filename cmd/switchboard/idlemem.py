#!/usr/bin/env python3
"""Opens N idle WebSocket connections to a server on 127.0.0.1 and reports the server's memory
per connection: resident set (/proc/<pid>/status) and, when the server has a pprof listener,
the live heap and stacks after a forced collection. Driven by idlemem.sh (docs/performance.md).

Modes: bare (upgrade, nothing sent), dashboard (SUBSCRIBE one topic: the connection has sent one
request), request (SUBSCRIBE, then one GET_AUTHORS). The client is blocking sockets in one thread,
so it stops by itself: after the last connection it waits --settle seconds, measures, and closes
everything.
"""
import argparse
import json
import os
import re
import resource
import selectors
import socket
import struct
import sys
import time
import urllib.request
import uuid


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def runtime_figures(pprof):
    """Live heap and stacks after two forced collections (pprof's ?gc=1), from /debug/pprof/heap
    with debug=1 (its MemStats trailer)."""
    if not pprof:
        return None
    for _ in range(2):
        with urllib.request.urlopen(f"http://{pprof}/debug/pprof/heap?gc=1&debug=1", timeout=60) as r:
            text = r.read().decode()
    out = {}
    for name in ("HeapAlloc", "HeapInuse", "HeapObjects", "HeapSys", "HeapIdle", "HeapReleased", "NextGC", "GCSys", "OtherSys"):
        m = re.search(r"# %s = (\d+)" % name, text)
        if m:
            out[name] = int(m.group(1))
    m = re.search(r"# Stack = (\d+) / (\d+)", text)
    if m:
        out["StackInuse"], out["StackSys"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"# MSpan = (\d+) / (\d+)", text)
    if m:
        out["MSpanSys"] = int(m.group(2))
    return out


def frame(payload):
    """A masked text frame with a zero key (the payload goes unchanged)."""
    b = payload.encode()
    n = len(b)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    else:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return head + b"\0\0\0\0" + b


def read_frame(s, buf):
    """Reads one server frame from s (buf holds bytes already received); returns (opcode,
    payload, rest)."""
    def need(k):
        nonlocal buf
        while len(buf) < k:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            buf += chunk
    need(2)
    op, n = buf[0] & 0x0F, buf[1] & 0x7F
    off = 2
    if n == 126:
        need(4)
        n, off = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        need(10)
        n, off = struct.unpack("!Q", buf[2:10])[0], 10
    need(off + n)
    return op, buf[off:off + n], buf[off + n:]


def request(s, pkg_id, data):
    rid = str(uuid.uuid4())
    s.sendall(frame(json.dumps({"pkg_id": pkg_id, "req_id": rid, "data": data})))
    buf = b""
    while True:
        op, p, buf = read_frame(s, buf)
        if op == 8:
            raise RuntimeError("closed by the server: %r" % p)
        if op == 1 and rid.encode() in p:
            if b'"status_code":0' not in p:
                raise RuntimeError("answer: %s" % p[:200])
            return


def dial(host, port, path, token, i=0):
    # 16 loopback source addresses, as the load tool does: one source's ephemeral ports (and
    # those still in TIME_WAIT from the previous case) do not go far at 19 000 connections.
    s = socket.create_connection((host, port), timeout=30, source_address=(f"127.0.0.{1 + i % 16}", 0))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               f"Sec-WebSocket-Version: 13\r\n{auth}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError("handshake: %s" % head.split(b"\r\n")[0].decode())
    return s


class Pinged:
    """Answers the server's keepalive pings on every open connection (a real client does; the
    server drops a peer silent for twice its ping interval, and a pong is when a read loop whose
    stack a request grew goes on on a fresh one)."""

    def __init__(self):
        self.sel = selectors.EpollSelector()
        self.bufs = {}
        self.pongs = 0

    def add(self, s):
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ)
        self.bufs[s] = b""

    def service(self, timeout):
        for key, _ in self.sel.select(timeout):
            s = key.fileobj
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise RuntimeError("closed by the server")
            buf = self.bufs[s] + chunk
            while len(buf) >= 2:
                op, n = buf[0] & 0x0F, buf[1] & 0x7F
                if n >= 126 or len(buf) < 2 + n:
                    break  # nothing long comes to an idle client; wait for the rest
                payload, buf = buf[2:2 + n], buf[2 + n:]
                if op == 8:
                    raise RuntimeError("closed by the server: %r" % payload)
                if op == 9:
                    s.setblocking(True)
                    s.sendall(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + b"\0\0\0\0" + payload)
                    s.setblocking(False)
                    self.pongs += 1
            self.bufs[s] = buf

    def wait(self, seconds):
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.service(left)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:8000")
    ap.add_argument("--path", default="/web")
    ap.add_argument("--token", default="")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--pprof", default="", help="host:port of the server's pprof listener")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--mode", choices=["bare", "dashboard", "request"], default="bare")
    ap.add_argument("--topic", default="dashboards.idle")
    ap.add_argument("--settle", type=float, default=5)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    if not host.startswith("127."):
        sys.exit("idlemem: loopback only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    before_rt = runtime_figures(a.pprof)
    time.sleep(1)
    before = rss_kib(a.pid)
    conns = []
    pinged = Pinged()
    start = time.monotonic()
    try:
        for i in range(a.n):
            s = dial(host, int(port), a.path, a.token, i)
            conns.append(s)
            if a.mode in ("dashboard", "request"):
                request(s, 10, {"topic": a.topic})
            if a.mode == "request":
                request(s, 1, {"filters": {"name": "idle"}})
            pinged.add(s)
            if i % 100 == 99:
                pinged.service(0)
        took = time.monotonic() - start
        pinged.wait(a.settle)
        after = rss_kib(a.pid)
        after_anon = rss_kib(a.pid, "RssAnon")
        after_rt = runtime_figures(a.pprof)
        res = {"label": a.label, "mode": a.mode, "n": a.n, "seconds": round(took, 2),
               "per_second": round(a.n / took), "rss_before_mib": round(before / 1024, 1),
               "rss_after_mib": round(after / 1024, 1),
               "rss_per_conn_kib": round((after - before) / a.n, 2),
               "rss_anon_after_mib": round(after_anon / 1024, 1), "pongs": pinged.pongs}
        if before_rt and after_rt:
            for k in ("HeapAlloc", "HeapInuse", "StackInuse"):
                res[k.lower() + "_per_conn_b"] = round((after_rt[k] - before_rt[k]) / a.n)
            if os.environ.get("IDLEMEM_VERBOSE"):
                res["runtime_after"] = {k: round(v / a.n) for k, v in after_rt.items()}
                res["runtime_before_mib"] = {k: round(v / 2**20, 1) for k, v in before_rt.items()}
            res["objects_per_conn"] = round((after_rt["HeapObjects"] - before_rt["HeapObjects"]) / a.n, 1)
        print(json.dumps(res), flush=True)
    finally:
        for s in conns:
            s.close()


if __name__ == "__main__":
    main()
