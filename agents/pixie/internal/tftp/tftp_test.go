package tftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pin/tftp/v3"
)

func TestServeReadOnly(t *testing.T) {
	dir := t.TempDir()
	want := make([]byte, 70_000) // several blocks, not a multiple of 512
	_, _ = rand.Read(want)
	if err := os.WriteFile(filepath.Join(dir, "undionly.kpxe"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(dir), "outside"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- New(dir, nil, nil).Serve(ctx, conn) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	c, err := tftp.NewClient(conn.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(time.Second)
	c.SetRetries(2)
	wt, err := c.Receive("undionly.kpxe", "octet")
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := wt.WriteTo(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("received %d bytes, differing from the %d of the file", got.Len(), len(want))
	}
	for _, name := range []string{"../outside", "/../outside", "missing", ".", "a/../../outside"} {
		if wt, err := c.Receive(name, "octet"); err == nil {
			var b bytes.Buffer
			if _, err := wt.WriteTo(&b); err == nil {
				t.Errorf("%q served %q", name, b.String())
			}
		}
	}
	rf, err := c.Send("undionly.kpxe", "octet")
	if err == nil {
		_, err = rf.ReadFrom(strings.NewReader("overwrite"))
	}
	if err == nil {
		t.Fatal("write accepted")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "undionly.kpxe")); !bytes.Equal(b, want) {
		t.Fatal("file changed by a write request")
	}
}
