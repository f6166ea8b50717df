package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// cluster is a private PostgreSQL cluster under the data directory: created with initdb on
// first use, run as a child of the helper (stopped with it, and by the kernel if the helper
// dies), reachable only through a Unix socket in a private directory.
type cluster struct {
	log  *slog.Logger
	bin  string // PostgreSQL's bin directory
	data string // PGDATA
	sock string // socket directory
	cred *syscall.Credential
	cmd  *exec.Cmd
	exit chan error
	once sync.Once // stop
	logf *os.File
}

// pgBin finds the bin directory of the newest PostgreSQL installed from Debian's packages
// (/usr/lib/postgresql/<major>/bin), unless one is given.
func pgBin(given string) (string, error) {
	if given != "" {
		return given, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	sort.Slice(dirs, func(i, j int) bool { return major(dirs[i]) > major(dirs[j]) })
	if len(dirs) == 0 {
		return "", errors.New("PostgreSQL not found under /usr/lib/postgresql (apt-get install " +
			"postgresql, or -backend sqlite)")
	}
	return filepath.Dir(dirs[0]), nil
}

func major(postgres string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(postgres))))
	return n
}

// credential is who runs initdb and postgres: both refuse root, so root runs them as runAs.
func credential(runAs string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(runAs)
	if err != nil {
		return nil, fmt.Errorf("user %q to run PostgreSQL as (it refuses root): %w", runAs, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (c *cluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	return os.Chown(path, int(c.cred.Uid), int(c.cred.Gid))
}

func (c *cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Dir = "/"
	cmd.Env = []string{"LANG=C", "LC_ALL=C", "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true}
	return cmd
}

// start creates the cluster if it does not exist yet, starts postgres and waits until it
// accepts connections.
func (c *cluster) start(ctx context.Context) error {
	if err := os.MkdirAll(c.data, 0o700); err != nil {
		return err
	}
	if err := c.chown(c.data); err != nil {
		return err
	}
	if err := c.chown(c.sock); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(c.data, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		t0 := time.Now()
		out, err := c.command(ctx, "initdb", "-D", c.data, "-A", "trust", "-U", "ferretdb",
			"-E", "UTF8", "--no-locale", "--no-sync").CombinedOutput()
		if err != nil {
			return fmt.Errorf("initdb %s: %v: %s (the user PostgreSQL runs as must be able "+
				"to reach the data directory)", c.data, err, strings.TrimSpace(string(out)))
		}
		c.log.Info("ferretdb-lite: PostgreSQL cluster created", "pgdata", c.data, "took", time.Since(t0))
	}
	// A postgres of a helper that was killed may still be shutting down (it had a SIGINT).
	deadline := time.Now().Add(15 * time.Second)
	for stalePostmaster(c.data) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	c.cmd = c.command(context.Background(), "postgres", "-D", c.data, "-k", c.sock,
		"-c", "listen_addresses=",
		"-c", "max_connections=60",
		"-c", "shared_buffers=32MB",
		// A commit returns before its WAL is flushed: a crash loses the last ~0.6 s of
		// writes, never consistency. The engine's writes are desired state, not a ledger.
		"-c", "synchronous_commit=off",
		// FerretDB sends prepared statements whose key is a parameter (_jsonb->$1 @> $2): a
		// generic plan cannot match the expression indexes, so always plan with the values.
		"-c", "plan_cache_mode=force_custom_plan",
		"-c", "logging_collector=off",
	)
	c.cmd.SysProcAttr.Pdeathsig = syscall.SIGINT // fast shutdown if the helper dies
	// Its own log beside the cluster (its start and stop messages are LOG, above ERROR).
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(c.data), "postgres.log"),
		os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	c.logf = logf
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	c.exit = make(chan error, 1)
	go func() { c.exit <- c.cmd.Wait() }()
	for t := time.Now(); ; {
		pool, err := c.pool(ctx)
		if err == nil {
			err = pool.Ping(ctx)
			pool.Close()
			if err == nil {
				return nil
			}
		}
		select {
		case err := <-c.exit:
			c.exit = nil // nothing left to stop
			return fmt.Errorf("postgres exited at start: %v (its log: %s)", err, logf.Name())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Since(t) > 30*time.Second {
			return fmt.Errorf("postgres did not accept connections in 30 s: %v", err)
		}
	}
}

// url is the connection string FerretDB and the preparer use.
func (c *cluster) url() string {
	return "postgres://ferretdb@/postgres?host=" + c.sock + "&sslmode=disable"
}

func (c *cluster) pool(ctx context.Context) (*pgxpool.Pool, error) {
	return pgxpool.New(ctx, c.url()+"&pool_max_conns=4")
}

// stop asks postgres for a fast shutdown (SIGINT), then an immediate one if it lingers.
func (c *cluster) stop() {
	if c == nil {
		return
	}
	c.once.Do(func() {
		if c.cmd == nil || c.cmd.Process == nil || c.exit == nil {
			return
		}
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-c.exit:
		case <-time.After(15 * time.Second):
			_ = c.cmd.Process.Signal(syscall.SIGQUIT)
			<-c.exit
		}
		if c.logf != nil {
			_ = c.logf.Close()
		}
	})
}

// stalePostmaster is whether postmaster.pid names a process that is still alive.
func stalePostmaster(data string) bool {
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 0 {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}
