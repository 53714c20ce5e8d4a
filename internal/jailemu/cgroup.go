package jailemu

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// mounts holds the cgroup mount points found in a mountinfo file.
type mounts struct {
	v1      map[string]string // controller → mount point
	unified string            // cgroup2 mount point, "" if none
}

// readMounts parses /proc/self/mountinfo (or an equivalent reader).
func readMounts(r io.Reader) (mounts, error) {
	m := mounts{v1: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root mountpoint options [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f := strings.Fields(pre)
		g := strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		mp := unescapeMount(f[4])
		switch g[0] {
		case "cgroup2":
			if m.unified == "" {
				m.unified = mp
			}
		case "cgroup":
			for _, opt := range strings.Split(g[2], ",") {
				if _, seen := m.v1[opt]; !seen {
					m.v1[opt] = mp
				}
			}
		}
	}
	return m, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// setupCgroups creates and joins the jail's cgroups for pid as the real
// jailer does.
func setupCgroups(c *Config, m mounts, pid int) error {
	if c.CgroupVersion == 1 {
		return setupV1(c, m, pid)
	}
	return setupV2(c, m, pid)
}

func setupV1(c *Config, m mounts, pid int) error {
	// Group values by controller, keeping the order of first appearance.
	var order []string
	byCtrl := map[string][]CgroupValue{}
	for _, v := range c.Cgroups {
		if _, ok := byCtrl[v.Controller]; !ok {
			order = append(order, v.Controller)
		}
		byCtrl[v.Controller] = append(byCtrl[v.Controller], v)
	}
	for _, ctrl := range order {
		mp, ok := m.v1[ctrl]
		if !ok {
			return fmt.Errorf("Cgroup error: controller %s is not mounted (cgroup v1)", ctrl)
		}
		dir := filepath.Join(mp, c.ParentCgroup, c.ID)
		if err := mkdirCgroup(mp, dir, ctrl == "cpuset"); err != nil {
			return err
		}
		for _, v := range byCtrl[ctrl] {
			if err := writeCgroupFile(filepath.Join(dir, v.File), v.Value); err != nil {
				return err
			}
		}
		if err := writeCgroupFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// mkdirCgroup creates dir and its missing parents below mount; for cpuset,
// empty cpuset.cpus/cpuset.mems are copied from the parent at each level.
func mkdirCgroup(mount, dir string, cpuset bool) error {
	rel, err := filepath.Rel(mount, dir)
	if err != nil {
		return fmt.Errorf("Cgroup error: %w", err)
	}
	cur := mount
	for _, comp := range strings.Split(rel, string(filepath.Separator)) {
		parent := cur
		cur = filepath.Join(cur, comp)
		if err := os.Mkdir(cur, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("Cgroup error: failed to create directory %s: %w", cur, err)
		}
		if cpuset {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if err := inheritValue(parent, cur, f); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func inheritValue(parent, dir, file string) error {
	cur, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return fmt.Errorf("Cgroup error: %w", err)
	}
	if strings.TrimSpace(string(cur)) != "" {
		return nil
	}
	pv, err := os.ReadFile(filepath.Join(parent, file))
	if err != nil {
		return fmt.Errorf("Cgroup error: %w", err)
	}
	return writeCgroupFile(filepath.Join(dir, file), strings.TrimSpace(string(pv)))
}

func writeCgroupFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("Cgroup error: failed to open %s: %w", path, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("Cgroup error: failed to write %q to %s: %w", value, path, err)
	}
	return nil
}

func setupV2(c *Config, m mounts, pid int) error {
	if m.unified == "" {
		return errors.New("Cgroup error: no cgroup2 (unified) hierarchy is mounted")
	}
	parent := filepath.Join(m.unified, c.ParentCgroup)
	if len(c.Cgroups) == 0 {
		if _, err := os.Stat(parent); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		sub, err := os.ReadFile(filepath.Join(parent, "cgroup.subtree_control"))
		if err != nil {
			return fmt.Errorf("Cgroup error: %w", err)
		}
		if s := strings.TrimSpace(string(sub)); s != "" {
			return fmt.Errorf("Cgroup error: cannot join %s: it delegates controllers (%s) to its children", parent, s)
		}
		return writeCgroupFile(filepath.Join(parent, "cgroup.procs"), strconv.Itoa(pid))
	}
	var ctrls []string
	seen := map[string]bool{}
	for _, v := range c.Cgroups {
		if !seen[v.Controller] {
			seen[v.Controller] = true
			ctrls = append(ctrls, v.Controller)
		}
	}
	avail, err := os.ReadFile(filepath.Join(m.unified, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("Cgroup error: %w", err)
	}
	have := map[string]bool{}
	for _, a := range strings.Fields(string(avail)) {
		have[a] = true
	}
	for _, ctrl := range ctrls {
		if !have[ctrl] {
			return fmt.Errorf("Cgroup error: controller %s is not available in the cgroup v2 hierarchy at %s", ctrl, m.unified)
		}
	}
	dir := filepath.Join(parent, c.ID)
	if err := mkdirCgroup(m.unified, dir, false); err != nil {
		return err
	}
	// Enable the controllers from the root down to the jail's parent.
	cur := m.unified
	rel, _ := filepath.Rel(m.unified, dir)
	for _, comp := range strings.Split(rel, string(filepath.Separator)) {
		for _, ctrl := range ctrls {
			if err := writeCgroupFile(filepath.Join(cur, "cgroup.subtree_control"), "+"+ctrl); err != nil {
				return err
			}
		}
		cur = filepath.Join(cur, comp)
	}
	for _, v := range c.Cgroups {
		if err := writeCgroupFile(filepath.Join(dir, v.File), v.Value); err != nil {
			return err
		}
	}
	return writeCgroupFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid))
}
