package pgtest

import (
	"os"
	"testing"
)

var pg *Cluster

func TestMain(m *testing.M) { os.Exit(Run(m, &pg)) }
