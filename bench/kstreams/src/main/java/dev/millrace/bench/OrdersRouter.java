package dev.millrace.bench;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.util.Properties;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Branched;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Produced;

/**
 * The benchmark's Kafka Streams contender: the same topology as Millrace's
 * orders example. Malformed records to the dead-letter topic; keep paid
 * orders; route amount >= 1000 to large, region eu to eu, the rest to other.
 * Output keys and values are the input bytes, as Millrace writes them.
 *
 * <p>Written as a Kafka Streams engineer would for throughput: ByteArray
 * serdes (no String decoding of bytes that are passed through), and a
 * streaming parse that reads the three fields the topology tests and skips
 * the rest without building a tree, as Millrace builds only the fields its
 * expressions read (both still parse the whole record, so records that
 * are not one JSON object go to the dead-letter topic in both).
 *
 * <p>Usage: OrdersRouter BOOTSTRAP APPLICATION_ID INPUT OUTPUT_PREFIX [key=value ...]
 * Every setting beyond the application id, bootstrap servers and state
 * directory (the guarantee, threads, producer batching among them) comes
 * from the harness as key=value, which lists them in its report.
 */
public final class OrdersRouter {
  private static final JsonFactory JSON = new JsonFactory();

  /** The fields the topology reads. */
  record Order(String status, long amount, String region) {}

  /** A record's original bytes, and its order or null if malformed. */
  record Parsed(byte[] raw, Order order) {}

  public static void main(String[] args) throws Exception {
    String bootstrap = args[0], appId = args[1], input = args[2], prefix = args[3];

    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(StreamsConfig.STATE_DIR_CONFIG, System.getProperty("java.io.tmpdir") + "/kstreams-" + appId);
    Overrides.apply(p, args, 4);

    StreamsBuilder builder = new StreamsBuilder();
    KStream<byte[], Parsed> parsed = builder
        .stream(input, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
        .mapValues(raw -> new Parsed(raw, parse(raw)));
    Produced<byte[], byte[]> produced = Produced.with(Serdes.ByteArray(), Serdes.ByteArray());
    parsed.filter((k, v) -> v.order() == null).mapValues(Parsed::raw).to(prefix + "-dlq", produced);
    parsed
        .filter((k, v) -> v.order() != null && "paid".equals(v.order().status()))
        .split()
        .branch((k, v) -> v.order().amount() >= 1000,
            Branched.withConsumer(s -> s.mapValues(Parsed::raw).to(prefix + "-large", produced)))
        .branch((k, v) -> "eu".equals(v.order().region()),
            Branched.withConsumer(s -> s.mapValues(Parsed::raw).to(prefix + "-eu", produced)))
        .defaultBranch(Branched.withConsumer(s -> s.mapValues(Parsed::raw).to(prefix + "-other", produced)));

    KafkaStreams streams = new KafkaStreams(builder.build(), p);
    UntilStopped.run(streams);
  }

  /**
   * The order's status, amount and region, or null when the record is not
   * a JSON object (absent fields read as "" and 0, as missing ones do in
   * Millrace's expressions: neither paid nor routed).
   */
  static Order parse(byte[] raw) {
    if (raw == null) {
      return null;
    }
    String status = "", region = "";
    long amount = 0;
    try (JsonParser parser = JSON.createParser(raw)) {
      if (parser.nextToken() != JsonToken.START_OBJECT) {
        return null;
      }
      while (parser.nextToken() == JsonToken.FIELD_NAME) {
        String field = parser.currentName();
        JsonToken token = parser.nextToken();
        switch (field) {
          case "status" -> status = token == JsonToken.VALUE_STRING ? parser.getText() : "";
          case "region" -> region = token == JsonToken.VALUE_STRING ? parser.getText() : "";
          case "amount" -> amount = token.isNumeric() ? parser.getLongValue() : 0;
          default -> { }
        }
        // An object or array (wherever it is) is skipped whole; on a
        // scalar this does nothing.
        parser.skipChildren();
      }
      // The whole record is read, as Millrace's decoder does: a record that
      // is not one JSON object is malformed.
      if (parser.currentToken() != JsonToken.END_OBJECT || parser.nextToken() != null) {
        return null;
      }
      return new Order(status, amount, region);
    } catch (java.io.IOException e) {
      return null;
    }
  }
}
