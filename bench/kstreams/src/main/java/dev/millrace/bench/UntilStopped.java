package dev.millrace.bench;

import java.util.concurrent.CountDownLatch;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;

/**
 * Runs a contender until the harness stops it (SIGTERM: a clean close). A
 * contender that fails (a stream thread dies: out of memory, a fatal Kafka
 * error) exits non-zero instead of idling with no threads, so the harness
 * reports the run as failed instead of waiting for it.
 */
final class UntilStopped {
  private UntilStopped() {}

  static void run(KafkaStreams streams) throws InterruptedException {
    CountDownLatch done = new CountDownLatch(1);
    streams.setUncaughtExceptionHandler(e -> {
      e.printStackTrace();
      return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
    });
    streams.setStateListener((now, before) -> {
      if (now == KafkaStreams.State.ERROR) {
        System.err.println("Kafka Streams failed: " + before + " -> " + now);
        // 70 (EX_SOFTWARE): not 3, which the JVM exits with when out of
        // memory (-XX:+ExitOnOutOfMemoryError).
        Runtime.getRuntime().halt(70);
      }
    });
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      streams.close();
      done.countDown();
    }));
    streams.start();
    done.await();
  }
}
