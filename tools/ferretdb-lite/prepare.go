package main

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "modernc.org/sqlite" // database/sql driver "sqlite", as FerretDB's SQLite backend uses
)

// indexed lists, per collection of the engine, the top-level fields its hot queries compare
// by equality (libs/common/src/reelhouse/common/mongo.py, "Indexes of the local server").
// FerretDB v1 creates a collection's table on its first write, under a hashed name, and its own
// indexes are B-trees that none of its filters use: on PostgreSQL it filters a top-level
// equality with `_jsonb->'field' @> value`, which only a GIN (jsonb_path_ops) index on that
// expression serves; on SQLite it pushes down nothing but a bare {_id: value}, filtered with
// `_ferretdb_sjson->'$._id' = value`. So the helper creates each of these collections, and an
// index on each of these expressions, before the first command that names the collection in
// any database reaches FerretDB (and at start for the databases given with -prepare).
var indexed = map[string][]string{
	"recordings":         {"tenant", "active"},
	"restreams":          {"tenant", "active"},
	"inputs":             {"entity_id"},
	"outputs":            {"entity_id"},
	"files":              {"tenant", "entity_id", "status", "upload_backlog"},
	"streams":            {"tenant", "entity_id"},
	"srt_servers":        {"tenant", "active"},
	"rtmp_servers":       {"tenant", "active"},
	"channels":           {"tenant", "active"},
	"channel_recordings": {"tenant", "channel_id"},
	"platform_auth":      {"tenant", "platform"},
	"storage_targets":    {"tenant"},
	"nodes":              {"service"},
	"users":              {"tenant", "username"},
	"api_keys":           {"tenant", "key_hash"},
	"refresh_tokens":     {"token_hash", "user_id"},
	"webhooks":           {"tenant", "active"},
	"webhook_deliveries": {"status", "webhook_id"},
	"logs":               {"service"},
	"settings":           {},
	"rate_limits":        {},
	"idempotency":        {},
}

// preparer creates the collections of [indexed] and their indexes, once per database and
// collection, before FerretDB serves the first command that names them.
type preparer struct {
	log      *slog.Logger
	upstream string // FerretDB's Unix socket
	pg       *pgxpool.Pool
	sqlite   string // the SQLite data directory (when pg is nil)

	mu    sync.Mutex
	done  map[string]*prepared // "db.collection"
	reqID atomic.Int32
}

type prepared struct {
	once sync.Once
}

func (p *preparer) key(db, coll string) string { return db + "." + coll }

// ensure prepares db.coll if it is one of the engine's collections and is not prepared yet.
// Errors are logged: the command then runs without the indexes (slower, still correct).
func (p *preparer) ensure(ctx context.Context, db, coll string) {
	if _, ok := indexed[coll]; !ok || db == "" || db == "admin" || db == "config" || db == "local" {
		return
	}
	p.mu.Lock()
	st := p.done[p.key(db, coll)]
	if st == nil {
		st = &prepared{}
		p.done[p.key(db, coll)] = st
	}
	p.mu.Unlock()
	st.once.Do(func() {
		t0 := time.Now()
		if err := p.prepare(ctx, db, coll); err != nil {
			p.log.Error("ferretdb-lite: could not prepare a collection", "db", db,
				"collection", coll, "error", err)
			return
		}
		p.log.Debug("ferretdb-lite: prepared", "db", db, "collection", coll, "took", time.Since(t0))
	})
}

// forget drops what is known of db (coll "": every collection), after a drop.
func (p *preparer) forget(db, coll string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.done {
		if (coll == "" && strings.HasPrefix(k, db+".")) || k == p.key(db, coll) {
			delete(p.done, k)
		}
	}
}

func (p *preparer) prepare(ctx context.Context, db, coll string) error {
	table, err := p.table(ctx, db, coll)
	if err != nil { // not there yet (FerretDB logs a warning for `create` of an existing one)
		if err := p.create(ctx, db, coll); err != nil {
			return err
		}
		if table, err = p.table(ctx, db, coll); err != nil {
			return err
		}
	}
	if p.pg != nil {
		return p.pgIndexes(ctx, db, coll, table)
	}
	return p.sqliteIndexes(ctx, db, table)
}

// table is the backend's table of db.coll, from FerretDB's own metadata.
func (p *preparer) table(ctx context.Context, db, coll string) (string, error) {
	var table string
	if p.pg != nil {
		q := fmt.Sprintf(`SELECT _jsonb->>'table' FROM %s WHERE _jsonb->>'_id' = $1`,
			pgx.Identifier{db, "_ferretdb_database_metadata"}.Sanitize())
		err := p.pg.QueryRow(ctx, q, coll).Scan(&table)
		return table, err
	}
	conn, err := p.sqliteDB(db)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	err = conn.QueryRowContext(ctx, `SELECT table_name FROM _ferretdb_collections WHERE name = ?`,
		coll).Scan(&table)
	return table, err
}

func (p *preparer) sqliteDB(db string) (*sql.DB, error) {
	path := filepath.Join(p.sqlite, db+".sqlite")
	if _, err := os.Stat(path); err != nil {
		return nil, err // (opening it would create it behind FerretDB's back)
	}
	return sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
}

// create sends FerretDB `create` (an existing collection is fine).
func (p *preparer) create(ctx context.Context, db, coll string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", p.upstream)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err = c.Write(newOpMsg(p.reqID.Add(1), stringDoc("create", coll, "$db", db))); err != nil {
		return err
	}
	reply, err := readMessage(c)
	if err != nil {
		return err
	}
	if binary.LittleEndian.Uint32(reply[12:16]) != opMsg {
		return fmt.Errorf("create %s.%s: unexpected reply", db, coll)
	}
	els, err := elements(body(reply))
	if err != nil {
		return err
	}
	ok, code, msg := 0.0, 0.0, ""
	for _, e := range els {
		switch e.key {
		case "ok":
			ok, _ = number(e)
		case "code":
			code, _ = number(e)
		case "errmsg":
			msg, _ = stringValue(e)
		}
	}
	if ok != 1 && code != 48 { // 48: NamespaceExists
		return fmt.Errorf("create %s.%s: %s (code %g)", db, coll, msg, code)
	}
	return nil
}

// indexName is a short, stable name for the index of field on table (PostgreSQL allows 63
// bytes and wants index names unique per schema).
func indexName(table, field string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(table + "\x00" + field))
	return fmt.Sprintf("rh_%016x", h.Sum64())
}

func (p *preparer) pgIndexes(ctx context.Context, db, coll, table string) error {
	for _, field := range append([]string{"_id"}, indexed[coll]...) {
		q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %s ON %s USING gin ((_jsonb->%s) jsonb_path_ops)`,
			pgx.Identifier{indexName(table, field)}.Sanitize(),
			pgx.Identifier{db, table}.Sanitize(), quoteLiteral(field))
		if _, err := p.pg.Exec(ctx, q); err != nil {
			return fmt.Errorf("index %s.%s(%s): %w", db, coll, field, err)
		}
	}
	return nil
}

func (p *preparer) sqliteIndexes(ctx context.Context, db, table string) error {
	conn, err := p.sqliteDB(db)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The expression FerretDB's SQLite backend filters {_id: value} with (not the ->"_id" of
	// its own unique index, which SQLite does not match to it).
	q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %q ON %q (_ferretdb_sjson->'$._id')`,
		indexName(table, "_id"), table)
	_, err = conn.ExecContext(ctx, q)
	return err
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
