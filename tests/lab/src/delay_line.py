# A delay line between two interfaces of one network namespace, for the
# lab's soak: what `tc qdisc … netem delay D J` would do on this kernel
# if it had sch_netem (it has not, nor nftables' `queue`).
#
# Every frame that arrives on UPLINK (the router's end of a NAT's veth,
# taken out of its bridge) is sent out of BRIDGE_SIDE (a veth whose peer
# is in the bridge) after DELAY ± JITTER ms, drawn uniformly per frame,
# as netem does (frames may overtake one another); every frame arriving
# on BRIDGE_SIDE goes back out of UPLINK at once. The kernel forwards
# neither interface itself (neither has an address nor a bridge).
#
# usage: python3 delay_line.py UPLINK BRIDGE_SIDE DELAY_MS JITTER_MS COUNT_FILE
# (on SIGUSR1 it writes into COUNT_FILE how many frames it has delayed)
import errno
import heapq
import signal
import random
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def finished(frame):
    """The frame with its TCP or UDP checksum filled in: a veth hands a
    packet socket what the sender left for the hardware to sum
    (checksum offload), and nothing sums it on the way out again."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return frame
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack("!H", frame[16:18])[0]
    proto = frame[23]
    if proto not in (6, 17) or struct.unpack("!H", frame[20:22])[0] & 0x1FFF:
        return frame
    l4 = bytearray(frame[14 + ihl : 14 + total])
    at = 16 if proto == 6 else 6
    if len(l4) < at + 2:
        return frame
    l4[at : at + 2] = b"\0\0"
    pseudo = frame[26:34] + struct.pack("!BBH", 0, proto, len(l4))
    sum_ = checksum(pseudo + bytes(l4))
    if proto == 17 and sum_ == 0:
        sum_ = 0xFFFF
    l4[at : at + 2] = struct.pack("!H", sum_)
    return frame[: 14 + ihl] + bytes(l4) + frame[14 + total :]


def open_on(ifname):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def main():
    uplink, bridge_side = sys.argv[1], sys.argv[2]
    delay, jitter = float(sys.argv[3]) / 1000, float(sys.argv[4]) / 1000
    up, br = open_on(uplink), open_on(bridge_side)
    held = []  # (due, n, frame)
    n = 0

    late = []  # how late each frame went out, s

    def count(*_):
        with open(sys.argv[5], "w") as f:
            late.sort()
            p99 = late[int(len(late) * 0.99)] if late else 0
            f.write("%d %.1f %.1f" % (n, p99 * 1000, (late[-1] if late else 0) * 1000))

    signal.signal(signal.SIGUSR1, count)
    print("delay line up", flush=True)
    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            due, _, frame = heapq.heappop(held)
            late.append(now - due)
            try:
                br.send(frame)
            except OSError:
                pass
        wait = max(0.0, held[0][0] - now) if held else 1.0
        try:
            ready, _, _ = select.select([up, br], [], [], wait)
        except InterruptedError:
            continue
        for s in ready:
            while True:
                try:
                    frame, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError as e:
                    # A change of the interface's state is reported once
                    # (ENETDOWN); the socket goes on.
                    if e.errno == errno.ENETDOWN:
                        break
                    raise
                if addr[2] == PACKET_OUTGOING:
                    continue
                frame = finished(frame)
                if s is up:
                    due = time.monotonic() + max(0.0, random.uniform(delay - jitter, delay + jitter))
                    n += 1
                    heapq.heappush(held, (due, n, frame))
                else:
                    try:
                        up.send(frame)
                    except OSError:
                        pass


main()
