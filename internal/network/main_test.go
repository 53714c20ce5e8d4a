package network

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
)

// TestMain checks, besides goroutine leaks, that the tests changed nothing
// in the machine's own network namespace (the namespace of the process'
// threads, which the tests never leave except on locked threads): same
// interfaces, no table of ours, and no namespace of ours left under
// DefaultNetnsDir.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(checkedM{m})
}

// checkedM wraps testing.M to check the machine's namespace after the run.
type checkedM struct{ m *testing.M }

func (c checkedM) Run() int {
	before, err := machineLinks()
	if err != nil {
		fmt.Fprintln(os.Stderr, "list links:", err)
		return 1
	}
	code := c.m.Run()
	after, err := machineLinks()
	if err != nil {
		fmt.Fprintln(os.Stderr, "list links:", err)
		return 1
	}
	if !slices.Equal(before, after) {
		fmt.Fprintf(os.Stderr, "the machine's network namespace changed: links before %v, after %v\n", before, after)
		code = 1
	}
	if c, err := nftables.New(); err == nil {
		tables, _ := c.ListTables()
		for _, t := range tables {
			if strings.HasPrefix(t.Name, TableName) {
				fmt.Fprintf(os.Stderr, "nftables table %s left in the machine's namespace\n", t.Name)
				code = 1
			}
		}
	}
	entries, _ := os.ReadDir(DefaultNetnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), NetnsPrefix) && strings.Contains(e.Name(), "."+testIDMark) || strings.HasPrefix(e.Name(), testHostPrefix) {
			fmt.Fprintf(os.Stderr, "namespace %s left in %s\n", e.Name(), DefaultNetnsDir)
			code = 1
		}
	}
	return code
}

// machineLinks lists the interfaces of the calling thread's namespace,
// which outside runInNetns is the machine's own.
func machineLinks() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names, nil
}

// testIDMark starts every sandbox id the tests use; testHostPrefix names
// the tests' host namespaces.
const (
	testIDMark     = "x"
	testHostPrefix = "vmmtest-"
)

// randHex returns n random hex digits.
func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)[:n]
}
