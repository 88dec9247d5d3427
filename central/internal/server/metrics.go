package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/service"
)

// metrics counts and times every RPC by method and code.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "metalfleet", Subsystem: "central", Name: "grpc_requests_total",
			Help: "gRPC requests handled, by method and status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "metalfleet", Subsystem: "central", Name: "grpc_request_duration_seconds",
			Help: "gRPC request latency, by method.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"method"}),
	}
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.duration.Describe(ch)
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.duration.Collect(ch)
}

// maxLogMessage bounds the error text of one log line: messages may echo
// request values, and a client must not be able to flood the log.
const maxLogMessage = 1024

// unary records metrics and logs each call once, with who made it. It never
// logs request bodies: they may carry secrets. It is the outermost
// interceptor and so the last line of defence for what a client reads:
// the text of an Internal or Unknown error (which may be the database's
// own words) goes to the log, and the client gets a generic message with
// the request id to ask an operator about.
func (m *metrics) unary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		rid := auth.RequestID(ctx)
		ctx = auth.WithRequestID(ctx, rid)
		resp, err := handler(ctx, req)
		code := status.Code(err)
		took := time.Since(start)
		m.requests.WithLabelValues(info.FullMethod, code.String()).Inc()
		m.duration.WithLabelValues(info.FullMethod).Observe(took.Seconds())
		attrs := []any{"method", info.FullMethod, "code", code.String(), "took", took, "request_id", rid, "subject", auth.Subject(ctx)}
		switch code {
		case codes.OK:
			log.Debug("rpc", attrs...)
		case codes.Internal, codes.Unknown, codes.DataLoss:
			detail := err.Error()
			var ie *service.InternalError
			if errors.As(err, &ie) {
				detail = ie.Detail()
			}
			log.Error("rpc", append(attrs, "err", auth.Clip(detail, maxLogMessage))...)
			err = status.Errorf(code, "internal error (request id %s)", rid)
		default:
			msg := status.Convert(err).Message()
			log.Info("rpc", append(attrs, "err", auth.Clip(msg, maxLogMessage))...)
			if len(msg) > maxLogMessage {
				// Details (field violations) are bounded where they are
				// made; the message is cut here for every code at once.
				p := status.Convert(err).Proto()
				p.Message = auth.Clip(msg, maxLogMessage)
				err = status.FromProto(p).Err()
			}
		}
		return resp, err
	}
}

// recoverUnary turns a handler panic into Internal instead of killing central.
func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
		}()
		return handler(ctx, req)
	}
}
