package cli

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
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

// echoConsole is central for runConsole: it starts the session, echoes
// keystrokes and, when the user half-closes, ends with a reason.
type echoConsole struct {
	apiv1.UnimplementedMachineServiceServer
	first chan *apiv1.MachineServiceConsoleRequest
}

func (e *echoConsole) Console(s apiv1.MachineService_ConsoleServer) error {
	req, err := s.Recv()
	if err != nil {
		return err
	}
	e.first <- req
	if err := s.Send(&apiv1.MachineServiceConsoleResponse{Msg: &apiv1.MachineServiceConsoleResponse_Started{Started: &apiv1.ConsoleStarted{SessionId: "s1"}}}); err != nil {
		return err
	}
	for {
		req, err := s.Recv()
		if err != nil {
			return s.Send(&apiv1.MachineServiceConsoleResponse{Msg: &apiv1.MachineServiceConsoleResponse_End{End: &apiv1.ConsoleEnd{Reason: "ended by the user"}}})
		}
		if err := s.Send(&apiv1.MachineServiceConsoleResponse{Msg: &apiv1.MachineServiceConsoleResponse_Data{Data: append([]byte("echo:"), req.GetData()...)}}); err != nil {
			return err
		}
	}
}

// TestRunConsole: keystrokes up to ~. go to central, the machine's output
// to stdout, the session's end and reason to stderr.
func TestRunConsole(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	e := &echoConsole{first: make(chan *apiv1.MachineServiceConsoleRequest, 1)}
	apiv1.RegisterMachineServiceServer(srv, e)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	cc, err := grpc.NewClient("passthrough:///bufnet", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := runConsole(ctx, apiv1.NewMachineServiceClient(cc), "m1", strings.NewReader("hello\r~.not sent"), &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if first := <-e.first; first.GetId() != "m1" || first.GetWindow() != nil {
		t.Errorf("first request %v, want id m1 and no window (no terminal)", first)
	}
	if strings.Contains(out.String(), "not sent") || !strings.Contains(out.String(), "echo:hello\r") {
		t.Errorf("stdout %q, want the echo of what came before ~. only", out.String())
	}
	if !strings.Contains(errOut.String(), "console of machine m1") ||
		!strings.Contains(errOut.String(), "console ended: ended by the user") && !strings.Contains(errOut.String(), "console closed") {
		t.Errorf("stderr %q, want the start and the end", errOut.String())
	}
}
