package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// config is ~/.metalctl/config.yaml.
type config struct {
	Current  string                   `json:"current,omitempty"`
	Contexts map[string]contextConfig `json:"contexts,omitempty"`
}

// contextConfig is one named set of connection settings.
type contextConfig struct {
	APIURL   string `json:"api-url,omitempty"`
	APIToken string `json:"api-token,omitempty"`
	CAFile   string `json:"ca-file,omitempty"`
}

// configPath is METALCTL_CONFIG or ~/.metalctl/config.yaml; "" when neither
// can be determined, which reads as an empty config.
func (a *app) configPath() string {
	if p := a.streams.env(envConfig); p != "" {
		return p
	}
	if home := a.streams.env("HOME"); home != "" {
		return filepath.Join(home, ".metalctl", "config.yaml")
	}
	return ""
}

func (a *app) loadConfig() (*config, string, error) {
	path := a.configPath()
	cfg, err := readConfig(path)
	return cfg, path, err
}

func readConfig(path string) (*config, error) {
	cfg := &config{}
	if path == "" {
		return cfg, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if err := yaml.UnmarshalStrict(b, cfg); err != nil {
		return nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	return cfg, nil
}

// writeConfig replaces the file atomically; CreateTemp makes it 0600, which
// matters because the file holds API tokens.
func writeConfig(path string, cfg *config) error {
	if path == "" {
		return errors.New("no config path: set HOME or " + envConfig)
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create config directory: %w", err)
	}
	f, err := os.CreateTemp(dir, ".config-*.yaml")
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	defer os.Remove(f.Name()) // no-op after a successful rename
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write config: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write config: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// contextView is how a context is shown; the token is never printed, only
// whether one is set.
type contextView struct {
	Name     string `json:"name"`
	Current  bool   `json:"current"`
	APIURL   string `json:"api-url,omitempty"`
	APIToken string `json:"api-token,omitempty"`
	CAFile   string `json:"ca-file,omitempty"`
}

func viewContext(cfg *config, name string) contextView {
	c := cfg.Contexts[name]
	v := contextView{Name: name, Current: name == cfg.Current, APIURL: c.APIURL, CAFile: c.CAFile}
	if c.APIToken != "" {
		v.APIToken = "(set)"
	}
	return v
}

func (a *app) newContextCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "context",
		Aliases: []string{"ctx"},
		Short:   "Manage connection contexts in the config file",
	}

	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List contexts",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := a.printer("")
			if err != nil {
				return err
			}
			cfg, _, err := a.loadConfig()
			if err != nil {
				return err
			}
			names := make([]string, 0, len(cfg.Contexts))
			for n := range cfg.Contexts {
				names = append(names, n)
			}
			slices.Sort(names)
			views := make([]contextView, 0, len(names))
			for _, n := range names {
				views = append(views, viewContext(cfg, n))
			}
			return printPlain(p, views, false, []string{"CURRENT", "NAME", "API-URL", "CA-FILE"}, func(v contextView) []string {
				cur := ""
				if v.Current {
					cur = "*"
				}
				return []string{cur, v.Name, v.APIURL, v.CAFile}
			})
		},
	}

	show := &cobra.Command{
		Use:   "show [NAME]",
		Short: "Show a context (default: the current one); the token is not printed",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.printer("yaml")
			if err != nil {
				return err
			}
			cfg, _, err := a.loadConfig()
			if err != nil {
				return err
			}
			name := firstNonEmpty(a.flags.context, a.streams.env(envContext), cfg.Current)
			if len(args) == 1 {
				name = args[0]
			}
			if name == "" {
				return errors.New("no current context; pass a NAME or run 'metalctl context use NAME'")
			}
			if _, ok := cfg.Contexts[name]; !ok {
				return fmt.Errorf("context %q not found", name)
			}
			return printPlain(p, []contextView{viewContext(cfg, name)}, true, []string{"CURRENT", "NAME", "API-URL", "API-TOKEN", "CA-FILE"}, func(v contextView) []string {
				cur := ""
				if v.Current {
					cur = "*"
				}
				return []string{cur, v.Name, v.APIURL, v.APIToken, v.CAFile}
			})
		},
	}

	use := &cobra.Command{
		Use:   "use NAME",
		Short: "Make NAME the current context",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, path, err := a.loadConfig()
			if err != nil {
				return err
			}
			if _, ok := cfg.Contexts[args[0]]; !ok {
				return fmt.Errorf("context %q not found", args[0])
			}
			cfg.Current = args[0]
			if err := writeConfig(path, cfg); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Switched to context %q.\n", args[0])
			return nil
		},
	}

	// set has its own --api-url etc. which shadow the global ones: here they
	// are values to store, not connection settings.
	var setFlags contextConfig
	set := &cobra.Command{
		Use:   "set NAME",
		Short: "Create or change a context; the first context becomes the current one",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, path, err := a.loadConfig()
			if err != nil {
				return err
			}
			if cfg.Contexts == nil {
				cfg.Contexts = map[string]contextConfig{}
			}
			c := cfg.Contexts[args[0]]
			fl := cmd.Flags()
			if fl.Changed("api-url") {
				if _, err := normalizeAPIURL(setFlags.APIURL); err != nil {
					return fmt.Errorf("--api-url: %w", err)
				}
				c.APIURL = setFlags.APIURL
			}
			if fl.Changed("api-token") {
				c.APIToken = setFlags.APIToken
			}
			if fl.Changed("ca-file") {
				c.CAFile = setFlags.CAFile
			}
			cfg.Contexts[args[0]] = c
			if cfg.Current == "" {
				cfg.Current = args[0]
			}
			if err := writeConfig(path, cfg); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Context %q saved.\n", args[0])
			return nil
		},
	}
	set.Flags().StringVar(&setFlags.APIURL, "api-url", "", "metal-central endpoint as host:port")
	set.Flags().StringVar(&setFlags.APIToken, "api-token", "", "bearer token")
	set.Flags().StringVar(&setFlags.CAFile, "ca-file", "", "PEM file with the server's CA")

	del := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a context",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, path, err := a.loadConfig()
			if err != nil {
				return err
			}
			if _, ok := cfg.Contexts[args[0]]; !ok {
				return fmt.Errorf("context %q not found", args[0])
			}
			delete(cfg.Contexts, args[0])
			if cfg.Current == args[0] {
				cfg.Current = ""
			}
			if err := writeConfig(path, cfg); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Context %q deleted.\n", args[0])
			return nil
		},
	}

	cmd.AddCommand(list, show, use, set, del)
	return cmd
}

// printPlain prints non-proto values (contexts) in the same formats as API
// objects.
func printPlain[T any](p *printer, items []T, single bool, headers []string, row func(T) []string) error {
	if p.isTable() {
		rows := make([][]string, 0, len(items))
		for _, it := range items {
			rows = append(rows, row(it))
		}
		return writeTable(p.w, headers, rows, p.noHeaders)
	}
	docs := make([][]byte, 0, len(items))
	for _, it := range items {
		b, err := json.Marshal(it)
		if err != nil {
			return fmt.Errorf("encode: %w", err)
		}
		docs = append(docs, b)
	}
	return p.emit(docs, single)
}
