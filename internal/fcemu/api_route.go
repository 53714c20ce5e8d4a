package fcemu

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
