package server

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
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

// unary records metrics and logs each call once, with who made it. It never
// logs request bodies: they may carry secrets.
func (m *metrics) unary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		code := status.Code(err)
		took := time.Since(start)
		m.requests.WithLabelValues(info.FullMethod, code.String()).Inc()
		m.duration.WithLabelValues(info.FullMethod).Observe(took.Seconds())
		attrs := []any{"method", info.FullMethod, "code", code.String(), "took", took}
		if c := auth.CallFrom(ctx); c != nil {
			attrs = append(attrs, "subject", c.Principal.TokenID, "request_id", c.RequestID)
		}
		switch code {
		case codes.OK:
			log.Debug("rpc", attrs...)
		case codes.Internal, codes.Unknown, codes.DataLoss:
			log.Error("rpc", append(attrs, "err", err)...)
		default:
			log.Info("rpc", append(attrs, "err", status.Convert(err).Message())...)
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
