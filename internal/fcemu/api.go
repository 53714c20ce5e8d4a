package fcemu

import (
	"encoding/json"
	"errors"
	"fmt"
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
