package faultinject

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/wharfhq/wharf"
)

// howToInstall is appended to every failure to find or run initdb.
const howToInstall = `the Postgres crash scenario starts a PostgreSQL server of its own and needs the server binaries (initdb, pg_ctl):
  Debian/Ubuntu:  apt-get install postgresql   (binaries in /usr/lib/postgresql/<version>/bin)
  elsewhere:      put initdb and pg_ctl on PATH, or set PG_BINDIR to their directory
As root, initdb refuses to run: the test runs it as the user "postgres" (create it with useradd -r postgres).`

// cluster is a throwaway PostgreSQL server, in a temporary directory, on a
// port and socket directory of its own, that a test may crash and restart.
// It is stopped and removed when the test ends.
type cluster struct {
	t     *testing.T
	bin   string   // directory of initdb and pg_ctl
	dir   string   // holds data/, the socket and the log
	port  int      // TCP port on 127.0.0.1
	runAs []string // the command prefix that runs a binary as a non-root user
	opts  []string // postgres -c settings
}

// newCluster initialises a cluster and starts it, with settings (name=value)
// as server defaults.
func newCluster(t *testing.T, settings ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, bin: pgBinDir(t)}
	dir, err := os.MkdirTemp("", "wharf-fault-pg-")
	require.NoError(t, err)
	c.dir = dir
	t.Cleanup(func() {
		_ = c.pgCtl("stop", "-m", "immediate", "-w") // gone already when the test stopped it
		os.RemoveAll(dir)
	})
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("faultinject: %v\n%s", err, howToInstall)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		require.NoError(t, os.Chown(dir, uid, gid))
		c.runAs = []string{"runuser", "-u", "postgres", "--"}
	}
	c.port = freePort(t)
	c.opts = append([]string{"listen_addresses=127.0.0.1", "max_connections=50", "shared_buffers=32MB"}, settings...)
	if out, err := c.run(filepath.Join(c.bin, "initdb"), "-D", c.data(), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"); err != nil {
		t.Fatalf("faultinject: initdb: %v\n%s\n%s", err, out, howToInstall)
	}
	c.start()
	return c
}

func (c *cluster) data() string { return filepath.Join(c.dir, "data") }

// url is the connection string of database db.
func (c *cluster) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// start starts the server and waits until it accepts connections (after
// crash recovery, when it crashed).
func (c *cluster) start() {
	c.t.Helper()
	o := fmt.Sprintf("-p %d -k %s", c.port, c.dir)
	for _, s := range c.opts {
		o += " -c " + s
	}
	if err := c.pgCtl("start", "-w", "-t", "120", "-l", filepath.Join(c.dir, "log"), "-o", o); err != nil {
		log, _ := os.ReadFile(filepath.Join(c.dir, "log"))
		c.t.Fatalf("faultinject: pg_ctl start: %v\nserver log:\n%s", err, log)
	}
}

// crash stops the server the way a power cut stops it for the database:
// every process exits at once, nothing is flushed or checkpointed, and the
// next start runs crash recovery from the WAL.
func (c *cluster) crash() {
	c.t.Helper()
	require.NoError(c.t, c.pgCtl("stop", "-m", "immediate", "-w"))
}

func (c *cluster) pgCtl(args ...string) error {
	out, err := c.run(filepath.Join(c.bin, "pg_ctl"), append([]string{"-D", c.data()}, args...)...)
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

func (c *cluster) run(name string, args ...string) ([]byte, error) {
	argv := append(append(slices.Clone(c.runAs), name), args...)
	return exec.Command(argv[0], argv[1:]...).CombinedOutput()
}

// migrate runs wharf.Migrate on database db.
func (c *cluster) migrate(db string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, c.url(db))
	require.NoError(c.t, err)
	defer pool.Close()
	require.NoError(c.t, wharf.Migrate(ctx, pool))
}

// pgBinDir finds initdb and pg_ctl: $PG_BINDIR, the newest
// /usr/lib/postgresql/*/bin, or PATH.
func pgBinDir(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("PG_BINDIR"); dir != "" {
		return dir
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return versionOf(b) - versionOf(a) })
	for _, dir := range dirs {
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	t.Fatalf("faultinject: initdb not found\n%s", howToInstall)
	return ""
}

// versionOf reads the major version in /usr/lib/postgresql/<version>/bin.
func versionOf(binDir string) int {
	v, _ := strconv.Atoi(strings.Split(filepath.Base(filepath.Dir(binDir)), ".")[0])
	return v
}

// freePort returns a TCP port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
