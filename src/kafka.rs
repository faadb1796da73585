//! Everything that talks to Kafka through `rskafka`: connecting with a bound, topic creation,
//! the Java-compatible murmur2 partitioner, and bounded retries around produce and fetch.
//!
//! rskafka 0.6 has no connect or request timeout of its own, and by default retries forever; so
//! every call here is wrapped in [`tokio::time::timeout`] and rskafka's internal backoff gets a
//! deadline. An unreachable broker therefore becomes a clear [`KafkaError`] naming the address
//! within `--timeout`, never a hang.
//!
//! Security ([`KafkaSecurity`]): TLS with rustls (`--kafka-tls`; the CA bundle of
//! `--kafka-ca-file`, else the Mozilla roots of `webpki-roots`) and SASL PLAIN, SCRAM-SHA-256 or
//! SCRAM-SHA-512 (`--kafka-sasl-mechanism`, `--kafka-sasl-username`, the password only from the
//! environment variable `KAFKA_SASL_PASSWORD`). SASL without TLS sends PLAIN passwords in clear
//! text: use it only on a trusted network. The password never appears in `Debug` output or errors.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::error::{Error as RsError, ProtocolError, RequestError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
pub use rskafka::client::read_committed::{
    drop_aborted, AbortedTransaction, ControlBatchRecord, CorruptBatch, FetchedBatch,
    FetchedContent, FetchedPartition, IsolationLevel,
};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
pub use rskafka::record::RawRecords;
use rskafka::record::{Record, RecordAndOffset, RecordBatchCompression};
use rskafka::{BackoffConfig, BackoffError, ConnectionError, SaslError};

use crate::retry::Verdict;

pub use rskafka::client::partition::Compression as RsCompression;
pub use rskafka::client::partition::{ProducerId, ProducerSequence};

/// Errors of this module; each names the broker, topic or partition and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error(
        "cannot reach the Kafka broker at {brokers} within {timeout:?}: {reason}. {}",
        connect_hint(reason)
    )]
    Connect {
        brokers: String,
        timeout: Duration,
        reason: String,
    },
    #[error(
        "Kafka call `{what}` on {brokers} failed: {reason}. {}",
        call_hint(kind)
    )]
    Call {
        what: String,
        brokers: String,
        reason: String,
        /// What kind of failure `reason` describes, for the retry classifiers.
        kind: CallKind,
    },
    #[error(
        "Kafka call `{what}` on {brokers} did not answer within {timeout:?}. The broker may be down \
         or overloaded; raise --timeout or check the broker"
    )]
    Timeout {
        what: String,
        brokers: String,
        timeout: Duration,
    },
    /// The broker refused a batch of an idempotent producer; `app produce` handles each case
    /// (`src/produce.rs`), so this reaches the user only when retries ran out.
    #[error(
        "Kafka call `{what}` on {brokers} was refused: {error}. `app produce` asks for a new \
         producer id and resends; if this persists, check the broker's log (`make logs`)"
    )]
    Sequence {
        what: String,
        brokers: String,
        error: SequenceError,
    },
    #[error(
        "topic `{topic}` partition {partition}: offset {requested} is out of range (the broker \
         holds {earliest}..{latest}); data between was deleted by retention or never existed. \
         Use --on-data-loss earliest to continue from {earliest}, accepting the loss"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: i32,
        requested: i64,
        earliest: i64,
        latest: i64,
    },
    #[error("topic `{topic}` does not exist on {brokers}; produce to it first or check --topic")]
    NoSuchTopic { topic: String, brokers: String },
    #[error("Kafka security settings are not usable: {0}")]
    Security(String),
}

pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

/// What kind of failure a broker call had ([`KafkaError::Call`]), kept beside the text for the
/// retry classifiers [`fetch_verdict`] and [`produce_verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// The broker answered with this Kafka error code (also one that rskafka retried until its
    /// own deadline: a leader moving, a topic unknown to the broker asked).
    Server(ProtocolError),
    /// The broker speaks no version of the request this client needs.
    Unsupported,
    /// SASL authentication, or the check of the broker's TLS certificate, failed.
    Security,
    /// The connection or the request failed on the wire (refused, reset, closed), or the answer
    /// could not be read.
    Transport,
}

impl CallKind {
    /// The kind of rskafka's `error`, looking through rskafka's own retries to the last error.
    pub fn of(error: &RsError) -> CallKind {
        match error {
            RsError::ServerError { protocol_error, .. } => CallKind::Server(*protocol_error),
            RsError::Request(RequestError::NoVersionMatch { .. }) => CallKind::Unsupported,
            RsError::Connection(e) => CallKind::of_connection(e),
            RsError::RetryFailed(BackoffError::DeadlineExceded { source, .. }) => {
                CallKind::of_source(source.as_ref())
            }
            _ => CallKind::Transport,
        }
    }

    fn of_connection(error: &ConnectionError) -> CallKind {
        match error {
            // A SASL exchange cut short on the wire is the wire's failure, not a refusal.
            ConnectionError::SaslFailed(SaslError::RequestError(_)) => CallKind::Transport,
            ConnectionError::SaslFailed(_) => CallKind::Security,
            ConnectionError::RetryFailed(BackoffError::DeadlineExceded { source, .. }) => {
                CallKind::of_source(source.as_ref())
            }
            other => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(other);
                while let Some(e) = source {
                    if let Some(rustls::Error::InvalidCertificate(_)) = e.downcast_ref() {
                        return CallKind::Security;
                    }
                    source = e.source();
                }
                CallKind::Transport
            }
        }
    }

    fn of_source(source: &(dyn std::error::Error + Send + Sync + 'static)) -> CallKind {
        if let Some(e) = source.downcast_ref::<RsError>() {
            CallKind::of(e)
        } else if let Some(e) = source.downcast_ref::<ConnectionError>() {
            CallKind::of_connection(e)
        } else {
            CallKind::Transport
        }
    }
}

/// Kafka error codes that no retry of a fetch or a produce can fix: a refusal of rights, a
/// request the broker does not take, a topic that does not exist. An unknown topic or partition
/// only reaches us after rskafka retried it for its own deadline (our partition clients use
/// `UnknownTopicHandling::Retry`, which refreshes the metadata each time), so a broker that is
/// still loading its metadata after a restart is ridden out before this calls it permanent.
fn permanent_for_any_call(code: ProtocolError) -> bool {
    use ProtocolError as P;
    matches!(
        code,
        P::TopicAuthorizationFailed
            | P::GroupAuthorizationFailed
            | P::ClusterAuthorizationFailed
            | P::TransactionalIdAuthorizationFailed
            | P::SaslAuthenticationFailed
            | P::UnsupportedSaslMechanism
            | P::IllegalSaslState
            | P::SecurityDisabled
            | P::UnsupportedVersion
            | P::InvalidRequest
            | P::InvalidTopicException
            | P::UnknownTopicOrPartition
            | P::UnknownTopicId
    )
}

/// Whether an error of a fetch (or of the offset lookups around it) is worth another attempt
/// ([`crate::retry`]). Permanent: offset out of range (the caller applies `--on-data-loss`
/// first), a topic that does not exist (deleted: after rskafka's own retries), authorization
/// and authentication refused, a request or size the broker does not take, security settings
/// that cannot work. Everything else, connections, timeouts, leaders moving, a broker storage
/// error, is transient: the fetch is retried from the same offset.
pub fn fetch_verdict(error: &KafkaError) -> Verdict {
    use ProtocolError as P;
    match error {
        KafkaError::OffsetOutOfRange { .. }
        | KafkaError::NoSuchTopic { .. }
        | KafkaError::Security(_) => Verdict::Permanent,
        KafkaError::Connect { reason, .. } => connect_verdict(reason),
        KafkaError::Timeout { .. } | KafkaError::Sequence { .. } => Verdict::Transient,
        KafkaError::Call { kind, .. } => match *kind {
            CallKind::Server(code) => Verdict::transient_if(
                !permanent_for_any_call(code)
                    && !matches!(
                        code,
                        P::OffsetOutOfRange | P::InvalidFetchSize | P::UnsupportedCompressionType
                    ),
            ),
            CallKind::Unsupported | CallKind::Security => Verdict::Permanent,
            CallKind::Transport => Verdict::Transient,
        },
    }
}

/// Whether an error of a produce or of `InitProducerId` is worth another attempt
/// ([`crate::retry`]). Permanent: a batch or record the broker will never take (too large,
/// invalid, a timestamp out of its bounds, a format or compression it refuses, a topic policy),
/// a topic that does not exist, authorization and authentication refused (`InitProducerId`
/// needs `IDEMPOTENT_WRITE` on the cluster), a request the broker does not speak. The
/// idempotence refusals ([`KafkaError::Sequence`]) are transient: the lane takes a new producer
/// id (`src/produce.rs`). Everything else, connections, timeouts, leaders moving, too few
/// in-sync replicas, is transient.
pub fn produce_verdict(error: &KafkaError) -> Verdict {
    use ProtocolError as P;
    match error {
        KafkaError::NoSuchTopic { .. }
        | KafkaError::Security(_)
        | KafkaError::OffsetOutOfRange { .. } => Verdict::Permanent,
        KafkaError::Connect { reason, .. } => connect_verdict(reason),
        KafkaError::Timeout { .. } | KafkaError::Sequence { .. } => Verdict::Transient,
        KafkaError::Call { kind, .. } => match *kind {
            CallKind::Server(code) => Verdict::transient_if(
                !permanent_for_any_call(code)
                    && !matches!(
                        code,
                        P::MessageTooLarge
                            | P::RecordListTooLarge
                            | P::InvalidRecord
                            | P::InvalidTimestamp
                            | P::InvalidRequiredAcks
                            | P::PolicyViolation
                            | P::UnsupportedForMessageFormat
                            | P::UnsupportedCompressionType
                            | P::InvalidProducerIdMapping
                            | P::InvalidTransactionTimeout
                            | P::InvalidTxnState
                    ),
            ),
            CallKind::Unsupported | CallKind::Security => Verdict::Permanent,
            CallKind::Transport => Verdict::Transient,
        },
    }
}

/// A failed connect is permanent when the handshake was refused (SASL, TLS), not when the
/// broker could not be reached.
fn connect_verdict(reason: &str) -> Verdict {
    Verdict::transient_if(connect_cause(reason) == ConnectCause::Unreachable)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectCause {
    Authentication,
    Tls,
    Unreachable,
}

/// Why a connection failed, from the reason rskafka gave.
fn connect_cause(reason: &str) -> ConnectCause {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("sasl") || lower.contains("authenticat") {
        ConnectCause::Authentication
    } else if lower.contains("certificate") || lower.contains("tls") {
        ConnectCause::Tls
    } else {
        ConnectCause::Unreachable
    }
}

/// Why a broker refused a batch of an idempotent producer (a batch with a producer id and a
/// sequence number, [`PartitionHandle::produce_raw`]): the five Kafka errors of idempotence,
/// told apart so that `app produce` can react to each (`src/produce.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceError {
    /// `DUPLICATE_SEQUENCE_NUMBER`: the partition already holds this batch (a resend of a
    /// batch whose acknowledgement was lost). Brokers since Kafka 2.x mostly answer such a
    /// resend with success and the first write's offsets instead.
    Duplicate,
    /// `OUT_OF_ORDER_SEQUENCE_NUMBER`: the broker expected another sequence number from this
    /// producer id on this partition; it does not hold the producer's earlier batches.
    OutOfOrder,
    /// `UNKNOWN_PRODUCER_ID`: the broker has no state for this producer id on this partition
    /// (expired after `producer.id.expiration.ms` without writes, or deleted with its records).
    UnknownProducer,
    /// `INVALID_PRODUCER_EPOCH`: a newer epoch of this producer id exists.
    InvalidEpoch,
    /// `PRODUCER_FENCED`: this producer id was taken over by a newer producer.
    Fenced,
}

impl SequenceError {
    /// The idempotence error rskafka's `error` is, if it is one.
    fn of(error: &RsError) -> Option<SequenceError> {
        let RsError::ServerError { protocol_error, .. } = error else {
            return None;
        };
        Some(match protocol_error {
            ProtocolError::DuplicateSequenceNumber => SequenceError::Duplicate,
            ProtocolError::OutOfOrderSequenceNumber => SequenceError::OutOfOrder,
            ProtocolError::UnknownProducerId => SequenceError::UnknownProducer,
            ProtocolError::InvalidProducerEpoch => SequenceError::InvalidEpoch,
            ProtocolError::ProducerFenced => SequenceError::Fenced,
            _ => return None,
        })
    }
}

impl fmt::Display for SequenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SequenceError::Duplicate => {
                "DUPLICATE_SEQUENCE_NUMBER (the partition already holds this batch)"
            }
            SequenceError::OutOfOrder => {
                "OUT_OF_ORDER_SEQUENCE_NUMBER (the broker does not hold this producer id's \
                 earlier batches: it lost them, or lost the producer's state)"
            }
            SequenceError::UnknownProducer => {
                "UNKNOWN_PRODUCER_ID (the broker no longer knows this producer id on this \
                 partition)"
            }
            SequenceError::InvalidEpoch => {
                "INVALID_PRODUCER_EPOCH (a newer epoch of this producer id exists)"
            }
            SequenceError::Fenced => "PRODUCER_FENCED (a newer producer took this producer id)",
        })
    }
}

/// What to do about a failed broker call, from its kind.
fn call_hint(kind: &CallKind) -> &'static str {
    use ProtocolError as P;
    match kind {
        CallKind::Server(
            P::TopicAuthorizationFailed
            | P::ClusterAuthorizationFailed
            | P::GroupAuthorizationFailed
            | P::TransactionalIdAuthorizationFailed,
        ) => {
            "The broker refused this client's rights: grant its principal the ACLs it needs (to \
             produce: WRITE on the topic and IDEMPOTENT_WRITE on the cluster; to consume: READ \
             and DESCRIBE on the topic)"
        }
        CallKind::Server(P::MessageTooLarge | P::RecordListTooLarge) => {
            "The batch is larger than the broker or the topic accepts (message.max.bytes, \
             max.message.bytes): lower --batch-bytes or raise the topic's limit"
        }
        CallKind::Server(P::UnknownTopicOrPartition | P::UnknownTopicId) => {
            "The broker does not know the topic or partition: was it deleted? Check --topic"
        }
        CallKind::Security => {
            "Check --kafka-sasl-mechanism, --kafka-sasl-username and KAFKA_SASL_PASSWORD, or \
             --kafka-ca-file for the broker's TLS certificate"
        }
        CallKind::Unsupported => {
            "The broker does not speak a version of this request that this client needs; \
             upgrade the broker"
        }
        CallKind::Server(_) | CallKind::Transport => {
            "The broker may be down or overloaded; see its log (`make logs`) and retry"
        }
    }
}

/// What to do about a failed connection, from the reason rskafka gave.
fn connect_hint(reason: &str) -> &'static str {
    match connect_cause(reason) {
        ConnectCause::Authentication => {
            "SASL authentication failed: check --kafka-sasl-mechanism, --kafka-sasl-username and \
             the password in KAFKA_SASL_PASSWORD"
        }
        ConnectCause::Tls => {
            "The TLS handshake failed: check --kafka-ca-file (the CA that signed the broker's \
             certificate) and that the broker's certificate names the host given in --brokers"
        }
        ConnectCause::Unreachable => {
            "Is it running (`make up`)? Check --brokers / KAFKA_BROKERS, and --kafka-tls / \
             --kafka-sasl-* if the listener needs TLS or SASL"
        }
    }
}

/// Extra time the outer bound of a connect gets over rskafka's own retry deadline, so that
/// rskafka's error (with the real reason: refused, TLS, SASL) arrives before our bare timeout.
const CONNECT_GRACE: Duration = Duration::from_secs(2);

/// Compression codec for produced batches (`--compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    /// The default: the fastest codec here for JSON text with a good ratio (see docs/produce.md).
    #[default]
    Lz4,
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "snappy" => Ok(Compression::Snappy),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!(
                "`{other}` is not a Kafka compression; use one of none, gzip, snappy, lz4, zstd"
            )),
        }
    }
}

impl From<Compression> for RsCompression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::None => RsCompression::NoCompression,
            Compression::Gzip => RsCompression::Gzip,
            Compression::Snappy => RsCompression::Snappy,
            Compression::Lz4 => RsCompression::Lz4,
            Compression::Zstd => RsCompression::Zstd,
        }
    }
}

impl From<Compression> for RecordBatchCompression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::None => RecordBatchCompression::NoCompression,
            Compression::Gzip => RecordBatchCompression::Gzip,
            Compression::Snappy => RecordBatchCompression::Snappy,
            Compression::Lz4 => RecordBatchCompression::Lz4,
            Compression::Zstd => RecordBatchCompression::Zstd,
        }
    }
}

/// How to reach the brokers.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// Bound on every single broker call (connect, metadata, produce, fetch).
    pub timeout: Duration,
    /// TLS and SASL (default: plaintext, no authentication).
    pub security: KafkaSecurity,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            timeout: Duration::from_secs(10),
            security: KafkaSecurity::default(),
        }
    }
}

/// Encryption and authentication towards the brokers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    /// `None`: plaintext.
    pub tls: Option<TlsOptions>,
    /// `None`: no SASL authentication.
    pub sasl: Option<SaslOptions>,
}

/// TLS to the brokers (server authentication; the broker's certificate must name the host or IP
/// given in `--brokers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) to trust; `None`: the Mozilla root store.
    pub ca_file: Option<PathBuf>,
}

/// SASL mechanism (`--kafka-sasl-mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl std::str::FromStr for SaslMechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "plain" => Ok(SaslMechanism::Plain),
            "scram-sha-256" => Ok(SaslMechanism::ScramSha256),
            "scram-sha-512" => Ok(SaslMechanism::ScramSha512),
            other => Err(format!(
                "`{other}` is not a SASL mechanism; use plain, scram-sha-256 or scram-sha-512"
            )),
        }
    }
}

/// SASL credentials. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslOptions {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslOptions")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

impl KafkaSecurity {
    /// The rustls client configuration for `tls` (also used by the group client's own
    /// connections, `src/group/connection.rs`, so both trust exactly the same CAs).
    pub(crate) fn tls_config(tls: &TlsOptions) -> Result<Arc<rustls::ClientConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_file {
            Some(path) => {
                let shown = path.display();
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<std::result::Result<_, _>>())
                    .map_err(|e| {
                        KafkaError::Security(format!(
                            "cannot read CA certificates from --kafka-ca-file {shown}: {e}; \
                             give a PEM file holding the CA that signed the broker's certificate"
                        ))
                    })?;
                if certs.is_empty() {
                    return Err(KafkaError::Security(format!(
                        "--kafka-ca-file {shown} holds no PEM certificate"
                    )));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        KafkaError::Security(format!(
                            "--kafka-ca-file {shown}: a certificate is not usable as a CA: {e}"
                        ))
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KafkaError::Security(format!("TLS setup failed: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    fn sasl_config(sasl: &SaslOptions) -> Result<SaslConfig> {
        if sasl.username.is_empty() || sasl.password.is_empty() {
            return Err(KafkaError::Security(
                "--kafka-sasl-mechanism needs --kafka-sasl-username (KAFKA_SASL_USERNAME) and the \
                 password in the environment variable KAFKA_SASL_PASSWORD"
                    .into(),
            ));
        }
        let credentials = Credentials::new(sasl.username.clone(), sasl.password.clone());
        Ok(match sasl.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(credentials),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        })
    }

    /// Applies TLS and SASL to a client builder.
    fn apply(&self, mut builder: ClientBuilder) -> Result<ClientBuilder> {
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(Self::tls_config(tls)?);
        }
        if let Some(sasl) = &self.sasl {
            builder = builder.sasl_config(Self::sasl_config(sasl)?);
        }
        Ok(builder)
    }

    /// Hides the SASL password in `text` (rskafka errors should not contain it; this is a guard).
    pub(crate) fn redact(&self, text: String) -> String {
        match &self.sasl {
            Some(s) if !s.password.is_empty() => text.replace(&s.password, "***"),
            _ => text,
        }
    }
}

impl KafkaConfig {
    fn broker_list(&self) -> Vec<String> {
        self.brokers
            .split(',')
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect()
    }
}

/// A connected client plus the config it was built from.
#[derive(Clone)]
pub struct Kafka {
    pub config: KafkaConfig,
    pub client: Arc<Client>,
}

/// Runs one broker call with the configured timeout, mapping errors to [`KafkaError`].
pub async fn bounded<T>(
    config: &KafkaConfig,
    what: &str,
    fut: impl Future<Output = std::result::Result<T, RsError>>,
) -> Result<T> {
    match tokio::time::timeout(config.timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(KafkaError::Call {
            what: what.to_string(),
            brokers: config.brokers.clone(),
            reason: e.to_string(),
            kind: CallKind::of(&e),
        }),
        Err(_) => Err(KafkaError::Timeout {
            what: what.to_string(),
            brokers: config.brokers.clone(),
            timeout: config.timeout,
        }),
    }
}

impl Kafka {
    /// Connects to the brokers, failing within `config.timeout` with the address in the error.
    pub async fn connect(config: KafkaConfig) -> Result<Kafka> {
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
            // rskafka counts only the time slept between attempts against this deadline, not
            // the attempts themselves (a refused SASL handshake, a TLS failure, each ~0.3 s); an
            // eighth of the timeout in sleeps leaves room for them, so its error (with the real
            // reason) arrives before our outer bound fires with a bare "no answer" (half was
            // seen to lose that race in CI). Our own loops retry transient errors above this.
            deadline: Some(config.timeout / 8),
        };
        let builder = ClientBuilder::new(config.broker_list())
            .client_id("reclamacoes")
            .backoff_config(backoff);
        let builder = config.security.apply(builder)?;
        let client =
            match tokio::time::timeout(config.timeout + CONNECT_GRACE, builder.build()).await {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    return Err(KafkaError::Connect {
                        brokers: config.brokers.clone(),
                        timeout: config.timeout,
                        reason: config.security.redact(e.to_string()),
                    })
                }
                Err(_) => {
                    return Err(KafkaError::Connect {
                        brokers: config.brokers.clone(),
                        timeout: config.timeout,
                        reason: "no answer".into(),
                    })
                }
            };
        // `build` only opens a connection lazily on some paths; a metadata call proves the broker
        // answers.
        let kafka = Kafka {
            config,
            client: Arc::new(client),
        };
        kafka.list_topics().await.map_err(|e| KafkaError::Connect {
            brokers: kafka.config.brokers.clone(),
            timeout: kafka.config.timeout,
            reason: kafka.config.security.redact(e.to_string()),
        })?;
        Ok(kafka)
    }

    /// Topic name -> partition count.
    pub async fn list_topics(&self) -> Result<Vec<(String, usize)>> {
        let topics = bounded(&self.config, "list_topics", self.client.list_topics()).await?;
        Ok(topics
            .into_iter()
            .map(|t| (t.name, t.partitions.len()))
            .collect())
    }

    /// Partition count of `topic`, or `None` when it does not exist.
    pub async fn partition_count(&self, topic: &str) -> Result<Option<usize>> {
        Ok(self
            .list_topics()
            .await?
            .into_iter()
            .find(|(name, _)| name == topic)
            .map(|(_, n)| n))
    }

    /// Creates `topic` when it is missing; an existing topic is used as it is. Returns the
    /// partition count and whether it was created.
    pub async fn ensure_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<(usize, bool)> {
        if let Some(n) = self.partition_count(topic).await? {
            return Ok((n, false));
        }
        let controller = self
            .client
            .controller_client()
            .map_err(|e| KafkaError::Call {
                what: "controller_client".into(),
                brokers: self.config.brokers.clone(),
                reason: e.to_string(),
                kind: CallKind::of(&e),
            })?;
        let timeout_ms = i32::try_from(self.config.timeout.as_millis()).unwrap_or(i32::MAX);
        let created = tokio::time::timeout(
            self.config.timeout,
            controller.create_topic(topic, partitions, replication_factor, timeout_ms),
        )
        .await;
        let was_created = match created {
            Ok(Ok(())) => true,
            // Another producer created it first: use it as it is.
            Ok(Err(RsError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            })) => false,
            Ok(Err(e)) => {
                return Err(KafkaError::Call {
                    what: format!("create_topic {topic}"),
                    brokers: self.config.brokers.clone(),
                    reason: e.to_string(),
                    kind: CallKind::of(&e),
                })
            }
            Err(_) => {
                return Err(KafkaError::Timeout {
                    what: format!("create_topic {topic}"),
                    brokers: self.config.brokers.clone(),
                    timeout: self.config.timeout,
                })
            }
        };
        // Metadata can lag creation by a moment.
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        loop {
            if let Some(n) = self.partition_count(topic).await? {
                if n > 0 {
                    return Ok((n, was_created));
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(KafkaError::NoSuchTopic {
                    topic: topic.into(),
                    brokers: self.config.brokers.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client for one partition (leader discovery bounded by the timeout).
    pub async fn partition(&self, topic: &str, partition: i32) -> Result<Arc<PartitionClient>> {
        let what = format!("partition_client {topic}/{partition}");
        let client = bounded(
            &self.config,
            &what,
            self.client
                .partition_client(topic, partition, UnknownTopicHandling::Retry),
        )
        .await?;
        Ok(Arc::new(client))
    }
}

/// One partition's fetch and offset calls, each bounded by the timeout.
#[derive(Clone)]
pub struct PartitionHandle {
    pub config: KafkaConfig,
    pub topic: String,
    pub partition: i32,
    pub client: Arc<PartitionClient>,
}

impl PartitionHandle {
    pub async fn offsets(&self) -> Result<(i64, i64)> {
        let what = format!("list_offsets {}/{}", self.topic, self.partition);
        let earliest = bounded(
            &self.config,
            &what,
            self.client.get_offset(OffsetAt::Earliest),
        );
        let latest = bounded(
            &self.config,
            &what,
            self.client.get_offset(OffsetAt::Latest),
        );
        let (earliest, latest) = tokio::try_join!(earliest, latest)?;
        Ok((earliest, latest))
    }

    /// Fetches from `offset`; returns the records and the high watermark. `OffsetOutOfRange`
    /// comes back as [`KafkaError::OffsetOutOfRange`] with the numbers.
    pub async fn fetch(
        &self,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<(Vec<RecordAndOffset>, i64)> {
        let fut = self.client.fetch_records(offset, 1..max_bytes, max_wait_ms);
        self.bounded_fetch(offset, max_wait_ms, fut).await
    }

    /// Like [`PartitionHandle::fetch`], but gives the record batches with their records not yet
    /// read (the consumer reads them with [`rskafka::record::RawRecordIter`], without an
    /// allocation per record). Records before `offset` are in them too. Read committed, the
    /// data of aborted transactions is [`FetchedContent::Aborted`] and nothing at or after the
    /// last stable offset comes; a batch that cannot be read is [`FetchedContent::Corrupt`].
    pub async fn fetch_batches(
        &self,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
        isolation: IsolationLevel,
    ) -> Result<FetchedPartition> {
        let fut = self
            .client
            .fetch_record_batches(offset, 1..max_bytes, max_wait_ms, isolation);
        self.bounded_fetch(offset, max_wait_ms, fut).await
    }

    /// A fetch bounded by the timeout plus the broker's wait, its errors made ours.
    async fn bounded_fetch<T>(
        &self,
        offset: i64,
        max_wait_ms: i32,
        fut: impl Future<Output = std::result::Result<T, RsError>>,
    ) -> Result<T> {
        let what = format!("fetch {}/{} at {offset}", self.topic, self.partition);
        let bound = self.config.timeout + Duration::from_millis(max_wait_ms.max(0) as u64);
        match tokio::time::timeout(bound, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(RsError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            })) => {
                let (earliest, latest) = self.offsets().await?;
                Err(KafkaError::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    requested: offset,
                    earliest,
                    latest,
                })
            }
            Ok(Err(e)) => Err(KafkaError::Call {
                what,
                brokers: self.config.brokers.clone(),
                reason: e.to_string(),
                kind: CallKind::of(&e),
            }),
            Err(_) => Err(KafkaError::Timeout {
                what,
                brokers: self.config.brokers.clone(),
                timeout: bound,
            }),
        }
    }

    /// A new producer id for an idempotent producer (`InitProducerId`, rskafka patch 6).
    pub async fn init_producer_id(&self) -> Result<ProducerId> {
        let what = format!("init_producer_id {}/{}", self.topic, self.partition);
        bounded(&self.config, &what, self.client.init_producer_id()).await
    }

    /// Produces one batch whose records are written and compressed already
    /// ([`RawRecords::compress`]; acks=all); timestamps in milliseconds. Returns the offsets.
    /// With `sequence` the batch is idempotent (rskafka patch 6), and the broker's idempotence
    /// errors come back as [`KafkaError::Sequence`].
    pub async fn produce_raw(
        &self,
        records: RawRecords,
        first_timestamp_ms: i64,
        max_timestamp_ms: i64,
        sequence: Option<ProducerSequence>,
    ) -> Result<Vec<i64>> {
        let what = format!("produce {}/{}", self.topic, self.partition);
        let fut = self
            .client
            .produce_raw(records, first_timestamp_ms, max_timestamp_ms, sequence);
        match tokio::time::timeout(self.config.timeout, fut).await {
            Ok(Ok(offsets)) => Ok(offsets),
            Ok(Err(e)) => Err(match SequenceError::of(&e) {
                Some(error) => KafkaError::Sequence {
                    what,
                    brokers: self.config.brokers.clone(),
                    error,
                },
                None => KafkaError::Call {
                    what,
                    brokers: self.config.brokers.clone(),
                    reason: e.to_string(),
                    kind: CallKind::of(&e),
                },
            }),
            Err(_) => Err(KafkaError::Timeout {
                what,
                brokers: self.config.brokers.clone(),
                timeout: self.config.timeout,
            }),
        }
    }

    /// Produces one batch (acks=all); returns the offsets.
    pub async fn produce(
        &self,
        records: Vec<Record>,
        compression: Compression,
    ) -> Result<Vec<i64>> {
        let what = format!("produce {}/{}", self.topic, self.partition);
        bounded(
            &self.config,
            &what,
            self.client.produce(records, compression.into()),
        )
        .await
    }
}

/// Kafka's murmur2 (as in the Java client's `Utils.murmur2`), byte-compatible.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h: u32 = SEED ^ length;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The Java client's default partition for a keyed record: `toPositive(murmur2(key)) % n`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> i32 {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    (positive % partitions as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from the Java client's `UtilsTest.testMurmur2` (kafka/clients).
    #[test]
    fn murmur2_matches_java_client() {
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), *expected, "murmur2({input})");
        }
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    fn server(code: ProtocolError) -> RsError {
        RsError::ServerError {
            protocol_error: code,
            error_message: None,
            request: rskafka::client::error::RequestContext::Topic("t".into()),
            response: None,
            is_virtual: false,
        }
    }

    fn call(error: RsError) -> KafkaError {
        KafkaError::Call {
            what: "test".into(),
            brokers: "b:9092".into(),
            reason: error.to_string(),
            kind: CallKind::of(&error),
        }
    }

    #[test]
    fn call_kinds_look_through_rskafka_retries() {
        use ProtocolError as P;
        assert_eq!(
            CallKind::of(&server(P::NotLeaderOrFollower)),
            CallKind::Server(P::NotLeaderOrFollower)
        );
        let retried = RsError::RetryFailed(BackoffError::DeadlineExceded {
            deadline: Duration::from_secs(1),
            source: Box::new(server(P::UnknownTopicOrPartition)),
        });
        assert_eq!(
            CallKind::of(&retried),
            CallKind::Server(P::UnknownTopicOrPartition)
        );
        let io = RsError::Request(RequestError::IO(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(CallKind::of(&io), CallKind::Transport);
        let sasl = RsError::Connection(ConnectionError::SaslFailed(
            SaslError::UnsupportedSaslMechanism,
        ));
        assert_eq!(CallKind::of(&sasl), CallKind::Security);
        let cut = RsError::Connection(ConnectionError::SaslFailed(SaslError::RequestError(
            RequestError::IO(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
        )));
        assert_eq!(CallKind::of(&cut), CallKind::Transport);
        assert_eq!(CallKind::of(&RsError::Timeout), CallKind::Transport);
    }

    #[test]
    fn fetch_verdicts() {
        use ProtocolError as P;
        let permanent = [
            KafkaError::OffsetOutOfRange {
                topic: "t".into(),
                partition: 0,
                requested: 5,
                earliest: 10,
                latest: 20,
            },
            KafkaError::NoSuchTopic {
                topic: "t".into(),
                brokers: "b".into(),
            },
            call(server(P::TopicAuthorizationFailed)),
            call(server(P::SaslAuthenticationFailed)),
            call(RsError::RetryFailed(BackoffError::DeadlineExceded {
                deadline: Duration::from_secs(1),
                source: Box::new(server(P::UnknownTopicOrPartition)),
            })),
            KafkaError::Connect {
                brokers: "b".into(),
                timeout: Duration::from_secs(1),
                reason: "Sasl handshake failed: authentication failed".into(),
            },
        ];
        for e in &permanent {
            assert_eq!(fetch_verdict(e), Verdict::Permanent, "{e}");
        }
        let transient = [
            call(server(P::NotLeaderOrFollower)),
            call(server(P::LeaderNotAvailable)),
            call(server(P::KafkaStorageError)),
            call(server(P::RequestTimedOut)),
            call(RsError::Timeout),
            KafkaError::Timeout {
                what: "fetch".into(),
                brokers: "b".into(),
                timeout: Duration::from_secs(1),
            },
            KafkaError::Connect {
                brokers: "b".into(),
                timeout: Duration::from_secs(1),
                reason: "Connection refused (os error 111)".into(),
            },
        ];
        for e in &transient {
            assert_eq!(fetch_verdict(e), Verdict::Transient, "{e}");
        }
    }

    #[test]
    fn produce_verdicts() {
        use ProtocolError as P;
        for code in [
            P::MessageTooLarge,
            P::RecordListTooLarge,
            P::InvalidRecord,
            P::TopicAuthorizationFailed,
            // InitProducerId without IDEMPOTENT_WRITE on the cluster.
            P::ClusterAuthorizationFailed,
            P::UnsupportedVersion,
        ] {
            assert_eq!(
                produce_verdict(&call(server(code))),
                Verdict::Permanent,
                "{code:?}"
            );
        }
        for code in [
            P::NotLeaderOrFollower,
            P::NotEnoughReplicas,
            P::NotEnoughReplicasAfterAppend,
            P::CoordinatorLoadInProgress,
            P::ConcurrentTransactions,
            P::CorruptMessage,
        ] {
            assert_eq!(
                produce_verdict(&call(server(code))),
                Verdict::Transient,
                "{code:?}"
            );
        }
        let refused = KafkaError::Sequence {
            what: "produce".into(),
            brokers: "b".into(),
            error: SequenceError::OutOfOrder,
        };
        assert_eq!(produce_verdict(&refused), Verdict::Transient);
    }

    #[test]
    fn partition_is_positive_modulo() {
        for key in ["00360305", "60746948", "ABC-BRASIL (conglomerado)", ""] {
            let p = partition_for_key(key.as_bytes(), 3);
            assert!((0..3).contains(&p));
        }
    }
}
