package agent

import (
	"fmt"
	"io"
	"log/slog"
)

// NewLogger is the logger every agent's main builds from its --log-level
// and --log-format flags. The level is a LevelVar so that the desired
// document's settings.log_level can change it later (Config.LogLevel).
func NewLogger(w io.Writer, level, format string) (*slog.Logger, *slog.LevelVar, error) {
	var lv slog.LevelVar
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: &lv}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), &lv, nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), &lv, nil
	}
	return nil, nil, fmt.Errorf("--log-format: want text or json, not %q", format)
}
