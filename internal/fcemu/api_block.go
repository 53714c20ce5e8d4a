package fcemu

import (
	"net"
)

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
