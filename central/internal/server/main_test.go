package server_test

import (
	"os"
	"testing"

	"github.com/metalfleet/metalfleet/central/internal/pgtest"
)

// pg is the package's PostgreSQL cluster; every test takes a fresh database.
var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }
