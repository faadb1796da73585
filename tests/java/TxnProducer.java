// Transactional writer of tests/transactions.rs: Kafka's own Java client (the broker's jars),
// driven by a plan file the test writes, so that the test knows exactly which records were
// committed, aborted or left in an open transaction.
//
// Usage: java -cp <dir>:<kafka libs>/* TxnProducer <brokers> <topic> <plan> <transactional.id prefix>
//
// The plan: one command per line, fields separated by a tab, executed in order.
//
//   producer <name> <codec>    a KafkaProducer with transactional.id <prefix>-<name>,
//                              compression.type <codec>, linger.ms 0, then initTransactions
//   begin <name>               beginTransaction
//   send <name> <partition> <timestamp ms> <key> <value>
//                              send to that partition with that CreateTime (key and value as
//                              UTF-8; neither holds a tab or a newline)
//   flush <name>               flush: everything sent so far is in the log, in send order, before
//                              the next command runs (so the batches of the producers alternate
//                              in the log as the plan sends them)
//   commit <name>              commitTransaction
//   abort <name>               abortTransaction
//   settle                     wait until no transaction is open on any partition of the topic
//                              (last stable offset = high watermark everywhere: every marker is
//                              written)
//   hold                       the transactions still open stay open: wait until the last stable
//                              offset of each partition is the first offset of the open
//                              transactions there (or the high watermark where there is none),
//                              read the topic with read_uncommitted and read_committed, print
//                              what they saw, print OPEN, and wait for stdin to close; then
//                              abort what is open, settle, print the offsets again (STABLE) and
//                              exit
//
// Output (stdout), one fact a line, fields separated by a space:
//
//   PRODUCER <name> <codec> <transactional.id>
//   STABLE <partition> <last stable offset> <high watermark>   (at hold, and after the abort)
//   SEEN <read_committed|read_uncommitted> <partition> <offset> <_source line of the value>
//   OPEN
//   CLOSED
//
// Any failure prints `TxnProducer: ...` on stderr and exits with status 1.

import java.io.BufferedReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicReference;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ListOffsetsOptions;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class TxnProducer {
    static final Duration BOUND = Duration.ofSeconds(60);
    static final Pattern SOURCE_LINE = Pattern.compile("\"_source\":\\{\"file\":\"[^\"]*\",\"line\":(\\d+)\\}");

    /** One producer and its open transaction, if any. */
    static final class Txn {
        final String name;
        final KafkaProducer<byte[], byte[]> producer;
        boolean open;
        /** First offset of the open transaction in each partition (filled by send callbacks). */
        final Map<Integer, Long> first = new HashMap<>();
        final AtomicReference<Exception> failed = new AtomicReference<>();

        Txn(String name, KafkaProducer<byte[], byte[]> producer) {
            this.name = name;
            this.producer = producer;
        }

        void check() throws Exception {
            Exception e = failed.get();
            if (e != null) throw new Exception("producer " + name + ": a send failed: " + e, e);
        }
    }

    final String brokers;
    final String topic;
    final String prefix;
    final Map<String, Txn> producers = new LinkedHashMap<>();
    final Admin admin;
    final List<TopicPartition> partitions = new ArrayList<>();

    TxnProducer(String brokers, String topic, String prefix) throws Exception {
        this.brokers = brokers;
        this.topic = topic;
        this.prefix = prefix;
        Properties p = new Properties();
        p.put("bootstrap.servers", brokers);
        admin = Admin.create(p);
        int n = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic).partitions().size();
        for (int i = 0; i < n; i++) partitions.add(new TopicPartition(topic, i));
    }

    public static void main(String[] args) {
        if (args.length != 4) {
            System.err.println("usage: TxnProducer <brokers> <topic> <plan> <transactional.id prefix>");
            System.exit(2);
        }
        try {
            TxnProducer t = new TxnProducer(args[0], args[1], args[3]);
            try (BufferedReader plan = Files.newBufferedReader(Paths.get(args[2]), StandardCharsets.UTF_8)) {
                String line;
                int n = 0;
                while ((line = plan.readLine()) != null) {
                    n++;
                    if (line.isEmpty()) continue;
                    try {
                        t.run(line.split("\t", -1));
                    } catch (Exception e) {
                        throw new Exception("plan line " + n + " (" + line.split("\t")[0] + "): " + e, e);
                    }
                }
            }
            t.close();
            System.exit(0);
        } catch (Throwable e) {
            System.err.println("TxnProducer: " + e);
            e.printStackTrace();
            System.exit(1);
        }
    }

    void run(String[] f) throws Exception {
        switch (f[0]) {
            case "producer": {
                Properties p = new Properties();
                p.put("bootstrap.servers", brokers);
                p.put("transactional.id", prefix + "-" + f[1]);
                p.put("compression.type", f[2]);
                p.put("linger.ms", "0");
                p.put("acks", "all");
                p.put("enable.idempotence", "true");
                // Long enough that the open transaction outlives the test (the broker's maximum
                // is 15 minutes); the test closes stdin or kills this process at its end.
                p.put("transaction.timeout.ms", "300000");
                p.put("key.serializer", ByteArraySerializer.class.getName());
                p.put("value.serializer", ByteArraySerializer.class.getName());
                KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p);
                producer.initTransactions();
                producers.put(f[1], new Txn(f[1], producer));
                say("PRODUCER " + f[1] + " " + f[2] + " " + p.get("transactional.id"));
                break;
            }
            case "begin": {
                Txn t = txn(f[1]);
                t.producer.beginTransaction();
                t.open = true;
                t.first.clear();
                break;
            }
            case "send": {
                Txn t = txn(f[1]);
                int partition = Integer.parseInt(f[2]);
                long timestamp = Long.parseLong(f[3]);
                byte[] key = f[4].getBytes(StandardCharsets.UTF_8);
                byte[] value = f[5].getBytes(StandardCharsets.UTF_8);
                t.producer.send(new ProducerRecord<>(topic, partition, timestamp, key, value), (meta, e) -> {
                    if (e != null) {
                        t.failed.compareAndSet(null, e);
                    } else {
                        synchronized (t.first) {
                            t.first.merge(meta.partition(), meta.offset(), Math::min);
                        }
                    }
                });
                break;
            }
            case "flush": {
                Txn t = txn(f[1]);
                t.producer.flush();
                t.check();
                break;
            }
            case "commit": {
                Txn t = txn(f[1]);
                t.check();
                t.producer.commitTransaction();
                t.open = false;
                break;
            }
            case "abort": {
                Txn t = txn(f[1]);
                t.producer.abortTransaction();
                t.open = false;
                break;
            }
            case "settle":
                waitForStable(Map.of());
                break;
            case "hold":
                hold();
                break;
            default:
                throw new Exception("unknown command " + f[0]);
        }
    }

    Txn txn(String name) throws Exception {
        Txn t = producers.get(name);
        if (t == null) throw new Exception("no producer " + name);
        return t;
    }

    static void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    Map<TopicPartition, Long> endOffsets(IsolationLevel isolation) throws Exception {
        Map<TopicPartition, OffsetSpec> request = new HashMap<>();
        for (TopicPartition tp : partitions) request.put(tp, OffsetSpec.latest());
        Map<TopicPartition, Long> out = new TreeMap<>((a, b) -> Integer.compare(a.partition(), b.partition()));
        admin.listOffsets(request, new ListOffsetsOptions(isolation)).all().get()
            .forEach((tp, info) -> out.put(tp, info.offset()));
        return out;
    }

    /**
     * Waits until the last stable offset of every partition is `openFirst` where an open
     * transaction starts there, else the high watermark; returns the last stable offsets.
     */
    Map<TopicPartition, Long> waitForStable(Map<Integer, Long> openFirst) throws Exception {
        long deadline = System.currentTimeMillis() + BOUND.toMillis();
        while (true) {
            Map<TopicPartition, Long> lso = endOffsets(IsolationLevel.READ_COMMITTED);
            Map<TopicPartition, Long> hw = endOffsets(IsolationLevel.READ_UNCOMMITTED);
            boolean stable = true;
            for (TopicPartition tp : partitions) {
                long want = openFirst.getOrDefault(tp.partition(), hw.get(tp));
                if (lso.get(tp) != want) stable = false;
            }
            if (stable) return lso;
            if (System.currentTimeMillis() > deadline) {
                throw new Exception("the last stable offsets " + lso + " did not reach " + openFirst
                    + " (else the high watermarks " + hw + ") within " + BOUND);
            }
            Thread.sleep(50);
        }
    }

    void hold() throws Exception {
        Map<Integer, Long> openFirst = new HashMap<>();
        for (Txn t : producers.values()) {
            if (!t.open) continue;
            t.producer.flush();
            t.check();
            synchronized (t.first) {
                t.first.forEach((p, o) -> openFirst.merge(p, o, Math::min));
            }
        }
        Map<TopicPartition, Long> lso = waitForStable(openFirst);
        Map<TopicPartition, Long> hw = endOffsets(IsolationLevel.READ_UNCOMMITTED);
        for (TopicPartition tp : partitions) {
            say("STABLE " + tp.partition() + " " + lso.get(tp) + " " + hw.get(tp));
        }
        read(IsolationLevel.READ_UNCOMMITTED, hw);
        read(IsolationLevel.READ_COMMITTED, lso);
        say("OPEN");
        while (System.in.read() != -1) {
            // The test closes stdin (or kills this process) when it is done.
        }
        for (Txn t : producers.values()) {
            if (t.open) {
                t.producer.abortTransaction();
                t.open = false;
            }
        }
        // Every marker written: a reader started after this sees the topic stable to its end.
        Map<TopicPartition, Long> settled = waitForStable(Map.of());
        for (TopicPartition tp : partitions) {
            say("STABLE " + tp.partition() + " " + settled.get(tp) + " " + settled.get(tp));
        }
    }

    /** Reads every partition from the beginning up to `ends` with `isolation`, printing SEEN lines. */
    void read(IsolationLevel isolation, Map<TopicPartition, Long> ends) throws Exception {
        String name = isolation.toString().toLowerCase();
        Properties p = new Properties();
        p.put("bootstrap.servers", brokers);
        p.put("isolation.level", name);
        p.put("enable.auto.commit", "false");
        p.put("key.deserializer", ByteArrayDeserializer.class.getName());
        p.put("value.deserializer", ByteArrayDeserializer.class.getName());
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(p)) {
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            long deadline = System.currentTimeMillis() + BOUND.toMillis();
            StringBuilder out = new StringBuilder();
            while (true) {
                boolean done = true;
                for (TopicPartition tp : partitions) {
                    if (consumer.position(tp) < ends.get(tp)) done = false;
                }
                if (done) break;
                if (System.currentTimeMillis() > deadline) {
                    throw new Exception(name + " consumer did not reach " + ends + " within " + BOUND);
                }
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    if (r.offset() >= ends.get(new TopicPartition(r.topic(), r.partition()))) continue;
                    Matcher m = SOURCE_LINE.matcher(new String(r.value(), StandardCharsets.UTF_8));
                    String line = m.find() ? m.group(1) : "?";
                    out.append("SEEN ").append(name).append(' ').append(r.partition()).append(' ')
                        .append(r.offset()).append(' ').append(line).append('\n');
                }
            }
            System.out.print(out);
            System.out.flush();
        }
    }

    void close() {
        for (Txn t : producers.values()) t.producer.close(Duration.ofSeconds(10));
        admin.close(Duration.ofSeconds(10));
        say("CLOSED");
    }
}
