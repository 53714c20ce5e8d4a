package network

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestSourceSpoofingDropped writes frames with forged sources where a guest
// (into its TAP) or a sandbox namespace (out of its veth) could, and checks
// that they are dropped while the sandbox's own traffic still flows. Each
// forged frame is followed, on the same path, by a legitimate sentinel: once
// the sentinel is seen, a forged frame not seen before it was dropped.
func TestSourceSpoofingDropped(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a, b := e.attach(ctx), e.attach(ctx)
	foreign := netip.MustParseAddr("198.51.100.7")
	outside := netip.MustParseAddr("203.0.113.9")
	gw := e.m.cfg.Gateway

	tapMAC := linkMAC(t, a.NetnsPath, TAPName)
	ethMAC := linkMAC(t, a.NetnsPath, NamespaceIface)
	guestMAC, err := net.ParseMAC(a.GuestMAC)
	if err != nil {
		t.Fatal(err)
	}
	brMAC := bridgeMAC(gw)

	for _, tc := range []struct {
		name string
		// from writes frames where the attacker can: "tap" (a guest) or
		// "veth" (the sandbox namespace's end of the veth).
		from string
		// spoof is the forged frame; sentinel the legitimate one after it.
		spoof, sentinel func(marker []byte) []byte
		// sniffNS and sniffDev are where the frames would show up.
		sniffNS, sniffDev string
		// seenSrc is the source address the sentinel carries there.
		seenSrc netip.Addr
	}{
		{
			name: "guest forges a foreign address out to the uplink", from: "tap",
			spoof:    func(m []byte) []byte { return udpFrame(tapMAC, guestMAC, foreign, outside, m) },
			sentinel: func(m []byte) []byte { return udpFrame(tapMAC, guestMAC, GuestAddr, outside, m) },
			sniffNS:  a.NetnsPath, sniffDev: NamespaceIface, seenSrc: a.IP,
		},
		{
			name: "guest forges another sandbox's address to the host", from: "tap",
			spoof:    func(m []byte) []byte { return udpFrame(tapMAC, guestMAC, b.IP, gw, m) },
			sentinel: func(m []byte) []byte { return udpFrame(tapMAC, guestMAC, GuestAddr, gw, m) },
			sniffNS:  a.NetnsPath, sniffDev: NamespaceIface, seenSrc: a.IP,
		},
		{
			name: "namespace forges a foreign address into the bridge", from: "veth",
			spoof:    func(m []byte) []byte { return udpFrame(brMAC, ethMAC, foreign, outside, m) },
			sentinel: func(m []byte) []byte { return udpFrame(brMAC, ethMAC, a.IP, gw, m) },
			sniffNS:  e.host, sniffDev: e.m.cfg.Bridge, seenSrc: a.IP,
		},
		{
			name: "namespace forges another sandbox's address to the host", from: "veth",
			spoof:    func(m []byte) []byte { return udpFrame(brMAC, ethMAC, b.IP, gw, m) },
			sentinel: func(m []byte) []byte { return udpFrame(brMAC, ethMAC, a.IP, gw, m) },
			sniffNS:  e.host, sniffDev: e.m.cfg.Bridge, seenSrc: a.IP,
		},
		{
			name: "namespace claims another sandbox's address by ARP", from: "veth",
			spoof:    func(m []byte) []byte { return arpFrame(ethMAC, b.IP, gw) },
			sentinel: func(m []byte) []byte { return udpFrame(brMAC, ethMAC, a.IP, gw, m) },
			sniffNS:  e.host, sniffDev: e.m.cfg.Bridge, seenSrc: a.IP,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := []byte("spoof-" + randHex(8))
			sentinel := []byte("sentinel-" + randHex(8))
			s := sniff(t, tc.sniffNS, tc.sniffDev)
			send := writeTAP(t, a)
			if tc.from == "veth" {
				send = writePacket(t, a.NetnsPath, NamespaceIface)
			}
			send(tc.spoof(marker))
			send(tc.sentinel(sentinel))
			spoofed := func(fr []byte) bool {
				return bytes.Contains(fr, marker) || isARPFrom(fr, b.IP)
			}
			if fr, seen := s.until(t, sentinel, spoofed); seen {
				t.Errorf("forged frame got through to %s: % x", tc.sniffDev, fr)
			}
			if src := s.sentinelSrc; src != tc.seenSrc {
				t.Errorf("sentinel arrived from %s, want %s", src, tc.seenSrc)
			}
		})
	}
}

// linkMAC returns the MAC of interface name in the namespace at path.
func linkMAC(t *testing.T, path, name string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	inNS(t, path, func(h *netlink.Handle) {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		mac = l.Attrs().HardwareAddr
	})
	return mac
}

// udpFrame builds an Ethernet frame holding an IPv4 UDP datagram (port
// 9 to 9, no UDP checksum) from src to dst carrying payload.
func udpFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, payload []byte) []byte {
	ip := make([]byte, 20+8+len(payload))
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:4], uint16(len(ip)))
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip[:20]))
	binary.BigEndian.PutUint16(ip[20:22], 9)
	binary.BigEndian.PutUint16(ip[22:24], 9)
	binary.BigEndian.PutUint16(ip[24:26], uint16(8+len(payload)))
	copy(ip[28:], payload)
	return ether(dstMAC, srcMAC, unix.ETH_P_IP, ip)
}

// arpFrame builds a broadcast ARP request from srcMAC claiming spa, asking
// for tpa.
func arpFrame(srcMAC net.HardwareAddr, spa, tpa netip.Addr) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:2], 1)
	binary.BigEndian.PutUint16(a[2:4], unix.ETH_P_IP)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], 1)
	s, d := spa.As4(), tpa.As4()
	copy(a[8:14], srcMAC)
	copy(a[14:18], s[:])
	copy(a[24:28], d[:])
	return ether(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, srcMAC, unix.ETH_P_ARP, a)
}

// ether prepends an Ethernet header.
func ether(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	fr := make([]byte, 14, 14+len(payload))
	copy(fr[0:6], dst)
	copy(fr[6:12], src)
	binary.BigEndian.PutUint16(fr[12:14], typ)
	return append(fr, payload...)
}

// isARPFrom reports whether fr is an ARP packet whose sender address is spa.
func isARPFrom(fr []byte, spa netip.Addr) bool {
	s := spa.As4()
	return len(fr) >= 42 && binary.BigEndian.Uint16(fr[12:14]) == unix.ETH_P_ARP && bytes.Equal(fr[28:32], s[:])
}

// writeTAP attaches to att's TAP as its guest would and returns a function
// that writes one frame into it.
func writeTAP(t *testing.T, att Attachment) func([]byte) {
	t.Helper()
	var f *os.File
	if err := runInNetns(att.NetnsPath, func() error {
		var err error
		f, err = openTAP(att.TAP)
		return err
	}); err != nil {
		t.Fatalf("open %s: %v", att.TAP, err)
	}
	t.Cleanup(func() { f.Close() })
	return func(fr []byte) {
		if _, err := f.Write(fr); err != nil {
			t.Fatalf("write to %s: %v", att.TAP, err)
		}
	}
}

// writePacket opens a packet socket on interface dev in the namespace at
// path and returns a function that sends one frame out of it.
func writePacket(t *testing.T, path, dev string) func([]byte) {
	t.Helper()
	fd, ifindex := packetSocket(t, path, dev, 0)
	return func(fr []byte) {
		if err := unix.Sendto(fd, fr, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}); err != nil {
			t.Fatalf("send on %s: %v", dev, err)
		}
	}
}

// packetSocket opens an AF_PACKET socket bound to dev (and protocol proto,
// in host order; 0 receives nothing) in the namespace at path, closed at
// the end of the test.
func packetSocket(t *testing.T, path, dev string, proto uint16) (fd, ifindex int) {
	t.Helper()
	if err := runInNetns(path, func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		ifindex = ifi.Index
		nproto := htons(proto)
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(nproto))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: nproto, Ifindex: ifindex}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind to %s: %w", dev, err)
		}
		return nil
	}); err != nil {
		t.Fatalf("packet socket on %s in %s: %v", dev, path, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, ifindex
}

// htons converts a 16-bit value to network byte order.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// sniffer captures every frame on one interface (both directions).
type sniffer struct {
	fd          int
	sentinelSrc netip.Addr // source address of the sentinel, once seen
}

// sniff starts capturing on dev in the namespace at path.
func sniff(t *testing.T, path, dev string) *sniffer {
	t.Helper()
	fd, _ := packetSocket(t, path, dev, unix.ETH_P_ALL)
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return &sniffer{fd: fd}
}

// until reads frames until one carries sentinel, reporting the first frame
// before it that bad matches. It fails the test if the sentinel does not
// arrive within 5 seconds (the legitimate path is broken).
func (s *sniffer) until(t *testing.T, sentinel []byte, bad func([]byte) bool) (badFrame []byte, seen bool) {
	t.Helper()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("capture: %v", err)
		}
		fr := buf[:n]
		if !seen && bad(fr) {
			badFrame, seen = bytes.Clone(fr), true
		}
		if bytes.Contains(fr, sentinel) {
			if len(fr) >= 34 && binary.BigEndian.Uint16(fr[12:14]) == unix.ETH_P_IP {
				s.sentinelSrc = netip.AddrFrom4([4]byte(fr[26:30]))
			}
			return badFrame, seen
		}
	}
	t.Fatal("the legitimate sentinel frame never arrived")
	return nil, false
}
