package network

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/network/ipam"
)

// Manager prepares the host and attaches sandboxes. Its methods are safe for
// concurrent use; operations on one sandbox id are serialized.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	pool   *ipam.Pool
	hostNS netns.NsHandle // owned; closed by Close

	// mu guards the fields that follow.
	mu       sync.Mutex
	busy     map[string]chan struct{} // sandbox id → closed when its operation ends
	dirReady bool                     // NetnsDir prepared
	closed   bool

	// failAt, when set (tests only), makes Attach fail at the named step.
	failAt string
}

// New validates cfg and returns a Manager. It opens the host namespace
// (Config.HostNetns, or the calling thread's); Close releases it. Invalid
// configuration is errdefs.ErrInvalidArgument.
func New(cfg Config) (*Manager, error) {
	if err := validate(&cfg); err != nil {
		return nil, err
	}
	pool, err := ipam.New(cfg.CIDR, cfg.Gateway)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	var host netns.NsHandle
	if cfg.HostNetns == "" {
		host, err = netns.Get()
	} else {
		host, err = netns.GetFromPath(cfg.HostNetns)
	}
	if err != nil {
		return nil, fmt.Errorf("network: open host network namespace %q: %w", cfg.HostNetns, err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	cfg.DNS = append([]netip.Addr(nil), cfg.DNS...)
	cfg.DenyTCPPorts = append([]uint16(nil), cfg.DenyTCPPorts...)
	return &Manager{
		cfg:    cfg,
		log:    logger.With("component", "network"),
		pool:   pool,
		hostNS: host,
		busy:   map[string]chan struct{}{},
	}, nil
}

// Close releases the host namespace handle. Attachments and host setup stay.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	return m.hostNS.Close()
}

// hostHandle opens a netlink handle in the host namespace.
func (m *Manager) hostHandle() (*netlink.Handle, error) {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("network: manager is closed: %w", errdefs.ErrFailedPrecondition)
	}
	h, err := netlink.NewHandleAt(m.hostNS)
	if err != nil {
		return nil, fmt.Errorf("network: netlink in host namespace: %w", err)
	}
	return h, nil
}

// begin starts an operation on sandbox id: it checks the id, takes the
// id's lock and opens a host netlink handle. done closes the handle and
// releases the lock.
func (m *Manager) begin(ctx context.Context, id string) (h *netlink.Handle, done func(), err error) {
	if !validSandboxID(id) {
		return nil, nil, fmt.Errorf("network: invalid sandbox id %q: %w", id, errdefs.ErrInvalidArgument)
	}
	unlock, err := m.lock(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if h, err = m.hostHandle(); err != nil {
		unlock()
		return nil, nil, err
	}
	return h, func() { h.Close(); unlock() }, nil
}

// lock serializes operations on one sandbox id. It returns the unlock
// function, or ctx's error.
func (m *Manager) lock(ctx context.Context, id string) (func(), error) {
	for {
		m.mu.Lock()
		ch, held := m.busy[id]
		if !held {
			ch = make(chan struct{})
			m.busy[id] = ch
			m.mu.Unlock()
			return func() {
				m.mu.Lock()
				delete(m.busy, id)
				m.mu.Unlock()
				close(ch)
			}, nil
		}
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("network: sandbox %s: %w", id, ctx.Err())
		}
	}
}
