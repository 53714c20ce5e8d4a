package fcemu

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

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
