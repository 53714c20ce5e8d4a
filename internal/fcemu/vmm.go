package fcemu

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// VM states as GET / reports them.
const (
	stateNotStarted = "Not started"
	stateRunning    = "Running"
	statePaused     = "Paused"
)

// defaultBootArgs is Firecracker's kernel command line when boot_args is
// omitted.
const defaultBootArgs = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce"

// maxCmdline is the kernel command line limit (bytes).
const maxCmdline = 2048

// vmm is the emulated Firecracker VMM. API requests are handled one at a
// time under mu, like Firecracker's single VMM thread.
type vmm struct {
	// Immutable after construction.
	ctx        context.Context
	id         string
	env        map[string]string
	log        *logger
	met        *metrics
	faults     *faults
	enablePCI  bool
	mmdsLimit  int
	exitCh     chan int
	exitOnce   sync.Once
	paused     atomic.Bool
	background sync.WaitGroup

	// mu serializes API requests and guards the fields that follow.
	mu          sync.Mutex
	state       string
	bootPath    bool
	restored    bool
	machine     machineConfig
	boot        *bootSource
	bootFiles   []*os.File
	drives      []*drive
	nets        []*NetDevice
	vsock       *vsockDev
	balloon     *balloonConfig
	entropy     *entropyConfig
	mmdsCfg     *mmdsConfig
	mmdsData    any
	mmdsInit    bool
	cpuConfig   json.RawMessage
	pmems       []*pmemDev
	hotplug     *hotplugConfig
	hotplugReq  uint32
	serialOut   io.Writer
	serialFile  *os.File
	bootArgs    string
	halted      bool
	pendReboot  bool
	rebootArmed bool
	uffdConn    net.Conn
	memFile     *os.File
}

func newVMM(ctx context.Context, id string, env map[string]string, stdout io.Writer, f *faults) *vmm {
	return &vmm{
		ctx:       ctx,
		id:        id,
		env:       env,
		log:       newLogger(id, stdout),
		met:       newMetrics(id),
		faults:    f,
		exitCh:    make(chan int, 1),
		state:     stateNotStarted,
		machine:   machineConfig{VcpuCount: 1, MemSizeMib: 128, HugePages: "None"},
		serialOut: stdout,
	}
}

// exit asks Main to end the process with code; the first request wins.
// It first logs the line Firecracker's main() logs last (src/firecracker/
// src/main.rs): "Firecracker exiting successfully. exit_code=0" at level
// Info, "Firecracker exiting with error. exit_code=N" at level Error.
// Firecracker's fatal signal handlers exit without it, and so does the
// emulator on SIGHUP.
func (v *vmm) exit(code int) {
	v.exitOnce.Do(func() {
		if code == exitOK {
			v.log.logf(levelInfo, "main", "firecracker/src/main.rs:1", "Firecracker exiting successfully. exit_code=0")
		} else {
			v.log.logf(levelError, "main", "firecracker/src/main.rs:1", "Firecracker exiting with error. exit_code=%d", code)
		}
		v.exitCh <- code // buffered: never blocks
	})
}

// envMillis reads a delay in milliseconds from the environment.
func (v *vmm) envMillis(name string, def time.Duration) time.Duration {
	s, ok := v.env[name]
	if !ok || s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return def
	}
	return time.Duration(n) * time.Millisecond
}

// sleep waits d or until the process ends.
func (v *vmm) sleep(d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-v.ctx.Done():
	}
}

// after runs fn after d unless the process ends first; the goroutine is
// owned by v.background and stops with v.ctx.
func (v *vmm) after(d time.Duration, fn func()) {
	v.background.Add(1)
	go func() {
		defer v.background.Done()
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			fn()
		case <-v.ctx.Done():
		}
	}()
}

func (v *vmm) serial(format string, a ...any) {
	_, _ = fmt.Fprintf(v.serialOut, format+"\n", a...)
}

// started runs once the VM has been built (InstanceStart or snapshot load):
// the 60 s metrics timer and the exit-after-boot faults begin.
func (v *vmm) started() {
	v.background.Add(1)
	go func() {
		defer v.background.Done()
		t := time.NewTicker(60 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if !v.paused.Load() {
					v.met.flush()
				}
			case <-v.ctx.Done():
				return
			}
		}
	}()
	for _, r := range v.faults.timed(faultExitAfterBoot) {
		code := r.code
		v.after(time.Duration(r.ms)*time.Millisecond, func() {
			v.log.warn("Injected fault: exiting with code %d after boot", code)
			v.exit(code)
		})
	}
}

// effectiveBootArgs is the command line the guest would see.
func (v *vmm) effectiveBootArgs() string {
	args := defaultBootArgs
	if v.boot != nil && v.boot.BootArgs != nil {
		args = *v.boot.BootArgs
	}
	var extra []string
	for _, d := range v.drives {
		if !d.cfg.IsRootDevice {
			continue
		}
		if d.cfg.Partuuid != nil {
			extra = append(extra, "root=PARTUUID="+*d.cfg.Partuuid)
		} else {
			extra = append(extra, "root=/dev/vda")
		}
		if d.cfg.readOnly() {
			extra = append(extra, "ro")
		} else {
			extra = append(extra, "rw")
		}
	}
	for _, p := range v.pmems {
		if p.cfg.RootDevice {
			extra = append(extra, "root=/dev/pmem0")
			if p.cfg.ReadOnly {
				extra = append(extra, "ro")
			} else {
				extra = append(extra, "rw")
			}
		}
	}
	if !v.enablePCI {
		extra = append(extra, "pci=off")
	}
	if len(extra) > 0 {
		if args != "" {
			args += " "
		}
		args += strings.Join(extra, " ")
	}
	return args
}

func hasRebootK(args string) bool {
	for _, f := range strings.Fields(args) {
		if f == "reboot=k" {
			return true
		}
	}
	return false
}

// armReboot makes the process exit 0 shortly, as a guest resetting through
// the i8042 controller does.
func (v *vmm) armReboot() {
	if v.rebootArmed {
		return
	}
	v.rebootArmed = true
	v.after(v.envMillis("FCEMU_SHUTDOWN_DELAY_MS", 50*time.Millisecond), func() {
		v.serial("reboot: Restarting system")
		v.log.info("Vmm is stopping.")
		v.met.flush()
		v.exit(exitOK)
	})
}

// orderedDrives returns the root drive first, others in insertion order.
func (v *vmm) orderedDrives() []*drive {
	var out []*drive
	for _, d := range v.drives {
		if d.cfg.IsRootDevice {
			out = append(out, d)
		}
	}
	for _, d := range v.drives {
		if !d.cfg.IsRootDevice {
			out = append(out, d)
		}
	}
	return out
}

// fullConfig renders GET /vm/config.
func (v *vmm) fullConfig() map[string]any {
	cfg := map[string]any{
		"balloon": nil, "drives": []any{}, "boot-source": nil, "cpu-config": nil, "logger": nil,
		"machine-config": v.machineJSON(), "metrics": nil, "mmds-config": nil, "network-interfaces": []any{},
		"vsock": nil, "entropy": nil, "pmem": []any{}, "memory-hotplug": nil,
	}
	if v.balloon != nil {
		cfg["balloon"] = v.balloon
	}
	drives := []any{}
	for _, d := range v.orderedDrives() {
		c := d.cfg
		if c.CacheType == "" {
			c.CacheType = "Unsafe"
		}
		if c.Socket == nil {
			if c.IoEngine == nil {
				s := "Sync"
				c.IoEngine = &s
			}
			if c.IsReadOnly == nil {
				f := false
				c.IsReadOnly = &f
			}
		}
		drives = append(drives, c)
	}
	cfg["drives"] = drives
	if v.boot != nil && !v.restored {
		cfg["boot-source"] = v.boot
	}
	nets := []any{}
	for _, n := range v.nets {
		nets = append(nets, n.cfg)
	}
	cfg["network-interfaces"] = nets
	if v.vsock != nil {
		cfg["vsock"] = map[string]any{"guest_cid": v.vsock.cfg.GuestCID, "uds_path": v.vsock.cfg.UDSPath}
	}
	if v.entropy != nil {
		cfg["entropy"] = v.entropy
	}
	if v.mmdsCfg != nil {
		ip := "169.254.169.254"
		if v.mmdsCfg.IPv4Address != nil {
			ip = *v.mmdsCfg.IPv4Address
		}
		cfg["mmds-config"] = map[string]any{"version": v.mmdsCfg.Version, "network_interfaces": v.mmdsCfg.NetworkInterfaces, "ipv4_address": ip, "imds_compat": v.mmdsCfg.ImdsCompat}
	}
	pm := []any{}
	for _, p := range v.pmems {
		pm = append(pm, p.cfg)
	}
	cfg["pmem"] = pm
	if v.hotplug != nil {
		cfg["memory-hotplug"] = v.hotplug
	}
	return cfg
}

func (v *vmm) machineJSON() map[string]any {
	m := map[string]any{
		"vcpu_count": v.machine.VcpuCount, "mem_size_mib": v.machine.MemSizeMib,
		"smt": v.machine.SMT, "track_dirty_pages": v.machine.TrackDirtyPages, "huge_pages": v.machine.HugePages,
	}
	if v.machine.CPUTemplate != "" && v.machine.CPUTemplate != "None" {
		m["cpu_template"] = v.machine.CPUTemplate
	}
	return m
}
