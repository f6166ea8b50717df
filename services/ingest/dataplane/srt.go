package main

// SRT servers (one UDP port each, many contributions by stream id) and the fan-out listener.

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"strings"
	"time"

	srt "github.com/datarhei/gosrt"
)

// server is one open SRT or RTMP server.
type server struct {
	id, proto, host string
	port, latencyMs int
	srtLn           srt.Listener
	tcpLn           net.Listener
}

func (s *server) same(c command) bool {
	return s.proto == c.Proto && s.host == c.Host && s.port == c.Port && s.latencyMs == c.LatencyMs
}

func (s *server) close() {
	if s.srtLn != nil {
		s.srtLn.Close()
	}
	if s.tcpLn != nil {
		_ = s.tcpLn.Close()
	}
}

func srtConfig(latencyMs int) srt.Config {
	cfg := srt.DefaultConfig()
	if latencyMs > 0 {
		cfg.ReceiverLatency = time.Duration(latencyMs) * time.Millisecond
		cfg.PeerLatency = time.Duration(latencyMs) * time.Millisecond
	}
	return cfg
}

func (a *App) startFanout() error {
	ln, err := srt.Listen("srt", a.cfg.Fanout, srtConfig(0))
	if err != nil {
		return err
	}
	a.fanout = ln
	go a.serveSRT(ln, nil)
	return nil
}

func (a *App) listen(c command) {
	fail := func(err error) {
		a.log.Warn("listen_failed", "server_id", c.ServerID, "proto", c.Proto, "port", c.Port, "error", err.Error())
		a.out.emit("listen_failed", map[string]any{"server_id": c.ServerID, "proto": c.Proto, "port": c.Port, "error": err.Error()})
	}
	a.mu.Lock()
	old := a.servers[c.ServerID]
	a.mu.Unlock()
	if old != nil {
		if old.same(c) {
			a.out.emit("listening", map[string]any{"server_id": c.ServerID, "proto": c.Proto, "port": c.Port})
			return
		}
		a.closeServer(c.ServerID)
	}
	host := c.Host
	if host == "" {
		host = "0.0.0.0"
	}
	addr := net.JoinHostPort(host, strconv.Itoa(c.Port))
	s := &server{id: c.ServerID, proto: c.Proto, host: c.Host, port: c.Port, latencyMs: c.LatencyMs}
	switch c.Proto {
	case "srt":
		ln, err := srt.Listen("srt", addr, srtConfig(c.LatencyMs))
		if err != nil {
			fail(err)
			return
		}
		s.srtLn = ln
	case "rtmp":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fail(err)
			return
		}
		s.tcpLn = ln
	default:
		fail(errors.New("unknown proto " + strconv.Quote(c.Proto)))
		return
	}
	a.mu.Lock()
	if a.closing {
		a.mu.Unlock()
		s.close()
		return
	}
	a.servers[c.ServerID] = s
	a.mu.Unlock()
	if s.srtLn != nil {
		go a.serveSRT(s.srtLn, s)
	} else {
		go a.serveRTMP(s)
	}
	a.log.Info("listening", "server_id", c.ServerID, "proto", c.Proto, "addr", addr)
	a.out.emit("listening", map[string]any{"server_id": c.ServerID, "proto": c.Proto, "port": c.Port})
}

// closeServer closes a server's port and ends its contributions (readers on the fan-out too).
func (a *App) closeServer(id string) {
	a.mu.Lock()
	s := a.servers[id]
	delete(a.servers, id)
	var hubs []*Hub
	for k, h := range a.hubs {
		if k.server == id {
			hubs = append(hubs, h)
		}
	}
	a.mu.Unlock()
	if s != nil {
		s.close()
	}
	for _, h := range hubs {
		a.endContribution(h, "closed")
	}
}

func (a *App) serveSRT(ln srt.Listener, s *server) {
	for {
		req, err := ln.Accept2()
		if err != nil {
			return
		}
		go a.handleSRT(req, s)
	}
}

// parseStreamID reads an SRT stream id: on a server `publisher/<name>`, `receiver/<name>` or
// `#!::r=<name>,m=publish|request`; on the fan-out `read/<server_id>/<name>` or
// `#!::r=<server_id>/<name>,m=request`.
func parseStreamID(sid string, fanout bool) (role, serverID, name string, ok bool) {
	if rest, found := strings.CutPrefix(sid, "#!::"); found {
		mode := "request"
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "r":
				name = v
			case "m":
				mode = v
			}
		}
		switch mode {
		case "publish":
			role = "publish"
		case "request":
			role = "read"
		default:
			return "", "", "", false
		}
	} else if fanout {
		if rest, found := strings.CutPrefix(sid, "read/"); found {
			role, name = "read", rest
		}
	} else if rest, found := strings.CutPrefix(sid, "publisher/"); found {
		role, name = "publish", rest
	} else if rest, found := strings.CutPrefix(sid, "receiver/"); found {
		role, name = "read", rest
	}
	if role == "" || name == "" {
		return "", "", "", false
	}
	if fanout {
		if role != "read" {
			return "", "", "", false
		}
		serverID, name, _ = strings.Cut(name, "/")
		if serverID == "" || name == "" {
			return "", "", "", false
		}
	}
	return role, serverID, name, true
}

var srtReject = map[string]srt.RejectionReason{
	"bad_stream_id":      srt.REJX_BAD_REQUEST,
	"unknown_stream":     srt.REJX_NOTFOUND,
	"inactive":           srt.REJX_FORBIDDEN,
	"forbidden_host":     srt.REJX_FORBIDDEN,
	"bad_passphrase":     srt.REJ_BADSECRET,
	"missing_passphrase": srt.REJ_UNSECURE,
	"duplicate":          srt.REJX_CONFLICT,
	"not_live":           srt.REJX_NOTFOUND,
	"timeout":            srt.REJ_RESOURCE,
	"closing":            srt.REJ_CLOSE,
}

func (a *App) handleSRT(req srt.ConnRequest, s *server) {
	sid := req.StreamId()
	role, serverID, name, ok := parseStreamID(sid, s == nil)
	ci := &connInfo{id: a.nextID("c"), via: "fanout", proto: "srt", name: name, role: role,
		remote: addrString(req.RemoteAddr())}
	if s != nil {
		ci.via, ci.serverID, ci.latencyMs = "server", s.id, s.latencyMs
	} else {
		ci.serverID = serverID
		a.mu.Lock()
		if h := a.hubs[hubKey{serverID, name}]; h != nil {
			ci.proto = h.proto
		} else if srv := a.servers[serverID]; srv != nil {
			ci.proto = srv.proto
		}
		a.mu.Unlock()
	}
	refuse := func(reason string) {
		code, known := srtReject[reason]
		if !known {
			code = srt.REJ_PEER
		}
		req.Reject(code)
		a.refused(ci, reason, sid)
	}
	if !ok {
		if ci.role == "" {
			ci.role = "read"
		}
		refuse("bad_stream_id")
		return
	}

	v, answered := a.askVerdict(ci, sid, "", req.IsEncrypted())
	switch {
	case !answered:
		refuse("timeout")
		return
	case !v.Allow:
		reason := v.Reason
		if reason == "" {
			reason = "forbidden"
		}
		refuse(reason)
		return
	}
	switch {
	case v.Passphrase == "" && req.IsEncrypted():
		refuse("bad_passphrase")
		return
	case v.Passphrase != "" && !req.IsEncrypted():
		refuse("missing_passphrase")
		return
	case v.Passphrase != "":
		if err := req.SetPassphrase(v.Passphrase); err != nil {
			refuse("bad_passphrase")
			return
		}
	}

	key := hubKey{ci.serverID, name}
	if role == "publish" {
		var conn srt.Conn
		h, p, err := a.attachPublisher(key, "srt", ci, func() (func(), error) {
			c, err := req.Accept()
			if err != nil {
				return nil, err
			}
			conn = c
			ci.srtConn = c
			return func() { _ = c.Close() }, nil
		})
		if err != nil {
			if r, isRefusal := err.(errRefuse); isRefusal {
				refuse(string(r))
			} else {
				a.log.Warn("accept_failed", "conn", ci.id, "error", err.Error())
			}
			return
		}
		a.runSRTPublisher(h, p, conn)
		return
	}

	var conn srt.Conn
	h, r, first, err := a.attachReader(key, ci, func() (func([]byte) error, func(), error) {
		c, err := req.Accept()
		if err != nil {
			return nil, nil, err
		}
		conn = c
		ci.srtConn = c
		return srtWriter(c), func() { _ = c.Close() }, nil
	})
	if err != nil {
		if r, isRefusal := err.(errRefuse); isRefusal {
			refuse(string(r))
		} else {
			a.log.Warn("accept_failed", "conn", ci.id, "error", err.Error())
		}
		return
	}
	// readers send nothing; a Read returns when the connection closes
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, err := conn.Read(buf); err != nil {
				a.readerGone(h, r, "closed")
				return
			}
		}
	}()
	a.runReader(h, r, first)
}

// srtWriter writes one chunk; gosrt refuses (io.EOF) when its write queue is momentarily full,
// so a full queue is retried briefly before the reader counts as gone.
func srtWriter(c srt.Conn) func([]byte) error {
	return func(b []byte) error {
		var err error
		for range 100 {
			if _, err = c.Write(b); err == nil {
				return nil
			}
			time.Sleep(2 * time.Millisecond)
		}
		return err
	}
}

func (a *App) runSRTPublisher(h *Hub, p *publisher, conn srt.Conn) {
	buf := make([]byte, 1500)
	var rest []byte // a TS packet split across SRT payloads (senders that do not align to 188)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			break
		}
		data := buf[:n]
		if len(rest) > 0 || n%tsPacketSize != 0 {
			rest = append(rest, data...)
			for len(rest) > 0 && rest[0] != 0x47 { // lost sync: find it again
				rest = rest[1:]
			}
			whole := len(rest) - len(rest)%tsPacketSize
			data = bytes.Clone(rest[:whole])
			rest = append(rest[:0], rest[whole:]...)
		}
		if !h.ingest(a, p, data) {
			_ = conn.Close()
			return
		}
	}
	_ = conn.Close()
	reason := "closed"
	if time.Since(time.Unix(0, p.lastRecv.Load())) > 1500*time.Millisecond {
		reason = "timeout"
	}
	a.publisherGone(h, p, reason)
}
