package coordinator

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		panic(err)
	}
	if out.Counter != nil {
		return out.Counter.GetValue()
	}
	return out.Gauge.GetValue()
}

// digest returns a valid sha256 digest derived from s.
func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// memberlist's framing (net.go, label.go), spelled out here so the tests do not depend on
// our parser.
const (
	mlLabelByte  = 244 // hasLabelMsg
	mlEncryptMsg = 10
)

// labelHeader is memberlist's label header for label.
func labelHeader(label string) []byte {
	return append([]byte{mlLabelByte, byte(len(label))}, label...)
}

// encryptedHeader is the start of an "encrypted" stream that declares n more bytes.
func encryptedHeader(label string, n uint32) []byte {
	b := append(labelHeader(label), mlEncryptMsg)
	return binary.BigEndian.AppendUint32(b, n)
}
