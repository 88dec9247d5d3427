// Package goipam holds the go-ipam side of the IPAM benchmarks in
// BENCHMARKS.md. It is a module of its own so that the product's go.mod does
// not carry go-ipam's dependencies; bench/ipam.sh runs it against the same
// PostgreSQL as central/internal/ipam's benchmarks.
package goipam
