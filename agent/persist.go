package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

const desiredFile = "desired.json"

// loadDesired reads the persisted desired list; (nil, nil) when there is none.
func loadDesired(dir string) (*Desired, error) {
	path := filepath.Join(dir, desiredFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read desired list: %w", err)
	}
	var d Desired
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("decode desired list %s: %w", path, err)
	}
	for i, img := range d.Images {
		if img.Ref.IsZero() {
			return nil, fmt.Errorf("desired list %s: images[%d]: no image_url", path, i)
		}
	}
	return &d, nil
}

// saveDesired writes the desired list atomically (temp file, fsync, rename), so a crash
// leaves the old list or the new one, never half of one.
func saveDesired(dir string, d Desired) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return fmt.Errorf("encode desired list: %w", err)
	}
	f, err := os.CreateTemp(dir, desiredFile+".*")
	if err != nil {
		return fmt.Errorf("save desired list: %w", err)
	}
	defer os.Remove(f.Name()) // no-op after the rename
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("save desired list: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save desired list: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save desired list: %w", err)
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, desiredFile)); err != nil {
		return fmt.Errorf("save desired list: %w", err)
	}
	return nil
}
