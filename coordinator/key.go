package coordinator

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
)

// LoadKey reads a gossip key file: the base64 (standard alphabet, surrounding white space
// ignored) of 16, 24 or 32 bytes, selecting AES-128, -192 or -256. Errors name the file and
// never its content.
func LoadKey(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	text := bytes.TrimSpace(raw)
	key := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, err := base64.StdEncoding.Decode(key, text)
	if err != nil {
		// The decoder's error quotes an offset only, but say nothing about the content at all.
		return nil, fmt.Errorf("gossip key %s: not valid base64", path)
	}
	key = key[:n]
	if err := checkKey(key); err != nil {
		return nil, fmt.Errorf("gossip key %s: %w", path, err)
	}
	return key, nil
}

func checkKey(key []byte) error {
	switch len(key) {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("key is %d bytes, must be 16, 24 or 32 (AES-128, -192 or -256)", len(key))
}
