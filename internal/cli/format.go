package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
)

// sandboxView is the CLI's JSON form of a sandbox (-o json). It is a stable,
// flat view, not the protobuf JSON mapping: states are lower case, times
// RFC 3339 (omitted when unset), durations whole seconds.
type sandboxView struct {
	ID            string            `json:"id"`
	State         string            `json:"state"`
	Labels        map[string]string `json:"labels"`
	VCPUs         uint32            `json:"vcpus"`
	MemoryMiB     uint32            `json:"memory_mib"`
	Kernel        string            `json:"kernel"`
	Initrd        string            `json:"initrd"`
	Rootfs        string            `json:"rootfs"`
	Disk          string            `json:"disk"`
	BootArgs      string            `json:"boot_args"`
	CreatedAt     time.Time         `json:"created_at,omitzero"`
	ReadyAt       time.Time         `json:"ready_at,omitzero"`
	StoppedAt     time.Time         `json:"stopped_at,omitzero"`
	TTLSeconds    int64             `json:"ttl_seconds"`
	ExpiresAt     time.Time         `json:"expires_at,omitzero"`
	FailureReason string            `json:"failure_reason"`
	RestoredFrom  string            `json:"restored_from"`
	Process       processView       `json:"process"`
	Network       *networkView      `json:"network,omitempty"`
}

// processView is the VMM process part of sandboxView.
type processView struct {
	PID         int32  `json:"pid"`
	APISocket   string `json:"api_socket"`
	LogPath     string `json:"log_path"`
	MetricsPath string `json:"metrics_path"`
	ConsolePath string `json:"console_path"`
	Jailed      bool   `json:"jailed"`
	Chroot      string `json:"chroot,omitempty"`
	UID         uint32 `json:"uid,omitempty"`
	GID         uint32 `json:"gid,omitempty"`
	Cgroup      string `json:"cgroup,omitempty"`
}

// networkView is the network part of sandboxView (absent when the sandbox
// has no network).
type networkView struct {
	TAPDevice      string   `json:"tap_device"`
	MACAddress     string   `json:"mac_address"`
	IPAddress      string   `json:"ip_address"`
	Gateway        string   `json:"gateway"`
	DNS            []string `json:"dns"`
	Netns          string   `json:"netns,omitempty"`
	GuestIPAddress string   `json:"guest_ip_address,omitempty"`
}

// snapshotView is the CLI's JSON form of a snapshot.
type snapshotView struct {
	ID                 string    `json:"id"`
	Name               string    `json:"name"`
	SandboxID          string    `json:"sandbox_id"`
	CreatedAt          time.Time `json:"created_at,omitzero"`
	Type               string    `json:"type"`
	FirecrackerVersion string    `json:"firecracker_version"`
	VCPUs              uint32    `json:"vcpus"`
	MemoryMiB          uint32    `json:"memory_mib"`
	SizeBytes          uint64    `json:"size_bytes"`
	PauseMillis        float64   `json:"pause_ms"`
	Path               string    `json:"path"`
}

func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil || (ts.GetSeconds() == 0 && ts.GetNanos() == 0) {
		return time.Time{}
	}
	return ts.AsTime().UTC()
}

func durationOf(d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.AsDuration()
}

func viewOf(sb *sandboxv1.Sandbox) sandboxView {
	hw := sb.GetHardware()
	p := sb.GetProcess()
	v := sandboxView{
		ID:            sb.GetId(),
		State:         stateName(sb.GetState()),
		Labels:        sb.GetLabels(),
		VCPUs:         hw.GetVcpus(),
		MemoryMiB:     hw.GetMemoryMib(),
		Kernel:        hw.GetKernel(),
		Initrd:        hw.GetInitrd(),
		Rootfs:        hw.GetRootfs(),
		Disk:          hw.GetDisk(),
		BootArgs:      hw.GetBootArgs(),
		CreatedAt:     timeOf(sb.GetCreatedAt()),
		ReadyAt:       timeOf(sb.GetReadyAt()),
		StoppedAt:     timeOf(sb.GetStoppedAt()),
		TTLSeconds:    int64(durationOf(sb.GetTtl()) / time.Second),
		ExpiresAt:     timeOf(sb.GetExpiresAt()),
		FailureReason: sb.GetFailureReason(),
		RestoredFrom:  sb.GetRestoredFrom(),
		Process: processView{
			PID:         p.GetPid(),
			APISocket:   p.GetApiSocket(),
			LogPath:     p.GetLogPath(),
			MetricsPath: p.GetMetricsPath(),
			ConsolePath: p.GetConsolePath(),
			Jailed:      p.GetJailed(),
			Chroot:      p.GetChroot(),
			UID:         p.GetUid(),
			GID:         p.GetGid(),
			Cgroup:      p.GetCgroup(),
		},
	}
	if v.Labels == nil {
		v.Labels = map[string]string{}
	}
	if n := sb.GetNetwork(); n != nil && (n.GetTapDevice() != "" || n.GetIpAddress() != "" || n.GetMacAddress() != "") {
		v.Network = &networkView{
			TAPDevice:      n.GetTapDevice(),
			MACAddress:     n.GetMacAddress(),
			IPAddress:      n.GetIpAddress(),
			Gateway:        n.GetGateway(),
			DNS:            n.GetDns(),
			Netns:          n.GetNetns(),
			GuestIPAddress: n.GetGuestIpAddress(),
		}
		if v.Network.DNS == nil {
			v.Network.DNS = []string{}
		}
	}
	return v
}

func snapshotTypeName(t sandboxv1.SnapshotType) string {
	switch t {
	case sandboxv1.SnapshotType_SNAPSHOT_TYPE_FULL:
		return "full"
	case sandboxv1.SnapshotType_SNAPSHOT_TYPE_DIFF:
		return "diff"
	}
	return "unknown"
}

func snapshotViewOf(s *sandboxv1.Snapshot) snapshotView {
	return snapshotView{
		ID:                 s.GetId(),
		Name:               s.GetName(),
		SandboxID:          s.GetSandboxId(),
		CreatedAt:          timeOf(s.GetCreatedAt()),
		Type:               snapshotTypeName(s.GetType()),
		FirecrackerVersion: s.GetFirecrackerVersion(),
		VCPUs:              s.GetHardware().GetVcpus(),
		MemoryMiB:          s.GetHardware().GetMemoryMib(),
		SizeBytes:          s.GetSizeBytes(),
		PauseMillis:        float64(durationOf(s.GetPauseDuration())) / float64(time.Millisecond),
		Path:               s.GetPath(),
	}
}

// writeJSON writes v indented, with a final newline.
// writeList prints items sorted by id, as a JSON array of their views or as
// a table.
func writeList[T interface{ GetId() string }, V any](w io.Writer, output outputFormat, items []T, view func(T) V,
	table func(io.Writer, []T, time.Time) error) error {
	slices.SortStableFunc(items, func(x, y T) int { return strings.Compare(x.GetId(), y.GetId()) })
	if output == formatJSON {
		views := make([]V, 0, len(items))
		for _, it := range items {
			views = append(views, view(it))
		}
		return writeJSON(w, views)
	}
	return table(w, items, time.Now())
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("writing JSON: %w", err)
	}
	return nil
}

// formatLabels renders labels as sorted k=v pairs joined by sep.
func formatLabels(labels map[string]string, sep string) string {
	keys := slices.Sorted(maps.Keys(labels))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + labels[k]
	}
	return strings.Join(parts, sep)
}

// humanAge renders how long ago t was, compactly ("45s", "3m", "2h", "4d").
func humanAge(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

// humanSize renders a byte count with a binary unit.
func humanSize(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTP"[exp])
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeSandboxTable writes the list table.
func writeSandboxTable(w io.Writer, sbs []*sandboxv1.Sandbox, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tVCPUS\tMEMORY\tAGE\tLABELS")
	for _, sb := range sbs {
		v := viewOf(sb)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%dMiB\t%s\t%s\n",
			v.ID, v.State, v.VCPUs, v.MemoryMiB, humanAge(v.CreatedAt, now), orDash(formatLabels(v.Labels, ",")))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing table: %w", err)
	}
	return nil
}

// writeSnapshotTable writes the snapshot list table.
func writeSnapshotTable(w io.Writer, snaps []*sandboxv1.Snapshot, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSANDBOX\tTYPE\tSIZE\tAGE")
	for _, s := range snaps {
		v := snapshotViewOf(s)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n",
			v.ID, orDash(v.Name), orDash(v.SandboxID), v.Type, humanSize(v.SizeBytes), humanAge(v.CreatedAt, now))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing table: %w", err)
	}
	return nil
}

// writeInspect writes one sandbox as "Key: value" lines.
func writeInspect(w io.Writer, sb *sandboxv1.Sandbox, now time.Time) error {
	v := viewOf(sb)
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	line := func(k, val string) { fmt.Fprintf(tw, "%s:\t%s\n", k, val) }
	opt := func(k, val string) {
		if val != "" {
			line(k, val)
		}
	}
	when := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		d := now.Sub(t).Round(time.Second)
		if d >= 0 {
			return fmt.Sprintf("%s (%s ago)", t.Format(time.RFC3339), d)
		}
		return fmt.Sprintf("%s (in %s)", t.Format(time.RFC3339), -d)
	}

	line("ID", v.ID)
	line("State", v.State)
	opt("Failure reason", v.FailureReason)
	line("Labels", orDash(formatLabels(v.Labels, ", ")))
	line("vCPUs", strconv.FormatUint(uint64(v.VCPUs), 10))
	line("Memory", fmt.Sprintf("%d MiB", v.MemoryMiB))
	line("Kernel", orDash(v.Kernel))
	opt("Initrd", v.Initrd)
	line("Rootfs", orDash(v.Rootfs))
	line("Disk", orDash(v.Disk))
	line("Boot args", orDash(v.BootArgs))
	opt("Created", when(v.CreatedAt))
	opt("Ready", when(v.ReadyAt))
	opt("Stopped", when(v.StoppedAt))
	if v.TTLSeconds > 0 {
		line("TTL", (time.Duration(v.TTLSeconds) * time.Second).String())
		opt("Expires", when(v.ExpiresAt))
	} else {
		line("TTL", "none")
	}
	opt("Restored from", v.RestoredFrom)
	if v.Process.PID > 0 {
		line("PID", strconv.Itoa(int(v.Process.PID)))
	} else {
		line("PID", "-")
	}
	opt("API socket", v.Process.APISocket)
	opt("Log", v.Process.LogPath)
	opt("Metrics", v.Process.MetricsPath)
	opt("Console", v.Process.ConsolePath)
	if v.Process.Jailed {
		line("Jailed", "yes")
		opt("Chroot", v.Process.Chroot)
		line("UID/GID", fmt.Sprintf("%d/%d", v.Process.UID, v.Process.GID))
		opt("Cgroup", v.Process.Cgroup)
	} else {
		line("Jailed", "no")
	}
	if n := v.Network; n != nil {
		opt("TAP device", n.TAPDevice)
		opt("MAC address", n.MACAddress)
		opt("IP address", n.IPAddress)
		opt("Guest IP address", n.GuestIPAddress)
		opt("Gateway", n.Gateway)
		opt("DNS", strings.Join(n.DNS, ", "))
		opt("Netns", n.Netns)
	} else {
		line("Network", "none")
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	return nil
}

// eventLine renders one event: time, seq, sandbox id, action, state and
// the attributes as sorted k=v pairs (values quoted when they contain
// spaces or quotes).
func eventLine(ev *sandboxv1.Event) string {
	var b strings.Builder
	t := timeOf(ev.GetTime())
	if t.IsZero() {
		b.WriteString("-")
	} else {
		b.WriteString(t.Format("2006-01-02T15:04:05.000Z07:00"))
	}
	fmt.Fprintf(&b, " %d %s %s %s", ev.GetSeq(), orDash(ev.GetSandboxId()), orDash(ev.GetAction()), stateName(ev.GetState()))
	attrs := ev.GetAttributes()
	for _, k := range slices.Sorted(maps.Keys(attrs)) {
		val := attrs[k]
		if val == "" || strings.ContainsAny(val, " \t\n\"=") || !strconv.CanBackquote(val) {
			val = strconv.Quote(val)
		}
		fmt.Fprintf(&b, " %s=%s", k, val)
	}
	return b.String()
}
