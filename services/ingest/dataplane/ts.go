package main

// MPEG-TS handling on the fan-out path: the last PAT and PMT, the GOP since the last video
// keyframe, and the timestamp shift that makes a returning publisher continue the readers'
// timeline. Packets are rewritten in place; nothing is re-muxed.

import (
	"bytes"
	"context"
	"errors"

	"github.com/asticode/go-astits"
)

const (
	tsPacketSize = 188
	tsChunk      = 7 * tsPacketSize // one SRT payload (1316 bytes)
	ptsMask      = (int64(1) << 33) - 1
	maxFrameDur  = 90000 / 2 // a video frame interval above 0.5 s is not believed
	defFrameDur  = 90000 / 25
)

// tsDiff is a - b in 33-bit clock arithmetic, as a signed value.
func tsDiff(a, b int64) int64 {
	d := (a - b) & ptsMask
	if d >= 1<<32 {
		d -= 1 << 33
	}
	return d
}

func tsAdd(a, b int64) int64 { return (a + b) & ptsMask }

func readTS(b []byte) int64 {
	return int64(b[0]>>1&0x07)<<30 | int64(b[1])<<22 | int64(b[2]>>1)<<15 | int64(b[3])<<7 | int64(b[4]>>1)
}

func writeTS(b []byte, v int64) {
	b[0] = b[0]&0xF0 | byte(v>>29)&0x0E | 1
	b[1] = byte(v >> 22)
	b[2] = byte(v>>14)&0xFE | 1
	b[3] = byte(v >> 7)
	b[4] = byte(v<<1)&0xFE | 1
}

// tsState is one contribution's view of its MPEG-TS stream.
type tsState struct {
	pat, pmt  []byte // the last PAT and PMT packets (one packet each)
	pmtPID    int
	videoPID  int
	videoType astits.StreamType

	cc [8192]byte // output continuity counters

	// resync: a publisher (re)started; drop media until a video keyframe, where the offset is set.
	resync   bool
	offset   int64
	haveLast bool
	lastDTS  int64 // last video DTS readers saw
	frameDur int64
	lastPTS  map[uint16]int64 // last PTS per non-video PID readers saw
	dropping map[uint16]bool  // this PID's current PES is dropped
}

func newTSState() *tsState {
	return &tsState{pmtPID: -1, videoPID: -1, resync: true, frameDur: defFrameDur,
		lastPTS: map[uint16]int64{}, dropping: map[uint16]bool{}}
}

// restart prepares for a new publisher: its clock and continuity counters are its own.
func (s *tsState) restart() {
	s.resync = true
	clear(s.dropping)
}

// process rewrites one 188-byte packet in place. It reports whether the packet is kept and
// whether it starts a video keyframe.
func (s *tsState) process(p []byte) (keep, key bool) {
	if p[0] != 0x47 {
		return false, false
	}
	pid := uint16(p[1]&0x1F)<<8 | uint16(p[2])
	pusi := p[1]&0x40 != 0
	afc := p[3] >> 4 & 3
	payload := 4
	rai, hasPCR := false, false
	if afc&2 != 0 {
		afLen := int(p[4])
		payload = 5 + afLen
		if afLen > 0 {
			rai = p[5]&0x40 != 0
			hasPCR = p[5]&0x10 != 0 && afLen >= 7
		}
	}
	if payload > tsPacketSize {
		return false, false
	}
	hasPayload := afc&1 != 0 && payload < tsPacketSize

	switch {
	case pid == 0:
		if pusi && hasPayload {
			s.parsePAT(p[payload:])
			s.pat = bytes.Clone(p)
		}
		s.setCC(p, pid, hasPayload)
		return true, false
	case int(pid) == s.pmtPID:
		if pusi && hasPayload {
			if !bytes.Equal(s.pmt, p) {
				s.parsePMT(p)
			}
			s.pmt = bytes.Clone(p)
		}
		s.setCC(p, pid, hasPayload)
		return true, false
	case pid == 0x1FFF:
		return false, false
	}
	if s.pmt == nil {
		return false, false
	}

	var pes []byte
	if pusi && hasPayload {
		pes = p[payload:]
		if len(pes) < 9 || pes[0] != 0 || pes[1] != 0 || pes[2] != 1 || !pesHasHeader(pes[3]) {
			pes = nil
		}
	}
	isVideo := int(pid) == s.videoPID
	if isVideo && pes != nil {
		key = rai || s.scanKeyframe(pes)
	}

	if s.resync {
		if pes == nil || (s.videoPID >= 0 && !(isVideo && key)) {
			return false, false
		}
		pts, dts, ok := pesTimes(pes)
		if !ok {
			return false, false
		}
		switch {
		case isVideo && s.haveLast:
			s.offset = tsDiff(tsAdd(s.lastDTS, s.frameDur), dts) & ptsMask
		case !isVideo:
			// no video: continue this PID's PTS one audio frame on
			if last, seen := s.lastPTS[pid]; seen {
				s.offset = tsDiff(tsAdd(last, 1920), pts) & ptsMask
			} else {
				s.offset = 0
			}
		default:
			s.offset = 0
		}
		s.resync = false
	}

	if hasPCR {
		base := int64(p[6])<<25 | int64(p[7])<<17 | int64(p[8])<<9 | int64(p[9])<<1 | int64(p[10]>>7)
		base = tsAdd(base, s.offset)
		p[6], p[7], p[8], p[9] = byte(base>>25), byte(base>>17), byte(base>>9), byte(base>>1)
		p[10] = byte(base&1)<<7 | p[10]&0x7F
	}

	if pes != nil {
		flags := pes[7] >> 6
		if flags&2 != 0 && len(pes) >= 14 {
			writeTS(pes[9:14], tsAdd(readTS(pes[9:14]), s.offset))
		}
		if flags == 3 && len(pes) >= 19 {
			writeTS(pes[14:19], tsAdd(readTS(pes[14:19]), s.offset))
		}
		pts, dts, ok := pesTimes(pes)
		if ok {
			if isVideo {
				if s.haveLast {
					if d := tsDiff(dts, s.lastDTS); d > 0 && d <= maxFrameDur {
						s.frameDur = d
					}
				}
				s.lastDTS, s.haveLast = dts, true
			} else {
				// After a switch, audio that overlaps what readers already got is dropped.
				if last, seen := s.lastPTS[pid]; seen && tsDiff(pts, last) <= 0 {
					s.dropping[pid] = true
					return false, false
				}
				s.dropping[pid] = false
				s.lastPTS[pid] = pts
			}
		}
	} else if s.dropping[pid] {
		return false, false
	}

	s.setCC(p, pid, hasPayload)
	return true, key
}

func (s *tsState) setCC(p []byte, pid uint16, hasPayload bool) {
	if hasPayload {
		s.cc[pid] = (s.cc[pid] + 1) & 0x0F
	}
	p[3] = p[3]&0xF0 | s.cc[pid]
}

func pesHasHeader(streamID byte) bool {
	switch streamID {
	case 0xBC, 0xBE, 0xBF, 0xF0, 0xF1, 0xF2, 0xF8, 0xFF:
		return false
	}
	return true
}

// pesTimes returns the PES's PTS and DTS (DTS = PTS when absent).
func pesTimes(pes []byte) (pts, dts int64, ok bool) {
	flags := pes[7] >> 6
	if flags&2 == 0 || len(pes) < 14 {
		return 0, 0, false
	}
	pts = readTS(pes[9:14])
	dts = pts
	if flags == 3 && len(pes) >= 19 {
		dts = readTS(pes[14:19])
	}
	return pts, dts, true
}

// scanKeyframe looks for an IDR or IRAP picture (or a parameter set, which encoders only send
// with one) in the first packet of a video PES.
func (s *tsState) scanKeyframe(pes []byte) bool {
	hdr := 9 + int(pes[8])
	if hdr >= len(pes) {
		return false
	}
	b := pes[hdr:]
	for i := 0; i+3 < len(b); i++ {
		if b[i] != 0 || b[i+1] != 0 || b[i+2] != 1 {
			continue
		}
		n := b[i+3]
		switch s.videoType {
		case astits.StreamTypeH264Video:
			if t := n & 0x1F; t == 5 || t == 7 {
				return true
			}
		case astits.StreamTypeH265Video:
			if t := n >> 1 & 0x3F; (t >= 16 && t <= 23) || t == 32 || t == 33 {
				return true
			}
		}
	}
	return false
}

func (s *tsState) parsePAT(b []byte) {
	if len(b) < 1 {
		return
	}
	ptr := int(b[0])
	sec := b[1+ptr:]
	if len(sec) < 12 || sec[0] != 0 {
		return
	}
	end := 3 + (int(sec[1]&0x0F)<<8 | int(sec[2])) - 4
	for i := 8; i+4 <= end && i+4 <= len(sec); i += 4 {
		if prog := int(sec[i])<<8 | int(sec[i+1]); prog != 0 {
			s.pmtPID = int(sec[i+2]&0x1F)<<8 | int(sec[i+3])
			return
		}
	}
}

// parsePMT reads the elementary streams with astits (PAT + this PMT through its demuxer).
func (s *tsState) parsePMT(pmt []byte) {
	if s.pat == nil {
		return
	}
	dmx := astits.NewDemuxer(context.Background(), bytes.NewReader(append(bytes.Clone(s.pat), pmt...)),
		astits.DemuxerOptPacketSize(tsPacketSize))
	for {
		d, err := dmx.NextData()
		if err != nil {
			if !errors.Is(err, astits.ErrNoMorePackets) {
				return
			}
			return
		}
		if d.PMT == nil {
			continue
		}
		s.videoPID = -1
		for _, es := range d.PMT.ElementaryStreams {
			switch es.StreamType {
			case astits.StreamTypeH264Video, astits.StreamTypeH265Video,
				astits.StreamTypeMPEG2Video, astits.StreamTypeMPEG1Video, astits.StreamTypeMPEG4Video:
				if s.videoPID < 0 {
					s.videoPID = int(es.ElementaryPID)
					s.videoType = es.StreamType
				}
			}
		}
		return
	}
}
