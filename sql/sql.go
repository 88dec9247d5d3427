// Package schema holds Metalfleet's SQL schema as ordered migrations.
//
// Migrations under migrations/common run unchanged on PostgreSQL >= 15 and on
// CockroachDB; migrations/cockroach holds DDL only CockroachDB understands
// (regions, REGIONAL BY ROW, hash-sharded indexes) and is applied only when the
// server reports it is CockroachDB. Only central's store reads this package.
package schema

import (
	"embed"
	"io/fs"
)

//go:embed migrations
var files embed.FS

// Common returns the migrations every engine gets, named NNNN_name.sql.
func Common() fs.FS {
	sub, err := fs.Sub(files, "migrations/common")
	if err != nil {
		panic(err) // the path is compiled in; failing here is a build defect
	}
	return sub
}

// Cockroach returns the CockroachDB-only migrations.
func Cockroach() fs.FS {
	sub, err := fs.Sub(files, "migrations/cockroach")
	if err != nil {
		panic(err)
	}
	return sub
}
