package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

const (
	defaultWaitTimeout = 15 * time.Minute
	// The event stream is reopened after a break with a doubling delay in
	// these bounds; an event received resets it.
	followMinBackoff = 200 * time.Millisecond
	followMaxBackoff = 5 * time.Second
	// lastEventsShown is how many of the newest event lines a failed
	// --wait repeats in its error.
	lastEventsShown = 5
)

// Provisioning event types (agentv1.Event.type) the CLI acts on.
const (
	eventWaiting          = "Waiting"
	eventInstalling       = "Installing"
	eventBootingNewKernel = "Booting New Kernel"
	eventPhonedHome       = "Phoned Home"
	eventCrashed          = "Crashed"
)

// Time layouts of event lines: the log spans days, a --wait minutes.
const (
	logTimeLayout  = "2006-01-02 15:04:05"
	waitTimeLayout = "15:04:05"
)

// streamConn connects like withConn but leaves the deadline to the caller:
// a followed event stream lives as long as the user wants it to.
func (a *app) streamConn() (*grpc.ClientConn, error) {
	cfg, _, err := a.loadConfig()
	if err != nil {
		return nil, err
	}
	s, err := resolveSettings(a.flags, a.streams.env, cfg)
	if err != nil {
		return nil, err
	}
	return dial(s)
}

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// eventLine renders one event as "<time>  <event padded>  <message>", in
// the time zone of the CLI's clock (local in real use, UTC in tests).
func (a *app) eventLine(ev *apiv1.MachineEvent, layout string) string {
	t := ev.GetTime().AsTime().In(a.streams.now().Location()).Format(layout)
	line := fmt.Sprintf("%s  %-18s", t, ev.GetEvent())
	if m := ev.GetMessage(); m != "" {
		line += "  " + cleanCell(m)
	}
	if e := ev.GetError(); e != "" {
		line += "  [error: " + cleanCell(e) + "]"
	}
	return strings.TrimRight(line, " ")
}

// eventKey identifies an event across reconnects.
type eventKey struct {
	at    int64
	event string
}

// eventFollower reads a machine's event log and, with follow, keeps
// reading across broken streams: a reconnect asks for the whole log again
// and skips what was already handed on, so no event is shown twice.
type eventFollower struct {
	client apiv1.MachineServiceClient
	id     string
	follow bool
	// limit applies to the first request only; after a reconnect the
	// watermark decides what is new.
	limit uint32
	// since hides older events; it advances with every event handed on.
	since  time.Time
	seen   map[eventKey]bool
	errOut io.Writer
}

// isNew reports whether ev has not been handed on yet and records it.
func (f *eventFollower) isNew(ev *apiv1.MachineEvent) bool {
	t := ev.GetTime().AsTime()
	if t.Before(f.since) {
		return false
	}
	k := eventKey{at: t.UnixNano(), event: ev.GetEvent()}
	if f.seen == nil {
		f.seen = map[eventKey]bool{}
	}
	if f.seen[k] {
		return false
	}
	f.seen[k] = true
	f.since = t
	return true
}

// handlerDone carries the end a handler chose through once.
type handlerDone struct{ err error }

func (h *handlerDone) Error() string { return "handler done" }

// run hands every new event to handle until handle returns stop (its error
// is run's), the log ends (without follow), ctx ends, or the stream fails
// with anything but Unavailable.
func (f *eventFollower) run(ctx context.Context, handle func(*apiv1.MachineServiceEventsResponse) (stop bool, err error)) error {
	delay := followMinBackoff
	req := &apiv1.MachineServiceEventsRequest{Id: f.id, Follow: f.follow, Limit: f.limit}
	for {
		got, err := f.once(ctx, req, handle)
		if hd, ok := errors.AsType[*handlerDone](err); ok {
			return hd.err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case err == nil && !f.follow:
			return nil
		case err == nil:
			err = errors.New("central ended the stream")
		case status.Code(err) != codes.Unavailable:
			return fmt.Errorf("events of machine %s: %w", f.id, err)
		}
		if got {
			delay = followMinBackoff
		}
		if f.errOut != nil {
			fmt.Fprintf(f.errOut, "event stream of machine %s broke (%s); reconnecting\n", f.id, describeError(err))
		}
		if !sleepCtx(ctx, delay) {
			return ctx.Err()
		}
		delay = min(2*delay, followMaxBackoff)
		req = &apiv1.MachineServiceEventsRequest{Id: f.id, Follow: f.follow}
	}
}

// once reads one stream; got reports whether any new event came.
func (f *eventFollower) once(ctx context.Context, req *apiv1.MachineServiceEventsRequest, handle func(*apiv1.MachineServiceEventsResponse) (bool, error)) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := f.client.Events(ctx, req)
	if err != nil {
		return false, err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		if resp.GetEvent() == nil || !f.isNew(resp.GetEvent()) {
			continue
		}
		got = true
		if stop, err := handle(resp); stop || err != nil {
			return got, &handlerDone{err: err}
		}
	}
}

// sleepCtx waits d or until ctx ends; false means ctx ended. A twin of
// the agent runtime's Sleep: metalctl imports only proto/.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (a *app) machineLogsCommand() *cobra.Command {
	var (
		follow bool
		limit  uint32
	)
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Show a machine's provisioning event log; -f follows it",
		Long: `Show a machine's provisioning event log, oldest first, one event per line.

With -f the command keeps following new events (reconnecting when the
stream to central breaks) until interrupted. With -o json or yaml every
event is printed as its own document.`,
		Example: `  metalctl machine logs 4c4c4544-0042-3510-8052-b4c04f4d3232 --limit 20
  metalctl machine logs 4c4c4544-0042-3510-8052-b4c04f4d3232 -f`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.printer("")
			if err != nil {
				return err
			}
			cc, err := a.streamConn()
			if err != nil {
				return err
			}
			defer cc.Close()
			parent := cmdContext(cmd)
			ctx := parent
			if !follow && a.flags.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, a.flags.timeout)
				defer cancel()
			}
			f := &eventFollower{client: apiv1.NewMachineServiceClient(cc), id: args[0], follow: follow, limit: limit, errOut: a.root.ErrOrStderr()}
			n := 0
			err = f.run(ctx, func(resp *apiv1.MachineServiceEventsResponse) (bool, error) {
				n++
				return false, a.printEvent(p, resp.GetEvent(), n == 1)
			})
			// Interrupting -f is how it is meant to end.
			if follow && parent.Err() != nil {
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep following new events")
	cmd.Flags().Uint32Var(&limit, "limit", 0, "show only this many of the newest past events (0: all)")
	return cmd
}

// printEvent prints one event of a log as a line, or as a document of its
// own in the json, yaml and template formats.
func (a *app) printEvent(p *printer, ev *apiv1.MachineEvent, first bool) error {
	if p.isTable() {
		_, err := fmt.Fprintln(p.w, a.eventLine(ev, logTimeLayout))
		return err
	}
	if p.format == formatYAML && !first {
		if _, err := fmt.Fprintln(p.w, "---"); err != nil {
			return err
		}
	}
	return printOne[*apiv1.MachineEvent](p, nil, ev)
}

// waitStages are the steps of an installation as the progress display
// shows them; the value is the bar's position when the step is reached.
func waitStage(event string) (pos int64, ok bool) {
	switch event {
	case eventWaiting:
		return 0, true
	case eventInstalling:
		return 100, true
	case eventBootingNewKernel:
		return 200, true
	case eventPhonedHome:
		return 300, true
	}
	return 0, false
}

const waitTotal = 300

// percentIn finds "NN%" in an installer message ("image 42%") so the bar
// moves while the image streams.
func percentIn(msg string) (int64, bool) {
	i := strings.IndexByte(msg, '%')
	if i <= 0 {
		return 0, false
	}
	j := i
	for j > 0 && msg[j-1] >= '0' && msg[j-1] <= '9' {
		j--
	}
	if j == i || i-j > 3 {
		return 0, false
	}
	var n int64
	for _, c := range msg[j:i] {
		n = n*10 + int64(c-'0')
	}
	return min(n, 100), true
}

// progressView shows a --wait: event lines and the position in the
// lifecycle.
type progressView interface {
	line(s string)
	stage(name string, pos int64)
	finish(ok bool)
}

// plainView prints lines only: for pipes, CI logs and tests.
type plainView struct{ w io.Writer }

func (v plainView) line(s string)       { fmt.Fprintln(v.w, s) }
func (v plainView) stage(string, int64) {}
func (v plainView) finish(bool)         {}

// barView is a progress bar under the event lines, for terminals.
type barView struct {
	p    *mpb.Progress
	bar  *mpb.Bar
	name atomic.Pointer[string]
}

func newBarView(w io.Writer, machineID string) *barView {
	v := &barView{}
	name := "Allocated"
	v.name.Store(&name)
	v.p = mpb.New(mpb.WithOutput(w), mpb.WithWidth(60))
	v.bar = v.p.New(waitTotal, mpb.BarStyle(),
		mpb.PrependDecorators(
			decor.Name(machineID, decor.WCSyncSpaceR),
			decor.Any(func(decor.Statistics) string { return *v.name.Load() }, decor.WC{W: 20, C: decor.DindentRight}),
		),
		mpb.AppendDecorators(decor.Elapsed(decor.ET_STYLE_GO)),
	)
	return v
}

func (v *barView) line(s string) { fmt.Fprintln(v.p, s) }

func (v *barView) stage(name string, pos int64) {
	v.name.Store(&name)
	v.bar.SetCurrent(pos)
}

func (v *barView) finish(ok bool) {
	if ok {
		v.bar.SetCurrent(waitTotal)
	} else {
		v.bar.Abort(false)
	}
	v.p.Wait()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// waitFailure is why a --wait failed, with the newest events for context.
func waitFailure(reason string, last []string) error {
	var b strings.Builder
	b.WriteString(reason)
	if len(last) == 0 {
		b.WriteString("\nno provisioning events received")
	} else {
		b.WriteString("\nlast events:")
		for _, l := range last {
			b.WriteString("\n  " + l)
		}
	}
	return errors.New(b.String())
}

func hasIssue(m *apiv1.Machine, id string) (*apiv1.MachineIssue, bool) {
	i := slices.IndexFunc(m.GetIssues(), func(is *apiv1.MachineIssue) bool { return is.GetId() == id })
	if i < 0 {
		return nil, false
	}
	return m.GetIssues()[i], true
}

// createAndWait allocates and follows the provisioning until the machine
// phones home, crashes or the timeout passes.
func (a *app) createAndWait(cmd *cobra.Command, r resource[*apiv1.Machine], req *apiv1.MachineServiceCreateRequest, timeout time.Duration) error {
	p, err := a.printer("")
	if err != nil {
		return err
	}
	cc, err := a.streamConn()
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx := cmdContext(cmd)
	client := apiv1.NewMachineServiceClient(cc)

	callCtx, cancel := ctx, context.CancelFunc(func() {})
	if a.flags.timeout > 0 {
		callCtx, cancel = context.WithTimeout(ctx, a.flags.timeout)
	}
	resp, err := client.Create(callCtx, req)
	cancel()
	if err != nil {
		return err
	}
	m := resp.GetMachine()
	start := a.streams.now()

	// Humans get the events on stdout; when stdout carries a document, the
	// events go to stderr.
	out := a.root.OutOrStdout()
	lines := out
	if !p.isTable() {
		lines = a.root.ErrOrStderr()
	}
	fmt.Fprintf(lines, "Allocated machine %s%s in %s; waiting up to %s for it to phone home.\n",
		m.GetId(), hostnameSuffix(m), m.GetPartitionId(), timeout)
	var view progressView = plainView{w: lines}
	if isTerminal(lines) {
		view = newBarView(lines, m.GetId())
	}

	wctx, wcancel := context.WithTimeout(ctx, timeout)
	defer wcancel()
	f := &eventFollower{client: client, id: m.GetId(), follow: true, errOut: a.root.ErrOrStderr()}
	// The log before this allocation (an earlier tenant's "Phoned Home")
	// says nothing about this one. Central stamps events when it commits
	// them, on the same clock as the allocation.
	if c := m.GetAllocation().GetCreatedAt(); c != nil {
		f.since = c.AsTime()
	}
	var (
		last   []string
		final  = m
		homeAt time.Time
	)
	err = f.run(wctx, func(er *apiv1.MachineServiceEventsResponse) (bool, error) {
		ev := er.GetEvent()
		if em := er.GetMachine(); em != nil {
			final = em
		}
		l := a.eventLine(ev, waitTimeLayout)
		view.line(l)
		last = append(last, l)
		if len(last) > lastEventsShown {
			last = last[1:]
		}
		if pos, ok := waitStage(ev.GetEvent()); ok {
			if pct, ok := percentIn(ev.GetMessage()); ok && ev.GetEvent() == eventInstalling {
				pos += pct
			}
			view.stage(ev.GetEvent(), pos)
		}
		switch ev.GetEvent() {
		case eventPhonedHome:
			homeAt = ev.GetTime().AsTime()
			return true, nil
		case eventCrashed:
			reason := fmt.Sprintf("machine %s crashed", m.GetId())
			if msg := ev.GetMessage(); msg != "" {
				reason += ": " + msg
			}
			return true, waitFailure(reason, last)
		}
		if is, ok := hasIssue(er.GetMachine(), issueCrashLoop); ok {
			return true, waitFailure(fmt.Sprintf("machine %s is in a crash loop: %s", m.GetId(), is.GetDescription()), last)
		}
		return false, nil
	})
	view.finish(err == nil)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return waitFailure(fmt.Sprintf("interrupted while waiting for machine %s", m.GetId()), last)
	case wctx.Err() != nil:
		return waitFailure(fmt.Sprintf("machine %s did not phone home within %s", m.GetId(), timeout), last)
	default:
		return err
	}
	if !p.isTable() {
		return printOne(p, r.cols, final)
	}
	elapsed := a.streams.now().Sub(start)
	if c := final.GetAllocation().GetCreatedAt(); c != nil && !homeAt.IsZero() {
		elapsed = homeAt.Sub(c.AsTime())
	}
	return a.printWaitSummary(out, final, elapsed)
}

func hostnameSuffix(m *apiv1.Machine) string {
	if h := m.GetAllocation().GetHostname(); h != "" {
		return " (" + h + ")"
	}
	return ""
}

func (a *app) printWaitSummary(w io.Writer, m *apiv1.Machine, elapsed time.Duration) error {
	al := m.GetAllocation()
	rows := [][]string{
		{"id:", m.GetId()},
		{"hostname:", al.GetHostname()},
		{"ips:", strings.Join(al.GetIps(), ", ")},
		{"project:", al.GetProjectId()},
		{"image:", al.GetImageId()},
	}
	if _, err := fmt.Fprintf(w, "Machine %s phoned home after %s.\n", m.GetId(), max(elapsed, 0).Round(time.Second)); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	var b strings.Builder
	for _, r := range rows {
		b.WriteString(strings.TrimRight(fmt.Sprintf("  %-10s %s", r[0], r[1]), " ") + "\n")
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}
