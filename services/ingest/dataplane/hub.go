package main

// The fan-out hub of one contribution: one publisher, any number of readers. The publisher's
// goroutine parses and forwards; each reader has its own bounded queue and goroutine, so a slow
// reader is dropped instead of stalling the publisher or the others.

import (
	"sync"
	"sync/atomic"
	"time"
)

const readerQueue = 2048 // chunks of up to 1316 bytes per reader (about 2.7 MB)

type hubKey struct{ server, name string }

type publisher struct {
	ci       *connInfo
	lastRecv atomic.Int64 // unix nanoseconds of the last data
	close    func()
}

type reader struct {
	ci     *connInfo
	q      chan []byte
	synced bool // has been sent PAT, PMT and a keyframe
	done   chan struct{}
	once   sync.Once
	write  func([]byte) error
	close  func()
}

// Hub is one contribution.
type Hub struct {
	key   hubKey
	proto string

	mu       sync.Mutex
	pub      *publisher
	readers  map[*reader]struct{}
	since    time.Time
	held     bool
	lostAt   time.Time
	timer    *time.Timer
	gaps     int
	gapMs    int64
	ended    bool
	bytes    uint64
	ts       *tsState
	gop      [][]byte
	gopBytes int
	gopOK    bool

	lastBytes uint64
	lastAt    time.Time
}

// errRefuse is a refusal reason decided by the data plane.
type errRefuse string

func (e errRefuse) Error() string { return string(e) }

// attachPublisher admits a publisher (or refuses it `duplicate`) and emits the event that says
// how. accept runs under the lock, after the decision and before any event: if it fails,
// nothing changed.
func (a *App) attachPublisher(key hubKey, proto string, ci *connInfo, accept func() (func(), error)) (*Hub, *publisher, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closing {
		return nil, nil, errRefuse("closing")
	}
	h := a.hubs[key]
	now := time.Now()
	var old *publisher
	if h != nil {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.pub != nil {
			idle := now.Sub(time.Unix(0, h.pub.lastRecv.Load()))
			if idle < a.cfg.TakeoverIdle {
				return nil, nil, errRefuse("duplicate")
			}
			old = h.pub
		}
	}
	closeFn, err := accept()
	if err != nil {
		return nil, nil, err
	}
	p := &publisher{ci: ci, close: closeFn}
	p.lastRecv.Store(now.UnixNano())
	ci.connectedAt = now
	a.conns[ci.id] = ci
	switch {
	case h == nil:
		h = &Hub{key: key, proto: proto, readers: map[*reader]struct{}{}, since: now, ts: newTSState(), pub: p}
		a.hubs[key] = h
		a.connEvent("publisher_up", ci, nil)
	case old != nil:
		idle := now.Sub(time.Unix(0, old.lastRecv.Load()))
		// an encoder killed and restarted within the peer idle timeout lands here: its silence
		// is a gap like any other
		h.gaps++
		h.gapMs += idle.Milliseconds()
		h.pub = p
		h.ts.restart()
		delete(a.conns, old.ci.id)
		old.close()
		a.connEvent("publisher_lost", old.ci, map[string]any{"reason": "replaced"})
		a.connEvent("publisher_replaced", ci, map[string]any{"idle_ms": idle.Milliseconds(), "old_remote": old.ci.remote})
	default: // held
		gap := now.Sub(h.lostAt)
		if h.timer != nil {
			h.timer.Stop()
		}
		h.held = false
		h.gaps++
		h.gapMs += gap.Milliseconds()
		h.pub = p
		h.ts.restart()
		a.connEvent("publisher_back", ci, map[string]any{"gap_ms": gap.Milliseconds()})
	}
	a.log.Info("publisher_accepted", "conn", ci.id, "server_id", key.server, "name", key.name, "remote", ci.remote)
	return h, p, nil
}

// ingest takes data from publisher p (a whole number of TS packets, or SRT payloads).
func (h *Hub) ingest(a *App, p *publisher, data []byte) bool {
	p.lastRecv.Store(time.Now().UnixNano())
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pub != p {
		return false
	}
	h.bytes += uint64(len(data))
	out := make([]byte, 0, len(data))
	keyAt := -1
	for i := 0; i+tsPacketSize <= len(data); i += tsPacketSize {
		pk := data[i : i+tsPacketSize]
		keep, key := h.ts.process(pk)
		if !keep {
			continue
		}
		if key && keyAt < 0 {
			keyAt = len(out)
		}
		out = append(out, pk...)
	}
	if len(out) == 0 {
		return true
	}

	// the GOP: restarted at each keyframe, invalid (until the next one) past the cap
	if keyAt >= 0 {
		h.gop = [][]byte{out[keyAt:]}
		h.gopBytes = len(out) - keyAt
		h.gopOK = true
	} else if h.gopOK {
		h.gop = append(h.gop, out)
		h.gopBytes += len(out)
		if h.gopBytes > a.cfg.GOPMaxBytes {
			h.gop, h.gopBytes, h.gopOK = nil, 0, false
		}
	}

	for r := range h.readers {
		chunk := out
		if !r.synced {
			if keyAt < 0 && h.ts.videoPID >= 0 {
				continue
			}
			r.synced = true
			if keyAt > 0 {
				chunk = out[keyAt:]
			}
			if !r.push(h.tables()) {
				go a.readerGone(h, r, "slow")
				continue
			}
		}
		if !r.push(chunk) {
			go a.readerGone(h, r, "slow")
		}
	}
	return true
}

func (h *Hub) tables() []byte {
	b := make([]byte, 0, 2*tsPacketSize)
	b = append(b, h.ts.pat...)
	return append(b, h.ts.pmt...)
}

func (r *reader) push(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	select {
	case r.q <- b:
		return true
	default:
		return false
	}
}

// publisherGone starts the hold (or does nothing if p was already replaced).
func (a *App) publisherGone(h *Hub, p *publisher, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.conns, p.ci.id)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pub != p || h.ended {
		return
	}
	h.pub = nil
	h.held = true
	// The gap began with the publisher's last data, not when its loss was noticed (a killed
	// SRT caller is found out only by the peer-idle timeout): the readers' silence is measured
	// from there, and so is the hold.
	last := time.Unix(0, p.lastRecv.Load())
	silent := time.Since(last)
	h.lostAt = last
	h.ts.restart()
	a.connEvent("publisher_lost", p.ci, map[string]any{"reason": reason, "silent_ms": silent.Milliseconds()})
	a.log.Info("publisher_lost", "conn", p.ci.id, "server_id", h.key.server, "name", h.key.name, "reason", reason, "silent_ms", silent.Milliseconds())
	hold := a.cfg.GapHold - silent
	if hold < 0 {
		hold = 0
	}
	h.timer = time.AfterFunc(hold, func() {
		h.mu.Lock()
		still := h.held && !h.ended
		h.mu.Unlock()
		if still {
			a.endContribution(h, "gap")
		}
	})
}

// endContribution closes the publisher and every reader, and forgets the contribution.
func (a *App) endContribution(h *Hub, reason string) {
	a.mu.Lock()
	h.mu.Lock()
	if h.ended || (reason == "gap" && !h.held) {
		h.mu.Unlock()
		a.mu.Unlock()
		return
	}
	h.ended = true
	if a.hubs[h.key] == h {
		delete(a.hubs, h.key)
	}
	if h.timer != nil {
		h.timer.Stop()
	}
	pub := h.pub
	h.pub = nil
	readers := make([]*reader, 0, len(h.readers))
	for r := range h.readers {
		readers = append(readers, r)
	}
	h.mu.Unlock()
	if pub != nil {
		delete(a.conns, pub.ci.id)
	}
	a.mu.Unlock()

	if pub != nil {
		pub.close() // its goroutine finds itself no longer the publisher: no publisher_lost
	}
	for _, r := range readers {
		a.readerGone(h, r, "ended")
	}
	a.out.emit("contribution_ended", map[string]any{"server_id": h.key.server, "name": h.key.name,
		"proto": h.proto, "reason": reason})
	a.log.Info("contribution_ended", "server_id", h.key.server, "name", h.key.name, "reason", reason)
}

// attachReader admits a reader of a live or held contribution (else `not_live`); accept runs
// under the lock after the decision. It returns the reader with the GOP to send first.
func (a *App) attachReader(key hubKey, ci *connInfo, accept func() (func([]byte) error, func(), error)) (*Hub, *reader, [][]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.hubs[key]
	if h == nil || a.closing {
		return nil, nil, nil, errRefuse("not_live")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	write, closeFn, err := accept()
	if err != nil {
		return nil, nil, nil, err
	}
	ci.connectedAt = time.Now()
	ci.proto = h.proto
	r := &reader{ci: ci, q: make(chan []byte, readerQueue), done: make(chan struct{}), write: write, close: closeFn}
	var first [][]byte
	if h.gopOK && h.ts.pat != nil && h.ts.pmt != nil {
		first = append([][]byte{h.tables()}, h.gop...)
		r.synced = true
	} else if h.ts.videoPID < 0 && h.ts.pat != nil && h.ts.pmt != nil {
		first = [][]byte{h.tables()}
		r.synced = true
	}
	h.readers[r] = struct{}{}
	a.conns[ci.id] = ci
	a.connEvent("reader_up", ci, nil)
	return h, r, first, nil
}

// runReader sends the GOP, then the live packets, until the reader or the hub goes.
func (a *App) runReader(h *Hub, r *reader, first [][]byte) {
	for _, b := range first {
		for len(b) > 0 {
			n := min(len(b), tsChunk)
			if err := r.write(b[:n]); err != nil {
				a.readerGone(h, r, "closed")
				return
			}
			b = b[n:]
		}
	}
	for {
		select {
		case <-r.done:
			return
		case b := <-r.q:
			if err := r.write(b); err != nil {
				a.readerGone(h, r, "closed")
				return
			}
		}
	}
}

func (a *App) readerGone(h *Hub, r *reader, reason string) {
	r.once.Do(func() {
		h.mu.Lock()
		delete(h.readers, r)
		h.mu.Unlock()
		a.mu.Lock()
		delete(a.conns, r.ci.id)
		a.mu.Unlock()
		close(r.done)
		r.close()
		a.connEvent("reader_gone", r.ci, map[string]any{"reason": reason})
		a.log.Info("reader_gone", "conn", r.ci.id, "server_id", h.key.server, "name", h.key.name, "reason", reason)
	})
}

func (h *Hub) stats(now time.Time) map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	since := h.since
	if !h.lastAt.IsZero() {
		since = h.lastAt
	}
	rate := 0.0
	if dt := now.Sub(since).Seconds(); dt > 0 {
		rate = float64(h.bytes-h.lastBytes) * 8 / 1000 / dt
	}
	h.lastBytes, h.lastAt = h.bytes, now
	return map[string]any{"server_id": h.key.server, "proto": h.proto, "name": h.key.name,
		"publisher": h.pub != nil, "since": unixSeconds(h.since), "readers": len(h.readers),
		"bytes": h.bytes, "bitrate_kbits": round1(rate), "gop_bytes": h.gopBytes,
		"gaps": h.gaps, "gap_ms_total": h.gapMs, "held": h.held}
}
