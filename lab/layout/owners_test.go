package layout

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// owners names the one package of central that writes each table (DESIGN.md
// §1: one package per domain aggregate is the only writer of its tables;
// fleet owns agents and boot tokens). central/internal/machine owns the
// machine tables and is the one door to a machine (registration, boot,
// allocation, free), central/internal/network the network tables,
// central/internal/catalog the catalogue tables, central/internal/tenancy
// tenants, projects and tokens, central/internal/fabric the switches.
var owners = map[string]string{
	// The catalogue.
	"partitions":         "central/internal/catalog",
	"sizes":              "central/internal/catalog",
	"size_reservations":  "central/internal/catalog",
	"images":             "central/internal/catalog",
	"filesystem_layouts": "central/internal/catalog",
	// The switch fabric.
	"switches": "central/internal/fabric",
	// Out-of-band control: the partitions' BMC settings.
	"partition_bmc": "central/internal/bmc",
	"machine_bmcs":  "central/internal/bmc",
	"bmc_intents":   "central/internal/bmc",
	// The serial console's session record.
	"console_sessions": "central/internal/console",
	// The network aggregate.
	"networks": "central/internal/network",
	"prefixes": "central/internal/network",
	"ips":      "central/internal/network",
	// Tenants, projects and the tokens that grant roles on them.
	"tenants":  "central/internal/tenancy",
	"projects": "central/internal/tenancy",
	"tokens":   "central/internal/tenancy",
	// The machine aggregate; its allocation writes addresses through
	// network, never the ips table itself.
	"machines":              "central/internal/machine",
	"machine_nics":          "central/internal/machine",
	"machine_events":        "central/internal/machine",
	"machine_mac_conflicts": "central/internal/machine",
	// The agent fleet.
	"agents":       "central/internal/fleet",
	"agent_events": "central/internal/fleet",
	"boot_tokens":  "central/internal/fleet",
	// Integer pools behind addresses, prefixes and VRF ids.
	"pools":     "central/internal/ipam",
	"pool_free": "central/internal/ipam",
	// Migration bookkeeping, created by the store itself, and the audit
	// rows the store's CRUD writes in the transaction of each change.
	"schema_migrations": "central/internal/store",
	"schema_lock":       "central/internal/store",
	"audit":             "central/internal/store",
}

// knownWrites are writes by a package that does not own the table, each
// with its reason and logged on every run; the test fails when one of them
// disappears, so the list only shrinks. Issue 12 emptied it; keep it empty.
var knownWrites = map[[2]string]string{}

var (
	// createTable finds the tables a migration (or the store's bootstrap)
	// creates, dropTable and renameTable follow them afterwards.
	createTable = regexp.MustCompile(`(?i)\bcreate\s+table\s+(?:if\s+not\s+exists\s+)?([a-z_][a-z0-9_]*)`)
	dropTable   = regexp.MustCompile(`(?i)\bdrop\s+table\s+(?:if\s+exists\s+)?([a-z_][a-z0-9_]*)`)
	renameTable = regexp.MustCompile(`(?i)\balter\s+table\s+(?:if\s+exists\s+)?([a-z_][a-z0-9_]*)\s+rename\s+to\s+([a-z_][a-z0-9_]*)`)
	// writeSQL finds the table a statement writes. The word after UPDATE
	// is often no table ("FOR UPDATE OF", "DO UPDATE SET", an error text
	// "update machine state"); only words that are tables count.
	writeSQL = regexp.MustCompile(`(?i)\b(?:insert\s+into|upsert\s+into|update|delete\s+from|truncate(?:\s+table)?)\s+(?:only\s+)?([a-z_][a-z0-9_]*)`)
	// sqlComment is a line comment in a migration, which may well say
	// "create table".
	sqlComment = regexp.MustCompile(`--[^\n]*`)
)

// schemaTables returns the tables the migrations under dir leave behind,
// in the order the files apply.
func schemaTables(t *testing.T, dir string) map[string]bool {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".sql") {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatalf("read migrations: %v", err)
	}
	sort.Strings(files) // NNNN_ names: lexical order is apply order per engine
	tables := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src := sqlComment.ReplaceAllString(string(b), "")
		for _, m := range createTable.FindAllStringSubmatch(src, -1) {
			tables[strings.ToLower(m[1])] = true
		}
		for _, m := range renameTable.FindAllStringSubmatch(src, -1) {
			delete(tables, strings.ToLower(m[1]))
			tables[strings.ToLower(m[2])] = true
		}
		for _, m := range dropTable.FindAllStringSubmatch(src, -1) {
			delete(tables, strings.ToLower(m[1]))
		}
	}
	return tables
}

// sqlString is one string literal of a package's non-test Go files.
type sqlString struct {
	pkg  string // module-relative import path
	pos  token.Position
	text string
}

// tableHelper reports whether a composite literal builds the generic CRUD
// helper whose name field is the table it writes (today service's
// table[T]{name: "machines"}; a store.Table[T]{Name: ...} after issue 12).
func tableHelper(lit *ast.CompositeLit) bool {
	typ := lit.Type
	switch x := typ.(type) {
	case *ast.IndexExpr:
		typ = x.X
	case *ast.IndexListExpr:
		typ = x.X
	}
	switch x := typ.(type) {
	case *ast.Ident:
		return x.Name == "table"
	case *ast.SelectorExpr:
		return x.Sel.Name == "Table"
	}
	return false
}

// moduleStrings parses every non-test Go file of the module, for every
// platform, and returns its string literals, plus the table names given to
// the CRUD helper, which builds its INSERT, UPDATE and DELETE from them at
// run time. The whole module, not only central/: a write from anywhere else
// is a violation too. The files come from go list, so build output and
// nested modules are not read.
func moduleStrings(t *testing.T, root string) (lits, helperTables []sqlString) {
	t.Helper()
	fset := token.NewFileSet()
	var paths []string
	for _, p := range listPackages(t, root) {
		for _, name := range slices.Concat(p.GoFiles, p.CgoFiles, p.IgnoredGoFiles) {
			if strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go") {
				paths = append(paths, filepath.Join(p.Dir, name))
			}
		}
	}
	for _, path := range paths {
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			t.Fatal(err)
		}
		pkg := filepath.ToSlash(rel)
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.BasicLit:
				if n.Kind != token.STRING {
					return true
				}
				s, err := strconv.Unquote(n.Value)
				if err != nil {
					t.Errorf("%s: unquote %s: %v", fset.Position(n.Pos()), n.Value, err)
					return true
				}
				lits = append(lits, sqlString{pkg: pkg, pos: fset.Position(n.Pos()), text: s})
			case *ast.CompositeLit:
				if !tableHelper(n) {
					return true
				}
				for _, e := range n.Elts {
					kv, ok := e.(*ast.KeyValueExpr)
					if !ok {
						continue
					}
					key, ok := kv.Key.(*ast.Ident)
					val, ok2 := kv.Value.(*ast.BasicLit)
					if !ok || !ok2 || !strings.EqualFold(key.Name, "name") || val.Kind != token.STRING {
						continue
					}
					if s, err := strconv.Unquote(val.Value); err == nil {
						helperTables = append(helperTables, sqlString{pkg: pkg, pos: fset.Position(val.Pos()), text: s})
					}
				}
			}
			return true
		})
	}
	return lits, helperTables
}

// TestTableOwners fails when a table is written from a package that is not
// its owner, when a table has no owner, and when an owner names a table the
// schema does not have.
func TestTableOwners(t *testing.T) {
	root := repoRoot(t)
	tables := schemaTables(t, filepath.Join(root, "sql", "migrations"))
	lits, helpers := moduleStrings(t, root)
	// The store creates its bookkeeping tables itself, outside migrations.
	for _, l := range lits {
		for _, m := range createTable.FindAllStringSubmatch(l.text, -1) {
			tables[strings.ToLower(m[1])] = true
		}
	}
	if len(tables) == 0 {
		t.Fatal("no tables found in sql/migrations")
	}

	// writers: table → package → where it first writes it.
	writers := map[string]map[string]token.Position{}
	note := func(table, pkg string, pos token.Position) {
		if writers[table] == nil {
			writers[table] = map[string]token.Position{}
		}
		if _, ok := writers[table][pkg]; !ok {
			writers[table][pkg] = pos
		}
	}
	for _, l := range lits {
		for _, m := range writeSQL.FindAllStringSubmatch(l.text, -1) {
			if table := strings.ToLower(m[1]); tables[table] {
				note(table, l.pkg, l.pos)
			}
		}
	}
	for _, h := range helpers {
		if !tables[h.text] {
			t.Errorf("%s: the table helper names %q, which the schema does not have", h.pos, h.text)
			continue
		}
		note(h.text, h.pkg, h.pos)
	}

	var failures []string
	for table := range tables {
		if _, ok := owners[table]; !ok {
			failures = append(failures, fmt.Sprintf("table %s has no owner: add it to owners in lab/layout/owners_test.go", table))
		}
	}
	for table := range owners {
		if !tables[table] {
			failures = append(failures, fmt.Sprintf("owners names %s, which the schema does not have", table))
		}
	}
	seen := map[[2]string]bool{}
	for table, pkgs := range writers {
		owner, ok := owners[table]
		if !ok {
			continue // reported above
		}
		for pkg, pos := range pkgs {
			if pkg == owner {
				continue
			}
			key := [2]string{table, pkg}
			seen[key] = true
			rel, _ := filepath.Rel(root, pos.Filename)
			if reason, ok := knownWrites[key]; ok {
				t.Logf("known: %s writes %s (%s:%d), owned by %s: %s", pkg, table, rel, pos.Line, owner, reason)
				continue
			}
			failures = append(failures, fmt.Sprintf("%s writes %s (%s:%d): %s is owned by %s, its only writer (DESIGN.md §1)", pkg, table, rel, pos.Line, table, owner))
		}
	}
	for key := range knownWrites {
		if !seen[key] {
			failures = append(failures, fmt.Sprintf("%s no longer writes %s: remove it from knownWrites", key[1], key[0]))
		}
	}
	sort.Strings(failures)
	for _, f := range failures {
		t.Error(f)
	}
}

// TestWriteSQL keeps the statement matcher honest on the shapes central
// writes today.
func TestWriteSQL(t *testing.T) {
	tests := []struct {
		sql  string
		want []string
	}{
		{`INSERT INTO machines (id) VALUES ($1)`, []string{"machines"}},
		{`insert into ips (ip) values ($1)`, []string{"ips"}},
		{`UPSERT INTO agents (id) VALUES ($1)`, []string{"agents"}},
		{`UPDATE agents AS a SET x = 1`, []string{"agents"}},
		{`DELETE FROM pool_free f USING b`, []string{"pool_free"}},
		{`TRUNCATE TABLE audit`, []string{"audit"}},
		{`WITH m AS (UPDATE machines SET seq = seq + 1 RETURNING id)
		  INSERT INTO machine_events (machine_id) SELECT id FROM m`, []string{"machines", "machine_events"}},
		{`INSERT INTO schema_lock (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET holder = excluded.holder`, []string{"schema_lock", "set"}},
		{`SELECT id FROM machines WHERE id = $1 FOR UPDATE OF m SKIP LOCKED`, []string{"of"}},
		{`SELECT id FROM machines FOR UPDATE`, nil},
	}
	for _, tt := range tests {
		var got []string
		for _, m := range writeSQL.FindAllStringSubmatch(tt.sql, -1) {
			got = append(got, strings.ToLower(m[1]))
		}
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("writes in %q = %v, want %v", tt.sql, got, tt.want)
		}
	}
}
