package fcemu

import (
	"encoding/json"
	"os"
)

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
