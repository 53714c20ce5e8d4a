package testutil

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// InNetns runs fn on an OS thread that has joined the network namespace at
// path (e.g. /run/netns/NAME); sockets made there stay in it. The thread
// returns to its namespace afterwards, or dies with its goroutine if it
// cannot.
func InNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it exits with this goroutine.
			errc <- fmt.Errorf("restore netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Pinger sends ICMP echo requests from a raw socket opened inside a network
// namespace (no ping binary needed).
type Pinger struct {
	c  *net.IPConn
	id uint16
}

// NewPinger opens a raw ICMP socket inside the namespace at nsPath ("" for
// the caller's). Close it when done.
func NewPinger(nsPath string) (*Pinger, error) {
	var fd int
	open := func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		return err
	}
	var err error
	if nsPath == "" {
		err = open()
	} else {
		err = InNetns(nsPath, open)
	}
	if err != nil {
		return nil, fmt.Errorf("raw ICMP socket in %q: %w", nsPath, err)
	}
	f := os.NewFile(uintptr(fd), "icmp")
	pc, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	c, ok := pc.(*net.IPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("raw socket is a %T", pc)
	}
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	return &Pinger{c: c, id: binary.BigEndian.Uint16(b)}, nil
}

// Close closes the socket.
func (p *Pinger) Close() error { return p.c.Close() }

const pingPayload = "firecracker-vmm-test-ping"

// Ping sends an echo request every 100 ms until a matching reply comes from
// addr or within has passed. Each call uses a fresh identifier, so late
// replies to earlier calls do not count.
func (p *Pinger) Ping(addr string, within time.Duration) bool {
	p.id++
	dst := &net.IPAddr{IP: net.ParseIP(addr)}
	deadline := time.Now().Add(within)
	buf := make([]byte, 1500)
	for seq := uint16(1); time.Now().Before(deadline); seq++ {
		msg := []byte{8, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint16(msg[4:], p.id)
		binary.BigEndian.PutUint16(msg[6:], seq)
		msg = append(msg, pingPayload...)
		binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		_, _ = p.c.WriteTo(msg, dst) // errors (no neighbour yet) are retried
		_ = p.c.SetReadDeadline(time.Now().Add(min(100*time.Millisecond, time.Until(deadline))))
		for {
			n, from, err := p.c.ReadFrom(buf)
			if err != nil {
				break
			}
			b := buf[:n]
			if len(b) >= 20 && b[0]>>4 == 4 { // IP header not stripped
				b = b[int(b[0]&0x0f)*4:]
			}
			if len(b) >= 8 && b[0] == 0 && binary.BigEndian.Uint16(b[4:]) == p.id && from.String() == addr &&
				strings.HasSuffix(string(b), pingPayload) {
				return true
			}
		}
	}
	return false
}

// Ping reports whether addr answers an ICMP echo sent from the namespace at
// nsPath within the given time.
func Ping(nsPath, addr string, within time.Duration) (bool, error) {
	p, err := NewPinger(nsPath)
	if err != nil {
		return false, err
	}
	defer p.Close()
	return p.Ping(addr, within), nil
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
