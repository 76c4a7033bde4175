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
		fileDir, stream                string
		jsonOut, fromBeginning, follow bool
		limit                          int
	)
	cmd := &cobra.Command{
		Use:   "tail (--kafka BROKERS --topic T | --nats URL --subject S | --file DIR --stream S [--follow])",
		Short: "Print the events on a Kafka topic, NATS subject or file sink stream, one per line",
		Long: `tail consumes a Kafka topic (every partition), a NATS JetStream subject, or a
stream of the file sink (forwarder.file.dir) and prints each message on one
line: where it is (topic[partition]@offset, subject#stream-sequence or
stream/file@offset), its id, and a summary (JSON events: type, router, peer,
route; raw BMP: message type, router and length). --json prints one JSON
object per line instead, with the event itself when the value is JSON.

Kafka and NATS start at new messages unless --from-beginning. A file sink
stream is read from its oldest file (gzipped ones too) to the end; --follow
then waits for more, across rotations.`,
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
			targets := 0
			for _, t := range []string{topic, subject, fileDir} {
				if t != "" {
					targets++
				}
			}
			switch {
			case targets != 1 || (fileDir != "") != (stream != ""):
				return errors.New("tail: give one of --kafka and --topic, --nats and --subject, or --file and --stream")
			case follow && fileDir == "":
				return errors.New("tail: --follow is for --file (Kafka and NATS are always followed)")
			case fileDir != "":
				o.File, o.Stream, o.Follow = fileDir, stream, follow
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
	f.StringVar(&fileDir, "file", "", "file sink directory (forwarder.file.dir) to read")
	f.StringVar(&stream, "stream", "", "stream to read from --file, e.g. bmp.route.loc-rib")
	f.BoolVar(&follow, "follow", false, "with --file: wait for more after the last file, across rotations")
	f.BoolVar(&jsonOut, "json", false, "print one JSON object per message")
	f.BoolVar(&fromBeginning, "from-beginning", false, "start at the oldest message instead of new ones")
	f.IntVar(&limit, "limit", 0, "stop after this many messages (0: until interrupted)")
	return cmd
}
