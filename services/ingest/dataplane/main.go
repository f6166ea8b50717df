// Command reelhouse-ingest is the data plane of Reelhouse's ingest: SRT servers (gosrt), RTMP
// servers (gortmplib) and one SRT fan-out listener, driven by JSON commands on stdin and
// reporting JSON events on stdout. The contract is docs/INGEST.md.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	srt "github.com/datarhei/gosrt"
)

const version = "0.1.0"

// Config holds the flags.
type Config struct {
	Fanout         string        // host:port of the fan-out SRT listener
	StatsInterval  time.Duration // how often `stats` is written
	GapHold        time.Duration // how long readers are held while a contribution has no publisher
	TakeoverIdle   time.Duration // a publisher idle this long is replaced by a new one
	VerdictTimeout time.Duration // how long a connect waits for the service's verdict
	GOPMaxBytes    int           // cap on the GOP kept per contribution (bytes)
}

// Emitter writes events, one JSON object per line, from its own goroutine: a service that is
// slow to read stdout delays the events, not the data plane's locks (up to a deep queue).
type Emitter struct {
	q      chan []byte
	done   chan struct{}
	mu     sync.RWMutex
	closed bool
}

func newEmitter(w io.Writer) *Emitter {
	e := &Emitter{q: make(chan []byte, 1<<16), done: make(chan struct{})}
	go func() {
		defer close(e.done)
		for b := range e.q {
			_, _ = w.Write(b)
		}
	}()
	return e
}

func (e *Emitter) emit(ev string, fields map[string]any) {
	m := make(map[string]any, len(fields)+2)
	for k, v := range fields {
		m[k] = v
	}
	m["ev"] = ev
	m["at"] = unixSeconds(time.Now())
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if !e.closed {
		e.q <- append(b, '\n')
	}
}

// flush writes what is queued; nothing may be emitted after it.
func (e *Emitter) flush() {
	e.mu.Lock()
	e.closed = true
	close(e.q)
	e.mu.Unlock()
	<-e.done
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixMicro()) / 1e6 }

type verdict struct {
	Allow      bool   `json:"allow"`
	Passphrase string `json:"passphrase"`
	Reason     string `json:"reason"`
}

type command struct {
	Op         string `json:"op"`
	ServerID   string `json:"server_id"`
	Proto      string `json:"proto"`
	Host       string `json:"host"`
	Port       int    `json:"port"`
	LatencyMs  int    `json:"latency_ms"`
	Req        string `json:"req"`
	Name       string `json:"name"`
	Allow      bool   `json:"allow"`
	Passphrase string `json:"passphrase"`
	Reason     string `json:"reason"`
}

// App is the data plane: servers, contributions, connections.
type App struct {
	cfg Config
	out *Emitter
	log *slog.Logger

	mu      sync.Mutex
	servers map[string]*server
	hubs    map[hubKey]*Hub
	conns   map[string]*connInfo
	pending map[string]chan verdict
	fanout  srt.Listener
	closing bool

	seq atomic.Uint64
}

func (a *App) nextID(prefix string) string {
	return prefix + strconv.FormatUint(a.seq.Add(1), 10)
}

func main() {
	var cfg Config
	flag.StringVar(&cfg.Fanout, "fanout", "127.0.0.1:6000", "host:port of the fan-out SRT listener")
	flag.DurationVar(&cfg.StatsInterval, "stats-interval", time.Second, "how often stats is written")
	flag.DurationVar(&cfg.GapHold, "gap-hold", 30*time.Second, "how long readers are held while a contribution has no publisher")
	flag.DurationVar(&cfg.TakeoverIdle, "takeover-idle", time.Second, "a publisher that sent nothing this long is replaced by a new one")
	flag.DurationVar(&cfg.VerdictTimeout, "verdict-timeout", 3*time.Second, "how long a connect waits for its verdict")
	flag.IntVar(&cfg.GOPMaxBytes, "gop-max-bytes", 8<<20, "cap on the GOP kept per contribution")
	flag.Parse()

	a := &App{
		cfg:     cfg,
		out:     newEmitter(os.Stdout),
		log:     slog.New(slog.NewJSONHandler(os.Stderr, nil)),
		servers: map[string]*server{},
		hubs:    map[hubKey]*Hub{},
		conns:   map[string]*connInfo{},
		pending: map[string]chan verdict{},
	}
	if err := a.startFanout(); err != nil {
		a.log.Error("fanout_listen_failed", "addr", cfg.Fanout, "error", err.Error())
		os.Exit(1)
	}
	a.out.emit("ready", map[string]any{"version": version, "fanout": a.fanout.Addr().String()})
	a.log.Info("ready", "fanout", a.fanout.Addr().String())

	stop := make(chan string, 2)
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		s := <-sig
		stop <- s.String()
	}()
	go func() {
		a.readCommands(os.Stdin)
		stop <- "stdin closed"
	}()
	go a.statsLoop()

	why := <-stop
	a.log.Info("stopping", "why", why)
	a.shutdown()
	a.out.flush()
	os.Exit(0)
}

func (a *App) readCommands(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var c command
		if err := json.Unmarshal(line, &c); err != nil {
			a.log.Warn("bad_command", "error", err.Error())
			continue
		}
		a.handleCommand(c)
	}
}

func (a *App) handleCommand(c command) {
	switch c.Op {
	case "listen":
		go a.listen(c)
	case "close":
		go func() {
			a.closeServer(c.ServerID)
			a.out.emit("closed", map[string]any{"server_id": c.ServerID})
		}()
	case "verdict":
		a.mu.Lock()
		ch := a.pending[c.Req]
		delete(a.pending, c.Req)
		a.mu.Unlock()
		if ch == nil {
			a.log.Warn("verdict_unknown_req", "req", c.Req)
			return
		}
		ch <- verdict{Allow: c.Allow, Passphrase: c.Passphrase, Reason: c.Reason}
	case "drop":
		a.mu.Lock()
		h := a.hubs[hubKey{c.ServerID, c.Name}]
		a.mu.Unlock()
		if h != nil {
			a.endContribution(h, "dropped")
		}
	default:
		a.log.Warn("unknown_command", "op", c.Op)
	}
}

// askVerdict emits `connect` and waits for the service's verdict (or the timeout).
func (a *App) askVerdict(ci *connInfo, streamID, key string, encrypted bool) (verdict, bool) {
	req := a.nextID("r")
	ch := make(chan verdict, 1)
	a.mu.Lock()
	a.pending[req] = ch
	a.mu.Unlock()
	f := ci.fields()
	f["req"], f["stream_id"], f["key"], f["encrypted"] = req, streamID, key, encrypted
	a.out.emit("connect", f)
	t := time.NewTimer(a.cfg.VerdictTimeout)
	defer t.Stop()
	select {
	case v := <-ch:
		return v, true
	case <-t.C:
		a.mu.Lock()
		delete(a.pending, req)
		a.mu.Unlock()
		return verdict{}, false
	}
}

// refused logs and reports a refusal; the caller has already told the peer.
func (a *App) refused(ci *connInfo, reason, streamID string) {
	a.log.Warn("refused", "reason", reason, "stream_id", streamID, "server_id", ci.serverID,
		"via", ci.via, "role", ci.role, "remote", ci.remote, "conn", ci.id)
	f := ci.fields()
	f["reason"], f["stream_id"] = reason, streamID
	a.out.emit("refused", f)
}

func (a *App) shutdown() {
	a.mu.Lock()
	a.closing = true
	ids := make([]string, 0, len(a.servers))
	for id := range a.servers {
		ids = append(ids, id)
	}
	a.mu.Unlock()
	for _, id := range ids {
		a.closeServer(id)
	}
	a.mu.Lock()
	hubs := make([]*Hub, 0, len(a.hubs))
	for _, h := range a.hubs {
		hubs = append(hubs, h)
	}
	a.mu.Unlock()
	for _, h := range hubs {
		a.endContribution(h, "closed")
	}
	if a.fanout != nil {
		a.fanout.Close()
	}
}

// connInfo is one accepted (or asking) connection.
type connInfo struct {
	id, serverID, via, proto, name, role, remote string
	connectedAt                                  time.Time
	srtConn                                      srt.Conn
	bytes                                        func() uint64
	latencyMs                                    int

	lastBytes uint64 // for the bitrate, touched only by the stats loop
	lastAt    time.Time
}

func (ci *connInfo) fields() map[string]any {
	return map[string]any{"server_id": ci.serverID, "via": ci.via, "proto": ci.proto,
		"name": ci.name, "role": ci.role, "conn": ci.id, "remote": ci.remote}
}

func (a *App) connEvent(ev string, ci *connInfo, extra map[string]any) {
	f := ci.fields()
	for k, v := range extra {
		f[k] = v
	}
	a.out.emit(ev, f)
}

func (a *App) statsLoop() {
	t := time.NewTicker(a.cfg.StatsInterval)
	defer t.Stop()
	for range t.C {
		a.emitStats()
	}
}

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }

func (a *App) emitStats() {
	now := time.Now()
	a.mu.Lock()
	conns := make([]*connInfo, 0, len(a.conns))
	for _, ci := range a.conns {
		conns = append(conns, ci)
	}
	hubs := make([]*Hub, 0, len(a.hubs))
	for _, h := range a.hubs {
		hubs = append(hubs, h)
	}
	a.mu.Unlock()

	cs := make([]map[string]any, 0, len(conns))
	for _, ci := range conns {
		f := ci.fields()
		f["connected_at"] = unixSeconds(ci.connectedAt)
		var bytes uint64
		var st srt.Statistics
		if ci.srtConn != nil {
			ci.srtConn.Stats(&st)
			if ci.role == "publish" {
				bytes = st.Accumulated.ByteRecv
			} else {
				bytes = st.Accumulated.ByteSent
			}
		} else if ci.bytes != nil {
			bytes = ci.bytes()
		}
		f["bytes"] = bytes
		since := ci.connectedAt
		if !ci.lastAt.IsZero() {
			since = ci.lastAt
		}
		rate := 0.0
		if dt := now.Sub(since).Seconds(); dt > 0 && bytes >= ci.lastBytes {
			rate = float64(bytes-ci.lastBytes) * 8 / 1000 / dt
		}
		ci.lastBytes, ci.lastAt = bytes, now
		f["bitrate_kbits"] = round1(rate)
		if ci.srtConn != nil {
			in := st.Instantaneous
			f["rtt_ms"] = round1(in.MsRTT)
			f["recv_rate_kbits"] = round1(in.MbpsRecvRate * 1000)
			f["send_rate_kbits"] = round1(in.MbpsSentRate * 1000)
			f["link_capacity_kbits"] = round1(in.MbpsLinkCapacity * 1000)
			f["pkt_recv_loss"] = st.Accumulated.PktRecvLoss
			if ci.role == "publish" {
				f["pkt_retrans"] = st.Accumulated.PktRecvRetrans
				f["latency_ms"] = in.MsRecvTsbPdDelay
			} else {
				f["pkt_retrans"] = st.Accumulated.PktRetrans
				f["latency_ms"] = in.MsSendTsbPdDelay
			}
			f["pkt_recv_drop"] = st.Accumulated.PktRecvDrop
			f["pkt_send_loss"] = st.Accumulated.PktSendLoss
			f["recv_buffer_ms"] = in.MsRecvBuf
			f["send_buffer_ms"] = in.MsSendBuf
		}
		cs = append(cs, f)
	}

	hs := make([]map[string]any, 0, len(hubs))
	for _, h := range hubs {
		hs = append(hs, h.stats(now))
	}
	a.out.emit("stats", map[string]any{"conns": cs, "contributions": hs})
}

func addrString(addr net.Addr) string {
	if addr == nil {
		return ""
	}
	return addr.String()
}
