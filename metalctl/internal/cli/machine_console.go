package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

const consoleHelp = `Attach to the machine's serial console, streamed through metal-central and
the partition's metal-bmc (IPMI serial-over-LAN, or the BMC's SSH serial
console). Keystrokes go to the machine as typed (the terminal is in raw mode
when stdin is one, so Ctrl-C reaches the machine); window size changes are
passed on.

Escape sequences, recognised only right after a newline (as ssh's):
  ~.   end the console
  ~~   send one ~
  ~?   list the escape sequences

Allowed to owners and editors of the machine's project and to admins. One
console per machine at a time: a second one is refused while the first is
open. The console ends, with the reason shown, when the machine's allocation
changes (freed, reallocated, reinstalled). Every session is audited (who,
machine, start, end, bytes each way).`

func (a *app) machineConsoleCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "console ID",
		Short:   "Attach to a machine's serial console (~. ends it)",
		Long:    consoleHelp,
		Example: `  metalctl machine console 4c4c4544-0042-3510-8052-b4c04f4d3232`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// No --timeout: a console lasts as long as the person wants.
			timeout := a.flags.timeout
			a.flags.timeout = 0
			defer func() { a.flags.timeout = timeout }()
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				return runConsole(ctx, apiv1.NewMachineServiceClient(cc), args[0], cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
			})
		},
	}
}

// runConsole runs one console session between in/out and the machine.
func runConsole(ctx context.Context, client apiv1.MachineServiceClient, id string, in io.Reader, out, errOut io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Console(ctx)
	if err != nil {
		return err
	}
	inFile, _ := in.(*os.File)
	raw := inFile != nil && term.IsTerminal(int(inFile.Fd()))
	first := &apiv1.MachineServiceConsoleRequest{Id: id, Window: windowOf(inFile, out)}
	if err := stream.Send(first); err != nil {
		_, err = stream.Recv()
		return err
	}
	nl := "\n"
	if raw {
		old, err := term.MakeRaw(int(inFile.Fd()))
		if err != nil {
			return fmt.Errorf("raw terminal: %w", err)
		}
		defer func() { _ = term.Restore(int(inFile.Fd()), old) }()
		nl = "\r\n"
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-winch:
					if w := windowOf(inFile, out); w != nil {
						_ = stream.Send(&apiv1.MachineServiceConsoleRequest{Window: w})
					}
				}
			}
		}()
	}

	// Keystrokes: the escape sequences are handled here, the rest goes on.
	quit := make(chan struct{})
	go func() {
		esc := &escaper{lineStart: true}
		buf := make([]byte, 4096)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				data, stop, help := esc.feed(buf[:n])
				if help {
					_, _ = fmt.Fprint(errOut, "Supported escape sequences:"+nl+"  ~.  end the console"+nl+"  ~~  send ~"+nl+"  ~?  this list"+nl)
				}
				if len(data) > 0 {
					if serr := stream.Send(&apiv1.MachineServiceConsoleRequest{Data: data}); serr != nil {
						return
					}
				}
				if stop {
					close(quit)
					_ = stream.CloseSend()
					return
				}
			}
			if err != nil {
				// End of input (a pipe): end the session.
				_ = stream.CloseSend()
				return
			}
		}
	}()

	for {
		resp, err := stream.Recv()
		if err != nil {
			select {
			case <-quit:
				_, _ = fmt.Fprint(errOut, nl+"[console closed]"+nl)
				return nil
			default:
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch m := resp.GetMsg().(type) {
		case *apiv1.MachineServiceConsoleResponse_Started:
			_, _ = fmt.Fprintf(errOut, "[console of machine %s (%s); ~. ends it]%s", id, protocolName(m.Started.GetProtocol()), nl)
		case *apiv1.MachineServiceConsoleResponse_Data:
			if _, err := out.Write(m.Data); err != nil {
				return err
			}
		case *apiv1.MachineServiceConsoleResponse_End:
			_, _ = fmt.Fprintf(errOut, "%s[console ended: %s]%s", nl, m.End.GetReason(), nl)
			return nil
		}
	}
}

func protocolName(p agentv1.BmcProtocol) string {
	if p == agentv1.BmcProtocol_BMC_PROTOCOL_IPMI {
		return "IPMI serial-over-LAN"
	}
	return "BMC SSH serial console"
}

// windowOf is the terminal's size, nil when there is no terminal.
func windowOf(in *os.File, out io.Writer) *agentv1.ConsoleWindow {
	for _, f := range []*os.File{in, asFile(out)} {
		if f == nil || !term.IsTerminal(int(f.Fd())) {
			continue
		}
		if cols, rows, err := term.GetSize(int(f.Fd())); err == nil && rows > 0 && cols > 0 {
			return &agentv1.ConsoleWindow{Rows: uint32(rows), Cols: uint32(cols)}
		}
	}
	return nil
}

func asFile(w io.Writer) *os.File {
	f, _ := w.(*os.File)
	return f
}

// escaper finds ssh-style escape sequences in typed input: a ~ right
// after a newline (or at the start) followed by ".", "~" or "?".
type escaper struct {
	lineStart bool // the previous byte ended a line
	tilde     bool // a ~ at a line start is held back
}

// feed returns what to send, whether ~. was typed (what follows it is
// dropped), and whether ~? was.
func (e *escaper) feed(in []byte) (out []byte, quit, help bool) {
	out = make([]byte, 0, len(in))
	for _, b := range in {
		if e.tilde {
			e.tilde = false
			switch b {
			case '.':
				return out, true, help
			case '~':
				out = append(out, '~')
				e.lineStart = false
				continue
			case '?':
				help = true
				e.lineStart = true
				continue
			default:
				out = append(out, '~')
			}
		} else if e.lineStart && b == '~' {
			e.tilde = true
			continue
		}
		out = append(out, b)
		e.lineStart = b == '\r' || b == '\n'
	}
	return out, false, help
}
