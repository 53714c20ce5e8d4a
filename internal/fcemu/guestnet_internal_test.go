package fcemu

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

func TestParseIPArg(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cmdline string
		ok      bool
		ip      string
		dev     string
	}{
		{"full", "console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off:1.1.1.1 reboot=k", true, "172.16.0.2", "eth0"},
		{"no dns", "ip=10.0.0.5::10.0.0.1:255.255.255.0::eth1:off", true, "10.0.0.5", "eth1"},
		{"empty device", "ip=10.0.0.5::10.0.0.1:255.255.255.0:host::off", true, "10.0.0.5", ""},
		{"address only", "ip=10.0.0.7", true, "10.0.0.7", ""},
		{"last wins", "ip=10.0.0.1::::::off ip=10.0.0.9::::::off", true, "10.0.0.9", ""},
		{"after -- is init's", "ip=10.0.0.1::::::off -- ip=10.0.0.9", true, "10.0.0.1", ""},
		{"none", "console=ttyS0 reboot=k", false, "", ""},
		{"dhcp", "ip=dhcp", false, "", ""},
		{"off", "ip=off", false, "", ""},
		{"dynamic empty client", "ip=:::::eth0:dhcp", false, "", ""},
		{"ipv6", "ip=fe80::1", false, "", ""},
		{"zero", "ip=0.0.0.0::::::off", false, "", ""},
		{"prefix only", "nfsip=10.0.0.1 myip=10.0.0.2", false, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, ok := parseIPArg(tc.cmdline)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if a.IP.String() != tc.ip || a.Device != tc.dev {
				t.Fatalf("got %v %q, want %s %q", a.IP, a.Device, tc.ip, tc.dev)
			}
		})
	}
}

func TestNicIndex(t *testing.T) {
	t.Parallel()
	tests := []struct {
		dev   string
		count int
		want  int
	}{
		{"", 2, 0}, {"", 0, -1}, {"eth0", 1, 0}, {"eth1", 2, 1}, {"eth1", 1, -1},
		{"eth01", 3, -1}, {"eth-1", 3, -1}, {"ens3", 3, -1}, {"eth", 3, -1},
	}
	for _, tc := range tests {
		if got := nicIndex(tc.dev, tc.count); got != tc.want {
			t.Errorf("nicIndex(%q, %d) = %d, want %d", tc.dev, tc.count, got, tc.want)
		}
	}
}

func TestRandomMAC(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 16 {
		m, err := randomMAC()
		if err != nil {
			t.Fatal(err)
		}
		if len(m) != 6 || m[0]&0x01 != 0 || m[0]&0x02 == 0 {
			t.Fatalf("%v is not a locally administered unicast MAC", m)
		}
		seen[m.String()] = true
	}
	if len(seen) < 15 {
		t.Fatalf("random MACs repeat: %v", seen)
	}
}

var (
	testGuestMAC = net.HardwareAddr{0x06, 0x00, 0xac, 0x10, 0x00, 0x02}
	testHostMAC  = net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
	testGuestIP  = netip.MustParseAddr("172.16.0.2")
	testHostIP   = netip.MustParseAddr("172.16.0.1")
	bcastMAC     = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// frame builds vnet header + Ethernet header + payload.
func frame(hdr [vnetHdrLen]byte, dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	b := append([]byte{}, hdr[:]...)
	b = append(b, dst...)
	b = append(b, src...)
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, payload...)
}

func arpPayload(op uint16, sha net.HardwareAddr, spa netip.Addr, tpa netip.Addr) []byte {
	b := []byte{0, 1, 8, 0, 6, 4}
	b = binary.BigEndian.AppendUint16(b, op)
	b = append(b, sha...)
	b = append(b, spa.AsSlice()...)
	b = append(b, make([]byte, 6)...)
	return append(b, tpa.AsSlice()...)
}

// ipv4 builds an IPv4 packet (checksum filled in) with an ICMP body.
func ipv4(src, dst netip.Addr, proto byte, frag uint16, body []byte) []byte {
	h := make([]byte, ipv4HdrLen)
	h[0], h[1] = 0x45, 0x10
	binary.BigEndian.PutUint16(h[2:], uint16(ipv4HdrLen+len(body)))
	binary.BigEndian.PutUint16(h[4:], 0x1234)
	binary.BigEndian.PutUint16(h[6:], frag)
	h[8], h[9] = 64, proto
	copy(h[12:], src.AsSlice())
	copy(h[16:], dst.AsSlice())
	binary.BigEndian.PutUint16(h[10:], checksum(h))
	return append(h, body...)
}

func echo(typ byte, id, seq uint16, payload []byte) []byte {
	b := []byte{typ, 0, 0, 0}
	b = binary.BigEndian.AppendUint16(b, id)
	b = binary.BigEndian.AppendUint16(b, seq)
	b = append(b, payload...)
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

func TestAnswerARP(t *testing.T) {
	t.Parallel()
	g := guestIface{mac: testGuestMAC, ip: testGuestIP}
	req := frame([12]byte{}, bcastMAC, testHostMAC, etherTypeARP, arpPayload(1, testHostMAC, testHostIP, testGuestIP))
	// Ethernet padding after the ARP body is normal.
	req = append(req, make([]byte, 18)...)
	out := g.answer(req)
	if out == nil {
		t.Fatal("no ARP reply")
	}
	if !bytes.Equal(out[:vnetHdrLen], make([]byte, vnetHdrLen)) {
		t.Fatalf("vnet header %x, want zeros", out[:vnetHdrLen])
	}
	want := frame([12]byte{}, testHostMAC, testGuestMAC, etherTypeARP, func() []byte {
		b := []byte{0, 1, 8, 0, 6, 4, 0, 2}
		b = append(b, testGuestMAC...)
		b = append(b, testGuestIP.AsSlice()...)
		b = append(b, testHostMAC...)
		return append(b, testHostIP.AsSlice()...)
	}())
	if !bytes.Equal(out, want) {
		t.Fatalf("ARP reply\n got %x\nwant %x", out, want)
	}
}

func TestAnswerEcho(t *testing.T) {
	t.Parallel()
	g := guestIface{mac: testGuestMAC, ip: testGuestIP}
	payload := []byte("0123456789abcdefghijklmnopqrstuvwxyz!") // odd length
	req := frame([12]byte{}, testGuestMAC, testHostMAC, etherTypeIPv4, ipv4(testHostIP, testGuestIP, protoICMP, 0x4000, echo(icmpEchoReq, 0xbeef, 7, payload)))
	out := g.answer(append(req, 0, 0, 0, 0)) // trailing padding is ignored
	if out == nil {
		t.Fatal("no echo reply")
	}
	e := out[vnetHdrLen:]
	if !bytes.Equal(e[0:6], testHostMAC) || !bytes.Equal(e[6:12], testGuestMAC) || binary.BigEndian.Uint16(e[12:14]) != etherTypeIPv4 {
		t.Fatalf("ethernet header %x", e[:14])
	}
	ip := e[ethHdrLen:]
	if checksum(ip[:ipv4HdrLen]) != 0 {
		t.Fatal("bad IP header checksum")
	}
	if ip[0] != 0x45 || ip[1] != 0x10 || ip[9] != protoICMP || ip[8] != guestTTL ||
		int(binary.BigEndian.Uint16(ip[2:4])) != len(ip) {
		t.Fatalf("IP header %x", ip[:ipv4HdrLen])
	}
	if netip.AddrFrom4([4]byte(ip[12:16])) != testGuestIP || netip.AddrFrom4([4]byte(ip[16:20])) != testHostIP {
		t.Fatalf("addresses %x", ip[12:20])
	}
	icmp := ip[ipv4HdrLen:]
	if checksum(icmp) != 0 {
		t.Fatal("bad ICMP checksum")
	}
	if !bytes.Equal(icmp, echo(icmpEchoReply, 0xbeef, 7, payload)) {
		t.Fatalf("ICMP %x", icmp)
	}
}

func TestAnswerIgnores(t *testing.T) {
	t.Parallel()
	g := guestIface{mac: testGuestMAC, ip: testGuestIP}
	other := netip.MustParseAddr("172.16.0.3")
	goodEcho := ipv4(testHostIP, testGuestIP, protoICMP, 0, echo(icmpEchoReq, 1, 1, []byte("x")))
	badCsum := append([]byte{}, goodEcho...)
	badCsum[len(badCsum)-1] ^= 0xff
	badIPCsum := append([]byte{}, goodEcho...)
	badIPCsum[10] ^= 0xff
	gso := [12]byte{0, 1}
	tests := []struct {
		name  string
		g     guestIface
		frame []byte
		reply bool
	}{
		{"echo baseline", g, frame([12]byte{}, testGuestMAC, testHostMAC, etherTypeIPv4, goodEcho), true},
		{"no address", guestIface{mac: testGuestMAC}, frame([12]byte{}, testGuestMAC, testHostMAC, etherTypeIPv4, goodEcho), false},
		{"ARP for another address", g, frame([12]byte{}, bcastMAC, testHostMAC, etherTypeARP, arpPayload(1, testHostMAC, testHostIP, other)), false},
		{"ARP reply", g, frame([12]byte{}, bcastMAC, testHostMAC, etherTypeARP, arpPayload(2, testHostMAC, testHostIP, testGuestIP)), false},
		{"ARP truncated", g, frame([12]byte{}, bcastMAC, testHostMAC, etherTypeARP, arpPayload(1, testHostMAC, testHostIP, testGuestIP)[:20]), false},
		{"unicast to another MAC", g, frame([12]byte{}, testHostMAC, testHostMAC, etherTypeIPv4, goodEcho), false},
		{"echo to another address", g, frame([12]byte{}, testGuestMAC, testHostMAC, etherTypeIPv4, ipv4(testHostIP, other, protoICMP, 0, echo(icmpEchoReq, 1, 1, nil))), false},
		{"echo reply", g, frame([12]byte{}, testGuestMAC, testHostMAC, etherTypeIPv4, ipv4(testHostIP, testGuestIP, protoICMP, 0, echo(icmpEchoReply, 1, 1, nil))), false},
		{"bad ICMP checksum", g, frame([12]byte{}, testGuestMAC, testHostMAC, etherTypeIPv4, badCsum), false},
		{"partial checksum flagged", g, frame([12]byte{vnetFlagNeedsCsum}, testGuestMAC, testHostMAC, etherTypeIPv4, badCsum), true},
		{"bad IP checksum", g, frame([12]byte{}, testGuestMAC, testHostMAC, etherTypeIPv4, badIPCsum), false},
		{"fragment", g, frame([12]byte{}, testGuestMAC, testHostMAC, etherTypeIPv4, ipv4(testHostIP, testGuestIP, protoICMP, 0x2000, echo(icmpEchoReq, 1, 1, nil))), false},
		{"UDP", g, frame([12]byte{}, testGuestMAC, testHostMAC, etherTypeIPv4, ipv4(testHostIP, testGuestIP, 17, 0, make([]byte, 8))), false},
		{"GSO frame", g, frame(gso, testGuestMAC, testHostMAC, etherTypeIPv4, goodEcho), false},
		{"IPv6", g, frame([12]byte{}, testGuestMAC, testHostMAC, 0x86dd, make([]byte, 40)), false},
		{"truncated IP", g, frame([12]byte{}, testGuestMAC, testHostMAC, etherTypeIPv4, goodEcho[:24]), false},
		{"runt", g, []byte{1, 2, 3}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.g.answer(tc.frame) != nil; got != tc.reply {
				t.Fatalf("reply = %v, want %v", got, tc.reply)
			}
		})
	}
}
