package fcemu

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// snapshotMagic is Firecracker's x86_64 vmstate magic.
const snapshotMagic uint64 = 0x0710198486640000

// maxVMStateSize is the loader's limit on vmstate files.
const maxVMStateSize = 10_000_000

const mib = 1 << 20

// vmState is what the emulator saves in a vmstate file (JSON instead of
// Firecracker's bitcode, framed the same way: magic, version, state, CRC64).
type vmState struct {
	Machine  machineConfig  `json:"machine"`
	BootArgs string         `json:"boot_args"`
	Drives   []driveConfig  `json:"drives"`
	Nets     []netConfig    `json:"nets"`
	Vsock    *vsockConfig   `json:"vsock,omitempty"`
	Mmds     *mmdsConfig    `json:"mmds,omitempty"`
	Balloon  *balloonConfig `json:"balloon,omitempty"`
	Entropy  *entropyConfig `json:"entropy,omitempty"`
	Pmem     []pmemConfig   `json:"pmem"`
	Hotplug  *hotplugConfig `json:"memory_hotplug,omitempty"`
	// GuestNet is the guest's view of its NICs (MAC, ip= address), which
	// a real snapshot keeps in guest memory; absent in older files, where
	// it is derived from BootArgs again.
	GuestNet []guestNICState `json:"guest_net,omitempty"`
	Type     string          `json:"snapshot_type"`
	Dirty    bool            `json:"track_dirty_pages"`
}

var crcTable = crc64.MakeTable(crc64.ECMA)

func encodeVMState(st *vmState) ([]byte, error) {
	js, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("encode vm state: %w", err)
	}
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, snapshotMagic)
	_ = binary.Write(&b, binary.LittleEndian, uint64(len(SnapshotVersion)))
	b.WriteString(SnapshotVersion)
	b.Write(js)
	_ = binary.Write(&b, binary.LittleEndian, crc64.Checksum(b.Bytes(), crcTable))
	return b.Bytes(), nil
}

// readVMStateHeader validates magic and version and returns the version
// and the remaining bytes.
func readVMStateHeader(data []byte) (string, []byte, error) {
	if len(data) < 16 {
		return "", nil, errors.New("Snapshot file is too short")
	}
	if m := binary.LittleEndian.Uint64(data); m != snapshotMagic {
		return "", nil, fmt.Errorf("Invalid magic value: %#x", m)
	}
	n := binary.LittleEndian.Uint64(data[8:])
	if n > 64 || uint64(len(data)-16) < n {
		return "", nil, errors.New("Invalid data format version")
	}
	return string(data[16 : 16+n]), data[16+n:], nil
}

// checkVersion applies the format rule: major equal, minor not newer.
func checkVersion(ver string) error {
	want := strings.Split(SnapshotVersion, ".")
	got := strings.Split(ver, ".")
	if len(got) != 3 {
		return fmt.Errorf("Invalid data format version: %s", ver)
	}
	gm, err1 := strconv.Atoi(got[0])
	gn, err2 := strconv.Atoi(got[1])
	wm, _ := strconv.Atoi(want[0])
	wn, _ := strconv.Atoi(want[1])
	if err1 != nil || err2 != nil || gm != wm || gn > wn {
		return fmt.Errorf("Snapshot data format version %s is not supported by this Firecracker (supports %s)", ver, SnapshotVersion)
	}
	return nil
}

func decodeVMState(data []byte) (*vmState, error) {
	if len(data) > maxVMStateSize {
		return nil, fmt.Errorf("Snapshot file is too large: %d bytes", len(data))
	}
	ver, rest, err := readVMStateHeader(data)
	if err != nil {
		return nil, err
	}
	if err := checkVersion(ver); err != nil {
		return nil, err
	}
	if len(rest) < 8 {
		return nil, errors.New("Snapshot file is too short")
	}
	body := data[:len(data)-8]
	if got, want := crc64.Checksum(body, crcTable), binary.LittleEndian.Uint64(data[len(data)-8:]); got != want {
		return nil, fmt.Errorf("CRC64 validation failed: computed %#x, expected %#x", got, want)
	}
	var st vmState
	if err := json.Unmarshal(rest[:len(rest)-8], &st); err != nil {
		return nil, fmt.Errorf("Failed to deserialize the microVM state: %w", err)
	}
	return &st, nil
}

// describeSnapshot implements --describe-snapshot.
func describeSnapshot(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	ver, _, err := readVMStateHeader(data)
	if err != nil {
		return "", err
	}
	return "v" + ver, nil
}

func (v *vmm) snapshotState(kind string) *vmState {
	st := &vmState{Machine: v.machine, BootArgs: v.bootArgs, Balloon: v.balloon, Entropy: v.entropy,
		Mmds: v.mmdsCfg, Hotplug: v.hotplug, Type: kind, Dirty: v.machine.TrackDirtyPages}
	for _, d := range v.drives {
		st.Drives = append(st.Drives, d.cfg)
	}
	for _, n := range v.nets {
		st.Nets = append(st.Nets, n.cfg)
		st.GuestNet = append(st.GuestNet, n.guestState())
	}
	for _, p := range v.pmems {
		st.Pmem = append(st.Pmem, p.cfg)
	}
	if v.vsock != nil {
		c := v.vsock.cfg
		st.Vsock = &c
	}
	return st
}

func (v *vmm) createSnapshot(body []byte) (*result, error) {
	var c struct {
		SnapshotType string `json:"snapshot_type"`
		SnapshotPath string `json:"snapshot_path"`
		MemFilePath  string `json:"mem_file_path"`
	}
	if err := decodeStrict(body, sSnapCreate, &c); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.postBoot(); err != nil {
		return nil, err
	}
	if v.state != statePaused {
		return nil, badRequest(msgCreateRunning)
	}
	for _, d := range v.drives {
		if d.cfg.Socket != nil {
			return nil, badRequest("Create snapshot error: Cannot save the microVM state: Devices without snapshot support are present: vhost-user-block(id: %s)", d.cfg.DriveID)
		}
	}
	if c.SnapshotType == "" {
		c.SnapshotType = "Full"
	}
	start := time.Now()
	data, err := encodeVMState(v.snapshotState(c.SnapshotType))
	if err != nil {
		return nil, badRequest("Create snapshot error: Cannot save the microVM state: %s", err)
	}
	if err := os.WriteFile(c.SnapshotPath, data, 0o600); err != nil {
		return nil, badRequest("Create snapshot error: Cannot save the microVM state: Failed to open snapshot file: %s", rustIOError(err))
	}
	if err := writeMemFile(c.MemFilePath, int64(v.machine.MemSizeMib)*mib, c.SnapshotType == "Full"); err != nil {
		return nil, badRequest("Create snapshot error: Cannot write memory file: %s", rustIOError(err))
	}
	key := "full_create_snapshot"
	if c.SnapshotType == "Diff" {
		key = "diff_create_snapshot"
	}
	v.met.add("latencies_us", key, uint64(time.Since(start).Microseconds()))
	v.log.info("Snapshot (%s) created: state %s, memory %s", c.SnapshotType, c.SnapshotPath, c.MemFilePath)
	return ok()
}

// writeMemFile writes a sparse guest memory image: a same-size file is
// reused in place, another size is truncated first. Full snapshots get a
// non-zero header page, diff snapshots a small marker.
func writeMemFile(path string, size int64, full bool) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open memory file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat memory file: %w", err)
	}
	if fi.Size() != size {
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("truncate memory file: %w", err)
		}
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("size memory file: %w", err)
		}
	}
	var page []byte
	if full {
		page = bytes.Repeat([]byte("FCEMU-GUEST-MEMORY-FULL\n"), 4096/24+1)[:4096]
	} else {
		page = []byte("FCEMU-GUEST-MEMORY-DIFF\n")
	}
	if int64(len(page)) > size {
		page = page[:size]
	}
	if _, err := f.WriteAt(page, 0); err != nil {
		return fmt.Errorf("write memory file: %w", err)
	}
	return nil
}

// loadParams is the body of PUT /snapshot/load.
type loadParams struct {
	SnapshotPath string  `json:"snapshot_path"`
	MemFilePath  *string `json:"mem_file_path"`
	MemBackend   *struct {
		BackendPath string `json:"backend_path"`
		BackendType string `json:"backend_type"`
	} `json:"mem_backend"`
	EnableDiff       bool `json:"enable_diff_snapshots"`
	TrackDirtyPages  bool `json:"track_dirty_pages"`
	ResumeVM         bool `json:"resume_vm"`
	NetworkOverrides []struct {
		IfaceID     string `json:"iface_id"`
		HostDevName string `json:"host_dev_name"`
	} `json:"network_overrides"`
	VsockOverride *struct {
		UDSPath string `json:"uds_path"`
	} `json:"vsock_override"`
	ClockRealtime bool `json:"clock_realtime"`
}

func (v *vmm) loadSnapshot(body []byte) (*result, error) {
	var p loadParams
	if err := decodeStrict(body, sSnapLoad, &p); err != nil {
		return nil, jsonErr(err)
	}
	dep := p.MemFilePath != nil || hasField(body, "enable_diff_snapshots")
	switch {
	case p.MemFilePath != nil && p.MemBackend != nil:
		return &result{dep: dep}, badRequest("An error occurred when deserializing the json body of a request: too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
	case p.MemFilePath == nil && p.MemBackend == nil:
		return &result{dep: dep}, badRequest("An error occurred when deserializing the json body of a request: missing field: either `mem_backend` or `mem_file_path` is required.")
	}
	if err := v.preBoot(false); err != nil {
		return &result{dep: dep}, err
	}
	if v.bootPath {
		return &result{dep: dep}, badRequest(msgLoadNotAllowed)
	}
	start := time.Now()
	v.sleep(v.envMillis("FCEMU_LOAD_DELAY_MS", 0))
	if err := v.restore(&p); err != nil {
		v.log.logf(levelError, "main", "vmm/src/persist.rs:1", "Loading snapshot failed: %s", err)
		// Restore failures are fatal: answer, then exit 1.
		return &result{dep: dep, after: func() { v.exit(exitGeneric) }}, badRequest("Load snapshot error: %s", err)
	}
	v.met.add("latencies_us", "load_snapshot", uint64(time.Since(start).Microseconds()))
	v.log.info("Snapshot loaded from %s", p.SnapshotPath)
	v.started()
	if v.state == stateRunning {
		v.guestNetRun()
	}
	return &result{dep: dep}, nil
}

// restore rebuilds the VM from a snapshot; any error is fatal to the
// process, so partially opened resources are left for the exit to release.
func (v *vmm) restore(p *loadParams) error {
	fi, err := os.Stat(p.SnapshotPath)
	if err != nil {
		return fmt.Errorf("Cannot open the snapshot file: %s", rustIOError(err))
	}
	if fi.Size() > maxVMStateSize {
		return fmt.Errorf("Cannot restore microvm state: Snapshot file is too large: %d bytes", fi.Size())
	}
	data, err := os.ReadFile(p.SnapshotPath)
	if err != nil {
		return fmt.Errorf("Cannot open the snapshot file: %s", rustIOError(err))
	}
	st, err := decodeVMState(data)
	if err != nil {
		return fmt.Errorf("Cannot restore microvm state: %s", err)
	}
	memSize := int64(st.Machine.MemSizeMib) * mib
	switch {
	case p.MemFilePath != nil || p.MemBackend.BackendType == "File":
		path := ""
		if p.MemFilePath != nil {
			path = *p.MemFilePath
		} else {
			path = p.MemBackend.BackendPath
		}
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("Failed to restore from the memory file: Cannot open the memory file: %s", rustIOError(err))
		}
		mfi, err := f.Stat()
		if err != nil || mfi.Size() != memSize {
			f.Close()
			return fmt.Errorf("Failed to restore from the memory file: Memory file size %d does not match the guest memory size %d", mfi.Size(), memSize)
		}
		v.memFile = f
	default:
		conn, err := sendUffd(p.MemBackend.BackendPath, memSize)
		if err != nil {
			return fmt.Errorf("Failed to restore from the memory file: Cannot connect to UDS in order to send information on handling guest memory page-faults due to: %s", rustIOError(err))
		}
		v.uffdConn = conn
	}
	overrides := map[string]string{}
	for _, o := range p.NetworkOverrides {
		found := false
		for _, n := range st.Nets {
			found = found || n.IfaceID == o.IfaceID
		}
		if !found {
			return errors.New("Unknown Network Device.")
		}
		overrides[o.IfaceID] = o.HostDevName
	}
	if p.VsockOverride != nil {
		if st.Vsock == nil {
			return errors.New("Unknown Vsock Device.")
		}
		st.Vsock.UDSPath = p.VsockOverride.UDSPath
	}
	for _, c := range st.Drives {
		d, err := v.openDrive(c)
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) {
				return fmt.Errorf("Cannot restore devices: %s", ae.msg)
			}
			return fmt.Errorf("Cannot restore devices: %w", err)
		}
		v.drives = append(v.drives, d)
	}
	for _, c := range st.Pmem {
		f, err := openBacking(c.PathOnHost, c.ReadOnly)
		if err != nil {
			return fmt.Errorf("Cannot restore devices: Pmem device error: %s", rustIOError(err))
		}
		v.pmems = append(v.pmems, &pmemDev{cfg: c, file: f})
	}
	for _, c := range st.Nets {
		if name, ok := overrides[c.IfaceID]; ok {
			c.HostDevName = name
		}
		n, err := v.openNet(c)
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) {
				return fmt.Errorf("Cannot restore devices: %s", ae.msg)
			}
			return fmt.Errorf("Cannot restore devices: %w", err)
		}
		v.nets = append(v.nets, n)
	}
	if err := v.activateNets(st.BootArgs, st.GuestNet); err != nil {
		return fmt.Errorf("Cannot restore devices: %w", err)
	}
	if st.Vsock != nil {
		d, err := bindVsock(*st.Vsock)
		if err != nil {
			return fmt.Errorf("Cannot restore devices: Error binding to the host-side Unix socket: %s", rustIOError(err))
		}
		v.vsock = d
	}
	st.Machine.TrackDirtyPages = p.TrackDirtyPages || p.EnableDiff
	st.Machine.CPUTemplate = ""
	v.machine = st.Machine
	v.bootArgs = st.BootArgs
	v.balloon, v.entropy, v.mmdsCfg, v.hotplug = st.Balloon, st.Entropy, st.Mmds, st.Hotplug
	v.restored = true
	if p.ResumeVM {
		v.state = stateRunning
		v.paused.Store(false)
	} else {
		v.state = statePaused
		v.paused.Store(true)
	}
	return nil
}

// sendUffd connects to a page-fault handler and hands it the guest memory
// layout plus a memory fd over SCM_RIGHTS, as Firecracker does with its
// userfaultfd. The connection stays open for the VM's lifetime.
func sendUffd(path string, size int64) (net.Conn, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", path, err)
	}
	fd, err := unix.MemfdCreate("fcemu-guest-mem", unix.MFD_CLOEXEC)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, size); err != nil {
		conn.Close()
		return nil, fmt.Errorf("ftruncate memfd: %w", err)
	}
	regions, _ := json.Marshal([]map[string]uint64{{
		"base_host_virt_addr": 0x7f0000000000, "size": uint64(size), "offset": 0, "page_size": 4096, "page_size_kib": 4,
	}})
	if _, _, err := conn.(*net.UnixConn).WriteMsgUnix(regions, unix.UnixRights(fd), nil); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send uffd: %w", err)
	}
	return conn, nil
}
