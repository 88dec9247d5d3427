package redfish

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

// FuzzBodies sends arbitrary JSON bodies to the PATCH, Reset and login
// handlers: no panic, a known status, a Redfish error body on refusal,
// and a refused request changes nothing.
func FuzzBodies(f *testing.F) {
	for _, seed := range []string{
		`{"Boot": {"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Pxe", "BootSourceOverrideMode": "UEFI"}}`,
		`{"Boot": {"BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideTarget": "Hdd"}}`,
		`{"Boot": {"BootSourceOverrideEnabled": "Disabled"}}`,
		`{"Boot": {"BootSourceOverrideTarget": "Cd"}}`,
		`{"Boot": {"BootSourceOverrideTarget": null}}`,
		`{"Boot": null}`,
		`{"Boot": {"BootSourceOverrideMode": "Legacy"}}`,
		`{"Name": "x", "Boot": {}}`,
		`{"ResetType": "On"}`,
		`{"ResetType": "GracefulRestart"}`,
		`{"ResetType": "Nmi"}`,
		`{"ResetType": 1}`,
		`{"UserName": "admin", "Password": "s3cret"}`,
		`{"UserName": "admin", "Password": null}`,
		`{}`, `[]`, `null`, `"x"`, `{"a":`, "\xff", "",
	} {
		for kind := range uint8(3) {
			f.Add(kind, seed)
		}
	}
	f.Fuzz(func(t *testing.T, kind uint8, body string) {
		if len(body) > 4<<10 {
			// Bodies are small; big ones only slow the minimizer down
			// (the size limit has its own test).
			return
		}
		fs := newFake()
		fs.state = vm.On
		s := newServer(t, fs, nil)
		var r req
		switch kind % 3 {
		case 0:
			r = req{method: "PATCH", path: sys1, auth: "basic", body: body}
		case 1:
			r = req{method: "POST", path: sys1 + "/Actions/ComputerSystem.Reset", auth: "basic", body: body}
		default:
			r = req{method: "POST", path: "/redfish/v1/SessionService/Sessions", body: body}
		}
		st0, dev0, p0, _ := fs.snapshot()
		w := do(s, r)
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		st, dev, p, calls := fs.snapshot()
		switch w.Code {
		case 200, 201:
			var doc map[string]any
			if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || doc["@odata.id"] == nil {
				t.Fatalf("%d with body %q", w.Code, w.Body.String())
			}
			if kind%3 == 0 {
				enabled, target := s.bootOverride()
				if get(doc, "Boot", "BootSourceOverrideEnabled") != enabled || get(doc, "Boot", "BootSourceOverrideTarget") != target {
					t.Fatalf("response %s disagrees with the system (%s %s)", w.Body.String(), enabled, target)
				}
			}
		case 204:
		case 400, 401, 409, 413:
			var doc struct {
				Error struct {
					Code string    `json:"code"`
					Info []message `json:"@Message.ExtendedInfo"`
				} `json:"error"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || doc.Error.Code == "" || len(doc.Error.Info) == 0 || doc.Error.Info[0].Message == "" {
				t.Fatalf("%d with body %q", w.Code, w.Body.String())
			}
			if w.Code != 409 && (len(calls) > 0 || st != st0 || dev != dev0 || p != p0) {
				t.Fatalf("refused %q changed the system: calls %q", body, calls)
			}
		default:
			t.Fatalf("status %d for %q: %s", w.Code, body, w.Body.String())
		}
	})
}
