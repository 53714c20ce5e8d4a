package fcemu

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tokenBucket mirrors Firecracker's TokenBucket object.
type tokenBucket struct {
	Size         uint64  `json:"size"`
	OneTimeBurst *uint64 `json:"one_time_burst,omitempty"`
	RefillTime   uint64  `json:"refill_time"`
}

// rateLimiter mirrors Firecracker's RateLimiter object.
type rateLimiter struct {
	Bandwidth *tokenBucket `json:"bandwidth,omitempty"`
	Ops       *tokenBucket `json:"ops,omitempty"`
}

// merge applies an update the way PATCH does: given buckets replace.
func mergeLimiter(old, upd *rateLimiter) *rateLimiter {
	if upd == nil {
		return old
	}
	out := &rateLimiter{}
	if old != nil {
		*out = *old
	}
	if upd.Bandwidth != nil {
		out.Bandwidth = upd.Bandwidth
	}
	if upd.Ops != nil {
		out.Ops = upd.Ops
	}
	return out
}

// driveConfig is the body of PUT /drives/{id} (and its GET /vm/config form).
type driveConfig struct {
	DriveID      string       `json:"drive_id"`
	Partuuid     *string      `json:"partuuid,omitempty"`
	IsRootDevice bool         `json:"is_root_device"`
	CacheType    string       `json:"cache_type,omitempty"`
	IsReadOnly   *bool        `json:"is_read_only,omitempty"`
	PathOnHost   *string      `json:"path_on_host,omitempty"`
	RateLimiter  *rateLimiter `json:"rate_limiter,omitempty"`
	IoEngine     *string      `json:"io_engine,omitempty"`
	Socket       *string      `json:"socket,omitempty"`
}

func (c *driveConfig) readOnly() bool { return c.IsReadOnly != nil && *c.IsReadOnly }

// drive is a configured block device with its open backing file.
type drive struct {
	cfg  driveConfig
	file *os.File
}

// openBacking opens a drive's backing file O_RDONLY or O_RDWR like
// Firecracker and keeps it open.
func openBacking(path string, readOnly bool) (*os.File, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open backing file: %w", err)
	}
	return f, nil
}

// pmemConfig is the body of PUT /pmem/{id}.
type pmemConfig struct {
	ID          string       `json:"id"`
	PathOnHost  string       `json:"path_on_host"`
	RootDevice  bool         `json:"root_device"`
	ReadOnly    bool         `json:"read_only"`
	RateLimiter *rateLimiter `json:"rate_limiter,omitempty"`
}

type pmemDev struct {
	cfg  pmemConfig
	file *os.File
}

// netConfig is the body of PUT /network-interfaces/{id}.
type netConfig struct {
	IfaceID       string       `json:"iface_id"`
	HostDevName   string       `json:"host_dev_name"`
	GuestMAC      *string      `json:"guest_mac,omitempty"`
	MTU           *uint16      `json:"mtu,omitempty"`
	RxRateLimiter *rateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *rateLimiter `json:"tx_rate_limiter,omitempty"`
}

// NetDevice is one emulated virtio-net device. TAP is the host TAP opened
// through /dev/net/tun exactly as Firecracker opens it (nil when
// FCEMU_SKIP_TAP=1); every frame on it carries a 12-byte virtio-net header.
// Once the guest has booted (InstanceStart or snapshot load), the device
// owns a responder goroutine that plays the guest's network stack on TAP
// while the VM runs (see activate, run and halt); the VMM closes the device
// when it is replaced or unplugged, and the process exit ends the rest.
type NetDevice struct {
	// IfaceID is the API label of the device; immutable.
	IfaceID string
	// HostDevName is the TAP name; immutable.
	HostDevName string
	// GuestMAC is the configured guest MAC address, "" when the guest
	// picks one.
	GuestMAC string
	// TAP is the open TUN/TAP file, or nil when opening was skipped.
	TAP *os.File

	cfg netConfig
	// guest is the guest's view of the NIC, settled at boot or restore.
	guest guestIface
	// resp answers ARP and ICMP echo on TAP; nil before boot or without
	// a TAP.
	resp *responder
}

// tapError is the text of Firecracker's TapError::IfreqExecuteError.
func tapError(name string, err error) error {
	return fmt.Errorf("Error while creating ifreq structure: %s. Invalid TUN/TAP Backend provided by %s. Check our documentation on setting up the network devices", rustIOError(err), name)
}

// vnetHdrError is a TUNSETVNETHDRSZ failure (Firecracker's
// NetError::TapSetVnetHdrSize rather than TapOpen).
type vnetHdrError struct{ msg string }

func (e *vnetHdrError) Error() string { return e.msg }

// openTAP attaches to the existing TAP called name the way Firecracker
// does (TUNSETIFF with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, then TUNSETVNETHDRSZ
// 12; the offload flags follow at guest activation). The fd is
// non-blocking, so reads wait in the runtime poller and honour deadlines
// and Close. The interface must
// already exist in the current network namespace: as root TUNSETIFF would
// otherwise create a transient TAP, which real deployments never rely on.
func openTAP(name string) (*os.File, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, errors.New("Invalid interface name")
	}
	if _, err := net.InterfaceByName(name); err != nil {
		return nil, tapError(name, syscall.ENODEV)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("Couldn't open /dev/net/tun: %s", rustIOError(err))
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, errors.New("Invalid interface name")
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, tapError(name, err)
	}
	// virtio_net_hdr_v1 (VIRTIO_F_VERSION_1) is 12 bytes; the default of
	// 10 is the legacy header.
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnetHdrLen); err != nil {
		unix.Close(fd)
		return nil, &vnetHdrError{msg: "Error while setting size of the vnet header: " + rustIOError(err)}
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// vsockConfig is the body of PUT /vsock.
type vsockConfig struct {
	VsockID  *string `json:"vsock_id,omitempty"`
	GuestCID uint32  `json:"guest_cid"`
	UDSPath  string  `json:"uds_path"`
}

// vsockDev is the host side of the emulated vsock device: a listening unix
// socket at uds_path. Host connections get their CONNECT request read and
// are then closed, since no guest program listens.
type vsockDev struct {
	cfg vsockConfig
	ln  *net.UnixListener
	wg  sync.WaitGroup
}

// bindVsock binds uds_path; the socket file is never removed on exit.
func bindVsock(cfg vsockConfig) (*vsockDev, error) {
	if _, err := os.Lstat(cfg.UDSPath); err == nil {
		return nil, syscall.EADDRINUSE
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.UDSPath, Net: "unix"})
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return nil, errno
		}
		return nil, fmt.Errorf("bind %s: %w", cfg.UDSPath, err)
	}
	ln.SetUnlinkOnClose(false)
	d := &vsockDev{cfg: cfg, ln: ln}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.acceptLoop()
	}()
	return d, nil
}

func (d *vsockDev) acceptLoop() {
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			// Read the "CONNECT <port>\n" request (at most 32 bytes); no
			// guest listens, so the connection is then closed.
			_, _ = bufio.NewReaderSize(c, 32).ReadSlice('\n')
		}()
	}
}

// close stops listening and waits for connection goroutines; the socket
// file stays on disk.
func (d *vsockDev) close() {
	d.ln.Close()
	d.wg.Wait()
}

// balloonConfig is the body of PUT /balloon.
type balloonConfig struct {
	AmountMib             uint32 `json:"amount_mib"`
	DeflateOnOOM          bool   `json:"deflate_on_oom"`
	StatsPollingIntervalS uint16 `json:"stats_polling_interval_s"`
	FreePageHinting       bool   `json:"free_page_hinting"`
	FreePageReporting     bool   `json:"free_page_reporting"`
}

// entropyConfig is the body of PUT /entropy.
type entropyConfig struct {
	RateLimiter *rateLimiter `json:"rate_limiter,omitempty"`
}

// mmdsConfig is the body of PUT /mmds/config.
type mmdsConfig struct {
	Version           string   `json:"version"`
	NetworkInterfaces []string `json:"network_interfaces"`
	IPv4Address       *string  `json:"ipv4_address,omitempty"`
	ImdsCompat        bool     `json:"imds_compat"`
}

// hotplugConfig is the body of PUT /hotplug/memory.
type hotplugConfig struct {
	TotalSizeMib uint32 `json:"total_size_mib"`
	SlotSizeMib  uint32 `json:"slot_size_mib"`
	BlockSizeMib uint32 `json:"block_size_mib"`
}

// machineConfig is the VM's machine configuration.
type machineConfig struct {
	VcpuCount       uint8  `json:"vcpu_count"`
	MemSizeMib      uint64 `json:"mem_size_mib"`
	SMT             bool   `json:"smt"`
	CPUTemplate     string `json:"cpu_template,omitempty"`
	TrackDirtyPages bool   `json:"track_dirty_pages"`
	HugePages       string `json:"huge_pages"`
}

// machineUpdate is the body of PUT/PATCH /machine-config.
type machineUpdate struct {
	VcpuCount       *uint8  `json:"vcpu_count"`
	MemSizeMib      *uint64 `json:"mem_size_mib"`
	SMT             *bool   `json:"smt"`
	CPUTemplate     *string `json:"cpu_template"`
	TrackDirtyPages *bool   `json:"track_dirty_pages"`
	HugePages       *string `json:"huge_pages"`
}

// bootSource is the body of PUT /boot-source.
type bootSource struct {
	KernelImagePath string  `json:"kernel_image_path"`
	InitrdPath      *string `json:"initrd_path,omitempty"`
	BootArgs        *string `json:"boot_args,omitempty"`
}
