package server

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// apiFields maps every leaf field of sandbox.Sandbox (testutil.Leaves) to
// the field of sandboxv1.Sandbox that carries it, a path of proto field
// names, or to "" for a field the API does not have.
var apiFields = map[string]string{
	"ID":                       "id",
	"Labels":                   "labels",
	"State":                    "state",
	"Hardware.VCPUs":           "hardware.vcpus",
	"Hardware.MemoryMiB":       "hardware.memory_mib",
	"Hardware.Kernel":          "hardware.kernel",
	"Hardware.Initrd":          "hardware.initrd",
	"Hardware.Rootfs":          "hardware.rootfs",
	"Hardware.Disk":            "hardware.disk",
	"Hardware.BootArgs":        "hardware.boot_args",
	"Hardware.TrackDirtyPages": "", // sandbox.v1 Hardware has no track_dirty_pages
	"Network.TAP":              "network.tap_device",
	"Network.MAC":              "network.mac_address",
	"Network.IP":               "network.ip_address",
	"Network.Gateway":          "network.gateway",
	"Network.DNS":              "network.dns",
	"Network.Netns":            "network.netns",
	"Network.GuestIP":          "network.guest_ip_address",
	"Network.PrefixLen":        "", // sandbox.v1 NetworkInfo has no prefix length
	"Process.PID":              "process.pid",
	"Process.APISocket":        "process.api_socket",
	"Process.LogPath":          "process.log_path",
	"Process.MetricsPath":      "process.metrics_path",
	"Process.ConsolePath":      "process.console_path",
	"Process.Jailed":           "process.jailed",
	"Process.Chroot":           "process.chroot",
	"Process.UID":              "process.uid",
	"Process.GID":              "process.gid",
	"Process.Cgroup":           "process.cgroup",
	"Process.VsockPath":        "process.vsock_socket",
	"Dir":                      "", // the API names the sandbox's files, not its directory
	"CreatedAt":                "created_at",
	"ReadyAt":                  "ready_at",
	"StoppedAt":                "stopped_at",
	"TTL":                      "ttl",
	"ExpiresAt":                "expires_at",
	"FailureReason":            "failure_reason",
	"RestoredFrom":             "restored_from",
	"LastPause":                "last_pause",
	"LastSnapshotID":           "last_snapshot_id",
}

// sandboxToProto carries every field: with every field of a Sandbox set
// (each to its own value), each API field holds the value of the Sandbox
// field apiFields maps it to, and every field on either side is mapped. A
// field added to sandbox.Sandbox (or its nested structs) or to the
// sandbox.v1 messages fails here until it is converted or listed as not
// in the API.
func TestSandboxToProtoCarriesEveryField(t *testing.T) {
	var sb sandbox.Sandbox
	testutil.Fill(t, &sb)
	sb.State = sandbox.StateRunning // a state the API knows
	pb := sandboxToProto(sb).ProtoReflect()

	leaves := testutil.Leaves(sb)
	for path := range leaves {
		if _, ok := apiFields[path]; !ok {
			t.Errorf("Sandbox field %s is not in apiFields: convert it, or map it to \"\" (not in the API)", path)
		}
	}
	mapped := map[string]bool{}
	for goPath, apiPath := range apiFields {
		if apiPath == "" {
			continue
		}
		mapped[apiPath] = true
		v, ok := leaves[goPath]
		if !ok {
			t.Errorf("apiFields names %s, which Sandbox does not have", goPath)
			continue
		}
		got, err := protoValue(pb, apiPath)
		if err != nil {
			t.Errorf("%s: %v", apiPath, err)
			continue
		}
		if want := v.Interface(); !sameValue(got, want) {
			t.Errorf("%s = %v, want %v (from %s)", apiPath, got, want, goPath)
		}
	}
	for _, apiPath := range protoLeaves(pb.Descriptor(), "") {
		if !mapped[apiPath] {
			t.Errorf("API field %s is filled from no Sandbox field (add it to apiFields)", apiPath)
		}
	}
}

// protoLeaves lists the leaf fields of md by path: every field that is a
// scalar, enum, list, map, Timestamp or Duration.
func protoLeaves(md protoreflect.MessageDescriptor, prefix string) []string {
	var out []string
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		path := prefix + string(fd.Name())
		if fd.Kind() == protoreflect.MessageKind && !fd.IsMap() && !fd.IsList() && !wellKnown(fd.Message()) {
			out = append(out, protoLeaves(fd.Message(), path+".")...)
			continue
		}
		out = append(out, path)
	}
	return out
}

func wellKnown(md protoreflect.MessageDescriptor) bool {
	switch md.FullName() {
	case "google.protobuf.Timestamp", "google.protobuf.Duration":
		return true
	}
	return false
}

// protoValue returns the field at path in m as a Go value: a string,
// int64, uint64, bool, enum number, time.Time, time.Duration,
// map[string]string or []string.
func protoValue(m protoreflect.Message, path string) (any, error) {
	names := strings.Split(path, ".")
	for i, name := range names {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			return nil, fmt.Errorf("no field %q in %s", name, m.Descriptor().FullName())
		}
		if !m.Has(fd) {
			return nil, fmt.Errorf("not set")
		}
		v := m.Get(fd)
		if i < len(names)-1 {
			m = v.Message()
			continue
		}
		switch {
		case fd.IsMap():
			out := map[string]string{}
			v.Map().Range(func(k protoreflect.MapKey, e protoreflect.Value) bool {
				out[k.String()] = e.String()
				return true
			})
			return out, nil
		case fd.IsList():
			var out []string
			for j := range v.List().Len() {
				out = append(out, v.List().Get(j).String())
			}
			return out, nil
		case fd.Kind() == protoreflect.EnumKind:
			return v.Enum(), nil
		case fd.Kind() == protoreflect.MessageKind:
			switch x := v.Message().Interface().(type) {
			case *timestamppb.Timestamp:
				return x.AsTime(), nil
			case *durationpb.Duration:
				return x.AsDuration(), nil
			}
			return nil, fmt.Errorf("unexpected message %s", fd.Message().FullName())
		}
		return v.Interface(), nil
	}
	return nil, fmt.Errorf("empty path")
}

// sameValue reports whether the API value got carries the Go value want.
func sameValue(got, want any) bool {
	switch w := want.(type) {
	case sandbox.State:
		return got == stateToProto(w).Number()
	case time.Time:
		g, ok := got.(time.Time)
		return ok && g.Equal(w)
	case map[string]string:
		g, ok := got.(map[string]string)
		return ok && maps.Equal(g, w)
	case []string:
		g, ok := got.([]string)
		return ok && slices.Equal(g, w)
	}
	g, w := reflect.ValueOf(got), reflect.ValueOf(want)
	switch {
	case g.CanInt() && w.CanInt():
		return g.Int() == w.Int()
	case g.CanUint() && w.CanInt():
		return w.Int() >= 0 && g.Uint() == uint64(w.Int())
	}
	return reflect.DeepEqual(got, want)
}
