package dev.millrace.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.Properties;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Branched;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Produced;

/**
 * The benchmark's Kafka Streams contender: the same topology as Millrace's
 * orders example. Parse JSON; malformed records to the dead-letter topic;
 * keep paid orders; route amount >= 1000 to large, region eu to eu, the rest
 * to other. Output values are the input bytes, as Millrace writes them.
 *
 * Usage: OrdersRouter BOOTSTRAP APPLICATION_ID INPUT OUTPUT_PREFIX GUARANTEE THREADS
 * (GUARANTEE: exactly_once_v2 | at_least_once). Settings are Kafka Streams'
 * defaults except those below, each matching what Millrace does.
 */
public final class OrdersRouter {
  private static final ObjectMapper JSON = new ObjectMapper();

  /** A parsed record: the original text, and the JSON or null if malformed. */
  record Parsed(String raw, JsonNode json) {}

  public static void main(String[] args) throws Exception {
    String bootstrap = args[0], appId = args[1], input = args[2], prefix = args[3], guarantee = args[4];
    int threads = Integer.parseInt(args[5]);

    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
    // Millrace commits every 100 ms under ExactlyOnce (Kafka Streams' EOS default too).
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
    p.put(StreamsConfig.STATE_DIR_CONFIG, System.getProperty("java.io.tmpdir") + "/kstreams-" + appId);
    p.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
    p.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
    p.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);

    StreamsBuilder builder = new StreamsBuilder();
    KStream<String, Parsed> parsed = builder.<String, String>stream(input).mapValues(OrdersRouter::parse);
    Produced<String, String> produced = Produced.with(Serdes.String(), Serdes.String());
    parsed.filter((k, v) -> v.json() == null).mapValues(Parsed::raw).to(prefix + "-dlq", produced);
    parsed
        .filter((k, v) -> v.json() != null && "paid".equals(v.json().path("status").asText()))
        .split()
        .branch((k, v) -> v.json().path("amount").asLong() >= 1000,
            Branched.withConsumer(s -> s.mapValues(Parsed::raw).to(prefix + "-large", produced)))
        .branch((k, v) -> "eu".equals(v.json().path("region").asText()),
            Branched.withConsumer(s -> s.mapValues(Parsed::raw).to(prefix + "-eu", produced)))
        .defaultBranch(Branched.withConsumer(s -> s.mapValues(Parsed::raw).to(prefix + "-other", produced)));

    KafkaStreams streams = new KafkaStreams(builder.build(), p);
    UntilStopped.run(streams);
  }

  private static Parsed parse(String raw) {
    try {
      return new Parsed(raw, JSON.readTree(raw));
    } catch (Exception e) {
      return new Parsed(raw, null);
    }
  }
}
