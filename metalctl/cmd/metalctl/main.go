// Command metalctl is the command line client of metal-central.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/metalfleet/metalfleet/metalctl/internal/cli"
)

func main() {
	// Ctrl-C cancels the in-flight call instead of killing the process
	// mid-write, so the error is reported and the exit code is set.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, cli.Streams{
		In:        os.Stdin,
		Out:       os.Stdout,
		Err:       os.Stderr,
		LookupEnv: os.LookupEnv,
	}, os.Args[1:])
	stop()
	os.Exit(code)
}
