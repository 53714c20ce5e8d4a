package fcemu

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The emulated guest's network stack: just enough of a booted Linux guest
// to answer ARP and ICMP echo for the address the kernel's ip= argument
// gives it.

// vnetHdrLen is the size of struct virtio_net_hdr_v1, which Firecracker
// (VIRTIO_F_VERSION_1) sets with TUNSETVNETHDRSZ: every frame read from or
// written to the TAP starts with it.
const vnetHdrLen = 12

// virtio_net_hdr flags and GSO types used by the responder.
const (
	vnetFlagNeedsCsum = 1
	vnetGSONone       = 0
)

// guestOffload is what TUNSETOFFLOAD gets when the guest's virtio-net
// driver activates the device: Firecracker derives it from the features a
// Linux guest acks (GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_UFO).
const guestOffload = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_UFO

// maxFrame bounds one read from the TAP: with TSO the host may hand the
// guest 64 KiB GSO frames (which the responder then ignores).
const maxFrame = vnetHdrLen + 65550

const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	ethHdrLen     = 14
	arpLen        = 28
	ipv4HdrLen    = 20
	icmpEchoReply = 0
	icmpEchoReq   = 8
	protoICMP     = 1
	guestTTL      = 64
)

// guestAddr is the static IPv4 configuration the kernel's ip= argument
// gives one guest interface.
type guestAddr struct {
	// IP is the client address; invalid when ip= gives none.
	IP netip.Addr
	// Device is the interface name ("" = the first NIC).
	Device string
}

// parseIPArg finds the last ip= kernel parameter of cmdline (the kernel
// keeps the last one; words after "--" belong to init) and returns its
// static address. Dynamic forms (ip=dhcp, an empty client address, ...)
// and ip=off give no address: the emulator has no DHCP client.
func parseIPArg(cmdline string) (guestAddr, bool) {
	var val string
	found := false
	for _, w := range strings.Fields(cmdline) {
		if w == "--" {
			break
		}
		if v, ok := strings.CutPrefix(w, "ip="); ok {
			val, found = v, true
		}
	}
	if !found {
		return guestAddr{}, false
	}
	f := strings.Split(val, ":")
	ip, err := netip.ParseAddr(f[0])
	if err != nil || !ip.Is4() || ip.IsUnspecified() {
		return guestAddr{}, false
	}
	a := guestAddr{IP: ip}
	if len(f) > 5 {
		a.Device = f[5]
	}
	return a, true
}

// nicIndex maps the ip= device name onto the NIC list in API order: the
// guest names virtio-net devices eth0, eth1, ... in probe order, which is
// the API order. It returns -1 for names no NIC gets.
func nicIndex(device string, count int) int {
	if device == "" {
		if count > 0 {
			return 0
		}
		return -1
	}
	s, ok := strings.CutPrefix(device, "eth")
	if !ok {
		return -1
	}
	i, err := strconv.Atoi(s)
	if err != nil || i < 0 || i >= count || strconv.Itoa(i) != s {
		return -1
	}
	return i
}

// randomMAC returns a locally administered unicast MAC, as the Linux
// virtio-net driver picks when the device offers none.
func randomMAC() (net.HardwareAddr, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("random MAC: %w", err)
	}
	b[0] = b[0]&^0x01 | 0x02
	return b, nil
}

// guestNICState is what a vmstate file records of the guest's view of one
// NIC (in a real snapshot it lives in guest memory).
type guestNICState struct {
	IfaceID string `json:"iface_id"`
	MAC     string `json:"mac"`
	IPv4    string `json:"ipv4,omitempty"`
}

// guestIface is the guest's view of one NIC: its MAC and, when ip= named
// it, its IPv4 address.
type guestIface struct {
	mac net.HardwareAddr
	ip  netip.Addr
}

// answer returns the reply a Linux guest would send to frame (a
// virtio-net header followed by an Ethernet frame, as read from the TAP),
// or nil: ARP requests for the guest's address get an ARP reply, ICMP echo
// requests to it an echo reply; everything else is dropped.
func (g guestIface) answer(frame []byte) []byte {
	if !g.ip.IsValid() || len(frame) < vnetHdrLen+ethHdrLen {
		return nil
	}
	hdr, eth := frame[:vnetHdrLen], frame[vnetHdrLen:]
	if hdr[1] != vnetGSONone {
		return nil
	}
	dst := net.HardwareAddr(eth[0:6])
	if !isBroadcast(dst) && !equalMAC(dst, g.mac) {
		return nil
	}
	switch binary.BigEndian.Uint16(eth[12:14]) {
	case etherTypeARP:
		return g.answerARP(eth)
	case etherTypeIPv4:
		return g.answerIPv4(eth, hdr[0]&vnetFlagNeedsCsum != 0)
	}
	return nil
}

func (g guestIface) answerARP(eth []byte) []byte {
	if len(eth) < ethHdrLen+arpLen {
		return nil
	}
	a := eth[ethHdrLen:]
	if binary.BigEndian.Uint16(a[0:2]) != 1 || binary.BigEndian.Uint16(a[2:4]) != etherTypeIPv4 ||
		a[4] != 6 || a[5] != 4 || binary.BigEndian.Uint16(a[6:8]) != 1 {
		return nil
	}
	sha, spa, tpa := a[8:14], a[14:18], a[24:28]
	if netip.AddrFrom4([4]byte(tpa)) != g.ip || sha[0]&0x01 != 0 {
		return nil
	}
	out := make([]byte, vnetHdrLen+ethHdrLen+arpLen)
	e := out[vnetHdrLen:]
	copy(e[0:6], sha)
	copy(e[6:12], g.mac)
	binary.BigEndian.PutUint16(e[12:14], etherTypeARP)
	r := e[ethHdrLen:]
	binary.BigEndian.PutUint16(r[0:2], 1)
	binary.BigEndian.PutUint16(r[2:4], etherTypeIPv4)
	r[4], r[5] = 6, 4
	binary.BigEndian.PutUint16(r[6:8], 2)
	copy(r[8:14], g.mac)
	ip := g.ip.As4()
	copy(r[14:18], ip[:])
	copy(r[18:24], sha)
	copy(r[24:28], spa)
	return out
}

func (g guestIface) answerIPv4(eth []byte, partialCsum bool) []byte {
	p := eth[ethHdrLen:]
	if len(p) < ipv4HdrLen || p[0]>>4 != 4 {
		return nil
	}
	ihl := int(p[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(p[2:4]))
	if ihl < ipv4HdrLen || total < ihl || total > len(p) || checksum(p[:ihl]) != 0 {
		return nil
	}
	// Fragments would need reassembly; the responder does not do it.
	if binary.BigEndian.Uint16(p[6:8])&0x3fff != 0 || p[9] != protoICMP {
		return nil
	}
	if netip.AddrFrom4([4]byte(p[16:20])) != g.ip {
		return nil
	}
	src := netip.AddrFrom4([4]byte(p[12:16]))
	if !src.IsValid() || src.IsMulticast() || src.IsUnspecified() || src == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return nil
	}
	icmp := p[ihl:total]
	if len(icmp) < 8 || icmp[0] != icmpEchoReq || icmp[1] != 0 {
		return nil
	}
	if !partialCsum && checksum(icmp) != 0 {
		return nil
	}
	out := make([]byte, vnetHdrLen+ethHdrLen+ipv4HdrLen+len(icmp))
	e := out[vnetHdrLen:]
	copy(e[0:6], eth[6:12])
	copy(e[6:12], g.mac)
	binary.BigEndian.PutUint16(e[12:14], etherTypeIPv4)
	ip := e[ethHdrLen:]
	ip[0] = 0x45
	ip[1] = p[1] // Linux echoes the request's TOS
	binary.BigEndian.PutUint16(ip[2:4], uint16(ipv4HdrLen+len(icmp)))
	binary.BigEndian.PutUint16(ip[4:6], ipID(p))
	ip[8] = guestTTL
	ip[9] = protoICMP
	gip := g.ip.As4()
	copy(ip[12:16], gip[:])
	copy(ip[16:20], p[12:16])
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip[:ipv4HdrLen]))
	ic := ip[ipv4HdrLen:]
	copy(ic, icmp)
	ic[0], ic[1] = icmpEchoReply, 0
	ic[2], ic[3] = 0, 0
	binary.BigEndian.PutUint16(ic[2:4], checksum(ic))
	return out
}

// ipID derives the reply's IP identification from the request's.
func ipID(req []byte) uint16 {
	return binary.BigEndian.Uint16(req[4:6]) ^ 0x5a5a
}

// checksum is the Internet checksum (RFC 1071); it is 0 over data that
// already carries a correct checksum.
func checksum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func isBroadcast(m net.HardwareAddr) bool {
	for _, b := range m {
		if b != 0xff {
			return false
		}
	}
	return true
}

func equalMAC(a, b net.HardwareAddr) bool {
	return len(a) == len(b) && string(a) == string(b)
}

// responder is the guest side of one running NIC: a goroutine that reads
// frames from the TAP and writes the answers. It runs only while the guest
// runs; its owner (the NetDevice) starts and stops it.
type responder struct {
	tap   *os.File
	guest guestIface
	log   *logger
	met   *metrics

	cancel context.CancelFunc
	done   chan struct{}
	// failed is set when the TAP failed for good (e.g. it was deleted); the
	// guest then stays silent like a NIC whose backend is gone.
	failed atomic.Bool
}

// start launches the read loop; it stops when ctx ends or stop is called.
func (r *responder) start(ctx context.Context) {
	if r.done != nil || r.failed.Load() {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	r.cancel, r.done = cancel, done
	_ = r.tap.SetDeadline(time.Time{})
	go func() {
		defer close(done)
		r.loop(ctx)
	}()
}

// stop ends the read loop and waits for it. The TAP stays open; frames
// that arrive meanwhile queue in the kernel like frames a paused guest has
// not yet taken from its receive ring.
func (r *responder) stop() {
	if r.done == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel, r.done = nil, nil
}

func (r *responder) loop(ctx context.Context) {
	// Reads block in the runtime poller (the TAP is non-blocking); a past
	// deadline wakes them when ctx ends. Wait for the wake-up before
	// returning so that no late deadline hits a restarted loop.
	woken := make(chan struct{})
	stopWake := context.AfterFunc(ctx, func() {
		_ = r.tap.SetDeadline(time.Unix(1, 0)) // in the past: wake at once
		close(woken)
	})
	defer func() {
		if !stopWake() {
			<-woken
		}
	}()
	buf := make([]byte, maxFrame)
	for {
		n, err := r.tap.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			r.met.add("net", "tap_read_fails", 1)
			r.failed.Store(true)
			r.log.warn("Failed to read from the TAP %s: %v; the guest interface stops answering", r.tap.Name(), err)
			return
		}
		r.met.add("net", "rx_packets_count", 1)
		r.met.add("net", "rx_bytes_count", uint64(max(n-vnetHdrLen, 0)))
		reply := r.guest.answer(buf[:n])
		if reply == nil {
			continue
		}
		if _, err := r.tap.Write(reply); err != nil {
			if ctx.Err() != nil {
				return
			}
			r.met.add("net", "tap_write_fails", 1)
			continue
		}
		r.met.add("net", "tx_packets_count", 1)
		r.met.add("net", "tx_bytes_count", uint64(len(reply)-vnetHdrLen))
	}
}

// setOffload sets the TAP's offload flags without taking the file out of
// non-blocking mode (os.File.Fd would).
func setOffload(f *os.File, flags int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("syscall conn: %w", err)
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, flags)
	}); err != nil {
		return fmt.Errorf("control: %w", err)
	}
	return ierr
}

// activate is what the guest's virtio-net driver does when it probes the
// device: it settles the MAC (the configured one, mac when restoring, or a
// random one), the offload flags follow the acked features, and addr (if
// valid) becomes the interface's address. It does not start answering.
func (n *NetDevice) activate(mac string, addr netip.Addr, log *logger, met *metrics) error {
	hw, err := net.ParseMAC(mac)
	switch {
	case mac != "" && err == nil && len(hw) == 6:
	case n.GuestMAC != "":
		if hw, err = net.ParseMAC(n.GuestMAC); err != nil {
			return fmt.Errorf("guest MAC %q: %w", n.GuestMAC, err)
		}
	default:
		if hw, err = randomMAC(); err != nil {
			return err
		}
	}
	n.guest = guestIface{mac: hw, ip: addr}
	if n.TAP == nil {
		return nil
	}
	if err := setOffload(n.TAP, guestOffload); err != nil {
		met.add("net", "activate_fails", 1)
		log.warn("Failed to set the offload flags of TAP %s: %v", n.HostDevName, err)
	}
	n.resp = &responder{tap: n.TAP, guest: n.guest, log: log, met: met}
	return nil
}

// guestState is the guest's view of the NIC for a vmstate file.
func (n *NetDevice) guestState() guestNICState {
	s := guestNICState{IfaceID: n.IfaceID}
	if n.guest.mac != nil {
		s.MAC = n.guest.mac.String()
	}
	if n.guest.ip.IsValid() {
		s.IPv4 = n.guest.ip.String()
	}
	return s
}

// run lets the guest answer on this NIC (no-op without a TAP or address).
func (n *NetDevice) run(ctx context.Context) {
	if n.resp != nil && n.guest.ip.IsValid() {
		n.resp.start(ctx)
	}
}

// halt stops answering and waits for the read loop to end.
func (n *NetDevice) halt() {
	if n.resp != nil {
		n.resp.stop()
	}
}

// close stops the responder and releases the TAP.
func (n *NetDevice) close() {
	n.halt()
	if n.TAP != nil {
		n.TAP.Close()
	}
}

// activateNets is the guest probing its NICs at boot: eth0, eth1, ... in
// API order, the ip= address going to the one it names. saved, when
// restoring, holds the guest state recorded in the vmstate file.
func (v *vmm) activateNets(bootArgs string, saved []guestNICState) error {
	addr, hasAddr := parseIPArg(bootArgs)
	idx := -1
	if hasAddr {
		idx = nicIndex(addr.Device, len(v.nets))
	}
	for i, n := range v.nets {
		var ip netip.Addr
		if i == idx {
			ip = addr.IP
		}
		mac := ""
		if saved != nil {
			ip = netip.Addr{}
			for _, s := range saved {
				if s.IfaceID == n.IfaceID {
					mac = s.MAC
					if a, err := netip.ParseAddr(s.IPv4); err == nil {
						ip = a
					}
				}
			}
		}
		if err := n.activate(mac, ip, v.log, v.met); err != nil {
			return err
		}
	}
	return nil
}

// guestNetRun starts answering on every NIC unless the guest halted.
func (v *vmm) guestNetRun() {
	if v.halted {
		return
	}
	for _, n := range v.nets {
		n.run(v.ctx)
	}
}

// guestNetStop stops answering on every NIC (pause, halt).
func (v *vmm) guestNetStop() {
	for _, n := range v.nets {
		n.halt()
	}
}
