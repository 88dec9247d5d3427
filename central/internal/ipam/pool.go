// Package ipam hands out units of integer pools inside SQL transactions:
// addresses of a prefix, child-prefix slots of a super prefix, VRF ids.
//
// A pool's free space is a set of ranges in pool_free: a row spans
// [start_unit, stop_unit] and [next_unit, stop_unit] of it is free; spans never
// overlap and start_unit never changes, so taking the next free unit (lock one
// row with SKIP LOCKED, bump next_unit, one statement) is a heap-only update
// that leaves the index alone. Concurrent writers work on different ranges (a
// new pool is cut into up to Shards ranges for that reason) and nobody scans
// used units.
// Exhaustion is "no range rows left": one index probe. The tables that hold
// what was handed out (ips, prefixes, networks.vrf) carry unique constraints,
// so even a corrupted free list cannot hand out a unit twice.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"math/big"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/store"
)

// Shards is how many ranges a new pool is cut into: enough that 64 writers
// rarely meet on one row, few enough that a tiny pool stays tiny.
const Shards = 64

// FewShards suits pools only a few writers share at a time, such as one
// project's child network.
const FewShards = 4

// Errors callers map to API codes.
var (
	ErrExhausted  = errors.New("pool exhausted")
	ErrTaken      = errors.New("already allocated")
	ErrOutOfRange = errors.New("outside the pool")
	ErrNoPool     = errors.New("no such pool")
	// ErrNotAllocated means a release of a unit that is free: a bookkeeping bug.
	ErrNotAllocated = errors.New("not allocated")
)

// Kind of a pool.
type Kind string

// Pool kinds.
const (
	KindIP    Kind = "ip"
	KindChild Kind = "child"
	KindVRF   Kind = "vrf"
)

// CreatePool records a pool over [first, last] cut into Shards free ranges.
func CreatePool(ctx context.Context, db store.Querier, id string, kind Kind, first, last *big.Int) error {
	return CreatePoolRanges(ctx, db, id, kind, first, last, Shards)
}

// CreatePoolRanges is CreatePool with the number of ranges chosen by the
// caller: pools few writers share (a project's child network) need few, and
// each range is a row to write when the pool is made.
func CreatePoolRanges(ctx context.Context, db store.Querier, id string, kind Kind, first, last *big.Int, ranges int) error {
	if first.Cmp(last) > 0 {
		return fmt.Errorf("create pool %s: empty range %s..%s", id, first, last)
	}
	if _, err := db.Exec(ctx, `INSERT INTO pools (id, kind, first_unit, last_unit) VALUES ($1, $2, $3::NUMERIC, $4::NUMERIC)`,
		id, string(kind), first.String(), last.String()); err != nil {
		return fmt.Errorf("create pool %s: %w", id, err)
	}
	starts, stops := split(first, last, max(ranges, 1))
	if _, err := db.Exec(ctx, `INSERT INTO pool_free (pool_id, start_unit, next_unit, stop_unit)
		SELECT $1, s::NUMERIC, s::NUMERIC, e::NUMERIC FROM unnest($2::TEXT[], $3::TEXT[]) AS r (s, e)`, id, starts, stops); err != nil {
		return fmt.Errorf("create pool %s ranges: %w", id, err)
	}
	return nil
}

// EnsurePool creates the pool unless it exists (for pools made at start-up).
func EnsurePool(ctx context.Context, db store.Querier, id string, kind Kind, first, last *big.Int) error {
	var exists bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pools WHERE id = $1)`, id).Scan(&exists); err != nil {
		return fmt.Errorf("look up pool %s: %w", id, err)
	}
	if exists {
		return nil
	}
	return CreatePool(ctx, db, id, kind, first, last)
}

// DeletePool drops a pool and its free ranges. Callers make sure nothing
// allocated from it remains (the consumers' foreign keys or checks do).
func DeletePool(ctx context.Context, db store.Querier, id string) error {
	if _, err := db.Exec(ctx, `DELETE FROM pool_free WHERE pool_id = $1`, id); err != nil {
		return fmt.Errorf("delete pool %s ranges: %w", id, err)
	}
	if _, err := db.Exec(ctx, `DELETE FROM pools WHERE id = $1`, id); err != nil {
		return fmt.Errorf("delete pool %s: %w", id, err)
	}
	return nil
}

// takeCTE takes the next unit of the lowest range it can lock, as the CTE
// "taken (unit)": lock, then delete a range whose last unit this is, or move
// its next_unit up by one. $1 is the pool id.
const takeCTE = `
b AS (
	SELECT start_unit, next_unit, stop_unit FROM pool_free WHERE pool_id = $1
	ORDER BY start_unit LIMIT 1 FOR UPDATE %s
), d AS (
	DELETE FROM pool_free f USING b
	WHERE f.pool_id = $1 AND f.start_unit = b.start_unit AND b.next_unit = b.stop_unit
	RETURNING b.next_unit
), u AS (
	UPDATE pool_free f SET next_unit = b.next_unit + 1 FROM b
	WHERE f.pool_id = $1 AND f.start_unit = b.start_unit AND b.next_unit < b.stop_unit
	RETURNING b.next_unit
), taken AS (
	SELECT next_unit AS unit FROM d UNION ALL SELECT next_unit FROM u
)`

// takeFirst returns the taken unit as text.
const takeFirst = `WITH ` + takeCTE + ` SELECT unit::TEXT FROM taken`

// takeManyCTE takes up to n consecutive units from the front of the lowest
// range it can lock, as the CTE "taken (unit NUMERIC, ord INT)", ord
// numbering them from 1: one row lock and one row update (or delete, when
// they are the range's last units) for all of them. Its verbs are the
// guard (%[1]s) and the numbers of the parameters that hold the pool id
// (%[2]d) and n (%[3]d), so that it can follow a caller's parameters.
const takeManyCTE = `
b AS (
	SELECT start_unit, next_unit, stop_unit, LEAST(stop_unit - next_unit + 1, $%[3]d::INT)::INT AS k
	FROM pool_free WHERE pool_id = $%[2]d AND (%[1]s)
	ORDER BY start_unit LIMIT 1 FOR UPDATE SKIP LOCKED
), d AS (
	DELETE FROM pool_free f USING b
	WHERE f.pool_id = $%[2]d AND f.start_unit = b.start_unit AND b.next_unit + b.k > b.stop_unit
	RETURNING b.next_unit, b.k
), u AS (
	UPDATE pool_free f SET next_unit = b.next_unit + b.k FROM b
	WHERE f.pool_id = $%[2]d AND f.start_unit = b.start_unit AND b.next_unit + b.k <= b.stop_unit
	RETURNING b.next_unit, b.k
), taken AS (
	SELECT t.next_unit + g.ord - 1 AS unit, g.ord::INT AS ord
	FROM (SELECT * FROM d UNION ALL SELECT * FROM u) t CROSS JOIN LATERAL generate_series(1, t.k) AS g (ord)
)`

// TakeInto takes up to n free units, consecutive, from the front of one
// range no one else holds, if guard (an SQL condition, "" for none) holds,
// and, in the same statement, lets consume use them: consume is the rest of a WITH query that reads the CTE
// "taken (unit NUMERIC, ord INT)" (ord = 1, 2, ... in unit order), e.g.
// ", ins AS (INSERT ... SELECT ... FROM taken RETURNING ...) SELECT ... FROM ins".
// args are the arguments of guard and consume, numbered from $1: the
// pool id and n are appended to them and numbered after them, so the
// caller need not know how many the CTE has. Fewer than n units come back when the range
// has fewer left. One statement is atomic on its own (and CockroachDB
// retries it server-side), so a caller may run it outside an explicit
// transaction: the hand-out then costs one round trip, however many units
// it takes. When every range is locked or the pool is empty, taken is
// empty and nothing changes (so too when guard is false); callers then fall back to Acquire, which waits
// and tells exhaustion apart.
func TakeInto(ctx context.Context, db store.Querier, poolID string, n int, guard, consume string, args []any) (pgx.Rows, error) {
	if guard == "" {
		guard = "TRUE"
	}
	first := len(args) + 1
	return db.Query(ctx, `WITH `+fmt.Sprintf(takeManyCTE, guard, first, first+1)+consume, append(args, poolID, n)...)
}

// Acquire takes the next free unit. Ranges other transactions hold are
// skipped; only when every remaining range is held does it wait, and it
// reports ErrExhausted only when no range is left at all.
func Acquire(ctx context.Context, db store.Querier, poolID string) (*big.Int, error) {
	skip := fmt.Sprintf(takeFirst, "SKIP LOCKED")
	wait := fmt.Sprintf(takeFirst, "")
	for attempt := 0; ; attempt++ {
		u, found, err := queryUnit(ctx, db, skip, poolID)
		if err != nil || found {
			return u, err
		}
		var left bool
		if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pool_free WHERE pool_id = $1)`, poolID).Scan(&left); err != nil {
			return nil, fmt.Errorf("pool %s: %w", poolID, err)
		}
		if !left {
			if err := poolExists(ctx, db, poolID); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("pool %s: %w", poolID, ErrExhausted)
		}
		// Every range is locked by someone: queue behind the first. After the
		// holder commits, PostgreSQL rechecks that row; if it was consumed we
		// get nothing and loop.
		u, found, err = queryUnit(ctx, db, wait, poolID)
		if err != nil || found {
			return u, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

func queryUnit(ctx context.Context, db store.Querier, sql, poolID string) (*big.Int, bool, error) {
	var s string
	err := db.QueryRow(ctx, sql, poolID).Scan(&s)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("pool %s: take unit: %w", poolID, err)
	}
	u, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return nil, false, fmt.Errorf("pool %s: bad unit %q", poolID, s)
	}
	return u, true, nil
}

// AcquireSpecific takes exactly unit u.
func AcquireSpecific(ctx context.Context, db store.Querier, poolID string, u *big.Int) error {
	var first, last string
	err := db.QueryRow(ctx, `SELECT first_unit::TEXT, last_unit::TEXT FROM pools WHERE id = $1`, poolID).Scan(&first, &last)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("pool %s: %w", poolID, ErrNoPool)
	}
	if err != nil {
		return fmt.Errorf("pool %s: %w", poolID, err)
	}
	if u.Cmp(mustInt(first)) < 0 || u.Cmp(mustInt(last)) > 0 {
		return fmt.Errorf("unit %s of pool %s: %w", u, poolID, ErrOutOfRange)
	}
	for attempt := 0; attempt < 3; attempt++ {
		r, found, err := rangeAt(ctx, db, poolID, u, true)
		if err != nil {
			return err
		}
		if !found || !r.frees(u) {
			// A concurrent split can hide the range that now holds u from the
			// locked re-read; look again without the lock before saying taken.
			r, found, err = rangeAt(ctx, db, poolID, u, false)
			if err != nil {
				return err
			}
			if !found || !r.frees(u) {
				return fmt.Errorf("unit %s of pool %s: %w", u, poolID, ErrTaken)
			}
			continue
		}
		return carve(ctx, db, poolID, r, u)
	}
	return fmt.Errorf("unit %s of pool %s: %w (contended)", u, poolID, ErrTaken)
}

// span is one pool_free row.
type span struct{ start, next, stop *big.Int }

func (r span) frees(u *big.Int) bool { return r.next.Cmp(u) <= 0 && u.Cmp(r.stop) <= 0 }

// rangeAt finds the row whose span may hold u: the one with the greatest
// start at or below u.
func rangeAt(ctx context.Context, db store.Querier, poolID string, u *big.Int, lock bool) (span, bool, error) {
	q := `SELECT start_unit::TEXT, next_unit::TEXT, stop_unit::TEXT FROM pool_free
		WHERE pool_id = $1 AND start_unit <= $2::NUMERIC ORDER BY start_unit DESC LIMIT 1`
	if lock {
		q += ` FOR UPDATE`
	}
	var a, b, c string
	err := db.QueryRow(ctx, q, poolID, u.String()).Scan(&a, &b, &c)
	if errors.Is(err, pgx.ErrNoRows) {
		return span{}, false, nil
	}
	if err != nil {
		return span{}, false, fmt.Errorf("pool %s: %w", poolID, err)
	}
	return span{mustInt(a), mustInt(b), mustInt(c)}, true, nil
}

// carve removes free unit u from the locked row r.
func carve(ctx context.Context, db store.Querier, poolID string, r span, u *big.Int) error {
	one := big.NewInt(1)
	var err error
	switch {
	case r.next.Cmp(r.stop) == 0:
		_, err = db.Exec(ctx, `DELETE FROM pool_free WHERE pool_id = $1 AND start_unit = $2::NUMERIC`, poolID, r.start.String())
	case r.next.Cmp(u) == 0:
		_, err = db.Exec(ctx, `UPDATE pool_free SET next_unit = $3::NUMERIC WHERE pool_id = $1 AND start_unit = $2::NUMERIC`,
			poolID, r.start.String(), new(big.Int).Add(u, one).String())
	case u.Cmp(r.stop) == 0:
		_, err = db.Exec(ctx, `UPDATE pool_free SET stop_unit = $3::NUMERIC WHERE pool_id = $1 AND start_unit = $2::NUMERIC`,
			poolID, r.start.String(), new(big.Int).Sub(u, one).String())
	default:
		if _, err = db.Exec(ctx, `UPDATE pool_free SET stop_unit = $3::NUMERIC WHERE pool_id = $1 AND start_unit = $2::NUMERIC`,
			poolID, r.start.String(), new(big.Int).Sub(u, one).String()); err != nil {
			break
		}
		next := new(big.Int).Add(u, one).String()
		_, err = db.Exec(ctx, `INSERT INTO pool_free (pool_id, start_unit, next_unit, stop_unit) VALUES ($1, $2::NUMERIC, $2::NUMERIC, $3::NUMERIC)`,
			poolID, next, r.stop.String())
	}
	if err != nil {
		return fmt.Errorf("pool %s: carve %s: %w", poolID, u, err)
	}
	return nil
}

// Release gives u back as a one-unit range, reused first. Ranges are not
// merged (that would lock neighbours and invite lock cycles), so the free
// list grows at most by the number of released units. If u lies in the used
// head of a range, that range's span is first shrunk to its free part so
// that spans stay disjoint.
func Release(ctx context.Context, db store.Querier, poolID string, u *big.Int) error {
	r, found, err := rangeAt(ctx, db, poolID, u, true)
	if err != nil {
		return err
	}
	if found && r.frees(u) {
		return fmt.Errorf("pool %s: release %s: %w", poolID, u, ErrNotAllocated)
	}
	if found && u.Cmp(r.next) < 0 {
		if _, err := db.Exec(ctx, `UPDATE pool_free SET start_unit = next_unit WHERE pool_id = $1 AND start_unit = $2::NUMERIC`,
			poolID, r.start.String()); err != nil {
			return fmt.Errorf("pool %s: release %s: %w", poolID, u, err)
		}
	}
	if _, err := db.Exec(ctx, `INSERT INTO pool_free (pool_id, start_unit, next_unit, stop_unit) VALUES ($1, $2::NUMERIC, $2::NUMERIC, $2::NUMERIC)`,
		poolID, u.String()); err != nil {
		return fmt.Errorf("pool %s: release %s: %w", poolID, u, err)
	}
	return nil
}

// Usage returns the pool's size and how many units are free.
func Usage(ctx context.Context, db store.Querier, poolID string) (size, free *big.Int, err error) {
	var first, last, freeS string
	err = db.QueryRow(ctx, `SELECT p.first_unit::TEXT, p.last_unit::TEXT,
		COALESCE((SELECT sum(stop_unit - next_unit + 1) FROM pool_free WHERE pool_id = p.id), 0)::TEXT
		FROM pools p WHERE p.id = $1`, poolID).Scan(&first, &last, &freeS)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, fmt.Errorf("pool %s: %w", poolID, ErrNoPool)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("pool %s usage: %w", poolID, err)
	}
	size = new(big.Int).Sub(mustInt(last), mustInt(first))
	size.Add(size, big.NewInt(1))
	return size, mustInt(freeS), nil
}

func poolExists(ctx context.Context, db store.Querier, poolID string) error {
	var ok bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pools WHERE id = $1)`, poolID).Scan(&ok); err != nil {
		return fmt.Errorf("pool %s: %w", poolID, err)
	}
	if !ok {
		return fmt.Errorf("pool %s: %w", poolID, ErrNoPool)
	}
	return nil
}

// split cuts [first, last] into at most n contiguous ranges of near-equal
// size, each at most 2^32 units but the last, which takes what remains: the
// offsets handed out from the front of a huge (IPv6) pool then stay small
// enough for SQL's BIGINT arithmetic.
func split(first, last *big.Int, n int) (starts, stops []string) {
	maxShard := new(big.Int).Lsh(big.NewInt(1), 32)
	size := new(big.Int).Sub(last, first)
	size.Add(size, big.NewInt(1))
	parts := big.NewInt(int64(n))
	if size.Cmp(parts) < 0 {
		parts.Set(size)
	}
	step := new(big.Int).Div(size, parts)
	rem := new(big.Int).Mod(size, parts)
	if step.Cmp(maxShard) > 0 {
		step.Set(maxShard)
		rem.SetInt64(0)
	}
	cur := new(big.Int).Set(first)
	for i := int64(0); i < parts.Int64(); i++ {
		l := new(big.Int).Set(step)
		if big.NewInt(i).Cmp(rem) < 0 {
			l.Add(l, big.NewInt(1))
		}
		end := new(big.Int).Add(cur, l)
		end.Sub(end, big.NewInt(1))
		if i == parts.Int64()-1 {
			end.Set(last)
		}
		starts = append(starts, cur.String())
		stops = append(stops, end.String())
		cur = end.Add(end, big.NewInt(1))
	}
	return starts, stops
}

func mustInt(s string) *big.Int {
	v, ok := new(big.Int).SetString(s, 10)
	if !ok {
		// Values come from NUMERIC columns we wrote as integers.
		panic(fmt.Sprintf("ipam: not an integer: %q", s))
	}
	return v
}

// TakeManySQL is the statement (and its arguments) that takes up to n free
// units of one range, as TakeInto, returning them as text in ascending
// order; for callers that send it in a pipeline (pgx.Batch) with other
// statements. Read its rows with Units.
func TakeManySQL(poolID string, n int) (string, []any) {
	return `WITH ` + fmt.Sprintf(takeManyCTE, "TRUE", 1, 2) + ` SELECT unit::TEXT FROM taken ORDER BY ord`, []any{poolID, n}
}

// Units reads the rows of a TakeManySQL statement.
func Units(rows pgx.Rows, poolID string) ([]*big.Int, error) {
	units, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("pool %s: take units: %w", poolID, err)
	}
	out := make([]*big.Int, len(units))
	for i, s := range units {
		out[i] = mustInt(s)
	}
	return out, nil
}

// AcquireMany takes n free units in one transaction: as many as one range
// holds in one statement, more statements only when that range runs out
// (then Acquire, which waits for locked ranges). Fewer than n come back only
// when the pool is exhausted.
func AcquireMany(ctx context.Context, db store.Querier, poolID string, n int) ([]*big.Int, error) {
	var out []*big.Int
	for len(out) < n {
		q, args := TakeManySQL(poolID, n-len(out))
		rows, err := db.Query(ctx, q, args...)
		if err != nil {
			return nil, fmt.Errorf("pool %s: take units: %w", poolID, err)
		}
		units, err := Units(rows, poolID)
		if err != nil {
			return nil, err
		}
		out = append(out, units...)
		if len(units) > 0 {
			continue
		}
		u, err := Acquire(ctx, db, poolID)
		if errors.Is(err, ErrExhausted) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// PoolDef describes a pool for CreatePools.
type PoolDef struct {
	ID          string
	Kind        Kind
	First, Last *big.Int
	Ranges      int
}

// CreatePools records many pools, each cut into its number of ranges, in
// one statement whatever their number.
func CreatePools(ctx context.Context, db store.Querier, defs []PoolDef) error {
	cte, args, err := CreatePoolsCTE(defs, nil)
	if err != nil {
		return err
	}
	if _, err := db.Exec(ctx, `WITH `+cte+` SELECT 1`, args...); err != nil {
		return fmt.Errorf("create pools: %w", err)
	}
	return nil
}

// CreatePoolsCTE is CreatePools as two CTEs of a bigger statement
// ("pools_new AS (...), pool_free_new AS (...)", no leading comma or WITH),
// for callers that write a pool together with what uses it. args are the
// bigger statement's arguments so far: the CTEs' own are appended to
// them and numbered after them, so the caller need not know how many
// there are; the statement runs with the returned args.
func CreatePoolsCTE(defs []PoolDef, args []any) (string, []any, error) {
	var ids, kinds, firsts, lasts, rIDs, rStarts, rStops []string
	for _, d := range defs {
		if d.First.Cmp(d.Last) > 0 {
			return "", nil, fmt.Errorf("create pool %s: empty range %s..%s", d.ID, d.First, d.Last)
		}
		ids, kinds = append(ids, d.ID), append(kinds, string(d.Kind))
		firsts, lasts = append(firsts, d.First.String()), append(lasts, d.Last.String())
		starts, stops := split(d.First, d.Last, max(d.Ranges, 1))
		for range starts {
			rIDs = append(rIDs, d.ID)
		}
		rStarts, rStops = append(rStarts, starts...), append(rStops, stops...)
	}
	first := len(args) + 1
	p := func(i int) int { return first + i }
	cte := fmt.Sprintf(`pools_new AS (
	INSERT INTO pools (id, kind, first_unit, last_unit)
	SELECT id, kind, f::NUMERIC, l::NUMERIC FROM unnest($%d::TEXT[], $%d::TEXT[], $%d::TEXT[], $%d::TEXT[]) AS p (id, kind, f, l)
), pool_free_new AS (
	INSERT INTO pool_free (pool_id, start_unit, next_unit, stop_unit)
	SELECT id, s::NUMERIC, s::NUMERIC, e::NUMERIC FROM unnest($%d::TEXT[], $%d::TEXT[], $%d::TEXT[]) AS r (id, s, e)
)`, p(0), p(1), p(2), p(3), p(4), p(5), p(6))
	return cte, append(args, ids, kinds, firsts, lasts, rIDs, rStarts, rStops), nil
}
