package fleet

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// report validates and stores one report and answers it.
//
// A report with a seq is acknowledged: Ack STORED once it is stored (also
// when it was stored before: the agent sends a report again when its last
// stream ended before the ack came), Ack REJECTED when central will never
// store it (it is malformed, or the domain refuses it); the stream goes on
// either way. A report central cannot store now (the database is away) is
// not answered: the stream ends with Unavailable and the agent sends it
// again, with everything after it, on its next stream, so the order holds.
//
// A report without a seq (an agent from before acks) is handled as it was:
// a refusal or a failure ends the stream.
func (h *Hub) report(ctx context.Context, c *conn, r *agentv1.Report, sent uint64) error {
	err := validateReport(r, sent)
	dup := false
	if err == nil {
		dup, err = h.storeReport(ctx, c, r)
	}
	acked := r.GetSeq() != 0
	switch status.Code(err) {
	case codes.OK:
		if dup {
			h.metrics.reports.WithLabelValues("duplicate").Inc()
			h.observed.touch(c.id)
		} else {
			h.metrics.reports.WithLabelValues("stored").Inc()
			h.metrics.events.Add(float64(len(r.GetEvents())))
			h.observed.report(c.id, r)
		}
		if !acked {
			return nil
		}
		return h.ack(c, &agentv1.Ack{Seq: r.GetSeq(), Result: agentv1.AckResult_ACK_RESULT_STORED})
	case codes.InvalidArgument, codes.PermissionDenied, codes.FailedPrecondition:
		h.metrics.reports.WithLabelValues("rejected").Inc()
		h.log.Warn("agent report rejected", "agent", c.id, "seq", r.GetSeq(), "err", err)
		if !acked {
			return err
		}
		h.observed.touch(c.id)
		return h.ack(c, &agentv1.Ack{Seq: r.GetSeq(), Result: agentv1.AckResult_ACK_RESULT_REJECTED, Message: status.Convert(err).Message()})
	}
	h.metrics.reports.WithLabelValues("failed").Inc()
	h.log.Error("store agent report", "agent", c.id, "seq", r.GetSeq(), "err", err)
	return status.Error(codes.Unavailable, "central cannot store the report now; reconnect and report again")
}

// ack answers a report. The hub's senders send documents on the same
// stream, and gRPC allows one sender at a time: c.mu orders them.
func (h *Hub) ack(c *conn, a *agentv1.Ack) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil
	}
	watchdog := time.AfterFunc(h.cfg.SendTimeout, func() { c.close(errSlowAgent) })
	defer watchdog.Stop()
	return c.stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Ack{Ack: a}})
}
