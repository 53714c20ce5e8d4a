package fcemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
)

// result is what a handler produces: a value to encode (nil → 204), whether
// a deprecated field was used, and an optional action after answering.
type result struct {
	body  any
	dep   bool
	after func()
}

func ok() (*result, error) { return &result{}, nil }

func fault(status int, msg string) *response {
	b, _ := json.Marshal(map[string]string{"fault_message": msg})
	return &response{status: status, body: b}
}

// jsonErr wraps a deserialization failure like Firecracker's RequestError.
func jsonErr(err error) error {
	return badRequest("An error occurred when deserializing the json body of a request: %s.", err.Error())
}

// metricKeys maps a resource to its api-request metric name.
var metricKeys = map[string]string{
	"actions": "actions", "boot-source": "boot_source", "drives": "drive", "logger": "logger",
	"machine-config": "machine_cfg", "cpu-config": "cpu_cfg", "metrics": "metrics",
	"network-interfaces": "network", "mmds": "mmds", "vsock": "vsock", "pmem": "pmem", "serial": "serial",
	"hotplug": "hotplug_memory", "balloon": "balloon", "entropy": "entropy", "snapshot": "snapshot",
	"vm": "vm", "": "instance_info", "version": "vmm_version",
}

// handle answers one API request; it is the only entry point of the API
// and holds v.mu for the whole request, like Firecracker's VMM thread.
func (v *vmm) handle(req *request) *response {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.log.api("The API server received a %s request on %q.", req.method, req.path)
	segs := strings.Split(strings.TrimPrefix(req.path, "/"), "/")
	res := segs[0]
	group := map[string]string{"GET": "get_api_requests", "PUT": "put_api_requests", "PATCH": "patch_api_requests", "DELETE": "delete_api_requests"}[req.method]
	key, known := metricKeys[res]
	if !known {
		key = "invalid"
	}
	v.met.add(group, key+"_count", 1)

	if r := v.faults.match(req.method, req.path, discriminator(req, res)); r != nil {
		switch r.kind {
		case faultFail:
			v.log.warn("Injected fault: failing %s %s", req.method, req.path)
			v.met.add(group, key+"_fails", 1)
			return fault(400, r.message)
		case faultExit:
			v.log.warn("Injected fault: exiting with code %d on %s %s", r.code, req.method, req.path)
			v.exit(r.code)
		case faultHang:
			v.log.warn("Injected fault: hanging on %s %s", req.method, req.path)
		}
		<-v.ctx.Done()
		return nil
	}

	out, err := v.route(req, segs)
	if err != nil {
		v.met.add(group, key+"_fails", 1)
		var ae *apiError
		if errors.As(err, &ae) {
			v.log.logf(levelError, "fc_api", "api_server/src/parsed_request.rs:1", "Received Error. Status code: %d. Message: %s", ae.status, ae.msg)
			resp := fault(ae.status, ae.msg)
			if out != nil {
				resp.after = out.after
				resp.deprecation = out.dep
			}
			return resp
		}
		return fault(400, err.Error())
	}
	resp := &response{status: 204, deprecation: out.dep, after: out.after}
	if out.body != nil {
		b, err := json.Marshal(out.body)
		if err != nil {
			return fault(400, fmt.Sprintf("encoding response: %v", err))
		}
		resp.status = 200
		resp.body = b
	}
	return resp
}

// discriminator extracts the action_type or VM state used by fault rules.
func discriminator(req *request, res string) string {
	if !req.hasBody {
		return ""
	}
	var m map[string]any
	if json.Unmarshal(req.body, &m) != nil {
		return ""
	}
	switch {
	case req.method == "PUT" && res == "actions":
		s, _ := m["action_type"].(string)
		return s
	case req.method == "PATCH" && res == "vm":
		s, _ := m["state"].(string)
		return s
	}
	return ""
}

// checkedID applies Firecracker's API resource id rules to a path segment.
func checkedID(segs []string) (string, error) {
	if len(segs) < 2 || segs[1] == "" {
		return "", badRequest(msgEmptyID)
	}
	for _, c := range []byte(segs[1]) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return "", badRequest(msgBadIDChars)
		}
	}
	return segs[1], nil
}

func seg(segs []string, i int) string {
	if i < len(segs) {
		return segs[i]
	}
	return ""
}

func invalidPath(method, res string) error {
	return badRequest("Invalid request method and/or path: %s %s.", method, res)
}

// route dispatches like Firecracker's parsed_request.rs.
func (v *vmm) route(req *request, segs []string) (*result, error) {
	m, res, body, has := req.method, segs[0], req.body, req.hasBody
	sub := seg(segs, 1)
	switch {
	case m == "GET" && has:
		return nil, badRequest("GET request cannot have a body.")
	case m == "GET":
		switch {
		case res == "":
			return &result{body: map[string]string{"id": v.id, "state": v.state, "vmm_version": FirecrackerVersion, "app_name": "Firecracker"}}, nil
		case res == "version":
			return &result{body: map[string]string{"firecracker_version": FirecrackerVersion}}, nil
		case res == "machine-config":
			return &result{body: v.machineJSON()}, nil
		case res == "vm" && sub == "config":
			return &result{body: v.fullConfig()}, nil
		case res == "mmds":
			return v.getMmds()
		case res == "balloon":
			return v.getBalloon(sub, seg(segs, 2))
		case res == "hotplug" && sub == "memory":
			return v.getHotplug()
		}
	case m == "PUT" && has:
		switch res {
		case "actions":
			return v.putAction(body)
		case "balloon":
			return v.putBalloon(body)
		case "boot-source":
			return v.putBootSource(body)
		case "cpu-config":
			return v.putCPUConfig(body)
		case "drives":
			return v.putDrive(segs, body)
		case "logger":
			return v.putLogger(body)
		case "machine-config":
			return v.putMachine(body, false)
		case "metrics":
			return v.putMetrics(body)
		case "mmds":
			if sub == "config" {
				return v.putMmdsConfig(body)
			}
			return v.putMmds(body, false)
		case "network-interfaces":
			return v.putNet(segs, body)
		case "pmem":
			return v.putPmem(segs, body)
		case "serial":
			return v.putSerial(body)
		case "snapshot":
			switch sub {
			case "create":
				return v.createSnapshot(body)
			case "load":
				return v.loadSnapshot(body)
			}
		case "vsock":
			return v.putVsock(body)
		case "entropy":
			return v.putEntropy(body)
		case "hotplug":
			if sub == "memory" {
				return v.putHotplug(body)
			}
		}
	case m == "PUT":
		return nil, badRequest("Empty PUT request.")
	case m == "PATCH" && res == "balloon" && sub == "hinting" && seg(segs, 2) == "start":
		return v.patchBalloon("hinting/start", body, has)
	case m == "PATCH" && has:
		switch res {
		case "balloon":
			if sub == "hinting" {
				return v.patchBalloon("hinting/"+seg(segs, 2), body, has)
			}
			return v.patchBalloon(sub, body, has)
		case "drives":
			return v.patchDrive(segs, body)
		case "machine-config":
			return v.putMachine(body, true)
		case "mmds":
			return v.putMmds(body, true)
		case "network-interfaces":
			return v.patchNet(segs, body)
		case "pmem":
			return v.patchPmem(segs, body)
		case "vm":
			return v.patchVM(body)
		case "hotplug":
			if sub == "memory" {
				return v.patchHotplug(body)
			}
		}
	case m == "PATCH" && res == "balloon" && sub == "hinting" && seg(segs, 2) == "stop":
		return v.patchBalloon("hinting/stop", nil, false)
	case m == "PATCH":
		return nil, badRequest("Empty PATCH request.")
	case m == "DELETE":
		switch res {
		case "drives", "network-interfaces", "pmem":
			return v.deleteDevice(res, segs)
		}
	}
	return nil, invalidPath(m, res)
}

// preBoot marks a boot-specific request that reached the VMM and rejects it
// once the VM runs.
func (v *vmm) preBoot(bootSpecific bool) error {
	if v.state != stateNotStarted {
		return badRequest(msgNotAfterStart)
	}
	if bootSpecific {
		v.bootPath = true
	}
	return nil
}

func (v *vmm) postBoot() error {
	if v.state == stateNotStarted {
		return badRequest(msgNotBeforeStart)
	}
	return nil
}

func (v *vmm) putAction(body []byte) (*result, error) {
	var a struct {
		ActionType string `json:"action_type"`
	}
	if err := decodeStrict(body, sAction, &a); err != nil {
		return nil, jsonErr(err)
	}
	switch a.ActionType {
	case "InstanceStart":
		return v.instanceStart()
	case "FlushMetrics":
		if err := v.postBoot(); err != nil {
			return nil, err
		}
		v.met.flush()
		return ok()
	default: // SendCtrlAltDel
		if err := v.postBoot(); err != nil {
			return nil, err
		}
		v.ctrlAltDel()
		return ok()
	}
}

func (v *vmm) instanceStart() (*result, error) {
	if err := v.preBoot(false); err != nil {
		return nil, err
	}
	if v.boot == nil {
		return nil, badRequest(msgNoKernel)
	}
	args := v.effectiveBootArgs()
	if len(args) > maxCmdline {
		return nil, badRequest("Start microvm error: Invalid kernel command line: Command line string is too large")
	}
	if v.machine.MemSizeMib > 1<<22 {
		return nil, badRequest("Start microvm error: Invalid Memory Configuration: Cannot allocate memory (os error 12)")
	}
	v.sleep(v.envMillis("FCEMU_BOOT_DELAY_MS", 0))
	if err := v.activateNets(args, nil); err != nil {
		return nil, badRequest("Start microvm error: %s", err)
	}
	v.bootArgs = args
	v.state = stateRunning
	v.paused.Store(false)
	v.log.info("Successfully started microvm that was configured from one single json")
	v.serial("[    0.000000] Linux version 6.1.0 (firecracker-emulator) #1 SMP Firecracker v%s", FirecrackerVersion)
	v.serial("[    0.000000] Command line: %s", args)
	v.serial("[    0.004000] smpboot: Allowing %d CPUs, %d MiB RAM", v.machine.VcpuCount, v.machine.MemSizeMib)
	for i, d := range v.orderedDrives() {
		v.serial("[    0.012000] virtio_blk virtio%d: [vd%c] drive %s", i, 'a'+i, d.cfg.DriveID)
	}
	v.serial("emulated guest ready")
	v.started()
	v.guestNetRun()
	return ok()
}

func (v *vmm) ctrlAltDel() {
	if v.env["FCEMU_IGNORE_CTRL_ALT_DEL"] == "1" {
		v.log.info("Guest ignored Ctrl+Alt+Del")
		return
	}
	if v.halted {
		return
	}
	if !hasRebootK(v.bootArgs) {
		v.halted = true
		v.guestNetStop()
		v.serial("reboot: System halted")
		return
	}
	if v.state == statePaused {
		v.pendReboot = true
		return
	}
	v.armReboot()
}

func (v *vmm) patchVM(body []byte) (*result, error) {
	var s struct {
		State string `json:"state"`
	}
	if err := decodeStrict(body, sVM, &s); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.postBoot(); err != nil {
		return nil, err
	}
	if s.State == "Paused" {
		if v.state != statePaused {
			v.log.info("Pausing VM")
		}
		v.state = statePaused
		v.paused.Store(true)
		v.guestNetStop()
		return ok()
	}
	if v.state != stateRunning {
		v.log.info("Resuming VM")
	}
	v.state = stateRunning
	v.paused.Store(false)
	v.guestNetRun()
	if v.pendReboot {
		v.pendReboot = false
		v.armReboot()
	}
	return ok()
}

func (v *vmm) putBootSource(body []byte) (*result, error) {
	var b bootSource
	if err := decodeStrict(body, sBoot, &b); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.preBoot(true); err != nil {
		return nil, err
	}
	kf, err := os.Open(b.KernelImagePath)
	if err != nil {
		return nil, badRequest("Boot source error: The kernel file cannot be opened: %s", rustIOError(err))
	}
	files := []*os.File{kf}
	if b.InitrdPath != nil {
		f, err := os.Open(*b.InitrdPath)
		if err != nil {
			kf.Close()
			return nil, badRequest("Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. %s", rustIOError(err))
		}
		files = append(files, f)
	}
	if b.BootArgs != nil && len(*b.BootArgs) > maxCmdline {
		for _, f := range files {
			f.Close()
		}
		return nil, badRequest("Boot source error: The kernel command line is invalid: Command line string is too large")
	}
	for _, f := range v.bootFiles {
		f.Close()
	}
	v.boot, v.bootFiles = &b, files
	return ok()
}

func (v *vmm) validateMachine(mc machineConfig) error {
	if mc.VcpuCount == 0 || mc.VcpuCount > 32 || (mc.SMT && mc.VcpuCount > 1 && mc.VcpuCount%2 == 1) {
		return badRequest("Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.")
	}
	if mc.MemSizeMib == 0 || (mc.HugePages == "2M" && mc.MemSizeMib%2 == 1) {
		return badRequest("Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.")
	}
	if v.balloon != nil && mc.MemSizeMib < uint64(v.balloon.AmountMib) {
		return badRequest("Machine config error: The memory size (MiB) is smaller than the previously set balloon device target size.")
	}
	return nil
}

func (v *vmm) putMachine(body []byte, patch bool) (*result, error) {
	var u machineUpdate
	s := sMachine
	if patch {
		s = sMachineP
	}
	if err := decodeStrict(body, s, &u); err != nil {
		return nil, jsonErr(err)
	}
	if patch && u.VcpuCount == nil && u.MemSizeMib == nil && u.SMT == nil && u.CPUTemplate == nil && u.TrackDirtyPages == nil && u.HugePages == nil {
		return nil, badRequest("Empty PATCH request.")
	}
	dep := hasField(body, "cpu_template")
	if err := v.preBoot(true); err != nil {
		return &result{dep: dep}, err
	}
	mc := v.machine
	if !patch {
		mc = machineConfig{HugePages: "None", CPUTemplate: v.machine.CPUTemplate}
	}
	if u.VcpuCount != nil {
		mc.VcpuCount = *u.VcpuCount
	}
	if u.MemSizeMib != nil {
		mc.MemSizeMib = *u.MemSizeMib
	}
	if u.SMT != nil {
		mc.SMT = *u.SMT
	}
	if u.TrackDirtyPages != nil {
		mc.TrackDirtyPages = *u.TrackDirtyPages
	}
	if u.HugePages != nil {
		mc.HugePages = *u.HugePages
	}
	if u.CPUTemplate != nil {
		mc.CPUTemplate = *u.CPUTemplate
	}
	if err := v.validateMachine(mc); err != nil {
		return &result{dep: dep}, err
	}
	v.machine = mc
	return &result{dep: dep}, nil
}

func (v *vmm) putCPUConfig(body []byte) (*result, error) {
	if err := decodeStrict(body, sCPUConf, nil); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.preBoot(false); err != nil {
		return nil, err
	}
	v.cpuConfig = append(json.RawMessage(nil), body...)
	return ok()
}

func (v *vmm) rootTaken(exceptDrive, exceptPmem string) bool {
	for _, d := range v.drives {
		if d.cfg.IsRootDevice && d.cfg.DriveID != exceptDrive {
			return true
		}
	}
	for _, p := range v.pmems {
		if p.cfg.RootDevice && p.cfg.ID != exceptPmem {
			return true
		}
	}
	return false
}

// openDrive validates a drive config and opens its backend.
func (v *vmm) openDrive(c driveConfig) (*drive, error) {
	if c.Socket != nil {
		if c.PathOnHost != nil || c.IsReadOnly != nil || c.RateLimiter != nil || c.IoEngine != nil {
			return nil, badRequest("Drive config error: Unable to create the virtio block device: Invalid block config.")
		}
		conn, err := net.Dial("unix", *c.Socket)
		if err != nil {
			return nil, badRequest("Drive config error: Unable to create the vhost-user-block device: Vhost-user error: %s", rustIOError(err))
		}
		conn.Close()
		return &drive{cfg: c}, nil
	}
	if c.PathOnHost == nil {
		return nil, badRequest("Drive config error: Unable to create the virtio block device: Invalid block config.")
	}
	f, err := openBacking(*c.PathOnHost, c.readOnly())
	if err != nil {
		return nil, badRequest("Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: %s %s", rustIOError(err), *c.PathOnHost)
	}
	return &drive{cfg: c, file: f}, nil
}

func (v *vmm) putDrive(segs []string, body []byte) (*result, error) {
	id, err := checkedID(segs)
	if err != nil {
		return nil, err
	}
	var c driveConfig
	if err := decodeStrict(body, sDrive, &c); err != nil {
		return nil, jsonErr(err)
	}
	if c.DriveID != id {
		return nil, badRequest(msgIDMismatch)
	}
	if v.state != stateNotStarted {
		return v.hotplugDevice("drives", id, func() error {
			d, err := v.openDrive(c)
			if err != nil {
				return err
			}
			v.drives = append(v.drives, d)
			return nil
		})
	}
	v.bootPath = true
	if c.IsRootDevice && v.rootTaken(id, "") {
		return nil, badRequest("Drive config error: A root block device already exists!")
	}
	d, err := v.openDrive(c)
	if err != nil {
		return nil, err
	}
	for i, old := range v.drives {
		if old.cfg.DriveID == id {
			if old.file != nil {
				old.file.Close()
			}
			v.drives[i] = d
			return ok()
		}
	}
	v.drives = append(v.drives, d)
	return ok()
}

// hotplugDevice implements post-boot PUT of drives, network interfaces and
// pmem (PCI hot-plug).
func (v *vmm) hotplugDevice(kind, id string, add func() error) (*result, error) {
	if !v.enablePCI {
		return nil, badRequest("PCI is not enabled")
	}
	if v.deviceIndex(kind, id) >= 0 {
		return nil, badRequest("Device ID in use")
	}
	if err := add(); err != nil {
		return nil, err
	}
	return ok()
}

func (v *vmm) deviceIndex(kind, id string) int {
	switch kind {
	case "drives":
		for i, d := range v.drives {
			if d.cfg.DriveID == id {
				return i
			}
		}
	case "network-interfaces":
		for i, n := range v.nets {
			if n.IfaceID == id {
				return i
			}
		}
	case "pmem":
		for i, p := range v.pmems {
			if p.cfg.ID == id {
				return i
			}
		}
	}
	return -1
}

func (v *vmm) deleteDevice(kind string, segs []string) (*result, error) {
	id, err := checkedID(segs)
	if err != nil {
		return nil, err
	}
	if err := v.postBoot(); err != nil {
		return nil, err
	}
	if !v.enablePCI {
		return nil, badRequest("PCI is not enabled")
	}
	i := v.deviceIndex(kind, id)
	if i < 0 {
		return nil, badRequest("Device not found")
	}
	switch kind {
	case "drives":
		d := v.drives[i]
		if d.cfg.IsRootDevice {
			return nil, badRequest("Cannot unplug root device")
		}
		if d.file != nil {
			d.file.Close()
		}
		v.drives = append(v.drives[:i], v.drives[i+1:]...)
	case "network-interfaces":
		v.nets[i].close()
		v.nets = append(v.nets[:i], v.nets[i+1:]...)
	case "pmem":
		p := v.pmems[i]
		if p.cfg.RootDevice {
			return nil, badRequest("Cannot unplug root device")
		}
		p.file.Close()
		v.pmems = append(v.pmems[:i], v.pmems[i+1:]...)
	}
	return ok()
}

func (v *vmm) patchDrive(segs []string, body []byte) (*result, error) {
	id, err := checkedID(segs)
	if err != nil {
		return nil, err
	}
	var c struct {
		DriveID     string       `json:"drive_id"`
		PathOnHost  *string      `json:"path_on_host"`
		RateLimiter *rateLimiter `json:"rate_limiter"`
	}
	if err := decodeStrict(body, sDriveP, &c); err != nil {
		return nil, jsonErr(err)
	}
	if c.DriveID != id {
		return nil, badRequest(msgIDMismatch)
	}
	if err := v.postBoot(); err != nil {
		return nil, err
	}
	i := v.deviceIndex("drives", id)
	if i < 0 {
		return nil, badRequest("Drive config error: Unable to patch the block device: Invalid block device ID.")
	}
	d := v.drives[i]
	if c.PathOnHost != nil {
		if d.cfg.Socket != nil {
			return nil, badRequest("Drive config error: Unable to patch the block device: Invalid block config.")
		}
		f, err := openBacking(*c.PathOnHost, d.cfg.readOnly())
		if err != nil {
			return nil, badRequest("Drive config error: Unable to patch the block device: Virtio backend error: Error manipulating the backing file: %s %s", rustIOError(err), *c.PathOnHost)
		}
		if d.file != nil {
			d.file.Close()
		}
		d.file = f
		p := *c.PathOnHost
		d.cfg.PathOnHost = &p
	}
	d.cfg.RateLimiter = mergeLimiter(d.cfg.RateLimiter, c.RateLimiter)
	return ok()
}

func (v *vmm) openNet(c netConfig) (*NetDevice, error) {
	n := &NetDevice{IfaceID: c.IfaceID, HostDevName: c.HostDevName, cfg: c}
	if c.GuestMAC != nil {
		n.GuestMAC = *c.GuestMAC
	}
	if len(c.HostDevName) >= 16 {
		return nil, badRequest("Network config error: Could not create the network device: Open tap device failed: Invalid interface name")
	}
	if v.env["FCEMU_SKIP_TAP"] == "1" {
		return n, nil
	}
	tap, err := openTAP(c.HostDevName)
	var vh *vnetHdrError
	if errors.As(err, &vh) {
		return nil, badRequest("Network config error: Could not create the network device: Setting vnet header size failed: %s", vh.msg)
	}
	if err != nil {
		return nil, badRequest("Network config error: Could not create the network device: Open tap device failed: %s", err.Error())
	}
	n.TAP = tap
	return n, nil
}

func parseMAC(s string) bool {
	hw, err := net.ParseMAC(s)
	return err == nil && len(hw) == 6 && len(s) == 17
}

func (v *vmm) putNet(segs []string, body []byte) (*result, error) {
	id, err := checkedID(segs)
	if err != nil {
		return nil, err
	}
	var c netConfig
	if err := decodeStrict(body, sNet, &c); err != nil {
		return nil, jsonErr(err)
	}
	if c.GuestMAC != nil && !parseMAC(*c.GuestMAC) {
		return nil, jsonErr(&jsonError{msg: fmt.Sprintf("invalid value: string %q, expected a valid MAC address", *c.GuestMAC)})
	}
	if c.IfaceID != id {
		return nil, badRequest("The id from the path [%s] does not match the id from the body [%s]!", id, c.IfaceID)
	}
	if v.state != stateNotStarted {
		return v.hotplugDevice("network-interfaces", id, func() error {
			n, err := v.openNet(c)
			if err != nil {
				return err
			}
			// The running guest probes the new NIC: it gets a MAC but no
			// address (ip= configures interfaces at boot only).
			if err := n.activate("", netip.Addr{}, v.log, v.met); err != nil {
				n.close()
				return err
			}
			v.nets = append(v.nets, n)
			return nil
		})
	}
	v.bootPath = true
	if c.MTU != nil && *c.MTU < 68 {
		return nil, badRequest("Network config error: Invalid MTU value %d: the MTU must be between 68 and 65535.", *c.MTU)
	}
	if c.GuestMAC != nil {
		for _, n := range v.nets {
			if n.IfaceID != id && strings.EqualFold(n.GuestMAC, *c.GuestMAC) {
				return nil, badRequest("Network config error: The MAC address is already in use: %s", *c.GuestMAC)
			}
		}
	}
	idx := v.deviceIndex("network-interfaces", id)
	if idx >= 0 {
		v.nets[idx].close()
		v.nets = append(v.nets[:idx], v.nets[idx+1:]...)
	}
	n, err := v.openNet(c)
	if err != nil {
		return nil, err
	}
	if idx >= 0 {
		v.nets = append(v.nets[:idx], append([]*NetDevice{n}, v.nets[idx:]...)...)
	} else {
		v.nets = append(v.nets, n)
	}
	return ok()
}

func (v *vmm) patchNet(segs []string, body []byte) (*result, error) {
	id, err := checkedID(segs)
	if err != nil {
		return nil, err
	}
	var c struct {
		IfaceID string       `json:"iface_id"`
		Rx      *rateLimiter `json:"rx_rate_limiter"`
		Tx      *rateLimiter `json:"tx_rate_limiter"`
	}
	if err := decodeStrict(body, sNetP, &c); err != nil {
		return nil, jsonErr(err)
	}
	if c.IfaceID != id {
		return nil, badRequest("The id from the path [%s] does not match the id from the body [%s]!", id, c.IfaceID)
	}
	if err := v.postBoot(); err != nil {
		return nil, err
	}
	i := v.deviceIndex("network-interfaces", id)
	if i < 0 {
		return nil, badRequest("Network interface update error: Device not found: %s", id)
	}
	n := v.nets[i]
	n.cfg.RxRateLimiter = mergeLimiter(n.cfg.RxRateLimiter, c.Rx)
	n.cfg.TxRateLimiter = mergeLimiter(n.cfg.TxRateLimiter, c.Tx)
	return ok()
}

func (v *vmm) putPmem(segs []string, body []byte) (*result, error) {
	id, err := checkedID(segs)
	if err != nil {
		return nil, err
	}
	var c pmemConfig
	if err := decodeStrict(body, sPmem, &c); err != nil {
		return nil, jsonErr(err)
	}
	if c.ID != id {
		return nil, badRequest(msgIDMismatch)
	}
	open := func() (*pmemDev, error) {
		f, err := openBacking(c.PathOnHost, c.ReadOnly)
		if err != nil {
			return nil, badRequest("Pmem device error: Error accessing backing file: %s", rustIOError(err))
		}
		return &pmemDev{cfg: c, file: f}, nil
	}
	if v.state != stateNotStarted {
		return v.hotplugDevice("pmem", id, func() error {
			p, err := open()
			if err != nil {
				return err
			}
			v.pmems = append(v.pmems, p)
			return nil
		})
	}
	v.bootPath = true
	if c.RootDevice && v.rootTaken("", id) {
		return nil, badRequest("Pmem device error: Attempt to add pmem as a root device while the root device defined as a block device")
	}
	p, err := open()
	if err != nil {
		return nil, err
	}
	if i := v.deviceIndex("pmem", id); i >= 0 {
		v.pmems[i].file.Close()
		v.pmems[i] = p
	} else {
		v.pmems = append(v.pmems, p)
	}
	return ok()
}

func (v *vmm) patchPmem(segs []string, body []byte) (*result, error) {
	id, err := checkedID(segs)
	if err != nil {
		return nil, err
	}
	var c struct {
		ID          string       `json:"id"`
		RateLimiter *rateLimiter `json:"rate_limiter"`
	}
	if err := decodeStrict(body, sPmemP, &c); err != nil {
		return nil, jsonErr(err)
	}
	if c.ID != id {
		return nil, badRequest(msgIDMismatch)
	}
	if err := v.postBoot(); err != nil {
		return nil, err
	}
	i := v.deviceIndex("pmem", id)
	if i < 0 {
		return nil, badRequest("Pmem device error: Device not found")
	}
	v.pmems[i].cfg.RateLimiter = mergeLimiter(v.pmems[i].cfg.RateLimiter, c.RateLimiter)
	return ok()
}

func (v *vmm) putVsock(body []byte) (*result, error) {
	var c vsockConfig
	if err := decodeStrict(body, sVsock, &c); err != nil {
		return nil, jsonErr(err)
	}
	dep := c.VsockID != nil
	if err := v.preBoot(true); err != nil {
		return &result{dep: dep}, err
	}
	if old := v.vsock; old != nil {
		old.close()
		os.Remove(old.cfg.UDSPath)
		v.vsock = nil
	}
	d, err := bindVsock(vsockConfig{GuestCID: c.GuestCID, UDSPath: c.UDSPath})
	if err != nil {
		return &result{dep: dep}, badRequest("Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: %s", rustIOError(err))
	}
	v.vsock = d
	return &result{dep: dep}, nil
}

func (v *vmm) putBalloon(body []byte) (*result, error) {
	var c balloonConfig
	if err := decodeStrict(body, sBalloon, &c); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.preBoot(true); err != nil {
		return nil, err
	}
	if uint64(c.AmountMib) > v.machine.MemSizeMib {
		return nil, badRequest("Balloon config error: Amount of pages requested is too large.")
	}
	v.balloon = &c
	return ok()
}

func (v *vmm) getBalloon(sub, sub2 string) (*result, error) {
	switch sub {
	case "":
		if v.balloon == nil {
			return nil, badRequest(msgNoBalloon)
		}
		return &result{body: v.balloon}, nil
	case "statistics":
		if err := v.postBoot(); err != nil {
			return nil, err
		}
		if v.balloon == nil {
			return nil, badRequest(msgNoBalloon)
		}
		if v.balloon.StatsPollingIntervalS == 0 {
			return nil, badRequest("Balloon config error: Statistics for the balloon device are not enabled.")
		}
		pages := uint64(v.balloon.AmountMib) * 256
		return &result{body: map[string]uint64{"target_pages": pages, "actual_pages": pages, "target_mib": uint64(v.balloon.AmountMib), "actual_mib": uint64(v.balloon.AmountMib)}}, nil
	case "hinting":
		if sub2 != "status" {
			break
		}
		if err := v.postBoot(); err != nil {
			return nil, err
		}
		if v.balloon == nil {
			return nil, badRequest(msgNoBalloon)
		}
		if !v.balloon.FreePageHinting {
			return nil, badRequest("Balloon config error: Free page hinting is not enabled.")
		}
		return &result{body: map[string]uint32{"host_cmd": 0}}, nil
	}
	return nil, invalidPath("GET", "balloon")
}

func (v *vmm) patchBalloon(sub string, body []byte, has bool) (*result, error) {
	var upd struct {
		AmountMib uint32 `json:"amount_mib"`
		Interval  uint16 `json:"stats_polling_interval_s"`
	}
	switch sub {
	case "":
		if err := decodeStrict(body, sBalloonP, &upd); err != nil {
			return nil, jsonErr(err)
		}
	case "statistics":
		if err := decodeStrict(body, sBalloonStatsP, &upd); err != nil {
			return nil, jsonErr(err)
		}
	case "hinting/start":
		if has {
			if err := decodeStrict(body, sHintStart, nil); err != nil {
				return nil, jsonErr(err)
			}
		}
	case "hinting/stop":
	default:
		return nil, invalidPath("PATCH", "balloon")
	}
	if err := v.postBoot(); err != nil {
		return nil, err
	}
	if v.balloon == nil {
		return nil, badRequest(msgNoBalloon)
	}
	switch sub {
	case "":
		if uint64(upd.AmountMib) > v.machine.MemSizeMib {
			return nil, badRequest("Balloon config error: Amount of pages requested is too large.")
		}
		v.balloon.AmountMib = upd.AmountMib
	case "statistics":
		if v.balloon.StatsPollingIntervalS == 0 || upd.Interval == 0 {
			return nil, badRequest("Balloon config error: Cannot enable/disable the statistics after boot.")
		}
		v.balloon.StatsPollingIntervalS = upd.Interval
	default:
		if !v.balloon.FreePageHinting {
			return nil, badRequest("Balloon config error: Free page hinting is not enabled.")
		}
	}
	return ok()
}

func (v *vmm) putEntropy(body []byte) (*result, error) {
	var c entropyConfig
	if err := decodeStrict(body, sEntropy, &c); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.preBoot(true); err != nil {
		return nil, err
	}
	v.entropy = &c
	return ok()
}

func (v *vmm) putMmdsConfig(body []byte) (*result, error) {
	var c mmdsConfig
	if err := decodeStrict(body, sMmdsConf, &c); err != nil {
		return nil, jsonErr(err)
	}
	if c.Version == "" {
		c.Version = "V1"
	}
	dep := c.Version == "V1"
	if err := v.preBoot(true); err != nil {
		return &result{dep: dep}, err
	}
	if len(c.NetworkInterfaces) == 0 {
		return &result{dep: dep}, badRequest("MMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
	}
	for _, id := range c.NetworkInterfaces {
		if v.deviceIndex("network-interfaces", id) < 0 {
			return &result{dep: dep}, badRequest("MMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
		}
	}
	if c.IPv4Address != nil {
		ip := net.ParseIP(*c.IPv4Address).To4()
		if ip == nil {
			return &result{dep: dep}, jsonErr(&jsonError{msg: fmt.Sprintf("invalid value: string %q, expected an IPv4 address", *c.IPv4Address)})
		}
		if !ip.IsLinkLocalUnicast() {
			return &result{dep: dep}, badRequest("MMDS config error: The MMDS IPv4 address is not link local.")
		}
	}
	v.mmdsCfg = &c
	if !v.mmdsInit {
		v.mmdsInit, v.mmdsData = true, map[string]any{}
	}
	return &result{dep: dep}, nil
}

func (v *vmm) getMmds() (*result, error) {
	if v.state != stateNotStarted && v.mmdsCfg == nil {
		return nil, badRequest(msgMmdsNotInit)
	}
	if v.mmdsData == nil {
		return &result{body: map[string]any{}}, nil
	}
	return &result{body: v.mmdsData}, nil
}

// mergePatch applies an RFC 7396 JSON merge patch.
func mergePatch(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, pv := range pm {
		if pv == nil {
			delete(tm, k)
			continue
		}
		tm[k] = mergePatch(tm[k], pv)
	}
	return tm
}

func (v *vmm) putMmds(body []byte, patch bool) (*result, error) {
	var data any
	if err := decodeStrict(body, tAny, &data); err != nil {
		return nil, jsonErr(err)
	}
	if v.state != stateNotStarted && v.mmdsCfg == nil {
		return nil, badRequest(msgMmdsNotInit)
	}
	if patch {
		if !v.mmdsInit {
			return nil, badRequest(msgMmdsNotInit)
		}
		data = mergePatch(cloneJSON(v.mmdsData), data)
	}
	if b, _ := json.Marshal(data); v.mmdsLimit > 0 && len(b) > v.mmdsLimit {
		return nil, &apiError{status: 413, msg: "MMDS limit exceeded error: The MMDS patch request doesn't fit."}
	}
	v.mmdsData, v.mmdsInit = data, true
	return ok()
}

func cloneJSON(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

func (v *vmm) putLogger(body []byte) (*result, error) {
	var c struct {
		LogPath       *string `json:"log_path"`
		Level         *string `json:"level"`
		ShowLevel     *bool   `json:"show_level"`
		ShowLogOrigin *bool   `json:"show_log_origin"`
		Module        *string `json:"module"`
	}
	if err := decodeStrict(body, sLogger, &c); err != nil {
		return nil, jsonErr(err)
	}
	level := -1
	if c.Level != nil {
		l, okLevel := parseLevel(*c.Level)
		if !okLevel {
			return nil, jsonErr(&jsonError{msg: fmt.Sprintf("unknown variant `%s`, expected one of `Off`, `Trace`, `Debug`, `Info`, `Warn`, `Warning`, `Error`", *c.Level)})
		}
		level = l
	}
	if err := v.preBoot(false); err != nil {
		return nil, err
	}
	if c.LogPath != nil {
		if err := v.log.setPath(*c.LogPath); err != nil {
			return nil, badRequest("Logger error: Failed to open target file: %s", rustIOError(err))
		}
	}
	v.log.mu.Lock()
	if level >= 0 {
		v.log.level = level
	}
	if c.ShowLevel != nil {
		v.log.showLevel = *c.ShowLevel
	}
	if c.ShowLogOrigin != nil {
		v.log.showOrigin = *c.ShowLogOrigin
	}
	if c.Module != nil {
		v.log.module = *c.Module
	}
	v.log.mu.Unlock()
	return ok()
}

func (v *vmm) putMetrics(body []byte) (*result, error) {
	var c struct {
		MetricsPath string            `json:"metrics_path"`
		EmitID      bool              `json:"emit_id"`
		Properties  map[string]string `json:"properties"`
	}
	if err := decodeStrict(body, sMetrics, &c); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.preBoot(false); err != nil {
		return nil, err
	}
	if err := v.configureMetrics(c.MetricsPath, c.EmitID, c.Properties); err != nil {
		return nil, err
	}
	return ok()
}

// configureMetrics opens the metrics file (once per process) and writes
// the first line.
func (v *vmm) configureMetrics(path string, emitID bool, props map[string]string) error {
	if v.met.configured() {
		return badRequest("Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed.")
	}
	f, err := openAppendless(path)
	if err != nil {
		return badRequest("Metrics error: Cannot initialize the metrics system due to bad user input: %s", rustIOError(err))
	}
	v.met.mu.Lock()
	v.met.file, v.met.emitID, v.met.properties = f, emitID, props
	v.met.mu.Unlock()
	v.met.flush()
	return nil
}

func (v *vmm) putSerial(body []byte) (*result, error) {
	var c struct {
		SerialOutPath *string `json:"serial_out_path"`
	}
	if err := decodeStrict(body, sSerial, &c); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.preBoot(false); err != nil {
		return nil, err
	}
	if c.SerialOutPath != nil {
		f, err := openAppendless(*c.SerialOutPath)
		if err != nil {
			return nil, badRequest("Serial config error: %s", rustIOError(err))
		}
		if v.serialFile != nil {
			v.serialFile.Close()
		}
		v.serialFile, v.serialOut = f, f
	}
	return ok()
}

func (v *vmm) putHotplug(body []byte) (*result, error) {
	var c hotplugConfig
	if err := decodeStrict(body, sHotplug, &c); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.preBoot(true); err != nil {
		return nil, err
	}
	if c.BlockSizeMib == 0 {
		c.BlockSizeMib = 2
	}
	if c.SlotSizeMib == 0 {
		c.SlotSizeMib = 128
	}
	switch {
	case c.BlockSizeMib < 2 || c.BlockSizeMib&(c.BlockSizeMib-1) != 0:
		return nil, badRequest("Memory hotplug config error: Block size must not be less than 2 MiB and must be a power of 2")
	case c.SlotSizeMib < 128 || c.SlotSizeMib%c.BlockSizeMib != 0:
		return nil, badRequest("Memory hotplug config error: Slot size must not be less than 128 MiB and must be a multiple of the block size")
	case c.TotalSizeMib < c.SlotSizeMib || c.TotalSizeMib%c.SlotSizeMib != 0:
		return nil, badRequest("Memory hotplug config error: Total size must not be less than the slot size and must be a multiple of it")
	}
	v.hotplug = &c
	return ok()
}

func (v *vmm) getHotplug() (*result, error) {
	if err := v.postBoot(); err != nil {
		return nil, err
	}
	if v.hotplug == nil {
		return nil, badRequest("Memory hotplug update error: Device not found")
	}
	return &result{body: map[string]uint32{"total_size_mib": v.hotplug.TotalSizeMib, "slot_size_mib": v.hotplug.SlotSizeMib,
		"block_size_mib": v.hotplug.BlockSizeMib, "plugged_size_mib": v.hotplugReq, "requested_size_mib": v.hotplugReq}}, nil
}

func (v *vmm) patchHotplug(body []byte) (*result, error) {
	var c struct {
		RequestedSizeMib uint32 `json:"requested_size_mib"`
	}
	if err := decodeStrict(body, sHotplugP, &c); err != nil {
		return nil, jsonErr(err)
	}
	if err := v.postBoot(); err != nil {
		return nil, err
	}
	if v.hotplug == nil {
		return nil, badRequest("Memory hotplug update error: Device not found")
	}
	if c.RequestedSizeMib > v.hotplug.TotalSizeMib || c.RequestedSizeMib%v.hotplug.BlockSizeMib != 0 {
		return nil, badRequest("Memory hotplug update error: Invalid size requested: %d MiB", c.RequestedSizeMib)
	}
	v.hotplugReq = c.RequestedSizeMib
	return ok()
}
