package snapshot

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/ids"
)

// FileInfo describes one file of a snapshot.
type FileInfo struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Algorithm is how SHA256 was computed: AlgorithmSHA256Chunked4M for
	// what Commit writes, empty (AlgorithmSHA256, the whole file's
	// SHA-256) in meta.json files written by older versions.
	Algorithm string `json:"algorithm,omitempty"`
	// SHA256 is the hex digest of Algorithm (always a SHA-256 output).
	SHA256 string `json:"sha256"`
}

// Hardware is the machine the snapshot was taken of.
type Hardware struct {
	VCPUs           int    `json:"vcpus"`
	MemoryMiB       int    `json:"memory_mib"`
	Kernel          string `json:"kernel"`
	Initrd          string `json:"initrd,omitempty"`
	Rootfs          string `json:"rootfs"`
	BootArgs        string `json:"boot_args"`
	TrackDirtyPages bool   `json:"track_dirty_pages"`
}

// Network is the guest's network identity inside the snapshot (what the
// guest remembers; restored copies get their own host side).
type Network struct {
	NICID    string `json:"nic_id,omitempty"`
	TAP      string `json:"tap,omitempty"`
	GuestIP  string `json:"guest_ip,omitempty"`
	GuestMAC string `json:"guest_mac,omitempty"`
}

// Vsock is the guest's vsock device.
type Vsock struct {
	CID     uint32 `json:"cid"`
	UDSPath string `json:"uds_path"`
}

// Meta is meta.json: everything known about a snapshot.
type Meta struct {
	ID                 string              `json:"id"`
	Name               string              `json:"name"`
	SandboxID          string              `json:"sandbox_id"`
	CreatedAt          time.Time           `json:"created_at"`
	Type               string              `json:"type"`
	ParentID           string              `json:"parent_id,omitempty"`
	FirecrackerVersion string              `json:"firecracker_version"`
	SnapshotVersion    string              `json:"snapshot_version"`
	Hardware           Hardware            `json:"hardware"`
	Network            *Network            `json:"network,omitempty"`
	Vsock              *Vsock              `json:"vsock,omitempty"`
	PauseDuration      time.Duration       `json:"pause_ns"`
	Files              map[string]FileInfo `json:"files"`
	// Dir is the snapshot's directory (not stored; filled when loaded).
	Dir string `json:"-"`
}

// SizeBytes returns the total size of the snapshot's files.
func (m Meta) SizeBytes() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// maxMetaSize bounds the size of a meta.json that Open reads.
const maxMetaSize = 1 << 20

// MaxNameLength is the longest acceptable snapshot name.
const MaxNameLength = 64

// loadSnapshot reads and checks the snapshot in dir.
func loadSnapshot(sandboxID, id, dir string) (Meta, error) {
	f, err := os.OpenFile(filepath.Join(dir, MetaName), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return Meta{}, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return Meta{}, err
	} else if !st.Mode().IsRegular() {
		return Meta{}, fmt.Errorf("%s is not a regular file", MetaName)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxMetaSize+1))
	if err != nil {
		return Meta{}, fmt.Errorf("read %s: %w", MetaName, err)
	}
	if len(data) > maxMetaSize {
		return Meta{}, fmt.Errorf("%s is larger than %d bytes", MetaName, maxMetaSize)
	}
	var m Meta
	if err := json.Unmarshal(data, &m); err != nil {
		return Meta{}, fmt.Errorf("parse %s: %w", MetaName, err)
	}
	switch {
	case m.ID != id:
		return Meta{}, fmt.Errorf("%s has id %q, directory is %q", MetaName, m.ID, id)
	case m.SandboxID != sandboxID:
		return Meta{}, fmt.Errorf("%s has sandbox id %q, directory is %q", MetaName, m.SandboxID, sandboxID)
	case m.Type != TypeFull && m.Type != TypeDiff:
		return Meta{}, fmt.Errorf("%s has unknown type %q", MetaName, m.Type)
	case m.ParentID != "" && !ids.Valid(m.ParentID):
		return Meta{}, fmt.Errorf("%s has invalid parent id %q", MetaName, m.ParentID)
	}
	if err := ValidName(m.Name); err != nil {
		return Meta{}, fmt.Errorf("%s: %w", MetaName, err)
	}
	for _, name := range dataFiles {
		if _, ok := m.Files[name]; !ok {
			return Meta{}, fmt.Errorf("%s does not list file %s", MetaName, name)
		}
	}
	for key, fi := range m.Files {
		if key != fi.Name || ValidName(key) != nil || key == MetaName {
			return Meta{}, fmt.Errorf("%s lists an invalid file entry %q", MetaName, key)
		}
		if !knownAlgorithm(fi.Algorithm) {
			return Meta{}, fmt.Errorf("%s has an unknown checksum algorithm %s for %s", MetaName,
				strconv.QuoteToASCII(fi.Algorithm), key)
		}
		if b, err := hex.DecodeString(fi.SHA256); err != nil || len(b) != 32 {
			return Meta{}, fmt.Errorf("%s has an invalid sha256 for %s", MetaName, key)
		}
		if err := VerifyFile(filepath.Join(dir, key), fi, false); err != nil {
			return Meta{}, err
		}
	}
	m.Dir = dir
	return m, nil
}

// ValidName reports whether name is an acceptable snapshot name: 1 to 64
// characters of [A-Za-z0-9._-], not starting with '.' or '-' (which also
// excludes "." and ".."). Otherwise the error is errdefs.ErrInvalidArgument.
func ValidName(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("invalid snapshot name %s: %s: %w", strconv.QuoteToASCII(name), why, errdefs.ErrInvalidArgument)
	}
	switch {
	case name == "":
		return bad("empty")
	case len(name) > MaxNameLength:
		return bad(fmt.Sprintf("longer than %d characters", MaxNameLength))
	case name == "." || name == "..":
		return bad("not a name")
	case name[0] == '.' || name[0] == '-':
		return bad("must not start with '.' or '-'")
	}
	for i := range len(name) {
		switch ch := name[i]; {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9', ch == '.', ch == '_', ch == '-':
		default:
			return bad("only letters, digits, '.', '_' and '-' are allowed")
		}
	}
	return nil
}

// cloneMeta returns a deep copy of m, so callers cannot change the
// catalog's copy.
func cloneMeta(m Meta) Meta {
	m.Files = maps.Clone(m.Files)
	if m.Network != nil {
		n := *m.Network
		m.Network = &n
	}
	if m.Vsock != nil {
		v := *m.Vsock
		m.Vsock = &v
	}
	return m
}
