package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// refuseWithin bounds how long the agent may take to refuse a bad setting.
const refuseWithin = 10 * time.Second

// badSetting is a setting that would hurt a node, given in the file or as a flag.
type badSetting struct {
	field string
	set   func(c *config.Config)
	flags []string
}

var harmful = []badSetting{
	{field: "refresh_interval", set: func(c *config.Config) { c.RefreshInterval = config.Duration{Duration: time.Nanosecond} }},
	{field: "agent.resync_interval", set: func(c *config.Config) { c.Agent.ResyncInterval = config.Duration{Duration: time.Nanosecond} }},
	{field: "agent.pull_timeout", set: func(c *config.Config) { c.Agent.PullTimeout = config.Duration{Duration: time.Millisecond} }},
	{field: "agent.backoff_initial", set: func(c *config.Config) { c.Agent.BackoffInitial = config.Duration{} }},
	{field: "agent.max_parallel_pulls", flags: []string{"--max-parallel-pulls", "500"}},
}

func badSettings() group {
	var fields []string
	for _, b := range harmful {
		fields = append(fields, b.field)
	}
	row := newCheck("harmful settings: "+strings.Join(fields, ", "),
		fmt.Sprintf("each refused at start: exit status 2 within %s, the message naming the field", secs(refuseWithin)))
	return group{rows: []*check{row}, run: func(ctx context.Context, e *env) error {
		row.start()
		slowest := time.Duration(0)
		refused := 0
		for i, b := range harmful {
			dir := filepath.Join(e.dir, fmt.Sprintf("bad%d", i))
			c := lab.AgentConfig(dir, "unix://"+filepath.Join(dir, "no-runtime.sock"))
			if b.set != nil {
				b.set(&c)
			}
			path := filepath.Join(dir, "config.yaml")
			if err := mkdirWrite(dir, path, c); err != nil {
				return err
			}
			start := time.Now()
			code, out := runBinary(ctx, e.bin, append([]string{"agent", "--config", path}, b.flags...))
			took := time.Since(start)
			slowest = max(slowest, took)
			if row.expect(code == 2 && strings.Contains(out, b.field), "%s: exit %d: %s", b.field, code, shorten(out, 120)) &&
				row.expect(took <= refuseWithin, "%s: refused after %s", b.field, secs(took)) {
				refused++
			}
		}
		row.figure("%d/%d refused with status 2, slowest %s", refused, len(harmful), secs(slowest))
		return nil
	}}
}

func mkdirWrite(dir, path string, c config.Config) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return c.WriteFile(path)
}

// runBinary runs bin with args (killed after twice refuseWithin) and returns its exit status
// (-1 when it did not exit by itself) and output.
func runBinary(ctx context.Context, bin string, args []string) (int, string) {
	ctx, cancel := context.WithTimeout(ctx, 2*refuseWithin)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case ctx.Err() != nil:
		return -1, string(out)
	case errors.As(err, &exit):
		return exit.ExitCode(), string(out)
	}
	return -1, err.Error()
}
