package fcemu

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
