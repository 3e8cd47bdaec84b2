package dev.millrace.bench;

import java.util.concurrent.CountDownLatch;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.ThreadMetadata;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;

/**
 * Runs a contender until the harness stops it (SIGTERM: a clean close). A
 * contender that fails (a stream thread dies: out of memory, a fatal Kafka
 * error) exits non-zero instead of idling with no threads, so the harness
 * reports the run as failed instead of waiting for it. Each state change is
 * printed ("state REBALANCING"), and each time it is running
 * again its task counts ("running active=4 standby=4").
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
      System.out.println("state " + now);
      System.out.flush();
      if (now == KafkaStreams.State.RUNNING) {
        // The scale-out benchmark reads an instance's tasks from these lines.
        int active = 0, standby = 0;
        for (ThreadMetadata thread : streams.metadataForLocalThreads()) {
          active += thread.activeTasks().size();
          standby += thread.standbyTasks().size();
        }
        System.out.println("running active=" + active + " standby=" + standby);
        System.out.flush();
      }
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
