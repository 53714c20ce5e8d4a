package fcemu

import (
	"os"
)

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
