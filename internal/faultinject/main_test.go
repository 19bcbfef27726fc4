package faultinject

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// longFlag selects the full sizes; WHARF_FAULT_LONG=1 does the same for
// runs that cannot pass test flags (go test ./...).
var longFlag = flag.Bool("long", false, "run the fault scenarios at full size (also WHARF_FAULT_LONG=1)")

// long reports whether the scenarios run at full size. Only sizes and
// durations depend on it, never an assertion.
func long() bool { return *longFlag || os.Getenv("WHARF_FAULT_LONG") == "1" }

// pick returns short in short mode, full in long mode.
func pick[T any](short, full T) T {
	if long() {
		return full
	}
	return short
}

// binDir holds the node binary; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	nodePath  string
	buildErr  error
)

// nodeBinary builds ./node once per test binary and returns its path. The
// node is built without -race: it is the system under test at the speed a
// service runs it, and a race build would slow every scenario severalfold
// (the library's races are the unit tests' business; set
// WHARF_FAULT_NODE_RACE=1 to build it with -race anyway).
func nodeBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		// go test puts its own go first on the test binary's PATH.
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("find the go command to build ./node: %w", err)
			return
		}
		if binDir, buildErr = os.MkdirTemp("", "wharf-faultinject-"); buildErr != nil {
			return
		}
		nodePath = filepath.Join(binDir, "node")
		args := []string{"build", "-o", nodePath}
		if os.Getenv("WHARF_FAULT_NODE_RACE") == "1" {
			args = append(args, "-race")
		}
		cmd := exec.Command(goTool, append(args, "./node")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./node: %v\n%s", err, out)
			return
		}
	})
	if buildErr != nil {
		t.Fatalf("faultinject: %v", buildErr)
	}
	return nodePath
}
