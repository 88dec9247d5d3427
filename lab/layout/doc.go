// Package layout holds no code: its tests turn the repository's written
// rules into failures. deps_test.go checks the dependency direction between
// the parts (DESIGN.md §1, docs/layout.md); owners_test.go checks that each
// SQL table is written by exactly one package of central; adapters_test.go
// that central's gRPC adapters hold no SQL. It lives under
// lab/ because lab/ may look at everything and nothing imports it.
package layout
