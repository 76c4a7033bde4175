package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// SaramaConfig is a client configuration for tests: the broker's protocol
// version, a recognisable client id, and metadata retries that ride out a
// broker still electing partition leaders right after it started.
func SaramaConfig(t testing.TB) *sarama.Config {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V4_0_0_0 // scripts/kafka.sh runs Kafka 4.x
	cfg.ClientID = "bgpedge-test"
	cfg.Metadata.Retry.Max = 10
	cfg.Metadata.Retry.Backoff = 200 * time.Millisecond
	return cfg
}

// NewTopic creates a topic with a name unique to this test and run, with the
// given number of partitions (replication factor 1), waits until every
// partition has a leader, and deletes it when the test ends.
func NewTopic(t testing.TB, brokers []string, partitions int32) string {
	t.Helper()
	topic := uniqueTopic(t)
	admin, err := sarama.NewClusterAdmin(brokers, SaramaConfig(t))
	if err != nil {
		t.Fatalf("kafka admin on %v: %v", brokers, err)
	}
	defer admin.Close()
	detail := &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1}
	if err := admin.CreateTopic(topic, detail, false); err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	t.Cleanup(func() {
		a, err := sarama.NewClusterAdmin(brokers, SaramaConfig(t))
		if err != nil {
			t.Logf("delete topic %s: %v", topic, err)
			return
		}
		defer a.Close()
		if err := a.DeleteTopic(topic); err != nil && !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
			t.Logf("delete topic %s: %v", topic, err)
		}
	})
	client, err := sarama.NewClient(brokers, SaramaConfig(t))
	if err != nil {
		t.Fatalf("kafka client on %v: %v", brokers, err)
	}
	defer client.Close()
	Eventually(t, 30*time.Second, "leaders for every partition of "+topic, func() bool {
		if err := client.RefreshMetadata(topic); err != nil {
			return false
		}
		ps, err := client.Partitions(topic)
		if err != nil || len(ps) != int(partitions) {
			return false
		}
		for _, p := range ps {
			if _, err := client.Leader(topic, p); err != nil {
				return false
			}
		}
		return true
	})
	return topic
}

func uniqueTopic(t testing.TB) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random topic suffix: %v", err)
	}
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '-'
	}, t.Name())
	if len(name) > 180 {
		name = name[:180]
	}
	return "test." + name + "." + hex.EncodeToString(b[:])
}

// ConsumeAll reads topic from the oldest offset of every partition until n
// messages have arrived, and fails the test if that takes longer than timeout.
// Messages come back in arrival order; per partition that is offset order.
func ConsumeAll(t testing.TB, brokers []string, topic string, n int, timeout time.Duration) []*sarama.ConsumerMessage {
	t.Helper()
	return ConsumeAllWith(t, SaramaConfig(t), brokers, topic, n, timeout)
}

// ConsumeAllWith is ConsumeAll with a client configuration of the caller's,
// e.g. one with TLS and SASL for a secured listener.
func ConsumeAllWith(t testing.TB, cfg *sarama.Config, brokers []string, topic string, n int, timeout time.Duration) []*sarama.ConsumerMessage {
	t.Helper()
	cfg.Consumer.Return.Errors = true
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	client, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		t.Fatalf("kafka client on %v: %v", brokers, err)
	}
	defer client.Close()
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatalf("kafka consumer on %v: %v", brokers, err)
	}
	defer consumer.Close()
	partitions, err := consumer.Partitions(topic)
	if err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	msgs := make(chan *sarama.ConsumerMessage)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for _, p := range partitions {
		pc, err := consumeOldest(ctx, client, consumer, topic, p, func(error) {})
		if err != nil {
			t.Fatalf("consume %s/%d: %v", topic, p, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer pc.AsyncClose()
			for {
				select {
				case m := <-pc.Messages():
					select {
					case msgs <- m:
					case <-ctx.Done():
						return
					}
				case e := <-pc.Errors():
					// The partition consumer retries by itself (a leader
					// moving, a broker restarting); keep the latest error
					// for the timeout message.
					if e != nil {
						select {
						case errs <- e:
						default:
						}
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	defer wg.Wait()
	defer cancel()

	out := make([]*sarama.ConsumerMessage, 0, n)
	var lastErr error
	for len(out) < n {
		select {
		case m := <-msgs:
			out = append(out, m)
		case lastErr = <-errs:
		case <-ctx.Done():
			t.Fatalf("consume %s: got %d of %d messages within %v (last consumer error: %v)", topic, len(out), n, timeout, lastErr)
		}
	}
	return out
}

// TopicMessageCount is the number of messages stored in topic: the sum over
// its partitions of newest minus oldest offset. Tests compare it with what they
// consumed to prove there are no extra (duplicate) messages.
func TopicMessageCount(t testing.TB, brokers []string, topic string) int64 {
	t.Helper()
	client, err := sarama.NewClient(brokers, SaramaConfig(t))
	if err != nil {
		t.Fatalf("kafka client on %v: %v", brokers, err)
	}
	defer client.Close()
	ps, err := client.Partitions(topic)
	if err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}
	var total int64
	for _, p := range ps {
		newest, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			t.Fatalf("newest offset of %s/%d: %v", topic, p, err)
		}
		oldest, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			t.Fatalf("oldest offset of %s/%d: %v", topic, p, err)
		}
		total += newest - oldest
	}
	return total
}

// Kafka is a private broker owned by one test, started through
// scripts/kafka.sh on its own ports and data directory, so the test may stop,
// kill and restart it without disturbing the shared broker other packages'
// tests are using at the same time.
type Kafka struct {
	script   string
	env      []string
	addr     string
	dir      string
	security *KafkaSecurity
	gate     *Gate
	mu       sync.Mutex
}

// Gate is the gate in front of a broker started with KafkaOptions.Gated:
// its Addr is the bootstrap address of clients the test takes the broker
// away from. It fails the test for a broker started without Gated.
func (k *Kafka) Gate(t testing.TB) *Gate {
	t.Helper()
	if k.gate == nil {
		t.Fatal("private kafka started without KafkaOptions.Gated")
	}
	return k.gate
}

// KafkaOptions configures a private broker.
type KafkaOptions struct {
	// Secure adds TLS and SASL listeners (scripts/kafka.sh with
	// BGPEDGE_KAFKA_SECURE=1) next to the plaintext one; see Kafka.Security.
	Secure bool
	// Gated adds a listener that clients reach only through a Gate the test
	// closes and opens (scripts/kafka.sh gated mode); see Kafka.Gate.
	Gated bool
}

// KafkaSecurity describes the secured listeners of a private broker started
// with KafkaOptions.Secure, as `kafka.sh secure-info` prints them.
type KafkaSecurity struct {
	// SASLSSL is the host:port of the SASL_SSL listener: TLS with the
	// server's certificate only, then SASL PLAIN, SCRAM-SHA-256 or
	// SCRAM-SHA-512 with User and Password.
	SASLSSL string
	// SSL is the host:port of a TLS listener without client authentication.
	SSL string
	// MTLS is the host:port of a TLS listener that requires a client
	// certificate signed by the CA (ClientCert, ClientKey).
	MTLS string
	// CAFile is the PEM file of the throwaway CA that signed the server and
	// client certificates.
	CAFile                string
	ClientCert, ClientKey string
	User, Password        string
	// Mechanisms lists the SASL mechanisms of the SASL_SSL listener.
	Mechanisms []string
	// ServerNames are the names the server certificate is valid for.
	ServerNames []string
}

// KafkaControl starts a private Kafka broker for the calling test (5 to 15
// seconds on a busy two-core machine) and stops it when the test ends. It
// needs scripts/kafka.sh (from BGPEDGE_KAFKA_SH, else the checkout) and the
// jars it caches; `make test` provides both.
func KafkaControl(t testing.TB) *Kafka {
	t.Helper()
	return KafkaControlWith(t, KafkaOptions{})
}

// KafkaControlWith is KafkaControl with options, e.g. a secured broker.
func KafkaControlWith(t testing.TB, opts KafkaOptions) *Kafka {
	t.Helper()
	script := os.Getenv("BGPEDGE_KAFKA_SH")
	if script == "" {
		script = filepath.Join(RepoRoot(t), "scripts", "kafka.sh")
	}
	if _, err := os.Stat(script); err != nil {
		Missing(t, "scripts/kafka.sh", "set BGPEDGE_KAFKA_SH to its path or run the tests with `make test`")
	}
	bins := []string{"java", "bash"}
	if opts.Secure {
		bins = append(bins, "openssl")
	}
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			Missing(t, bin, "scripts/deps.sh installs it")
		}
	}
	nports := 2
	if opts.Secure {
		nports = 5
	}
	if opts.Gated {
		nports += 2
	}
	ports := FreePorts(t, "127.0.0.1", nports)
	port, cport := ports[0], ports[1]
	dir := t.TempDir()
	k := &Kafka{
		script: script,
		addr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		dir:    dir,
		env: append(os.Environ(),
			"BGPEDGE_KAFKA_HOST=127.0.0.1",
			"BGPEDGE_KAFKA_PORT="+strconv.Itoa(port),
			"BGPEDGE_KAFKA_CONTROLLER_PORT="+strconv.Itoa(cport),
			"BGPEDGE_KAFKA_DIR="+dir,
			// A test binary killed by -timeout runs no cleanup; kafka.sh
			// then stops the broker itself.
			"BGPEDGE_KAFKA_OWNER_PID="+strconv.Itoa(os.Getpid()),
		),
	}
	if opts.Secure {
		k.env = append(k.env,
			"BGPEDGE_KAFKA_SECURE=1",
			"BGPEDGE_KAFKA_SASL_SSL_PORT="+strconv.Itoa(ports[2]),
			"BGPEDGE_KAFKA_SSL_PORT="+strconv.Itoa(ports[3]),
			"BGPEDGE_KAFKA_MTLS_PORT="+strconv.Itoa(ports[4]),
		)
	} else {
		// An operator's BGPEDGE_KAFKA_SECURE must not secure, or fail, a
		// broker the test expects to be plaintext only.
		k.env = append(k.env, "BGPEDGE_KAFKA_SECURE=0")
	}
	if opts.Gated {
		gport, aport := ports[nports-2], ports[nports-1]
		gate := net.JoinHostPort("127.0.0.1", strconv.Itoa(aport))
		k.env = append(k.env,
			"BGPEDGE_KAFKA_GATED_PORT="+strconv.Itoa(gport),
			"BGPEDGE_KAFKA_GATED_ADVERTISED="+gate)
		k.gate = NewGate(t, gate, net.JoinHostPort("127.0.0.1", strconv.Itoa(gport)))
	}
	if os.Getenv("BGPEDGE_KAFKA_JVM_OPTS") == "" {
		// C1 only starts the broker in about half the time on a busy machine;
		// a private broker serves one test, not throughput measurements.
		k.env = append(k.env, "BGPEDGE_KAFKA_JVM_OPTS=-XX:TieredStopAtLevel=1")
	}
	t.Cleanup(func() {
		if out, err := k.run("stop"); err != nil {
			t.Errorf("stop private kafka: %v\n%s", err, out)
		}
	})
	k.Start(t)
	if opts.Secure {
		out, err := k.run("secure-info")
		if err != nil {
			t.Fatalf("secured private kafka: %v\n%s", err, out)
		}
		sec, err := parseSecureInfo(out)
		if err != nil {
			t.Fatalf("secured private kafka: %v", err)
		}
		k.security = sec
	}
	return k
}

// Brokers is the bootstrap address list of the private broker's plaintext
// listener.
func (k *Kafka) Brokers() []string { return []string{k.addr} }

// Security describes the secured listeners; it fails the test when the
// broker was started without KafkaOptions.Secure.
func (k *Kafka) Security(t testing.TB) KafkaSecurity {
	t.Helper()
	if k.security == nil {
		t.Fatal("private kafka was started without KafkaOptions.Secure")
	}
	return *k.security
}

// parseSecureInfo reads the KEY=value lines of `kafka.sh secure-info`.
func parseSecureInfo(out []byte) (*KafkaSecurity, error) {
	kv := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && strings.HasPrefix(k, "BGPEDGE_KAFKA_") {
			kv[strings.TrimPrefix(k, "BGPEDGE_KAFKA_")] = v
		}
	}
	s := &KafkaSecurity{
		SASLSSL:     kv["SASL_SSL"],
		SSL:         kv["SSL"],
		MTLS:        kv["MTLS"],
		CAFile:      kv["CA_FILE"],
		ClientCert:  kv["CLIENT_CERT"],
		ClientKey:   kv["CLIENT_KEY"],
		User:        kv["SASL_USER"],
		Password:    kv["SASL_PASSWORD"],
		Mechanisms:  strings.Split(kv["SASL_MECHANISMS"], ","),
		ServerNames: strings.Split(kv["SERVER_NAMES"], ","),
	}
	for name, v := range map[string]string{"SASL_SSL": s.SASLSSL, "SSL": s.SSL, "MTLS": s.MTLS, "CA_FILE": s.CAFile,
		"CLIENT_CERT": s.ClientCert, "CLIENT_KEY": s.ClientKey, "SASL_USER": s.User, "SASL_PASSWORD": s.Password} {
		if v == "" {
			return nil, fmt.Errorf("kafka.sh secure-info: no BGPEDGE_KAFKA_%s in %q", name, out)
		}
	}
	return s, nil
}

// Start starts the broker on its existing data (a restart after Stop or Kill
// keeps every acknowledged message) and returns when it serves metadata.
func (k *Kafka) Start(t testing.TB) {
	t.Helper()
	if out, err := k.run("start", "--keep-data"); err != nil {
		t.Fatalf("start private kafka on %s: %v\n%s", k.addr, err, out)
	}
}

// Stop shuts the broker down cleanly (SIGTERM) and returns when it has exited.
func (k *Kafka) Stop(t testing.TB) {
	t.Helper()
	if out, err := k.run("stop"); err != nil {
		t.Fatalf("stop private kafka on %s: %v\n%s", k.addr, err, out)
	}
}

// Kill ends the broker with SIGKILL, as a crash or power loss would.
func (k *Kafka) Kill(t testing.TB) {
	t.Helper()
	if out, err := k.run("kill"); err != nil {
		t.Fatalf("kill private kafka on %s: %v\n%s", k.addr, err, out)
	}
}

// LogFile is the broker's server.log, worth attaching to a failure message.
func (k *Kafka) LogFile() string { return filepath.Join(k.dir, "logs", "server.log") }

func (k *Kafka) run(args ...string) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	cmd := exec.Command("bash", append([]string{k.script}, args...)...)
	cmd.Env = k.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kafka.sh %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}
