// Command metal-lab runs Metalfleet on one Linux box for trying it out and
// for measuring it. Today: `metal-lab fleet`, the fleet simulator.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/metalfleet/metalfleet/lab/internal/labcli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := labcli.New().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "metal-lab:", err)
		os.Exit(1)
	}
}
