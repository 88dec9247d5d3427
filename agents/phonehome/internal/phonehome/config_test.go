package phonehome

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

func configJSON(t testing.TB, caPEM string, change func(m map[string]any)) []byte {
	t.Helper()
	m := map[string]any{"machine_id": testMachineID, "centrals": []string{"10.0.0.1:8443", "[fd00::1]:8443"}, "ca_pem": caPEM, "token": testToken}
	if change != nil {
		change(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseFileErrors(t *testing.T) {
	t.Parallel()
	caPEM, _ := testCA(t)
	brokenCert := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")}))
	keyOnly := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("x")}))
	for _, tc := range []struct {
		name   string
		change func(m map[string]any)
		raw    string
		want   string
	}{
		{name: "not json", raw: "machine_id=x", want: "not a JSON object"},
		{name: "token of wrong type", change: func(m map[string]any) { m["token"] = 42 }, want: "not a JSON object"},
		{name: "missing token", change: func(m map[string]any) { delete(m, "token") }, want: "token missing"},
		{name: "blank token", change: func(m map[string]any) { m["token"] = "  " }, want: "token missing"},
		{name: "missing machine id", change: func(m map[string]any) { delete(m, "machine_id") }, want: "machine_id: missing"},
		{name: "bad machine id", change: func(m map[string]any) { m["machine_id"] = "a/b" }, want: "machine_id: \"a/b\": only letters"},
		{name: "no centrals", change: func(m map[string]any) { m["centrals"] = []string{} }, want: "centrals: at least one"},
		{name: "central without port", change: func(m map[string]any) { m["centrals"] = []string{"central.example"} }, want: "centrals[0] \"central.example\": want host:port"},
		{name: "bare IPv6 central", change: func(m map[string]any) { m["centrals"] = []string{"c:8443", "fd00::1:8443"} }, want: "centrals[1]"},
		{name: "bad port", change: func(m map[string]any) { m["centrals"] = []string{"c:0"} }, want: "port must be 1-65535"},
		{name: "missing CA", change: func(m map[string]any) { delete(m, "ca_pem") }, want: "ca_pem: no PEM certificate found"},
		{name: "CA not PEM", change: func(m map[string]any) { m["ca_pem"] = "MIIB...garbage" }, want: "ca_pem: no PEM certificate found"},
		{name: "CA is a key", change: func(m map[string]any) { m["ca_pem"] = keyOnly }, want: "ca_pem: no PEM certificate found"},
		{name: "CA broken", change: func(m map[string]any) { m["ca_pem"] = brokenCert }, want: "ca_pem: certificate 1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := []byte(tc.raw)
			if tc.raw == "" {
				b = configJSON(t, caPEM, tc.change)
			}
			_, err := ParseFile(b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), testToken) {
				t.Fatalf("the error shows the token: %v", err)
			}
		})
	}
}

func TestLoadFile(t *testing.T) {
	t.Parallel()
	caPEM, _ := testCA(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "phonehome.json")
	if err := os.WriteFile(path, configJSON(t, caPEM, func(m map[string]any) { m["machine_id"] = "4C4C4544-0042-3510-8052-B4C04F4D3232" }), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.MachineID != testMachineID || f.Token != testToken || len(f.Centrals) != 2 || f.TLS().RootCAs == nil {
		t.Fatalf("loaded %+v", f)
	}
	if _, err := LoadFile(filepath.Join(dir, "missing.json")); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Fatalf("missing file: %v", err)
	}
	if err := os.WriteFile(path, configJSON(t, caPEM, func(m map[string]any) { delete(m, "token") }), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(path); err == nil || !strings.Contains(err.Error(), path+": token missing") {
		t.Fatalf("err %v, want the path and the field", err)
	}
	// Logging the whole file shows no token.
	var buf bytes.Buffer
	f.Token = testToken
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "file", f)
	if strings.Contains(buf.String(), testToken) || !strings.Contains(buf.String(), testMachineID) {
		t.Fatalf("logged %q", buf.String())
	}
}

func TestReadInstalled(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	alloc, _ := protojson.Marshal(&agentv1.MachineAllocation{Id: "a1", Hostname: "web-0", Reinstall: true})
	doc, _ := protojson.Marshal(&agentv1.MachineDocument{MachineId: "m", RebootGeneration: 4, Allocation: &agentv1.MachineAllocation{Id: "a2"}})
	for _, tc := range []struct {
		name    string
		path    string
		wantID  string
		wantGen int64 // -1: none
		wantErr string
	}{
		{"no path", "", "", -1, ""},
		{"missing file", filepath.Join(dir, "nope.json"), "", -1, ""},
		{"allocation", write("alloc.json", alloc), "a1", -1, ""},
		{"document", write("doc.json", doc), "a2", 4, ""},
		{"allocation of a newer installer", write("newer.json", []byte(`{"id":"a3","futureField":1}`)), "a3", -1, ""},
		{"garbage", write("bad.json", []byte("{")), "", -1, "neither a MachineAllocation nor a MachineDocument"},
	} {
		in, err := ReadInstalled(tc.path)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: err %v, want %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		gen := int64(-1)
		if in.RebootGeneration != nil {
			gen = int64(*in.RebootGeneration)
		}
		if in.AllocationID != tc.wantID || gen != tc.wantGen {
			t.Errorf("%s: got %q gen %d, want %q gen %d", tc.name, in.AllocationID, gen, tc.wantID, tc.wantGen)
		}
	}
}

// FuzzParseFile: whatever the file holds, parsing does not panic, and what
// it accepts is complete.
func FuzzParseFile(f *testing.F) {
	caPEM, _ := testCA(f)
	f.Add(configJSON(f, caPEM, nil))
	f.Add([]byte(`{"machine_id":"m","centrals":["c:1"],"token":"t","ca_pem":"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseFile(b)
		if err != nil {
			return
		}
		if c.Token == "" || checkIdentity(c.MachineID) != nil || len(c.Centrals) == 0 || c.TLS().RootCAs == nil {
			t.Fatalf("accepted an incomplete config: %+v", c)
		}
	})
}
