package sandbox

import (
	"reflect"
	"testing"

	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// recordOf and sandboxOf carry every field: a Sandbox with every field set
// (each to its own value) is stored field for field under the same name,
// every field of the record is set, and the record converts back into the
// same Sandbox. A field added to Sandbox, store.SandboxRecord or one of
// their nested structs fails here until both conversions carry it.
func TestRecordConversionsCarryEveryField(t *testing.T) {
	// want is an equal Sandbox (Fill is deterministic) that shares
	// nothing with the instance's.
	var s, want Sandbox
	testutil.Fill(t, &s)
	testutil.Fill(t, &want)
	inst := newInstance(s, nil, vmm.Limits{})
	inst.pidStart = 987654
	inst.removing = true

	// derived are the record's fields that have no Sandbox field of their
	// name: they come from the instance, beside its Sandbox.
	derived := map[string]any{
		// inst.pidStart: the VMM's start time, stored (while a VMM runs,
		// which Fill's non-zero PID says) to re-identify it on recovery.
		"Process.PIDStartTime": inst.pidStart,
		// inst.removing: a removal began; Recover finishes it.
		"Removing": true,
	}

	rec := recordOf(inst)
	if zero := testutil.ZeroFields(rec); len(zero) > 0 {
		t.Errorf("recordOf leaves these record fields unset: %v", zero)
	}
	sb, st := testutil.Leaves(want), testutil.Leaves(rec)
	for path, got := range st {
		if d, ok := derived[path]; ok {
			if !reflect.DeepEqual(got.Interface(), d) {
				t.Errorf("record %s = %#v, want %#v (from the instance)", path, got.Interface(), d)
			}
			continue
		}
		w, ok := sb[path]
		switch {
		case !ok:
			t.Errorf("record field %s has no Sandbox field of that name: carry it, or list it as derived", path)
		case w.Kind() == reflect.String && got.Kind() == reflect.String: // State is a string in the store
			if got.String() != w.String() {
				t.Errorf("record %s = %q, want %q", path, got.String(), w.String())
			}
		case !reflect.DeepEqual(got.Interface(), w.Interface()):
			t.Errorf("record %s = %#v, want %#v", path, got.Interface(), w.Interface())
		}
	}
	for path := range sb {
		if _, ok := st[path]; !ok {
			t.Errorf("Sandbox field %s has no field of that name in store.SandboxRecord", path)
		}
	}

	got := sandboxOf(rec)
	if diff := testutil.DiffFields(got, want); len(diff) > 0 {
		t.Errorf("sandboxOf(recordOf(s)) differs from s in:\n  %v", diff)
	}

	// Neither conversion shares a map or a slice with its input.
	rec.Labels["changed"], rec.Network.DNS[0] = "x", "x"
	if _, ok := inst.rec.Labels["changed"]; ok || inst.rec.Network.DNS[0] == "x" {
		t.Error("recordOf shares a map or slice with the instance's record")
	}
	back := recordOf(inst)
	got = sandboxOf(back)
	back.Labels["changed"], back.Network.DNS[0] = "x", "x"
	if _, ok := got.Labels["changed"]; ok || got.Network.DNS[0] == "x" {
		t.Error("sandboxOf shares a map or slice with the stored record")
	}
}
