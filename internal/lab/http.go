package lab

import (
	"context"
	"fmt"
	"io"
	"net/http"
)

// maxBody bounds what GetBody reads: status documents, metrics and heap profiles are smaller.
const maxBody = 64 << 20

// GetBody makes GET url with client and returns the body of a 200 answer; any other answer is
// an error quoting the start of the body.
func GetBody(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", req.URL.Path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %.200s", req.URL.Path, resp.Status, body)
	}
	return body, nil
}
