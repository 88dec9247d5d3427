package run

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

const pin = "07fea90a28261679c181b0b883d67c98949e5e18a39b781bb79ee84202ade81e"

func TestParseCmdline(t *testing.T) {
	for name, tc := range map[string]struct {
		in   string
		want Cmdline
		err  string // substring of the error; "" none
	}{
		"full": {
			in: "BOOT_IMAGE=vmlinuz initrd=initramfs.cpio.gz console=ttyS0 metal.central=10.0.0.1:8443,[2001:db8::1]:8443 " +
				"metal.partition=fra-1 metal.ca=" + strings.ToUpper(pin) + " metal.pixie=http://10.0.0.2:8080/ metal.boot_token=mfb_abc\n",
			want: Cmdline{Centrals: []string{"10.0.0.1:8443", "[2001:db8::1]:8443"}, Partition: "fra-1", CA: pin,
				Pixie: "http://10.0.0.2:8080", BootToken: "mfb_abc", RelayPort: DefaultRelayPort},
		},
		"relay port": {
			in:   "metal.central=c:1 metal.partition=p metal.plaintext=1 metal.relay_port=5443",
			want: Cmdline{Centrals: []string{"c:1"}, Partition: "p", Plaintext: true, RelayPort: 5443},
		},
		"no relay": {
			in:   "metal.central=c:1 metal.partition=p metal.plaintext=1 metal.relay_port=0",
			want: Cmdline{Centrals: []string{"c:1"}, Partition: "p", Plaintext: true},
		},
		"bad relay port": {in: "metal.central=c:1 metal.partition=p metal.plaintext=1 metal.relay_port=70000", err: "metal.relay_port"},
		"quoted value": {
			in:   `metal.central="central.example:443" metal.partition=p metal.plaintext=1`,
			want: Cmdline{Centrals: []string{"central.example:443"}, Partition: "p", Plaintext: true, RelayPort: DefaultRelayPort},
		},
		"no boot token is fine": {
			in:   "metal.central=c:1 metal.partition=p metal.ca=" + pin + " metal.pixie=https://pixie",
			want: Cmdline{Centrals: []string{"c:1"}, Partition: "p", CA: pin, Pixie: "https://pixie", RelayPort: DefaultRelayPort},
		},
		"missing central":   {in: "metal.partition=p metal.plaintext=1", err: "metal.central missing"},
		"empty central":     {in: "metal.central= metal.partition=p metal.plaintext=1", err: "metal.central missing"},
		"missing partition": {in: "metal.central=c:1 metal.plaintext=1", err: "metal.partition missing"},
		"both missing":      {in: "console=ttyS0", err: "metal.partition missing"},
		"central without port": {
			in: "metal.central=central metal.partition=p metal.plaintext=1", err: "metal.central",
		},
		"central bad port": {in: "metal.central=c:99999 metal.partition=p metal.plaintext=1", err: "bad port"},
		"bare v6 central":  {in: "metal.central=2001:db8::1 metal.partition=p metal.plaintext=1", err: "metal.central"},
		"no ca, no plaintext": {
			in: "metal.central=c:1 metal.partition=p metal.pixie=http://x", err: "metal.ca missing",
		},
		"short ca":      {in: "metal.central=c:1 metal.partition=p metal.ca=abcd metal.pixie=http://x", err: "not a hex sha256"},
		"ca not hex":    {in: "metal.central=c:1 metal.partition=p metal.pixie=http://x metal.ca=" + strings.Repeat("zz", 32), err: "not a hex sha256"},
		"ca, no pixie":  {in: "metal.central=c:1 metal.partition=p metal.ca=" + pin, err: "metal.pixie missing"},
		"pixie not url": {in: "metal.central=c:1 metal.partition=p metal.ca=" + pin + " metal.pixie=tftp://x", err: "not an http(s) URL"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := ParseCmdline(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want it to mention %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestCmdlineLogValueHidesTheBootToken(t *testing.T) {
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "cmdline", Cmdline{Centrals: []string{"c:1"}, BootToken: "mfb_secret"})
	if strings.Contains(b.String(), "mfb_secret") || !strings.Contains(b.String(), "boot_token=set") {
		t.Errorf("log %q", b.String())
	}
}

func FuzzParseCmdline(f *testing.F) {
	for _, s := range []string{
		"metal.central=10.0.0.1:8443 metal.partition=p metal.ca=" + pin + " metal.pixie=http://p",
		`metal.central="[::1]:1" metal.partition="a b" metal.plaintext=1`,
		"metal.central=,,, metal.partition",
		`"unterminated`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCmdline(s)
		if err != nil {
			return
		}
		if len(c.Centrals) == 0 || c.Partition == "" || (c.CA == "" && !c.Plaintext) {
			t.Fatalf("accepted without the required keys: %+v", c)
		}
		for _, a := range c.Centrals {
			if checkHostPort(a) != nil {
				t.Fatalf("accepted central %q", a)
			}
		}
	})
}

func TestProgress(t *testing.T) {
	now := time.Unix(0, 0)
	var got []string
	p := newProgress(5*time.Second, func() time.Time { return now }, func(m string) { got = append(got, m) })
	const total = 1000_000_000
	steps := []struct {
		after time.Duration
		read  int64
	}{
		{0, 0},                      // start: nothing
		{time.Second, 100e6},        // 10%, 1 s: nothing
		{time.Second, 260e6},        // crosses 25%: event
		{time.Second, 300e6},        // nothing
		{5 * time.Second, 310e6},    // 5 s since the last: event
		{time.Second, 1000_000_000}, // done: event
	}
	for _, s := range steps {
		now = now.Add(s.after)
		p.update(s.read, total)
	}
	want := []string{"image 26% (260/1000 MB)", "image 31% (310/1000 MB)", "image 100% (1000/1000 MB)"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", got, want)
	}

	// Unknown size: time only.
	got = nil
	p = newProgress(5*time.Second, func() time.Time { return now }, func(m string) { got = append(got, m) })
	for i := range 12 {
		now = now.Add(time.Second)
		p.update(int64(i+1)*50e6, -1)
	}
	if strings.Join(got, "|") != "image 250 MB|image 500 MB" {
		t.Errorf("unknown size: %q", got)
	}
}
