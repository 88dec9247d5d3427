package redfish

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

// fakeSystem records what the BMC asks of the machine.
type fakeSystem struct {
	mu         sync.Mutex
	state      vm.PowerState
	dev        vm.BootDevice
	persistent bool
	calls      []string
	err        error // returned by power operations
}

func newFake() *fakeSystem { return &fakeSystem{state: vm.Off} }

func (f *fakeSystem) record(c string) {
	f.calls = append(f.calls, c)
}

func (f *fakeSystem) PowerState(context.Context) (vm.PowerState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state, nil
}

func (f *fakeSystem) op(name string, state vm.PowerState) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(name)
	if f.err != nil {
		return f.err
	}
	if state != "" {
		f.state = state
	}
	return nil
}

func (f *fakeSystem) PowerOn(context.Context) error { return f.op("PowerOn", vm.On) }
func (f *fakeSystem) PowerOff(_ context.Context, graceful bool) error {
	return f.op(fmt.Sprintf("PowerOff(graceful=%v)", graceful), vm.Off)
}
func (f *fakeSystem) PowerCycle(context.Context) error { return f.op("PowerCycle", vm.On) }
func (f *fakeSystem) Reset(context.Context) error {
	f.mu.Lock()
	off := f.state == vm.Off
	f.mu.Unlock()
	if off {
		return vm.ErrPoweredOff
	}
	return f.op("Reset", "")
}

func (f *fakeSystem) SetBootDevice(dev vm.BootDevice, persistent bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(fmt.Sprintf("SetBootDevice(%q,%v)", dev, persistent))
	f.dev, f.persistent = dev, persistent
	return nil
}

func (f *fakeSystem) BootDevice() (vm.BootDevice, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dev, f.persistent
}

func (f *fakeSystem) snapshot() (vm.PowerState, vm.BootDevice, bool, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state, f.dev, f.persistent, slices.Clone(f.calls)
}

const (
	user = "admin"
	pass = "s3cret"
)

func newServer(t testing.TB, sys System, reg prometheus.Registerer) *Server {
	t.Helper()
	s, err := New(Config{ID: "1", UUID: "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0001", Name: "m1", SerialNumber: "SN1",
		User: user, Password: pass, Metrics: reg}, sys)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type req struct {
	method, path, body string
	auth               string // "basic", "bad", "" (none)
}

func do(s *Server, r req) *httptest.ResponseRecorder {
	hr := httptest.NewRequest(r.method, r.path, strings.NewReader(r.body))
	switch r.auth {
	case "basic":
		hr.SetBasicAuth(user, pass)
	case "bad":
		hr.SetBasicAuth(user, "wrong")
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, hr)
	return w
}

func decode(t *testing.T, w *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatalf("body %q: %v", w.Body.String(), err)
	}
	return m
}

// get walks a decoded document: get(m, "Boot", "BootSourceOverrideTarget").
func get(m any, keys ...string) any {
	for _, k := range keys {
		mm, ok := m.(map[string]any)
		if !ok {
			return nil
		}
		m = mm[k]
	}
	return m
}

// errorText is everything an error body says, for matching.
func errorText(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	m := decode(t, w)
	e, ok := m["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error object in %s", w.Body.String())
	}
	if _, ok := e["@Message.ExtendedInfo"].([]any); !ok {
		t.Fatalf("no @Message.ExtendedInfo in %s", w.Body.String())
	}
	b, _ := json.Marshal(e)
	return string(b)
}

const sys1 = "/redfish/v1/Systems/1"

func TestAPI(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*fakeSystem)
		req   req
		code  int
		body  []string // substrings of the body (errors: of the error object)
		calls []string // the fake's calls, exactly
		check func(t *testing.T, doc map[string]any, f *fakeSystem)
	}{
		{name: "service root is public", req: req{method: "GET", path: "/redfish/v1/"}, code: 200,
			body: []string{`"RedfishVersion": "1.6.0"`, `"@odata.id": "/redfish/v1/Systems"`, `"Sessions": {`, `"@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot"`}},
		{name: "service root without slash", req: req{method: "GET", path: "/redfish/v1"}, code: 200},
		{name: "version", req: req{method: "GET", path: "/redfish"}, code: 200, body: []string{`"v1": "/redfish/v1/"`}},
		{name: "systems need auth", req: req{method: "GET", path: "/redfish/v1/Systems"}, code: 401, body: []string{"NoValidSession"}},
		{name: "wrong password", req: req{method: "GET", path: "/redfish/v1/Systems", auth: "bad"}, code: 401},
		{name: "systems", req: req{method: "GET", path: "/redfish/v1/Systems", auth: "basic"}, code: 200,
			body: []string{`"Members@odata.count": 1`, `"@odata.id": "/redfish/v1/Systems/1"`}},
		{name: "system", req: req{method: "GET", path: sys1, auth: "basic"}, code: 200,
			body: []string{`"PowerState": "Off"`, `"UUID": "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0001"`, `"Manufacturer": "Metalfleet"`,
				`"Model": "QEMU lab machine"`, `"SerialNumber": "SN1"`, `"BootSourceOverrideEnabled": "Disabled"`,
				`"BootSourceOverrideTarget": "None"`, `"BootSourceOverrideMode": "UEFI"`,
				`"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"`, `"@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem"`},
			check: func(t *testing.T, doc map[string]any, _ *fakeSystem) {
				got := get(doc, "Actions", "#ComputerSystem.Reset", "ResetType@Redfish.AllowableValues")
				if fmt.Sprint(got) != "[On ForceOff GracefulShutdown ForceRestart GracefulRestart PowerCycle]" {
					t.Errorf("reset types = %v", got)
				}
			}},
		{name: "system on with override", setup: func(f *fakeSystem) { f.state, f.dev, f.persistent = vm.On, vm.BootDisk, true },
			req: req{method: "GET", path: sys1 + "/", auth: "basic"}, code: 200,
			body: []string{`"PowerState": "On"`, `"BootSourceOverrideEnabled": "Continuous"`, `"BootSourceOverrideTarget": "Hdd"`}},
		{name: "manager", req: req{method: "GET", path: "/redfish/v1/Managers/BMC", auth: "basic"}, code: 200,
			body: []string{`"ManagerType": "BMC"`, `"ManagerForServers"`}},
		{name: "managers", req: req{method: "GET", path: "/redfish/v1/Managers", auth: "basic"}, code: 200, body: []string{"/redfish/v1/Managers/BMC"}},
		{name: "chassis", setup: func(f *fakeSystem) { f.state = vm.On }, req: req{method: "GET", path: "/redfish/v1/Chassis/1", auth: "basic"}, code: 200,
			body: []string{`"PowerState": "On"`, `"ChassisType": "RackMount"`}},
		{name: "chassis collection", req: req{method: "GET", path: "/redfish/v1/Chassis", auth: "basic"}, code: 200, body: []string{"/redfish/v1/Chassis/1"}},
		{name: "session service", req: req{method: "GET", path: "/redfish/v1/SessionService", auth: "basic"}, code: 200, body: []string{`"SessionTimeout": 1800`}},
		{name: "unknown path needs auth first", req: req{method: "GET", path: "/redfish/v1/Nope"}, code: 401},
		{name: "unknown path", req: req{method: "GET", path: "/redfish/v1/Nope", auth: "basic"}, code: 404, body: []string{"ResourceMissingAtURI", "/redfish/v1/Nope"}},
		{name: "other system", req: req{method: "GET", path: "/redfish/v1/Systems/2", auth: "basic"}, code: 404},
		{name: "wrong method", req: req{method: "DELETE", path: sys1, auth: "basic"}, code: 405, body: []string{"GET, HEAD, PATCH"}},
		{name: "GET on reset", req: req{method: "GET", path: sys1 + "/Actions/ComputerSystem.Reset", auth: "basic"}, code: 405},
		{name: "PUT on root needs auth", req: req{method: "PUT", path: "/redfish/v1/", body: "{}"}, code: 401},

		// PATCH Boot.
		{name: "boot once pxe", req: req{method: "PATCH", path: sys1, auth: "basic",
			body: `{"Boot": {"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Pxe", "BootSourceOverrideMode": "UEFI"}}`},
			code: 200, body: []string{`"BootSourceOverrideEnabled": "Once"`, `"BootSourceOverrideTarget": "Pxe"`},
			calls: []string{`SetBootDevice("pxe",false)`}},
		{name: "boot continuous hdd", req: req{method: "PATCH", path: sys1, auth: "basic",
			body: `{"Boot": {"BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideTarget": "Hdd"}}`},
			code: 200, calls: []string{`SetBootDevice("disk",true)`}},
		{name: "target alone means once", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": {"BootSourceOverrideTarget": "Hdd"}}`},
			code: 200, calls: []string{`SetBootDevice("disk",false)`}},
		{name: "enabled alone keeps the target", setup: func(f *fakeSystem) { f.dev = vm.BootPXE },
			req:  req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": {"BootSourceOverrideEnabled": "Continuous"}}`},
			code: 200, calls: []string{`SetBootDevice("pxe",true)`}},
		{name: "disabled clears", setup: func(f *fakeSystem) { f.dev, f.persistent = vm.BootPXE, true },
			req:  req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": {"BootSourceOverrideEnabled": "Disabled", "BootSourceOverrideTarget": "Pxe"}}`},
			code: 200, body: []string{`"BootSourceOverrideEnabled": "Disabled"`, `"BootSourceOverrideTarget": "None"`}, calls: []string{`SetBootDevice("",false)`}},
		{name: "target None clears", setup: func(f *fakeSystem) { f.dev = vm.BootDisk },
			req:  req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": {"BootSourceOverrideTarget": "None"}}`},
			code: 200, calls: []string{`SetBootDevice("",false)`}},
		{name: "annotations are ignored", req: req{method: "PATCH", path: sys1, auth: "basic",
			body: `{"@odata.id": "x", "Boot": {"@odata.type": "y", "BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}`},
			code: 200, calls: []string{`SetBootDevice("pxe",false)`}},
		{name: "unsupported target", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": {"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Cd"}}`},
			code: 400, body: []string{"PropertyValueNotInList", "Boot/BootSourceOverrideTarget", "Cd", "network or its disk"}},
		{name: "unknown enabled", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": {"BootSourceOverrideEnabled": "Twice", "BootSourceOverrideTarget": "Pxe"}}`},
			code: 400, body: []string{"Boot/BootSourceOverrideEnabled", "Twice"}},
		{name: "other firmware mode", req: req{method: "PATCH", path: sys1, auth: "basic",
			body: `{"Boot": {"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Pxe", "BootSourceOverrideMode": "Legacy"}}`},
			code: 400, body: []string{"Boot/BootSourceOverrideMode", "Legacy", "firmware is UEFI"}},
		{name: "once without target", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": {"BootSourceOverrideEnabled": "Once"}}`},
			code: 400, body: []string{"PropertyValueConflict", "BootSourceOverrideTarget is None"}},
		{name: "target not a string", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": {"BootSourceOverrideTarget": 5}}`},
			code: 400, body: []string{"PropertyValueTypeError", "Boot/BootSourceOverrideTarget"}},
		{name: "boot not an object", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": "Pxe"}`},
			code: 400, body: []string{"PropertyValueTypeError", "property Boot"}},
		{name: "unsupported boot property", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": {"BootOrder": ["a"]}}`},
			code: 400, body: []string{"PropertyUnknown", "Boot/BootOrder"}},
		{name: "read-only property with a valid boot changes nothing", req: req{method: "PATCH", path: sys1, auth: "basic",
			body: `{"Name": "x", "Boot": {"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Pxe"}}`},
			code: 400, body: []string{"PropertyNotWritable", "property Name"}},
		{name: "unknown property", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{"AssetTag": "x"}`},
			code: 400, body: []string{"PropertyUnknown", "AssetTag"}},
		{name: "two errors, both reported", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{"Foo": 1, "Boot": {"BootSourceOverrideTarget": "Usb"}}`},
			code: 400, body: []string{"GeneralError", "Foo", "Usb"}},
		{name: "empty object", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{}`}, code: 400, body: []string{"EmptyJSON"}},
		{name: "bad json", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": `}, code: 400, body: []string{"MalformedJSON"}},
		{name: "json array", req: req{method: "PATCH", path: sys1, auth: "basic", body: `[]`}, code: 400, body: []string{"MalformedJSON"}},
		{name: "json null", req: req{method: "PATCH", path: sys1, auth: "basic", body: `null`}, code: 400, body: []string{"MalformedJSON"}},
		{name: "too big", req: req{method: "PATCH", path: sys1, auth: "basic", body: `{"Boot": "` + strings.Repeat("x", maxBody) + `"}`}, code: 413},
		{name: "patch needs auth", req: req{method: "PATCH", path: sys1, body: `{"Boot": {"BootSourceOverrideTarget": "Pxe"}}`}, code: 401},

		// Reset.
		{name: "On", req: resetReq("On"), code: 204, calls: []string{"PowerOn"}},
		{name: "ForceOff", setup: func(f *fakeSystem) { f.state = vm.On }, req: resetReq("ForceOff"), code: 204, calls: []string{"PowerOff(graceful=false)"}},
		{name: "GracefulShutdown", setup: func(f *fakeSystem) { f.state = vm.On }, req: resetReq("GracefulShutdown"), code: 204, calls: []string{"PowerOff(graceful=true)"}},
		{name: "ForceRestart", setup: func(f *fakeSystem) { f.state = vm.On }, req: resetReq("ForceRestart"), code: 204, calls: []string{"Reset"}},
		{name: "GracefulRestart", setup: func(f *fakeSystem) { f.state = vm.On }, req: resetReq("GracefulRestart"), code: 204, calls: []string{"PowerOff(graceful=true)", "PowerOn"}},
		{name: "PowerCycle", req: resetReq("PowerCycle"), code: 204, calls: []string{"PowerCycle"}},
		{name: "ForceRestart while off", req: resetReq("ForceRestart"), code: 409, body: []string{"powered off"}},
		{name: "GracefulRestart while off", req: resetReq("GracefulRestart"), code: 409},
		{name: "power error", setup: func(f *fakeSystem) { f.err = errors.New("tap0: no such device") }, req: resetReq("On"), code: 500,
			body: []string{"InternalError", "tap0: no such device"}, calls: []string{"PowerOn"}},
		{name: "Nmi is not offered", req: resetReq("Nmi"), code: 400, body: []string{"ActionParameterValueNotInList", "ResetType", "Nmi"}},
		{name: "reset type missing", req: req{method: "POST", path: sys1 + "/Actions/ComputerSystem.Reset", auth: "basic", body: `{}`},
			code: 400, body: []string{"ActionParameterMissing", "ResetType"}},
		{name: "reset type not a string", req: req{method: "POST", path: sys1 + "/Actions/ComputerSystem.Reset", auth: "basic", body: `{"ResetType": true}`},
			code: 400, body: []string{"ActionParameterValueTypeError", "ResetType"}},
		{name: "reset unknown parameter", req: req{method: "POST", path: sys1 + "/Actions/ComputerSystem.Reset", auth: "basic", body: `{"ResetType": "On", "Delay": 5}`},
			code: 400, body: []string{"ActionParameterUnknown", "Delay"}},
		{name: "reset bad json", req: req{method: "POST", path: sys1 + "/Actions/ComputerSystem.Reset", auth: "basic", body: `ResetType=On`},
			code: 400, body: []string{"MalformedJSON"}},
		{name: "reset needs auth", req: req{method: "POST", path: sys1 + "/Actions/ComputerSystem.Reset", body: `{"ResetType": "On"}`}, code: 401},

		// Login.
		{name: "login", req: req{method: "POST", path: "/redfish/v1/SessionService/Sessions", body: `{"UserName": "admin", "Password": "s3cret"}`},
			code: 201, body: []string{`"UserName": "admin"`, `"@odata.type": "#Session.v1_3_0.Session"`}},
		{name: "login refused", req: req{method: "POST", path: "/redfish/v1/SessionService/Sessions", body: `{"UserName": "admin", "Password": "nope"}`},
			code: 401},
		{name: "login without password", req: req{method: "POST", path: "/redfish/v1/SessionService/Sessions", body: `{"UserName": "admin"}`},
			code: 400, body: []string{"PropertyMissing", "Password"}},
		{name: "login password not a string is not echoed", req: req{method: "POST", path: "/redfish/v1/SessionService/Sessions", body: `{"UserName": "admin", "Password": 123456}`},
			code: 400, body: []string{"(hidden)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			if tc.setup != nil {
				tc.setup(f)
			}
			s := newServer(t, f, nil)
			st0, dev0, p0, _ := f.snapshot()
			w := do(s, tc.req)
			if err := s.Close(context.Background()); err != nil { // waits for graceful actions
				t.Fatal(err)
			}
			if w.Code != tc.code {
				t.Fatalf("status %d, want %d; body %s", w.Code, tc.code, w.Body.String())
			}
			var text string
			switch {
			case w.Code == 204:
				if w.Body.Len() != 0 {
					t.Errorf("204 with a body: %s", w.Body.String())
				}
			case w.Code >= 400:
				text = errorText(t, w)
			default:
				text = w.Body.String()
				doc := decode(t, w)
				if _, ok := doc["@odata.id"]; !ok && tc.req.path != "/redfish" {
					t.Errorf("no @odata.id: %s", text)
				}
				if tc.check != nil {
					tc.check(t, doc, f)
				}
			}
			for _, b := range tc.body {
				if !strings.Contains(text, b) {
					t.Errorf("body lacks %q:\n%s", b, text)
				}
			}
			st, dev, p, calls := f.snapshot()
			if !slices.Equal(calls, tc.calls) {
				t.Errorf("calls = %q, want %q", calls, tc.calls)
			}
			if w.Code >= 400 && tc.calls == nil && (st != st0 || dev != dev0 || p != p0) {
				t.Errorf("refused request changed the system: %s %s %v", st, dev, p)
			}
			if strings.Contains(w.Body.String(), pass) {
				t.Error("response holds the password")
			}
		})
	}
}

func resetReq(rt string) req {
	return req{method: "POST", path: sys1 + "/Actions/ComputerSystem.Reset", auth: "basic", body: `{"ResetType": "` + rt + `"}`}
}

func TestSessions(t *testing.T) {
	f := newFake()
	reg := prometheus.NewRegistry()
	s := newServer(t, f, reg)
	now := time.Now()
	s.now = func() time.Time { return now }

	login := do(s, req{method: "POST", path: "/redfish/v1/SessionService/Sessions", body: `{"UserName": "admin", "Password": "s3cret"}`})
	if login.Code != 201 {
		t.Fatalf("login: %d %s", login.Code, login.Body.String())
	}
	token, loc := login.Header().Get("X-Auth-Token"), login.Header().Get("Location")
	if len(token) < 40 || !strings.HasPrefix(loc, "/redfish/v1/SessionService/Sessions/") {
		t.Fatalf("token %q, location %q", token, loc)
	}
	withToken := func(method, path, tok string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, nil)
		r.Header.Set("X-Auth-Token", tok)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w
	}
	if w := withToken("GET", sys1, token); w.Code != 200 {
		t.Fatalf("GET with token: %d", w.Code)
	}
	if w := withToken("GET", sys1, token+"x"); w.Code != 401 {
		t.Fatalf("GET with a wrong token: %d", w.Code)
	}
	if w := withToken("GET", "/redfish/v1/SessionService/Sessions", token); w.Code != 200 || !strings.Contains(w.Body.String(), loc) {
		t.Fatalf("sessions: %d %s", w.Code, w.Body.String())
	}
	if w := withToken("GET", loc, token); w.Code != 200 || strings.Contains(w.Body.String(), token) {
		t.Fatalf("session: %d %s", w.Code, w.Body.String())
	}

	// Idle sessions expire; used ones do not.
	now = now.Add(29 * time.Minute)
	if w := withToken("GET", sys1, token); w.Code != 200 {
		t.Fatalf("GET after 29m: %d", w.Code)
	}
	now = now.Add(31 * time.Minute)
	if w := withToken("GET", sys1, token); w.Code != 401 {
		t.Fatalf("GET after 31m idle: %d", w.Code)
	}

	// Logout.
	login = do(s, req{method: "POST", path: "/redfish/v1/SessionService/Sessions", body: `{"UserName": "admin", "Password": "s3cret"}`})
	token, loc = login.Header().Get("X-Auth-Token"), login.Header().Get("Location")
	if w := withToken("DELETE", loc, token); w.Code != 204 {
		t.Fatalf("logout: %d %s", w.Code, w.Body.String())
	}
	if w := withToken("GET", sys1, token); w.Code != 401 {
		t.Fatalf("GET after logout: %d", w.Code)
	}
	if w := do(s, req{method: "DELETE", path: loc, auth: "basic"}); w.Code != 404 {
		t.Fatalf("second logout: %d", w.Code)
	}

	// The session limit.
	for i := range maxSessions + 1 {
		w := do(s, req{method: "POST", path: "/redfish/v1/SessionService/Sessions", body: `{"UserName": "admin", "Password": "s3cret"}`})
		if want := map[bool]int{true: 503, false: 201}[i == maxSessions]; w.Code != want {
			t.Fatalf("login %d: %d, want %d", i, w.Code, want)
		}
	}

	if n := counter(t, reg, "metalfleet_lab_bmc_requests_total", map[string]string{"method": "GET", "resource": "system", "code": "200"}); n != 2 {
		t.Errorf("requests_total{GET,system,200} = %v, want 2", n)
	}
	if n := counter(t, reg, "metalfleet_lab_bmc_requests_total", map[string]string{"method": "GET", "resource": "system", "code": "401"}); n != 3 {
		t.Errorf("requests_total{GET,system,401} = %v, want 3", n)
	}
}

func TestMetricsPowerActions(t *testing.T) {
	f := newFake()
	reg := prometheus.NewRegistry()
	s := newServer(t, f, reg)
	do(s, resetReq("On"))
	do(s, resetReq("GracefulShutdown"))
	s.Close(context.Background()) // the graceful action is done
	f.err = errors.New("boom")
	do(s, resetReq("PowerCycle"))
	do(s, resetReq("Nmi")) // refused before it reaches the machine
	s.Close(context.Background())
	for _, tc := range []struct {
		action, result string
		want           float64
	}{{"On", "ok", 1}, {"GracefulShutdown", "ok", 1}, {"PowerCycle", "error", 1}, {"Nmi", "ok", 0}} {
		if n := counter(t, reg, "metalfleet_lab_bmc_power_actions_total", map[string]string{"action": tc.action, "result": tc.result}); n != tc.want {
			t.Errorf("power_actions_total{%s,%s} = %v, want %v", tc.action, tc.result, n, tc.want)
		}
	}
	if _, err := New(Config{User: user, Password: pass, Metrics: reg}, f); err == nil {
		t.Error("a second BMC on the same registry was accepted")
	}
}

func counter(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func TestNewValidates(t *testing.T) {
	f := newFake()
	for _, cfg := range []Config{
		{User: user},
		{Password: pass},
		{User: user, Password: pass, BootMode: "BIOS"},
		{User: user, Password: pass, ID: "a/b"},
	} {
		if _, err := New(cfg, f); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	if _, err := New(Config{User: user, Password: pass}, nil); err == nil {
		t.Error("New without a system succeeded")
	}
}
