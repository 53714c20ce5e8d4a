package fcemu

import (
	"encoding/json"
	"fmt"
	"net"
)

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
