package fcemu

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
)

// kind is the JSON type a schema node accepts, named after the Rust type
// Firecracker deserializes into (serde wording is reproduced in errors).
type kind int

const (
	kString kind = iota
	kBool
	kU8
	kU16
	kU32
	kU64
	kI32
	kUsize
	kEnum
	kObject
	kArray
	kAny
	kStringMap
)

// field is one member of an object schema.
type field struct {
	name     string
	t        *schema
	required bool
}

// schema describes the accepted shape of a request body the way Firecracker's
// serde-derived structs do: unknown fields rejected unless allowUnknown,
// required fields, integer widths and unit enum variants.
type schema struct {
	kind         kind
	name         string // struct name for "expected struct X"
	fields       []field
	allowUnknown bool
	elem         *schema
	variants     []string
}

func obj(name string, fields ...field) *schema {
	return &schema{kind: kObject, name: name, fields: fields}
}

func lenientObj(name string, fields ...field) *schema {
	s := obj(name, fields...)
	s.allowUnknown = true
	return s
}

func req(name string, t *schema) field { return field{name: name, t: t, required: true} }
func opt(name string, t *schema) field { return field{name: name, t: t} }
func enum(v ...string) *schema         { return &schema{kind: kEnum, variants: v} }
func arr(elem *schema) *schema         { return &schema{kind: kArray, elem: elem} }

var (
	tString    = &schema{kind: kString}
	tBool      = &schema{kind: kBool}
	tU8        = &schema{kind: kU8}
	tU16       = &schema{kind: kU16}
	tU32       = &schema{kind: kU32}
	tU64       = &schema{kind: kU64}
	tI32       = &schema{kind: kI32}
	tUsize     = &schema{kind: kUsize}
	tAny       = &schema{kind: kAny}
	tStringMap = &schema{kind: kStringMap}
)

// jsonError is a deserialization failure worded like serde_json.
type jsonError struct {
	msg      string
	withPos  bool
	line     int
	col      int
	noSuffix bool
}

func (e *jsonError) Error() string {
	if e.withPos {
		return fmt.Sprintf("%s at line %d column %d", e.msg, e.line, e.col)
	}
	return e.msg
}

// endPos returns the line and column of the last byte of body, the position
// serde_json reports for errors found when an object closes.
func endPos(body []byte) (int, int) {
	b := bytes.TrimRight(body, " \t\r\n")
	line := bytes.Count(b, []byte("\n")) + 1
	col := len(b) - (bytes.LastIndexByte(b, '\n') + 1)
	return line, col
}

// decodeStrict validates body against s and then unmarshals it into out
// (which may be nil). The error text follows serde_json.
func decodeStrict(body []byte, s *schema, out any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	line, col := endPos(body)
	if err := dec.Decode(&v); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			l, c := offsetPos(body, int(se.Offset))
			return &jsonError{msg: "expected value", withPos: true, line: l, col: c}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return &jsonError{msg: "EOF while parsing a value", withPos: true, line: line, col: col}
		}
		return &jsonError{msg: err.Error(), withPos: true, line: line, col: col}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &jsonError{msg: "trailing characters", withPos: true, line: line, col: col}
	}
	if msg := validate(v, s); msg != "" {
		return &jsonError{msg: msg, withPos: true, line: line, col: col}
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return &jsonError{msg: err.Error(), withPos: true, line: line, col: col}
		}
	}
	return nil
}

func offsetPos(body []byte, off int) (int, int) {
	if off > len(body) {
		off = len(body)
	}
	b := body[:off]
	return bytes.Count(b, []byte("\n")) + 1, off - (bytes.LastIndexByte(b, '\n') + 1)
}

// unexpected renders a value the way serde's Unexpected does.
func unexpected(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return fmt.Sprintf("boolean `%t`", x)
	case string:
		return fmt.Sprintf("string %q", x)
	case json.Number:
		if strings.ContainsAny(string(x), ".eE") {
			return fmt.Sprintf("floating point `%s`", x)
		}
		return fmt.Sprintf("integer `%s`", x)
	case []any:
		return "sequence"
	case map[string]any:
		return "map"
	}
	return "value"
}

func expected(s *schema) string {
	switch s.kind {
	case kString:
		return "a string"
	case kBool:
		return "a boolean"
	case kU8:
		return "u8"
	case kU16:
		return "u16"
	case kU32:
		return "u32"
	case kU64:
		return "u64"
	case kI32:
		return "i32"
	case kUsize:
		return "usize"
	case kEnum:
		return "variant identifier"
	case kObject:
		return "struct " + s.name
	case kArray:
		return "a sequence"
	case kStringMap:
		return "a map"
	}
	return "any valid JSON value"
}

// oneOf formats an expectation list like serde's OneOf.
func oneOf(names []string) string {
	switch len(names) {
	case 0:
		return "there are no fields"
	case 1:
		return fmt.Sprintf("expected `%s`", names[0])
	case 2:
		return fmt.Sprintf("expected `%s` or `%s`", names[0], names[1])
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = "`" + n + "`"
	}
	return "expected one of " + strings.Join(q, ", ")
}

var intBounds = map[kind][2]*big.Int{
	kU8:    {big.NewInt(0), big.NewInt(255)},
	kU16:   {big.NewInt(0), big.NewInt(65535)},
	kU32:   {big.NewInt(0), big.NewInt(4294967295)},
	kU64:   {big.NewInt(0), new(big.Int).SetUint64(^uint64(0))},
	kUsize: {big.NewInt(0), new(big.Int).SetUint64(^uint64(0))},
	kI32:   {big.NewInt(-2147483648), big.NewInt(2147483647)},
}

// validate returns a serde-style message, or "" when v matches s.
func validate(v any, s *schema) string {
	switch s.kind {
	case kAny:
		return ""
	case kString:
		if _, ok := v.(string); !ok {
			return fmt.Sprintf("invalid type: %s, expected %s", unexpected(v), expected(s))
		}
	case kBool:
		if _, ok := v.(bool); !ok {
			return fmt.Sprintf("invalid type: %s, expected %s", unexpected(v), expected(s))
		}
	case kU8, kU16, kU32, kU64, kUsize, kI32:
		n, ok := v.(json.Number)
		if !ok || strings.ContainsAny(string(n), ".eE") {
			return fmt.Sprintf("invalid type: %s, expected %s", unexpected(v), expected(s))
		}
		b, ok := new(big.Int).SetString(string(n), 10)
		bounds := intBounds[s.kind]
		if !ok || b.Cmp(bounds[0]) < 0 || b.Cmp(bounds[1]) > 0 {
			return fmt.Sprintf("invalid value: %s, expected %s", unexpected(v), expected(s))
		}
	case kEnum:
		str, ok := v.(string)
		if !ok {
			return fmt.Sprintf("invalid type: %s, expected %s", unexpected(v), expected(s))
		}
		for _, x := range s.variants {
			if x == str {
				return ""
			}
		}
		return fmt.Sprintf("unknown variant `%s`, %s", str, oneOf(s.variants))
	case kArray:
		a, ok := v.([]any)
		if !ok {
			return fmt.Sprintf("invalid type: %s, expected %s", unexpected(v), expected(s))
		}
		for _, e := range a {
			if m := validate(e, s.elem); m != "" {
				return m
			}
		}
	case kStringMap:
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Sprintf("invalid type: %s, expected %s", unexpected(v), expected(s))
		}
		for _, e := range m {
			if msg := validate(e, tString); msg != "" {
				return msg
			}
		}
	case kObject:
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Sprintf("invalid type: %s, expected %s", unexpected(v), expected(s))
		}
		names := make([]string, len(s.fields))
		for i, f := range s.fields {
			names[i] = f.name
		}
		if !s.allowUnknown {
			for k := range m {
				known := false
				for _, n := range names {
					if n == k {
						known = true
					}
				}
				if !known {
					return fmt.Sprintf("unknown field `%s`, %s", k, oneOf(names))
				}
			}
		}
		for _, f := range s.fields {
			fv, present := m[f.name]
			if !present || (fv == nil && !f.required) {
				if f.required {
					return fmt.Sprintf("missing field `%s`", f.name)
				}
				continue
			}
			if msg := validate(fv, f.t); msg != "" {
				return msg
			}
		}
	}
	return ""
}

// hasField reports whether the top-level JSON object body has key name.
func hasField(body []byte, name string) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return false
	}
	_, ok := m[name]
	return ok
}

// Schemas of Firecracker v1.16.1 request bodies.
var (
	tTokenBucket = lenientObj("TokenBucket", req("size", tU64), opt("one_time_burst", tU64), req("refill_time", tU64))
	tRateLimiter = obj("RateLimiter", opt("bandwidth", tTokenBucket), opt("ops", tTokenBucket))

	sAction   = obj("ActionBody", req("action_type", enum("FlushMetrics", "InstanceStart", "SendCtrlAltDel")))
	sBoot     = obj("BootSourceConfig", req("kernel_image_path", tString), opt("initrd_path", tString), opt("boot_args", tString))
	sCPUTmpl  = enum("C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None")
	sHuge     = enum("None", "2M")
	sMachine  = obj("MachineConfig", req("vcpu_count", tU8), req("mem_size_mib", tUsize), opt("smt", tBool), opt("cpu_template", sCPUTmpl), opt("track_dirty_pages", tBool), opt("huge_pages", sHuge))
	sMachineP = obj("MachineConfigUpdate", opt("vcpu_count", tU8), opt("mem_size_mib", tUsize), opt("smt", tBool), opt("cpu_template", sCPUTmpl), opt("track_dirty_pages", tBool), opt("huge_pages", sHuge))
	sCPUConf  = obj("CustomCpuTemplate",
		opt("kvm_capabilities", arr(tString)),
		opt("cpuid_modifiers", arr(obj("CpuidLeafModifier", req("leaf", tString), req("subleaf", tString), req("flags", tU32),
			req("modifiers", arr(obj("CpuidRegisterModifier", req("register", enum("eax", "ebx", "ecx", "edx")), req("bitmap", tString))))))),
		opt("msr_modifiers", arr(obj("RegisterModifier", req("addr", tString), req("bitmap", tString)))))
	sDrive = obj("BlockDeviceConfig", req("drive_id", tString), opt("partuuid", tString), req("is_root_device", tBool),
		opt("cache_type", enum("Unsafe", "Writeback")), opt("is_read_only", tBool), opt("path_on_host", tString),
		opt("rate_limiter", tRateLimiter), opt("io_engine", enum("Sync", "Async")), opt("socket", tString))
	sDriveP = obj("BlockDeviceUpdateConfig", req("drive_id", tString), opt("path_on_host", tString), opt("rate_limiter", tRateLimiter))
	sPmem   = obj("PmemConfig", req("id", tString), req("path_on_host", tString), opt("root_device", tBool), opt("read_only", tBool), opt("rate_limiter", tRateLimiter))
	sPmemP  = obj("PmemUpdateConfig", req("id", tString), opt("rate_limiter", tRateLimiter))
	sNet    = obj("NetworkInterfaceConfig", req("iface_id", tString), req("host_dev_name", tString), opt("guest_mac", tString),
		opt("mtu", tU16), opt("rx_rate_limiter", tRateLimiter), opt("tx_rate_limiter", tRateLimiter))
	sNetP    = obj("NetworkInterfaceUpdateConfig", req("iface_id", tString), opt("rx_rate_limiter", tRateLimiter), opt("tx_rate_limiter", tRateLimiter))
	sVsock   = obj("VsockDeviceConfig", opt("vsock_id", tString), req("guest_cid", tU32), req("uds_path", tString))
	sBalloon = obj("BalloonDeviceConfig", req("amount_mib", tU32), req("deflate_on_oom", tBool), opt("stats_polling_interval_s", tU16),
		opt("free_page_hinting", tBool), opt("free_page_reporting", tBool))
	sBalloonP      = obj("BalloonUpdateConfig", req("amount_mib", tU32))
	sBalloonStatsP = obj("BalloonUpdateStatsConfig", req("stats_polling_interval_s", tU16))
	sHintStart     = obj("StartHintingCmd", opt("acknowledge_on_stop", tBool))
	sEntropy       = obj("EntropyDeviceConfig", opt("rate_limiter", tRateLimiter))
	sMmdsConf      = obj("MmdsConfig", opt("version", enum("V1", "V2")), req("network_interfaces", arr(tString)), opt("ipv4_address", tString), opt("imds_compat", tBool))
	sLogger        = obj("LoggerConfig", opt("log_path", tString), opt("level", tString), opt("show_level", tBool), opt("show_log_origin", tBool), opt("module", tString))
	sMetrics       = lenientObj("MetricsConfig", req("metrics_path", tString), opt("emit_id", tBool), opt("properties", tStringMap))
	sSerial        = obj("SerialConfig", opt("serial_out_path", tString), opt("rate_limiter", tTokenBucket))
	sHotplug       = obj("MemoryHotplugConfig", req("total_size_mib", tU32), opt("block_size_mib", tU32), opt("slot_size_mib", tU32))
	sHotplugP      = obj("MemoryHotplugSizeUpdate", req("requested_size_mib", tU32))
	sVM            = obj("Vm", req("state", enum("Paused", "Resumed")))
	sSnapCreate    = obj("CreateSnapshotParams", opt("snapshot_type", enum("Full", "Diff")), req("snapshot_path", tString), req("mem_file_path", tString))
	sSnapLoad      = obj("LoadSnapshotConfig", req("snapshot_path", tString), opt("mem_file_path", tString),
		opt("mem_backend", obj("MemBackendConfig", req("backend_path", tString), req("backend_type", enum("File", "Uffd")))),
		opt("enable_diff_snapshots", tBool), opt("track_dirty_pages", tBool), opt("resume_vm", tBool),
		opt("network_overrides", arr(lenientObj("NetworkOverride", req("iface_id", tString), req("host_dev_name", tString)))),
		opt("vsock_override", lenientObj("VsockOverride", req("uds_path", tString))), opt("clock_realtime", tBool))
)
