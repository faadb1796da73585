//! One connection to one broker, owned by one task: size-prefixed frames, one request in flight,
//! correlation ids checked, every call bounded by a timeout.
//!
//! Opening a connection is: TCP (`TCP_NODELAY`), then TLS when configured (rustls with ring and
//! the very same trust settings as the rest of the program: [`KafkaSecurity::tls_config`]), then
//! `ApiVersions` v3 (answered by every broker since Kafka 2.4, before authentication), then SASL
//! when configured: `SaslHandshake` v1 names the mechanism, and the mechanism's messages (PLAIN,
//! SCRAM-SHA-256, SCRAM-SHA-512, computed by `rsasl`) travel in `SaslAuthenticate` requests, so
//! authentication failures come back as Kafka errors with the broker's reason. The whole opening
//! is bounded by the timeout.
//!
//! Versions: every request this client sends implements [`GroupRequest`], which says which
//! versions of it this code fills in correctly (oldest: the flexible versions of Kafka 2.4;
//! newest: what `kafka-protocol` generates). A call uses the newest version both sides speak
//! ([`VersionChoice::Newest`]), or the oldest ([`VersionChoice::Oldest`], which the tests use to
//! prove the older message shapes against a real broker). Request and response header versions
//! come from the generated messages (`HeaderVersion`), so flexible versions get their tagged
//! fields and `ApiVersions` its always-v0 response header.
//!
//! A call that is abandoned half-way (timeout, or its future dropped by a `select!`) leaves the
//! stream in an unknown state, so the connection marks itself broken and refuses further calls;
//! its owner opens a new one. The correlation id check catches any other mismatch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FindCoordinatorRequest, HeartbeatRequest,
    JoinGroupRequest, LeaveGroupRequest, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest,
    RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message, StrBytes, VersionRange,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::{broker_message, GroupError, Result};
use crate::kafka::{KafkaSecurity, SaslMechanism, SaslOptions};

/// Largest response frame accepted. Group answers are small (a JoinGroup answer to the leader
/// holds one subscription per member); this only bounds the memory a bogus size prefix could
/// make us allocate.
pub(crate) const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Which of the versions both sides speak a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VersionChoice {
    /// The newest (the default).
    #[default]
    Newest,
    /// The oldest this client speaks (Kafka 2.4's), to test the older message shapes.
    Oldest,
}

/// A request of the group client, with the versions this code fills in correctly.
/// (`kafka-protocol`'s own `Request` trait needs its `broker` feature too; this needs only
/// `client`: encoding requests, decoding answers.)
pub(crate) trait GroupRequest: Message + Encodable + HeaderVersion {
    const KEY: ApiKey;
    /// Name in errors and logs.
    const NAME: &'static str;
    /// The versions this client speaks.
    const OURS: VersionRange;
    type Response: Decodable + HeaderVersion;
}

macro_rules! group_request {
    ($key:ident: $ty:ident => $answer:ident, $min:literal..=$max:literal) => {
        impl GroupRequest for $ty {
            const KEY: ApiKey = ApiKey::$key;
            const NAME: &'static str = stringify!($key);
            const OURS: VersionRange = VersionRange {
                min: $min,
                max: $max,
            };
            type Response = kafka_protocol::messages::$answer;
        }
    };
}

// Minimums: the first flexible versions (KIP-482, Kafka 2.4), except SaslHandshake, whose v1 is
// the one that hands the mechanism's messages to SaslAuthenticate. Maximums: the newest versions
// whose fields `super::protocol` fills in; pinned, so a newer `kafka-protocol` cannot silently
// send a version whose new fields (member epochs, topic ids) this code leaves at defaults.
group_request!(Metadata: MetadataRequest => MetadataResponse, 9..=13);
group_request!(FindCoordinator: FindCoordinatorRequest => FindCoordinatorResponse, 3..=6);
group_request!(JoinGroup: JoinGroupRequest => JoinGroupResponse, 6..=9);
group_request!(SyncGroup: SyncGroupRequest => SyncGroupResponse, 4..=5);
group_request!(Heartbeat: HeartbeatRequest => HeartbeatResponse, 4..=4);
group_request!(LeaveGroup: LeaveGroupRequest => LeaveGroupResponse, 4..=5);
group_request!(OffsetCommit: OffsetCommitRequest => OffsetCommitResponse, 8..=9);
group_request!(OffsetFetch: OffsetFetchRequest => OffsetFetchResponse, 6..=9);
group_request!(SaslHandshake: SaslHandshakeRequest => SaslHandshakeResponse, 1..=1);
group_request!(SaslAuthenticate: SaslAuthenticateRequest => SaslAuthenticateResponse, 0..=2);

/// `ApiVersions` is sent first, at a fixed version (its answer is how the others are chosen).
const API_VERSIONS_VERSION: i16 = 3;

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// What a connection needs to know besides its address.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSettings {
    /// The consumer group, for error messages.
    pub group: String,
    pub client_id: String,
    pub security: KafkaSecurity,
    /// Bound on opening and on every call (a call may add its own wait, e.g. JoinGroup).
    pub timeout: Duration,
    pub versions: VersionChoice,
}

/// One open, authenticated connection to one broker.
pub(crate) struct Connection {
    stream: Box<dyn Stream>,
    broker: String,
    settings: Arc<ConnectionSettings>,
    client_id: StrBytes,
    next_correlation_id: i32,
    /// The broker's versions per API key, from `ApiVersions`.
    broker_versions: BTreeMap<i16, VersionRange>,
    /// Set while a call is in flight; still set means a call was abandoned half-way.
    broken: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("broker", &self.broker)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// What to do when opening a connection failed, from the reason.
fn connect_hint(reason: &str) -> &'static str {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        "The TLS handshake failed: check --kafka-ca-file (the CA that signed the broker's \
         certificate) and that the certificate names the host given in --brokers"
    } else {
        "Is it running (`make up`)? Check --brokers / KAFKA_BROKERS, and --kafka-tls / \
         --kafka-sasl-* if the listener needs TLS or SASL"
    }
}

fn sasl_name(mechanism: SaslMechanism) -> &'static str {
    match mechanism {
        SaslMechanism::Plain => "PLAIN",
        SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
    }
}

/// `host` of `host:port` (IPv6 literals in brackets lose them), for TLS server names.
fn host_of(broker: &str) -> &str {
    let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The version a call uses: within both ranges, the newest or the oldest.
pub(crate) fn choose_version(
    ours: VersionRange,
    theirs: VersionRange,
    choice: VersionChoice,
) -> Option<i16> {
    let both = ours.intersect(&theirs);
    if both.is_empty() {
        return None;
    }
    Some(match choice {
        VersionChoice::Newest => both.max,
        VersionChoice::Oldest => both.min,
    })
}

impl Connection {
    /// Opens, secures and authenticates a connection to `broker` (`host:port`), all within the
    /// timeout.
    pub(crate) async fn open(broker: &str, settings: Arc<ConnectionSettings>) -> Result<Self> {
        let timeout = settings.timeout;
        match tokio::time::timeout(timeout, Self::open_unbounded(broker, settings.clone())).await {
            Ok(result) => result,
            Err(_) => Err(GroupError::Connect {
                group: settings.group.clone(),
                broker: broker.to_string(),
                timeout,
                reason: "no answer".into(),
                hint: connect_hint(""),
            }),
        }
    }

    async fn open_unbounded(broker: &str, settings: Arc<ConnectionSettings>) -> Result<Self> {
        let connect_error = |reason: String| GroupError::Connect {
            group: settings.group.clone(),
            broker: broker.to_string(),
            timeout: settings.timeout,
            hint: connect_hint(&reason),
            reason: settings.security.redact(reason),
        };
        let tcp = TcpStream::connect(broker)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        // Small request/response exchanges: do not wait to fill a segment.
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &settings.security.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let config = KafkaSecurity::tls_config(tls).map_err(|e| GroupError::Security {
                    group: settings.group.clone(),
                    reason: e.to_string(),
                })?;
                let name = rustls::pki_types::ServerName::try_from(host_of(broker).to_string())
                    .map_err(|e| {
                        connect_error(format!("`{broker}` is not a valid TLS server name: {e}"))
                    })?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| connect_error(format!("TLS handshake: {e}")))?;
                Box::new(tls)
            }
        };
        let mut connection = Connection {
            stream,
            broker: broker.to_string(),
            client_id: StrBytes::from_string(settings.client_id.clone()),
            settings: settings.clone(),
            next_correlation_id: 0,
            broker_versions: BTreeMap::new(),
            broken: false,
        };
        connection.api_versions().await.map_err(|e| match e {
            // A TLS listener spoken to in plaintext (or the reverse) closes or garbles the
            // first answer: say it as a connection problem, with the hint.
            GroupError::Io { reason, .. } | GroupError::Protocol { reason, .. } => connect_error(
                format!("the first request (ApiVersions) got no valid answer: {reason}"),
            ),
            other => other,
        })?;
        if let Some(sasl) = &settings.security.sasl {
            connection.authenticate(sasl).await?;
        }
        Ok(connection)
    }

    /// The broker this connection talks to (`host:port`).
    pub(crate) fn broker(&self) -> &str {
        &self.broker
    }

    async fn api_versions(&mut self) -> Result<()> {
        let mut request = ApiVersionsRequest::default();
        request.client_software_name = StrBytes::from_static_str("reclamacoes");
        request.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let response: ApiVersionsResponse = self
            .exchange(
                &request,
                ApiKey::ApiVersions as i16,
                API_VERSIONS_VERSION,
                "ApiVersions",
                Duration::ZERO,
            )
            .await?;
        if let Some(error) = response.error_code.err() {
            return Err(GroupError::Unsupported {
                group: self.settings.group.clone(),
                broker: self.broker.clone(),
                call: "ApiVersions",
                ours: format!("{API_VERSIONS_VERSION} ({error})"),
                theirs: response
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map_or("none".into(), |k| {
                        format!("{}..{}", k.min_version, k.max_version)
                    }),
            });
        }
        self.broker_versions = response
            .api_keys
            .iter()
            .map(|k| {
                (
                    k.api_key,
                    VersionRange {
                        min: k.min_version,
                        max: k.max_version,
                    },
                )
            })
            .collect();
        Ok(())
    }

    async fn authenticate(&mut self, sasl: &SaslOptions) -> Result<()> {
        let mechanism = sasl_name(sasl.mechanism);
        let (group, broker, security) = (
            self.settings.group.clone(),
            self.broker.clone(),
            self.settings.security.clone(),
        );
        let auth_error = move |reason: String| GroupError::Authentication {
            group: group.clone(),
            broker: broker.clone(),
            mechanism,
            reason: security.redact(reason),
        };
        if sasl.username.is_empty() || sasl.password.is_empty() {
            return Err(GroupError::Security {
                group: self.settings.group.clone(),
                reason: "--kafka-sasl-mechanism needs --kafka-sasl-username (KAFKA_SASL_USERNAME) \
                         and the password in the environment variable KAFKA_SASL_PASSWORD"
                    .into(),
            });
        }
        let mut handshake = SaslHandshakeRequest::default();
        handshake.mechanism = StrBytes::from_static_str(mechanism);
        let (_, answer) = self.call(&handshake, Duration::ZERO).await?;
        if let Some(error) = answer.error_code.err() {
            let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
            let reason = match error {
                kafka_protocol::ResponseError::IllegalSaslState => {
                    "the listener does not take SASL (a PLAINTEXT or SSL listener, not SASL_PLAINTEXT \
                     or SASL_SSL)"
                        .to_string()
                }
                _ => format!("{error}; the listener offers {offered:?}"),
            };
            return Err(auth_error(reason));
        }

        let config = rsasl::config::SASLConfig::with_credentials(
            None,
            sasl.username.clone(),
            sasl.password.clone(),
        )
        .map_err(|e| auth_error(e.to_string()))?;
        let name = rsasl::mechname::Mechname::parse(mechanism.as_bytes())
            .map_err(|e| auth_error(e.to_string()))?;
        let mut session = rsasl::prelude::SASLClient::new(config)
            .start_suggested(&[name])
            .map_err(|e| auth_error(format!("{mechanism} is not available: {e}")))?;
        let mut received: Option<Bytes> = None;
        loop {
            let mut to_send = Vec::new();
            let state = session
                .step(received.as_deref(), &mut to_send)
                .map_err(|e| auth_error(e.to_string()))?;
            if state.has_sent_message() {
                let mut request = SaslAuthenticateRequest::default();
                request.auth_bytes = Bytes::from(to_send);
                let (_, answer) = self.call(&request, Duration::ZERO).await?;
                if let Some(error) = answer.error_code.err() {
                    let message = broker_message(answer.error_message.as_deref());
                    return Err(auth_error(format!("{error}{message}")));
                }
                received = Some(answer.auth_bytes);
            }
            if state.is_finished() {
                return Ok(());
            }
        }
    }

    /// The version `R` goes out with on this connection.
    pub(crate) fn version<R: GroupRequest>(&self) -> Result<i16> {
        let theirs = self.broker_versions.get(&(R::KEY as i16)).copied();
        let unsupported = |theirs: String| GroupError::Unsupported {
            group: self.settings.group.clone(),
            broker: self.broker.clone(),
            call: R::NAME,
            ours: R::OURS.to_string(),
            theirs,
        };
        let theirs = theirs.ok_or_else(|| unsupported("none".into()))?;
        choose_version(R::OURS, theirs, self.settings.versions)
            .ok_or_else(|| unsupported(theirs.to_string()))
    }

    /// Sends `request` and waits for its answer, within the timeout plus `extra_wait` (for calls
    /// the broker holds on purpose, such as JoinGroup). Returns the version used with the answer.
    pub(crate) async fn call<R: GroupRequest>(
        &mut self,
        request: &R,
        extra_wait: Duration,
    ) -> Result<(i16, R::Response)> {
        let version = self.version::<R>()?;
        let response = self
            .exchange(request, R::KEY as i16, version, R::NAME, extra_wait)
            .await?;
        Ok((version, response))
    }

    async fn exchange<Q: Encodable + HeaderVersion, A: Decodable + HeaderVersion>(
        &mut self,
        request: &Q,
        api_key: i16,
        version: i16,
        name: &'static str,
        extra_wait: Duration,
    ) -> Result<A> {
        if self.broken {
            return Err(self.io_error(
                name,
                "an earlier call on this connection was interrupted".into(),
            ));
        }
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let frame = self.encode(request, api_key, version, correlation_id, name)?;
        let bound = self.settings.timeout + extra_wait;
        self.broken = true;
        let answer = match tokio::time::timeout(bound, self.round_trip(&frame)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(self.io_error(name, e.to_string())),
            Err(_) => {
                return Err(GroupError::Timeout {
                    group: self.settings.group.clone(),
                    broker: self.broker.clone(),
                    call: name,
                    timeout: bound,
                })
            }
        };
        self.broken = false;
        self.decode(answer, version, correlation_id, name)
    }

    fn encode<Q: Encodable + HeaderVersion>(
        &self,
        request: &Q,
        api_key: i16,
        version: i16,
        correlation_id: i32,
        name: &'static str,
    ) -> Result<Bytes> {
        let mut header = RequestHeader::default();
        header.request_api_key = api_key;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(self.client_id.clone());
        let mut frame = BytesMut::with_capacity(256);
        frame.put_i32(0); // size, filled in below
        header
            .encode(&mut frame, Q::header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|e| GroupError::Protocol {
                group: self.settings.group.clone(),
                broker: self.broker.clone(),
                call: name,
                reason: format!("cannot encode the request (version {version}): {e}"),
            })?;
        let size = i32::try_from(frame.len() - 4).map_err(|_| GroupError::Protocol {
            group: self.settings.group.clone(),
            broker: self.broker.clone(),
            call: name,
            reason: "request too large".into(),
        })?;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        Ok(frame.freeze())
    }

    async fn round_trip(&mut self, frame: &[u8]) -> std::io::Result<Bytes> {
        self.stream.write_all(frame).await?;
        self.stream.flush().await?;
        let size = self.stream.read_i32().await?;
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s <= MAX_RESPONSE_BYTES)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("answer size {size} is outside 0..={MAX_RESPONSE_BYTES}"),
                )
            })?;
        let mut body = vec![0u8; size];
        self.stream.read_exact(&mut body).await?;
        Ok(Bytes::from(body))
    }

    fn decode<A: Decodable + HeaderVersion>(
        &self,
        mut answer: Bytes,
        version: i16,
        correlation_id: i32,
        name: &'static str,
    ) -> Result<A> {
        let protocol_error = |reason: String| GroupError::Protocol {
            group: self.settings.group.clone(),
            broker: self.broker.clone(),
            call: name,
            reason,
        };
        let header = ResponseHeader::decode(&mut answer, A::header_version(version))
            .map_err(|e| protocol_error(format!("bad response header: {e}")))?;
        if header.correlation_id != correlation_id {
            return Err(protocol_error(format!(
                "correlation id {} answers a request other than {correlation_id}",
                header.correlation_id
            )));
        }
        A::decode(&mut answer, version)
            .map_err(|e| protocol_error(format!("bad answer (version {version}): {e}")))
    }

    fn io_error(&self, call: &'static str, reason: String) -> GroupError {
        GroupError::Io {
            group: self.settings.group.clone(),
            broker: self.broker.clone(),
            call,
            reason: self.settings.security.redact(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: i16, max: i16) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn the_newest_or_oldest_common_version_is_chosen() {
        let ours = range(6, 9);
        assert_eq!(
            choose_version(ours, range(0, 12), VersionChoice::Newest),
            Some(9)
        );
        assert_eq!(
            choose_version(ours, range(0, 7), VersionChoice::Newest),
            Some(7)
        );
        assert_eq!(
            choose_version(ours, range(0, 12), VersionChoice::Oldest),
            Some(6)
        );
        assert_eq!(
            choose_version(ours, range(8, 12), VersionChoice::Oldest),
            Some(8)
        );
        assert_eq!(
            choose_version(ours, range(0, 5), VersionChoice::Newest),
            None
        );
        assert_eq!(
            choose_version(ours, range(10, 12), VersionChoice::Oldest),
            None
        );
    }

    #[test]
    fn tls_server_names_come_from_the_host() {
        assert_eq!(host_of("127.0.0.1:9093"), "127.0.0.1");
        assert_eq!(host_of("broker-1.example.com:9093"), "broker-1.example.com");
        assert_eq!(host_of("[::1]:9093"), "::1");
        assert_eq!(host_of("nohost"), "nohost");
    }

    #[test]
    fn our_versions_are_within_what_the_crate_generates() {
        fn check<R: GroupRequest>() {
            assert!(
                R::VERSIONS.min <= R::OURS.min
                    && R::OURS.min <= R::OURS.max
                    && R::OURS.max <= R::VERSIONS.max,
                "{}: ours {} vs generated {}",
                R::NAME,
                R::OURS,
                R::VERSIONS
            );
        }
        check::<MetadataRequest>();
        check::<FindCoordinatorRequest>();
        check::<JoinGroupRequest>();
        check::<SyncGroupRequest>();
        check::<HeartbeatRequest>();
        check::<LeaveGroupRequest>();
        check::<OffsetCommitRequest>();
        check::<OffsetFetchRequest>();
        check::<SaslHandshakeRequest>();
        check::<SaslAuthenticateRequest>();
    }
}
