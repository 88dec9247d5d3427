package fleet

import (
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
)

// TestIdleConnectionsCannotHoldHandshakeSlots: connections that never send
// a ClientHello give their slot up at the deadline, so later ones get
// theirs instead of waiting forever.
func TestIdleConnectionsCannotHoldHandshakeSlots(t *testing.T) {
	c := closableCreds{
		TransportCredentials: credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12}),
		slots:                make(chan struct{}, 1),
		timeout:              200 * time.Millisecond,
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range 3 {
		server, client := net.Pipe()
		defer client.Close()
		wg.Go(func() {
			if _, _, err := c.ServerHandshake(server); err == nil {
				t.Error("handshake without a ClientHello succeeded")
			}
		})
	}
	wg.Wait()
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("three idle connections held the only slot for %v", took)
	}
	if len(c.slots) != 0 {
		t.Fatalf("%d slots still taken", len(c.slots))
	}
}
