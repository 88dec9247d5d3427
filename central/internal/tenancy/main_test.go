package tenancy_test

import (
	"os"
	"testing"

	"github.com/metalfleet/metalfleet/central/internal/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }
