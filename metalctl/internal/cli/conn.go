package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// connSettings is what a connection to metal-central needs, after merging
// flags, environment and the config file.
type connSettings struct {
	apiURL   string
	apiToken string
	caFile   string
	insecure bool
}

// resolveSettings applies the precedence flag > environment > context. The
// context itself is chosen the same way: --context > METALCTL_CONTEXT >
// current. Unset flags are empty strings, so an empty value falls through.
func resolveSettings(f globalFlags, env func(string) string, cfg *config) (connSettings, error) {
	var ctx contextConfig
	if name := firstNonEmpty(f.context, env(envContext), cfg.Current); name != "" {
		c, ok := cfg.Contexts[name]
		if !ok {
			return connSettings{}, fmt.Errorf("context %q not found in config file", name)
		}
		ctx = c
	}
	s := connSettings{
		apiURL:   firstNonEmpty(f.apiURL, env(envAPIURL), ctx.APIURL),
		apiToken: firstNonEmpty(f.apiToken, env(envAPIToken), ctx.APIToken),
		caFile:   firstNonEmpty(f.caFile, env(envCAFile), ctx.CAFile),
		insecure: f.insecure,
	}
	if s.apiURL == "" {
		return connSettings{}, errors.New("no API URL: pass --api-url, set " + envAPIURL + " or configure a context with 'metalctl context set'")
	}
	u, err := normalizeAPIURL(s.apiURL)
	if err != nil {
		return connSettings{}, err
	}
	s.apiURL = u
	return s, nil
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// normalizeAPIURL turns what users paste (often a URL) into the host:port
// gRPC expects. Only schemes that do not contradict the TLS setting are
// accepted; plaintext must be asked for with --insecure-plaintext.
func normalizeAPIURL(raw string) (string, error) {
	s := strings.TrimSpace(raw)
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		switch strings.ToLower(scheme) {
		case "https", "grpc", "grpcs":
			s = rest
		default:
			return "", fmt.Errorf("API URL %q: unsupported scheme %q, want host:port", raw, scheme)
		}
	}
	s = strings.TrimSuffix(s, "/")
	if s == "" {
		return "", fmt.Errorf("API URL %q: empty host", raw)
	}
	if strings.Contains(s, "/") {
		return "", fmt.Errorf("API URL %q: want host:port without a path", raw)
	}
	return s, nil
}

// bearerToken sends the API token with every call.
type bearerToken struct {
	token      string
	requireTLS bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity keeps gRPC from ever sending the token in clear
// text unless the user opted into plaintext.
func (b bearerToken) RequireTransportSecurity() bool { return b.requireTLS }

func dial(s connSettings) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithUserAgent("metalctl")}
	if s.insecure {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if s.caFile != "" {
			pem, err := os.ReadFile(s.caFile)
			if err != nil {
				return nil, fmt.Errorf("read CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("CA file %s: no PEM certificates found", s.caFile)
			}
			tc.RootCAs = pool
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	}
	if s.apiToken != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerToken{token: s.apiToken, requireTLS: !s.insecure}))
	}
	cc, err := grpc.NewClient(s.apiURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", s.apiURL, err)
	}
	return cc, nil
}

// withConn runs fn with a connection and a context bounded by --timeout.
func (a *app) withConn(cmd *cobra.Command, fn func(ctx context.Context, cc grpc.ClientConnInterface) error) error {
	cfg, _, err := a.loadConfig()
	if err != nil {
		return err
	}
	s, err := resolveSettings(a.flags, a.streams.env, cfg)
	if err != nil {
		return err
	}
	cc, err := dial(s)
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	if a.flags.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.flags.timeout)
		defer cancel()
	}
	return fn(ctx, cc)
}
