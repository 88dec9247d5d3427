package cli

import (
	"testing"
)

func TestEscaper(t *testing.T) {
	for _, tc := range []struct {
		name       string
		in         []string // chunks as read from the terminal
		want       string
		quit, help bool
	}{
		{name: "plain", in: []string{"ls\r"}, want: "ls\r"},
		{name: "quit at start", in: []string{"~."}, want: "", quit: true},
		{name: "quit after newline", in: []string{"abc\r~.rest"}, want: "abc\r", quit: true},
		{name: "quit split over reads", in: []string{"abc\r~", "."}, want: "abc\r", quit: true},
		{name: "tilde mid-line is data", in: []string{"a~.b"}, want: "a~.b"},
		{name: "double tilde sends one", in: []string{"~~."}, want: "~."},
		{name: "tilde then other", in: []string{"\n~x"}, want: "\n~x"},
		{name: "help", in: []string{"~?"}, want: "", help: true},
		{name: "help then quit", in: []string{"~?~."}, want: "", help: true, quit: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &escaper{lineStart: true}
			var got []byte
			var quit, help bool
			for _, c := range tc.in {
				out, q, h := e.feed([]byte(c))
				got = append(got, out...)
				help = help || h
				if q {
					quit = true
					break
				}
			}
			if string(got) != tc.want || quit != tc.quit || help != tc.help {
				t.Errorf("feed(%q) = %q quit=%v help=%v, want %q quit=%v help=%v", tc.in, got, quit, help, tc.want, tc.quit, tc.help)
			}
		})
	}
}
