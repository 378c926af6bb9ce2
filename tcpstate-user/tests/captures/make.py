#!/usr/bin/python3
"""Crafted captures for `tcpstate replay`'s tests (tests/replay.rs), one file per scenario of the
state machine, and the same connection in every link type and file format the replay reads.

Run with Debian's python3-scapy (`cargo xtask setup`) from this directory:
    /usr/bin/python3 make.py
The .pcap/.pcapng files are committed, so the tests need no scapy; rerun this after changing it.
Sequence numbers are exact: every segment is what a real stack would send at that point.
"""

from scapy.all import (
    IP, IPv6, TCP, Ether, Dot1Q, Dot1AD, CookedLinux, CookedLinuxV2, Raw, wrpcap, wrpcapng,
)

T0 = 1764655200.0  # 2025-12-02T06:00:00Z: every capture starts here
CLIENT, SERVER = "192.0.2.2", "192.0.2.1"
CLIENT6, SERVER6 = "2001:db8::2", "2001:db8::1"
CPORT, SPORT = 40000, 8080


class Conv:
    """One TCP connection's segments, with each side's next sequence number kept."""

    def __init__(self, c=CLIENT, s=SERVER, cport=CPORT, sport=SPORT, cisn=1000, sisn=5000, v6=False):
        self.addr = {"c": c, "s": s}
        self.port = {"c": cport, "s": sport}
        self.nxt = {"c": cisn, "s": sisn}
        self.v6 = v6
        self.pkts = []
        self.t = T0

    def seg(self, who, flags, data=b"", seq=None, ack=None, dt=0.001, opts=None, window=65535):
        other = "s" if who == "c" else "c"
        ip = (IPv6 if self.v6 else IP)(src=self.addr[who], dst=self.addr[other])
        tcp = TCP(sport=self.port[who], dport=self.port[other], flags=flags,
                  seq=self.nxt[who] if seq is None else seq,
                  ack=(self.nxt[other] if ack is None else ack) if "A" in flags else 0,
                  window=window, options=opts or [])
        p = ip / tcp / Raw(data) if data else ip / tcp
        self.t += dt
        p.time = self.t
        self.pkts.append(p)
        if seq is None:
            self.nxt[who] += len(data) + (1 if ("S" in flags or "F" in flags) else 0)
        return p

    def handshake(self):
        self.seg("c", "S", opts=[("MSS", 1460), ("WScale", 7)])
        self.seg("s", "SA", opts=[("MSS", 1460), ("WScale", 7)])
        self.seg("c", "A")
        return self

    def data(self, who, n=100):
        other = "s" if who == "c" else "c"
        self.seg(who, "PA", b"x" * n)
        self.seg(other, "A")
        return self


def ether(pkts):
    out = []
    for p in pkts:
        e = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / p
        e.time = p.time
        out.append(e)
    return out


def write(name, pkts, **kw):
    wrpcap(name, ether(pkts), **kw)


def cut(name, snaplen):
    """Rewrites a (little-endian, microsecond) pcap as a capture with this snaplen would have
    written it: each record keeps its first `snaplen` bytes and its original length. (scapy's
    own snaplen argument only sets the header.)"""
    import struct
    raw = open(name, "rb").read()
    magic, vmaj, vmin, zone, sig, _, link = struct.unpack("<IHHiIII", raw[:24])
    out = [struct.pack("<IHHiIII", magic, vmaj, vmin, zone, sig, snaplen, link)]
    at = 24
    while at < len(raw):
        sec, usec, incl, orig = struct.unpack("<IIII", raw[at:at + 16])
        data = raw[at + 16:at + 16 + incl]
        at += 16 + incl
        data = data[:snaplen]
        out.append(struct.pack("<IIII", sec, usec, len(data), orig) + data)
    open(name, "wb").write(b"".join(out))


def scenarios():
    # Client closes first: client TIME_WAIT, server CLOSED after LAST_ACK.
    c = Conv().handshake().data("c").data("s")
    c.seg("c", "FA"); c.seg("s", "A"); c.seg("s", "FA"); c.seg("c", "A")
    write("close_client_first.pcap", c.pkts)

    # The server never closes: CLOSE_WAIT (a leak) against FIN_WAIT_2.
    c = Conv().handshake().data("c")
    c.seg("c", "FA"); c.seg("s", "A")
    write("close_wait.pcap", c.pkts)

    # Simultaneous open (RFC 9293 figure 7): SYNs cross, then SYN-ACKs.
    c = Conv()
    c.seg("c", "S")
    c.seg("s", "S", seq=c.nxt["s"])
    c.nxt["s"] += 1
    c.seg("c", "SA", seq=c.nxt["c"] - 1)
    c.seg("s", "SA", seq=c.nxt["s"] - 1)
    c.data("c")
    write("simultaneous_open.pcap", c.pkts)

    # Simultaneous close (RFC 9293 figure 13): FINs cross, each then acknowledged.
    c = Conv().handshake().data("c")
    fin_c, fin_s = c.nxt["c"], c.nxt["s"]
    c.seg("c", "FA", seq=fin_c, ack=fin_s)
    c.seg("s", "FA", seq=fin_s, ack=fin_c)
    c.nxt["c"] += 1; c.nxt["s"] += 1
    c.seg("c", "A"); c.seg("s", "A")
    write("simultaneous_close.pcap", c.pkts)

    # RST in each state.
    c = Conv()
    c.seg("c", "S")
    c.seg("s", "RA", seq=0, ack=c.nxt["c"])
    write("rst_syn_sent.pcap", c.pkts)  # refused

    c = Conv()
    c.seg("c", "S"); c.seg("s", "SA")
    c.seg("c", "R", seq=c.nxt["c"])
    write("rst_syn_recv.pcap", c.pkts)  # handshake reset

    c = Conv().handshake().data("c")
    c.seg("s", "RA")
    write("rst_established.pcap", c.pkts)

    c = Conv().handshake().data("c")
    c.seg("c", "FA")
    c.seg("s", "RA", ack=c.nxt["c"] - 1)
    write("rst_fin_wait1.pcap", c.pkts)

    c = Conv().handshake().data("c")
    c.seg("c", "FA"); c.seg("s", "A")
    c.seg("s", "RA")
    write("rst_close_wait.pcap", c.pkts)

    c = Conv().handshake().data("c")
    c.seg("c", "FA"); c.seg("s", "A"); c.seg("s", "FA")
    c.seg("c", "R", seq=c.nxt["c"])
    write("rst_last_ack.pcap", c.pkts)

    c = Conv().handshake().data("c")
    c.seg("c", "FA"); c.seg("s", "A")
    c.seg("s", "RA")
    write("rst_fin_wait2.pcap", c.pkts)  # the client in FIN_WAIT_2 receives it

    c = Conv().handshake().data("c")
    fin_c, fin_s = c.nxt["c"], c.nxt["s"]
    c.seg("c", "FA", seq=fin_c, ack=fin_s)
    c.seg("s", "FA", seq=fin_s, ack=fin_c)
    c.nxt["c"] += 1; c.nxt["s"] += 1
    c.seg("s", "R", seq=c.nxt["s"])
    write("rst_closing.pcap", c.pkts)  # both in CLOSING

    c = Conv().handshake().data("c")
    c.seg("c", "FA"); c.seg("s", "A"); c.seg("s", "FA"); c.seg("c", "A")
    c.seg("s", "R", seq=c.nxt["s"])
    write("rst_time_wait.pcap", c.pkts)  # RFC 1337's TIME-WAIT assassination, as the mirror sees it

    # A blind RST far outside the receiver's window changes nothing.
    c = Conv().handshake().data("c")
    c.seg("s", "R", seq=c.nxt["s"] + 0x40000000)
    write("rst_out_of_window.pcap", c.pkts)

    # Port reuse: the same 4-tuple opens again from TIME_WAIT two seconds later, with a new ISN.
    c = Conv().handshake().data("c")
    c.seg("c", "FA"); c.seg("s", "A"); c.seg("s", "FA"); c.seg("c", "A")
    c.nxt["c"] += 100000; c.nxt["s"] += 100000
    c.seg("c", "S", dt=2.0); c.seg("s", "SA"); c.seg("c", "A")
    c.data("c")
    write("port_reuse.pcap", c.pkts)

    # Midstream pickup: data of a connection whose handshake was before the capture.
    c = Conv(cisn=777777, sisn=888888)
    c.data("c").data("s").data("c")
    write("midstream.pcap", c.pkts)

    # Timeouts in capture time: a SYN nobody answers, a connection left in TIME_WAIT, then 200 s
    # later another connection's data keeps the capture going.
    a = Conv(cport=40001)
    a.seg("c", "S")
    b = Conv(cport=40002).handshake()
    b.seg("c", "FA"); b.seg("s", "A"); b.seg("s", "FA"); b.seg("c", "A")
    late = Conv(cport=40003, cisn=1, sisn=2)
    late.t = T0 + 200
    late.data("c")
    pkts = sorted(a.pkts + b.pkts + late.pkts, key=lambda p: p.time)
    write("timeouts.pcap", pkts)


def listener_drops():
    # A listener that drops connections, seen from the packets: on 8080 one client's SYN sent
    # twice more before any SYN-ACK (its listener dropped them), another connection's SYN-ACK
    # sent twice more after the final ACK (the listener dropped that ACK); on 9090 a connection
    # with nothing sent again, and a client that tries once more with a new ISN (a new attempt).
    a = Conv(cport=40001)
    a.seg("c", "S")
    a.seg("c", "S", seq=a.nxt["c"] - 1, dt=1.0)
    a.seg("c", "S", seq=a.nxt["c"] - 1, dt=2.0)
    a.seg("s", "SA"); a.seg("c", "A")
    b = Conv(cport=40002, cisn=7000, sisn=9000).handshake()
    b.seg("s", "SA", seq=b.nxt["s"] - 1, ack=b.nxt["c"], dt=1.0)
    b.seg("s", "SA", seq=b.nxt["s"] - 1, ack=b.nxt["c"], dt=2.0)
    c = Conv(cport=40003, sport=9090).handshake().data("c")
    d = Conv(cport=40004, sport=9090, cisn=100)
    d.seg("c", "S")
    d.nxt["c"] += 5000
    d.seg("c", "S", dt=1.0)
    pkts = sorted(a.pkts + b.pkts + c.pkts + d.pkts, key=lambda p: p.time)
    write("listener_drops.pcap", pkts)


def closes_and_stalls():
    # How long applications take to close, and who stopped reading, per port. On 8080: a server
    # that closes 2.5 s after its client's FIN; a server whose application stopped reading (it
    # advertises a zero window, answers the client's one-byte window probe with another, and is
    # still stalled when the capture ends). On 9090: a server that closes 10 ms after the FIN.
    a = Conv(cport=40001).handshake().data("c")
    a.seg("c", "FA"); a.seg("s", "A")
    a.seg("s", "FA", dt=2.5); a.seg("c", "A")
    b = Conv(cport=40002, cisn=7000, sisn=9000).handshake()
    b.seg("c", "PA", b"x" * 1000)
    b.seg("s", "A", window=0, dt=0.01)
    b.seg("c", "A", b"x", dt=0.2)
    b.seg("s", "A", ack=b.nxt["c"] - 1, window=0)
    c = Conv(cport=40003, sport=9090, cisn=20000, sisn=30000).handshake().data("c")
    c.seg("c", "FA"); c.seg("s", "A", dt=0.005)
    c.seg("s", "FA", dt=0.005); c.seg("c", "A")
    pkts = sorted(a.pkts + b.pkts + c.pkts, key=lambda p: p.time)
    write("closes_and_stalls.pcap", pkts)


def formats():
    """The close_client_first connection in every link type and format; the closing FIN carries
    1000 bytes, so a reader that took the captured length for the payload would miss the ACK of
    that FIN."""
    def conn(v6=False):
        c = Conv(c=CLIENT6 if v6 else CLIENT, s=SERVER6 if v6 else SERVER, v6=v6)
        c.handshake().data("c", 1400).data("s", 1400)
        c.seg("c", "FPA", b"y" * 1000); c.seg("s", "A"); c.seg("s", "FA"); c.seg("c", "A")
        return c.pkts

    pkts = conn()
    write("fmt_ethernet.pcap", pkts)
    wrpcap("fmt_ethernet_ns.pcap", ether(pkts), nano=True)
    wrpcapng("fmt_ethernet.pcapng", ether(pkts))
    write("fmt_ipv6.pcap", conn(v6=True))
    write("fmt_snaplen.pcap", pkts)
    cut("fmt_snaplen.pcap", 96)
    wrpcap("fmt_raw.pcap", pkts, linktype=101)
    sll = []
    for p in pkts:
        q = CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=b"\x02\0\0\0\0\x02\0\0", proto=0x0800) / p
        q.time = p.time
        sll.append(q)
    wrpcap("fmt_sll.pcap", sll)
    sll2 = []
    for p in pkts:
        q = CookedLinuxV2(proto=0x0800, ifindex=2, pkttype=0, lladdrtype=1, lladdrlen=6, src=b"\x02\0\0\0\0\x02\0\0") / p
        q.time = p.time
        sll2.append(q)
    wrpcap("fmt_sll2.pcap", sll2)
    vlan = []
    qinq = []
    for p in pkts:
        v = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / Dot1Q(vlan=10) / p
        v.time = p.time
        vlan.append(v)
        q = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / Dot1AD(vlan=20) / Dot1Q(vlan=10) / p
        q.time = p.time
        qinq.append(q)
    wrpcap("fmt_vlan.pcap", vlan)
    wrpcap("fmt_qinq.pcap", qinq)


def pcapng_by_hand():
    """A pcapng scapy does not write: two interfaces of different link types (Ethernet, and raw
    IP with nanosecond timestamps through if_tsresol), a simple packet block, a comment block
    type the replay skips; and a big-endian pcap. Both hold the close_client_first connection."""
    import struct
    c = Conv().handshake().data("c").data("s")
    c.seg("c", "FA"); c.seg("s", "A"); c.seg("s", "FA"); c.seg("c", "A")
    pkts = c.pkts

    def block(btype, body):
        body += b"\0" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb_eth = block(1, struct.pack("<HHI", 1, 0, 0))
    # Option 9 (if_tsresol) = 9: nanoseconds; option 0 ends the list.
    idb_raw = block(1, struct.pack("<HHI", 101, 0, 0) + struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0))
    out = [shb, idb_eth, idb_raw]
    for i, p in enumerate(pkts):
        if i % 2 == 0:
            data = bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / p)
            ts = int(round(float(p.time) * 1e6))
            iface = 0
        else:
            data = bytes(p)
            ts = int(round(float(p.time) * 1e9))
            iface = 1
        out.append(block(6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data))
    # A name resolution block (type 4) with no records, between packets: skipped.
    out.insert(5, block(4, struct.pack("<HH", 0, 0)))
    open("corpus/two_interfaces.pcapng", "wb").write(b"".join(out))

    # The same connection in a big-endian pcap (a capture written on a big-endian host).
    recs = [struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for p in pkts:
        data = bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / p)
        us = int(round(float(p.time) * 1e6))
        recs.append(struct.pack(">IIII", us // 1000000, us % 1000000, len(data), len(data)) + data)
    open("corpus/big_endian.pcap", "wb").write(b"".join(recs))


if __name__ == "__main__":
    scenarios()
    listener_drops()
    closes_and_stalls()
    formats()
    pcapng_by_hand()
