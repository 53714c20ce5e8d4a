package fcemu

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
