package layout

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// adapters is the package of central's gRPC adapters (DESIGN.md §1:
// validate, call, map errors; no SQL). Transactions and statements are
// the domain packages' and the store's.
const adapters = "central/internal/service"

// pendingSQL are adapter files that may still run transactions or hold
// SQL while their code moves into a domain package; each is logged on
// every run, and the test fails when one of them is clean, so the list
// only shrinks. Issue 12 emptied it; keep it empty.
var pendingSQL = map[string]string{}

// sqlStatement finds the statements an adapter must not hold: INSERT INTO,
// UPSERT INTO, UPDATE ... SET, DELETE FROM and SELECT ... FROM.
var sqlStatement = regexp.MustCompile(`(?is)\b(?:(?:insert|upsert)\s+into|update\s+[a-z_][a-z0-9_.]*\s+(?:(?:as\s+)?[a-z_][a-z0-9_]*\s+)?set|delete\s+from|select\s.+?\sfrom)\b`)

// sqlIn reports what of a Go file makes it hold SQL: its imports of pgx
// and its string literals that are SQL statements.
func sqlIn(t *testing.T, fset *token.FileSet, path string) []string {
	t.Helper()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	var found []string
	for _, imp := range f.Imports {
		p, err := strconv.Unquote(imp.Path.Value)
		if err != nil {
			t.Fatalf("%s: unquote %s: %v", fset.Position(imp.Pos()), imp.Path.Value, err)
		}
		if p == "github.com/jackc/pgx" || strings.HasPrefix(p, "github.com/jackc/pgx/") {
			found = append(found, fmt.Sprintf("line %d imports %s", fset.Position(imp.Pos()).Line, p))
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		lit, ok := n.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		s, err := strconv.Unquote(lit.Value)
		if err != nil {
			t.Errorf("%s: unquote %s: %v", fset.Position(lit.Pos()), lit.Value, err)
			return true
		}
		if m := sqlStatement.FindString(s); m != "" {
			found = append(found, fmt.Sprintf("line %d holds SQL %q", fset.Position(lit.Pos()).Line, strings.Join(strings.Fields(m), " ")))
		}
		return true
	})
	return found
}

// TestAdaptersHoldNoSQL fails when a non-test Go file of the adapters
// imports pgx or holds an SQL statement, and when a file of pendingSQL
// no longer does or is gone.
func TestAdaptersHoldNoSQL(t *testing.T) {
	dir := filepath.Join(repoRoot(t), filepath.FromSlash(adapters))
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var failures []string
	seen := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		seen[name] = true
		found := sqlIn(t, fset, filepath.Join(dir, name))
		reason, pending := pendingSQL[name]
		switch {
		case pending && len(found) == 0:
			failures = append(failures, fmt.Sprintf("%s/%s holds no SQL any more: remove it from pendingSQL", adapters, name))
		case pending:
			t.Logf("pending: %s/%s (%s): %s", adapters, name, strings.Join(found, "; "), reason)
		default:
			for _, f := range found {
				failures = append(failures, fmt.Sprintf("%s/%s %s: the gRPC adapters hold no SQL; it belongs in the domain package that owns the tables (DESIGN.md §1)", adapters, name, f))
			}
		}
	}
	for name := range pendingSQL {
		if !seen[name] {
			failures = append(failures, fmt.Sprintf("%s/%s is gone: remove it from pendingSQL", adapters, name))
		}
	}
	sort.Strings(failures)
	for _, f := range failures {
		t.Error(f)
	}
}

// TestSQLStatement keeps the statement matcher honest on statements and
// on the texts of the adapters that are none.
func TestSQLStatement(t *testing.T) {
	tests := []struct {
		text string
		sql  bool
	}{
		{`INSERT INTO machines (id) VALUES ($1)`, true},
		{`upsert into agents (id) values ($1)`, true},
		{`UPDATE agents SET x = 1`, true},
		{`UPDATE pool_free f SET next_unit = 1`, true},
		{`UPDATE agents AS a SET x = 1`, true},
		{`DELETE FROM boot_tokens WHERE id = $1`, true},
		{"SELECT id\n\tFROM machines", true},
		{`select 1 from partitions where id = $1`, true},
		{`WITH m AS (SELECT 1) SELECT * FROM m`, true},
		{`update PXE service documents`, false},
		{`must be an agent id or <kind>/<identity>, e.g. switch/leaf01`, false},
		{`delete agent`, false},
		{`select a size`, false},
		{`%s: a referenced object is missing or the object is still in use (%s)`, false},
	}
	for _, tt := range tests {
		if got := sqlStatement.MatchString(tt.text); got != tt.sql {
			t.Errorf("%q is SQL: %v, want %v", tt.text, got, tt.sql)
		}
	}
}
