package driver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// redfishStub serves the few resources SSHPort reads: the service root,
// the managers, one BMC manager and, when np is not nil, its
// NetworkProtocol.
func redfishStub(t *testing.T, np map[string]any) string {
	t.Helper()
	manager := map[string]any{"@odata.id": "/redfish/v1/Managers/1", "Id": "1", "ManagerType": "BMC"}
	if np != nil {
		manager["NetworkProtocol"] = map[string]string{"@odata.id": "/redfish/v1/Managers/1/NetworkProtocol"}
		np["@odata.id"] = "/redfish/v1/Managers/1/NetworkProtocol"
	}
	docs := map[string]any{
		"/redfish/v1/":                           map[string]any{"@odata.id": "/redfish/v1/", "Managers": map[string]string{"@odata.id": "/redfish/v1/Managers"}},
		"/redfish/v1/Managers":                   map[string]any{"@odata.id": "/redfish/v1/Managers", "Members": []map[string]string{{"@odata.id": "/redfish/v1/Managers/1"}}},
		"/redfish/v1/Managers/1":                 manager,
		"/redfish/v1/Managers/1/NetworkProtocol": np,
	}
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, ok := docs[r.URL.Path]
		if !ok || d == nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(d)
	}))
	t.Cleanup(ts.Close)
	return ts.URL
}

func TestSSHPort(t *testing.T) {
	for _, tc := range []struct {
		name    string
		np      map[string]any
		want    int
		wantErr error
	}{
		{"named and enabled", map[string]any{"SSH": map[string]any{"ProtocolEnabled": true, "Port": 2222}}, 2222, nil},
		{"disabled", map[string]any{"SSH": map[string]any{"ProtocolEnabled": false, "Port": 22}}, 0, ErrSSHDisabled},
		{"no SSH in it", map[string]any{"HTTPS": map[string]any{"ProtocolEnabled": true, "Port": 443}}, 0, nil},
		{"enabled without a port", map[string]any{"SSH": map[string]any{"ProtocolEnabled": true}}, 0, nil},
		{"a port out of range", map[string]any{"SSH": map[string]any{"ProtocolEnabled": true, "Port": 70000}}, 0, nil},
		{"no NetworkProtocol", nil, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := redfishStub(t, tc.np)
			b := &Bmclib{Timeout: 5 * time.Second}
			got, err := b.SSHPort(context.Background(), Endpoint{Address: url}, Creds{User: "u", Password: "p"})
			if got != tc.want || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Errorf("SSHPort = %d, %v; want %d, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}
