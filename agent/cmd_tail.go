package agent

import (
	"errors"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bgpedge/bgpedge/forwarder"
)

func newTailCommand() *cobra.Command {
	var (
		kafka, topic, natsURL, subject string
		jsonOut, fromBeginning         bool
		limit                          int
	)
	cmd := &cobra.Command{
		Use:   "tail (--kafka BROKERS --topic T | --nats URL --subject S)",
		Short: "Print the events on a Kafka topic or NATS subject, one per line",
		Long: `tail consumes a Kafka topic (every partition) or a NATS JetStream subject and
prints each message on one line: where it is (topic[partition]@offset or
subject#stream-sequence), its id, and a summary (JSON events: type, router,
peer, route; raw BMP: message type, router and length). --json prints one JSON
object per line instead, with the event itself when the value is JSON.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := forwarder.TailOptions{
				Topic:         topic,
				Subject:       subject,
				JSON:          jsonOut,
				FromBeginning: fromBeginning,
				Limit:         limit,
				Out:           cmd.OutOrStdout(),
			}
			switch {
			case topic != "" && subject != "", topic == "" && subject == "":
				return errors.New("tail: give either --kafka and --topic, or --nats and --subject")
			case topic != "":
				o.Kafka = forwarder.DefaultConfig().Kafka
				o.Kafka.Brokers = strings.Split(kafka, ",")
			default:
				o.NATS = forwarder.DefaultConfig().NATS
				o.NATS.URL = natsURL
			}
			return forwarder.Tail(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kafka, "kafka", "127.0.0.1:9092", "Kafka bootstrap brokers, comma-separated")
	f.StringVar(&topic, "topic", "", "Kafka topic to tail")
	f.StringVar(&natsURL, "nats", "nats://127.0.0.1:4222", "NATS server URL")
	f.StringVar(&subject, "subject", "", "NATS subject to tail (wildcards allowed)")
	f.BoolVar(&jsonOut, "json", false, "print one JSON object per message")
	f.BoolVar(&fromBeginning, "from-beginning", false, "start at the oldest message instead of new ones")
	f.IntVar(&limit, "limit", 0, "stop after this many messages (0: until interrupted)")
	return cmd
}
