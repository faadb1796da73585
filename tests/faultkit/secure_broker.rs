//! A PRIVATE single-node Kafka with PLAINTEXT, SASL_PLAINTEXT, SSL and SASL_SSL listeners on free
//! ports, in a temporary directory, with a throw-away CA made with `openssl` and the SCRAM users
//! added at format time (`alice`: PLAIN and SCRAM passwords below). Used by `tests/security.rs`
//! and `tests/group.rs`; the broker is killed when the guard drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PLAIN_PASSWORD: &str = "alice-plain-Pw1";
pub const SCRAM_PASSWORD: &str = "alice-scram-Pw2";

pub struct SecureBroker {
    pub dir: tempfile::TempDir,
    child: Child,
    /// Listener ports.
    pub plaintext: u16,
    pub sasl_plaintext: u16,
    pub ssl: u16,
    pub sasl_ssl: u16,
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A CA and a server certificate for 127.0.0.1 (IP SAN), and the PKCS12 keystore Kafka reads.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str], what: &str| {
        run(Command::new("openssl").args(args).current_dir(dir), what);
    };
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=reclamacoes test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        "openssl: CA",
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        "openssl: server key",
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
        "openssl: sign the server certificate",
    );
    openssl(
        &[
            "pkcs12",
            "-export",
            "-in",
            "server.pem",
            "-inkey",
            "server.key",
            "-out",
            "server.p12",
            "-passout",
            "pass:changeit",
            "-name",
            "kafka",
        ],
        "openssl: PKCS12 keystore",
    );
}

pub fn start_secure_broker() -> SecureBroker {
    let libs = super::common::kafka_libs();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let [plaintext, controller, sasl_plaintext, ssl, sasl_ssl] = super::common::free_ports::<5>();
    let d = dir.path().display();
    let jaas = |listener: &str| {
        format!(
            "listener.name.{listener}.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_alice=\"{PLAIN_PASSWORD}\";\n\
             listener.name.{listener}.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
             listener.name.{listener}.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
        )
    };
    let config = format!(
        "process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
         controller.listener.names=CONTROLLER\n\
         listeners=PLAINTEXT://127.0.0.1:{plaintext},CONTROLLER://127.0.0.1:{controller},SASL_PLAINTEXT://127.0.0.1:{sasl_plaintext},SSL://127.0.0.1:{ssl},SASL_SSL://127.0.0.1:{sasl_ssl}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{plaintext},CONTROLLER://127.0.0.1:{controller},SASL_PLAINTEXT://127.0.0.1:{sasl_plaintext},SSL://127.0.0.1:{ssl},SASL_SSL://127.0.0.1:{sasl_ssl}\n\
         inter.broker.listener.name=PLAINTEXT\n\
         listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL\n\
         sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n\
         {}{}\
         ssl.keystore.type=PKCS12\n\
         ssl.keystore.location={d}/server.p12\n\
         ssl.keystore.password=changeit\n\
         ssl.key.password=changeit\n\
         ssl.client.auth=none\n\
         log.dirs={d}/data\n\
         num.partitions=1\n\
         offsets.topic.replication.factor=1\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         share.coordinator.state.topic.replication.factor=1\n\
         share.coordinator.state.topic.min.isr=1\n\
         default.replication.factor=1\n\
         min.insync.replicas=1\n\
         auto.create.topics.enable=false\n",
        jaas("sasl_plaintext"),
        jaas("sasl_ssl"),
    );
    let conf = dir.path().join("server.properties");
    std::fs::write(&conf, config).unwrap();
    let log4j = super::repo_root().join("services/kafka/log4j2.xml");
    let java = |logs: &Path| {
        let mut cmd = super::common::kafka_java(&libs);
        cmd.args([
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
        ])
        .arg("-Djava.net.preferIPv4Stack=true")
        .arg(format!("-Dkafka.logs.dir={}", logs.display()))
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()));
        cmd
    };
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cluster_id = run(
        java(&logs).args(["kafka.tools.StorageTool", "random-uuid"]),
        "kafka random-uuid",
    )
    .lines()
    .last()
    .unwrap()
    .trim()
    .to_string();
    run(
        java(&logs)
            .args(["kafka.tools.StorageTool", "format", "--config"])
            .arg(&conf)
            .args(["--cluster-id", &cluster_id, "--standalone"])
            .args([
                "--add-scram",
                &format!("SCRAM-SHA-256=[name=alice,password={SCRAM_PASSWORD}]"),
                "--add-scram",
                &format!("SCRAM-SHA-512=[name=alice,password={SCRAM_PASSWORD}]"),
            ]),
        "kafka storage format",
    );
    let child = java(&logs)
        .arg("kafka.Kafka")
        .arg(&conf)
        .stdout(std::fs::File::create(logs.join("stdout.log")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut broker = SecureBroker {
        dir,
        child,
        plaintext,
        sasl_plaintext,
        ssl,
        sasl_ssl,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = broker.child.try_wait().unwrap() {
            panic!(
                "the TLS/SASL broker exited ({status}); see {}",
                broker.dir.path().join("logs").display()
            );
        }
        let ready = Command::new("kcat")
            .args(["-b", &format!("127.0.0.1:{plaintext}"), "-L", "-m", "3"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("broker 1 at"));
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TLS/SASL broker did not start within 120 s; see {}",
            broker.dir.path().join("logs").display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    broker
}

impl SecureBroker {
    /// The broker's process id (to freeze it with SIGSTOP and thaw it with SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}
