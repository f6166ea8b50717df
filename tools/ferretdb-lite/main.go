// Command ferretdb-lite runs FerretDB v1 as a small, local MongoDB-compatible server for
// `make up` and `make test`, on a private PostgreSQL cluster under the data directory
// (-backend postgresql, the default: PostgreSQL from Debian's package, created with initdb
// on first use and run as a child of the helper) or on SQLite files (-backend sqlite).
// Before FerretDB serves the first command naming one of the engine's collections in a
// database, the helper creates that collection and the indexes FerretDB's pushed-down
// filters can use (prepare.go; docs/DECISIONS.md "The durable plane on the local server").
//
// It embeds github.com/FerretDB/FerretDB/ferretdb rather than running the
// upstream cmd/ferretdb, which panics at start when installed from the module
// proxy (the module lacks build/version/version.txt).
//
// FerretDB v1 applies an update as read, modify in Go, write the whole document
// back, with no lock between the read and the write: two concurrent updates of
// one document lose one of them (20 concurrent $set of different fields on one
// document keep about 2). MongoDB updates a document atomically, and the job
// lease protocol relies on it (a lease renewal must never undo the API's
// `active: false`). So FerretDB listens on a private Unix socket and the TCP
// address given by -listen is a small wire-protocol proxy that lets one
// read-modify-write command (update, findAndModify, delete) run at a time:
// it takes a lock before forwarding such a command and releases it when the
// reply passes back. Reads and inserts are not held up.
//
// With -stats D it also logs, every D, how many commands of each kind (command
// and collection) it forwarded and how long FerretDB took for them: the way to
// see which of the engine's queries cost the database its CPU.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

const (
	opMsg        = 2013
	headerLen    = 16
	maxMessage   = 48 << 20 // MongoDB's maxMessageSizeBytes
	moreToCome   = 1 << 1   // OP_MSG flag: no reply follows this message
	writeTimeout = 60 * time.Second
)

// serialized are the commands FerretDB runs as an unlocked read-modify-write.
var serialized = map[string]bool{"update": true, "findandmodify": true, "delete": true}

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "TCP address to listen on (host:port)")
	dataDir := flag.String("data", "data/db", "directory for the SQLite database files")
	logLevel := flag.String("log-level", "warn", "log level: debug, info, warn or error")
	statsEvery := flag.Duration("stats", 0, "log command counts and FerretDB time every this long (0: off)")
	backend := flag.String("backend", "postgresql", "postgresql (a private cluster under -data) or sqlite")
	pgBinDir := flag.String("pg-bin", "", "PostgreSQL's bin directory (default: the newest /usr/lib/postgresql/*/bin)")
	pgUser := flag.String("pg-user", "postgres", "user to run PostgreSQL as when the helper runs as root")
	prepareDBs := flag.String("prepare", "", "comma-separated databases whose collections and indexes are created at start")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb-lite: bad -log-level %q: %v\n", *logLevel, err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	dir, err := filepath.Abs(*dataDir)
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err != nil {
		fail("data directory %q: %v", *dataDir, err)
	}
	sockDir, err := os.MkdirTemp("", "ferretdb-lite-")
	if err != nil {
		fail("socket directory: %v", err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "ferretdb.sock")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	config := &ferretdb.Config{Listener: ferretdb.ListenerConfig{Unix: sock}, Logger: logger}
	prep := &preparer{log: logger, upstream: sock, done: map[string]*prepared{}}
	var pg *cluster
	switch *backend {
	case "sqlite":
		config.Handler, config.SQLiteURL = "sqlite", "file:"+dir+"/"
		prep.sqlite = dir
	case "postgresql":
		bin, err := pgBin(*pgBinDir)
		if err != nil {
			fail("%v", err)
		}
		cred, err := credential(*pgUser)
		if err != nil {
			fail("%v", err)
		}
		pg = &cluster{log: logger, bin: bin, data: filepath.Join(dir, "pg"), sock: sockDir, cred: cred}
		t0 := time.Now()
		if err := pg.start(ctx); err != nil {
			pg.stop()
			fail("%v", err)
		}
		defer pg.stop()
		logger.Info("ferretdb-lite: PostgreSQL started", "pgdata", pg.data, "took", time.Since(t0))
		config.Handler, config.PostgreSQLURL = "postgresql", pg.url()
		if prep.pg, err = pg.pool(ctx); err != nil {
			pg.stop()
			fail("%v", err)
		}
		defer prep.pg.Close()
	default:
		fail("-backend must be postgresql or sqlite, not %q", *backend)
	}

	f, err := ferretdb.New(config)
	if err != nil {
		pg.stop()
		fail("%v", err)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f.Run(ctx); err != nil && ctx.Err() == nil {
			logger.Error("ferretdb-lite: FerretDB stopped", "error", err)
			stop()
		}
	}()
	if err := waitDialable(ctx, sock); err != nil {
		pg.stop()
		fail("FerretDB did not start: %v", err)
	}
	for _, db := range strings.Split(*prepareDBs, ",") {
		for coll := range indexed {
			prep.ensure(ctx, strings.TrimSpace(db), coll)
		}
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail("listen %s: %v", *listen, err)
	}
	p := &proxy{upstream: sock, log: logger, prep: prep, ctx: ctx}
	if *statsEvery > 0 {
		p.stats = map[string]*stat{}
		go p.reportStats(ctx, *statsEvery)
	}
	go p.serve(ln)

	logger.Warn("ferretdb-lite listening", "addr", ln.Addr().String(), "data", dir)
	<-ctx.Done()
	_ = ln.Close()
	<-done
	pg.stop()
	logger.Warn("ferretdb-lite stopped")
}

func fail(format string, args ...any) {
	// (deferred calls do not run: a started PostgreSQL is stopped by the caller or, at
	// worst, by its parent-death signal)
	fmt.Fprintf(os.Stderr, "ferretdb-lite: "+format+"\n", args...)
	os.Exit(1)
}

func waitDialable(ctx context.Context, sock string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// proxy forwards MongoDB wire-protocol connections to FerretDB, one
// read-modify-write command at a time across all connections.
type proxy struct {
	upstream string
	log      *slog.Logger
	writes   sync.Mutex
	prep     *preparer
	ctx      context.Context

	statsMu sync.Mutex
	stats   map[string]*stat // nil: -stats is off
}

// stat is what one kind of command ("find recordings") cost since the last report.
type stat struct {
	count int
	total time.Duration
}

func (p *proxy) record(key string, took time.Duration) {
	p.statsMu.Lock()
	s := p.stats[key]
	if s == nil {
		s = &stat{}
		p.stats[key] = s
	}
	s.count++
	s.total += took
	p.statsMu.Unlock()
}

// reportStats logs the costliest kinds of command every period, then starts over.
func (p *proxy) reportStats(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p.statsMu.Lock()
		stats := p.stats
		p.stats = map[string]*stat{}
		p.statsMu.Unlock()
		keys := make([]string, 0, len(stats))
		var total time.Duration
		for k, s := range stats {
			keys = append(keys, k)
			total += s.total
		}
		sort.Slice(keys, func(i, j int) bool { return stats[keys[i]].total > stats[keys[j]].total })
		fmt.Fprintf(os.Stderr, "ferretdb-lite stats over %s: %d kinds, %.3f s in FerretDB\n",
			every, len(keys), total.Seconds())
		for _, k := range keys {
			s := stats[k]
			fmt.Fprintf(os.Stderr, "  %8d  %9.3f s  %7.2f ms/op  %s\n", s.count, s.total.Seconds(),
				s.total.Seconds()*1000/float64(s.count), k)
		}
	}
}

func (p *proxy) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.log.Error("ferretdb-lite: accept", "error", err)
			}
			return
		}
		go p.handle(c)
	}
}

// conn is one client connection and its upstream connection.
type conn struct {
	p       *proxy
	mu      sync.Mutex
	holding bool  // this connection holds p.writes
	pending int32 // the request id whose reply releases it
	timer   *time.Timer

	inflight map[int32]sent // -stats: requests waiting for their reply
}

type sent struct {
	key string
	at  time.Time
}

// sent notes when request requestID (a command of kind key) went to FerretDB.
func (c *conn) sent(requestID int32, key string) {
	if c.p.stats == nil {
		return
	}
	c.mu.Lock()
	c.inflight[requestID] = sent{key, time.Now()}
	c.mu.Unlock()
}

func (c *conn) replied(responseTo int32) {
	if c.p.stats == nil {
		return
	}
	c.mu.Lock()
	s, ok := c.inflight[responseTo]
	delete(c.inflight, responseTo)
	c.mu.Unlock()
	if ok {
		c.p.record(s.key, time.Since(s.at))
	}
}

func (c *conn) acquire(requestID int32) {
	c.p.writes.Lock()
	c.mu.Lock()
	c.holding, c.pending = true, requestID
	// A reply that never comes (FerretDB stuck, connection half-dead) must not
	// stop every other writer for good.
	c.timer = time.AfterFunc(writeTimeout, func() { c.release(requestID, false) })
	c.mu.Unlock()
}

func (c *conn) release(responseTo int32, any bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.holding || (!any && responseTo != c.pending) {
		return
	}
	c.holding = false
	c.timer.Stop()
	c.p.writes.Unlock()
}

func (p *proxy) handle(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("unix", p.upstream)
	if err != nil {
		p.log.Error("ferretdb-lite: upstream", "error", err)
		return
	}
	defer server.Close()
	c := &conn{p: p, inflight: map[int32]sent{}}
	defer c.release(0, true)

	replies := make(chan struct{})
	go func() {
		defer close(replies)
		defer client.Close()
		for {
			msg, err := readMessage(server)
			if err != nil {
				return
			}
			_, werr := client.Write(msg)
			responseTo := int32(binary.LittleEndian.Uint32(msg[8:12]))
			c.release(responseTo, false)
			c.replied(responseTo)
			if werr != nil {
				return
			}
		}
	}()
	for {
		msg, err := readMessage(client)
		if err != nil {
			break
		}
		requestID := int32(binary.LittleEndian.Uint32(msg[4:8]))
		name, target, db, isCommand := "", "", "", false
		if binary.LittleEndian.Uint32(msg[12:16]) == opMsg {
			name, target, db, isCommand = command(msg)
			name = strings.ToLower(name)
		}
		switch {
		case !isCommand:
		case name == "dropdatabase":
			c.p.prep.forget(db, "")
		case name == "drop":
			c.p.prep.forget(db, target)
		case target != "":
			c.p.prep.ensure(c.p.ctx, db, target) // before FerretDB creates it without indexes
		}
		noReply := isCommand && binary.LittleEndian.Uint32(msg[16:20])&moreToCome != 0
		if isCommand && !noReply { // (a request without a reply has nothing to time)
			c.sent(requestID, name+" "+target)
		}
		// A read-modify-write command runs alone (see the package comment).
		locked := isCommand && serialized[name]
		if locked {
			c.acquire(requestID)
		}
		if _, err := server.Write(msg); err != nil {
			break
		}
		if locked && noReply {
			c.release(0, true) // no reply will come: nothing to wait for
		}
	}
	_ = server.Close()
	<-replies
}

// readMessage reads one whole wire-protocol message (header included).
func readMessage(r io.Reader) ([]byte, error) {
	var header [headerLen]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		return nil, err
	}
	n := int(int32(binary.LittleEndian.Uint32(header[0:4])))
	if n < headerLen || n > maxMessage {
		return nil, fmt.Errorf("bad message length %d", n)
	}
	msg := make([]byte, n)
	copy(msg, header[:])
	if _, err := io.ReadFull(r, msg[headerLen:]); err != nil {
		return nil, err
	}
	return msg, nil
}

// command is the first key of the OP_MSG body (the kind 0 section), its value when that is a
// string (the collection, for most commands), and the body's $db.
func command(msg []byte) (name, target, db string, ok bool) {
	els, err := elements(body(msg))
	if err != nil || len(els) == 0 {
		return "", "", "", false
	}
	name = els[0].key
	target, _ = stringValue(els[0])
	for _, e := range els[1:] {
		if e.key == "$db" {
			db, _ = stringValue(e)
		}
	}
	return name, target, db, true
}
