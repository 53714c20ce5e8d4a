package vmm

import (
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// startIn starts a long sleep working in dir; the test kills it at the end.
func startIn(t *testing.T, dir string) int {
	t.Helper()
	return startCmdIn(t, dir, "sleep", "60")
}

// startCmdIn starts name with args working in dir; the test kills it at
// the end.
func startCmdIn(t *testing.T, dir, name string, args ...string) int {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	return cmd.Process.Pid
}

func TestKillStraysKillsOnlyUnkeptMatches(t *testing.T) {
	base := t.TempDir()
	dirs := []string{base + "/a", base + "/b", t.TempDir()}
	for _, d := range dirs[:2] {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	keptPid, strayPid, otherPid := startIn(t, dirs[0]), startIn(t, dirs[1]), startIn(t, dirs[2])
	match := func(_ int, cwd string) bool { return len(cwd) > len(base) && cwd[:len(base)+1] == base+"/" }

	found, err := FindByCwd(match)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(found)
	want := []int{keptPid, strayPid}
	slices.Sort(want)
	if !slices.Equal(found, want) {
		t.Fatalf("FindByCwd = %v, want %v", found, want)
	}

	killed, err := KillStrays(t.Context(), match, map[int]bool{keptPid: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(killed) != 1 || killed[strayPid] != dirs[1] {
		t.Fatalf("KillStrays killed %v, want only %d in %s", killed, strayPid, dirs[1])
	}
	time.Sleep(50 * time.Millisecond)
	for _, pid := range []int{keptPid, otherPid} {
		if _, err := Cwd(pid); err != nil {
			t.Errorf("pid %d was not a stray but is gone: %v", pid, err)
		}
	}
	// A process that no longer passes the check is left alone.
	if err := KillVerified(t.Context(), otherPid, func(int) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if _, err := Cwd(otherPid); err != nil {
		t.Errorf("unverified pid %d was killed", otherPid)
	}
}
