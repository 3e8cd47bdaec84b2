package dev.millrace.bench;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.util.Properties;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The stateful benchmark's stream-table join: the same topology as
 * Millrace's `join` step (type Left) and `map` in bench/src/state.rs. Each
 * record of INPUT is looked up by its key in TABLE (a RocksDB store named
 * "customers") and written to OUTPUT as {"id":..,"n":..,"name":..}, name
 * null when the key is not in the table.
 *
 * Usage: StreamTableJoin BOOTSTRAP APPLICATION_ID INPUT OUTPUT THREADS STATE_DIR TABLE
 * [key=value ...]. Its settings are RunningCount's (exactly_once_v2, 100 ms
 * commits, static membership, no record cache, RocksDB bounded to 64 MiB),
 * plus topology optimisation, set below.
 */
public final class StreamTableJoin {
  public static void main(String[] args) throws Exception {
    Properties p = RunningCount.settings(args, 7);
    // The table's own topic is its store's changelog (no copy of the table
    // written to APPLICATION_ID-customers-changelog), as experts run a
    // source table, and as Millrace's join store works.
    p.put(StreamsConfig.TOPOLOGY_OPTIMIZATION_CONFIG, StreamsConfig.OPTIMIZE);
    String input = args[2], output = args[3], table = args[6];

    StreamsBuilder builder = new StreamsBuilder();
    KTable<String, byte[]> customers = builder.table(
        table,
        Consumed.with(Serdes.String(), Serdes.ByteArray()),
        Materialized.<String, byte[], KeyValueStore<Bytes, byte[]>>as("customers")
            .withKeySerde(Serdes.String())
            .withValueSerde(Serdes.ByteArray()));
    builder.stream(input, Consumed.with(Serdes.String(), Serdes.ByteArray()))
        .leftJoin(customers, StreamTableJoin::enriched)
        .to(output, Produced.with(Serdes.String(), Serdes.String()));

    // Optimisations apply only to a topology built with the settings.
    KafkaStreams streams = new KafkaStreams(builder.build(p), p);
    streams.setGlobalStateRestoreListener(new RunningCount.Restores());
    UntilStopped.run(streams);
  }

  /** The order's `id` and `n` (one streaming pass) with the customer's `name`. */
  static String enriched(byte[] order, byte[] customer) {
    long id = 0, n = 0;
    try (JsonParser parser = RunningCount.JSON.createParser(order)) {
      if (parser.nextToken() == JsonToken.START_OBJECT) {
        while (parser.nextToken() == JsonToken.FIELD_NAME) {
          String field = parser.currentName();
          parser.nextToken();
          switch (field) {
            case "id" -> id = parser.getLongValue();
            case "n" -> n = parser.getLongValue();
            default -> parser.skipChildren();
          }
        }
      }
    } catch (Exception e) {
      // The benchmark's input is well formed; a bad record keeps zeros.
    }
    String name = customer == null ? null : RunningCount.field(customer, "name", JsonParser::getText, null);
    return "{\"id\":" + id + ",\"n\":" + n + ",\"name\":"
        + (name == null ? "null" : "\"" + name + "\"") + "}";
  }
}
