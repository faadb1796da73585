//! The output in object storage: [`ObjectOutput`] implements [`Store`] over the `object_store`
//! crate for `s3://bucket/prefix` (tested against a real S3 server, versitygw), and from the
//! same code `gs://bucket/prefix` and `az://container/prefix` (built, not tested here).
//!
//! How each part of the [`Store`] contract holds without a rename:
//! - [`Store::put`] is one `PutObject`: S3 makes an object visible whole or not at all, and
//!   durably, when the request returns.
//! - [`Store::put_new`] is `PutObject` with `If-None-Match: *` (`PutMode::Create`): of two
//!   writers of one key exactly one gets `200`, the other `412`. A retried request whose first
//!   attempt did land also gets `412`; the object is then read back and, when it holds exactly
//!   our bytes (a checkpoint names its writer and generation, so no one else writes the same
//!   bytes), the create is ours.
//! - [`Store::writer`] buffers one part ([`PART_BYTES`]); an object that fits in one part is a
//!   single `PutObject` at `finish`, a larger one a multipart upload whose parts go out as they
//!   fill (at most one part in memory per writer) and which appears only at
//!   `CompleteMultipartUpload`. A writer dropped unfinished aborts its upload (best effort;
//!   incomplete uploads are never visible, a bucket lifecycle rule removes any left behind).
//! - [`Store::list`] lists the prefix recursively and returns keys relative to it, sorted: the
//!   same view as [`super::LocalStore`], so recovery deletes exactly what no checkpoint covers.
//!
//! Availability: every request has a timeout and `object_store`'s own bounded retries; on top,
//! each call retries transient failures (no connection, timeouts, 5xx, throttling) with the
//! crate's retry policy ([`crate::retry`]: jittered backoff, 200 ms doubling to 5 s) for up to
//! `retry_timeout`, reporting the outage through [`Store::failing`] (which `/healthz` shows),
//! then fails. Permanent failures (credentials, a missing bucket, a refused request: the
//! classifier `object_verdict`) fail at once. Errors name the endpoint, bucket and key and say what to do; secrets never
//! appear: they are read from the environment by `object_store` and kept out of every message
//! (S3 error bodies are reduced to their `Code` and `Message`, known secrets are scrubbed).
//!
//! The methods block: they run the futures on the tokio runtime through `Handle::block_on`,
//! so call them from `spawn_blocking` (as the consumer and `inspect` do), never from an async
//! task. Without a multi-threaded runtime to borrow, the store runs its own one-thread runtime.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, MultipartId, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use super::layout::Key;
use super::store::{ObjectInfo, ObjectWriter, Result, Store, StoreError};
use crate::retry::{self, RetryError, RetryPolicy, Verdict};

/// Size of one multipart upload part, and the most a writer holds in memory. S3 wants at least
/// 5 MiB per part (but the last); 8 MiB is what the AWS SDKs use.
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// Default bound on one HTTP request (`--output-timeout`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on retrying one store call through an outage (`--output-retry-timeout`).
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(300);

/// Environment variables whose values are secrets: scrubbed from every message.
const SECRET_VARS: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
];

/// Which object storage a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `s3://` (also `s3a://`): Amazon S3 or an S3-compatible server.
    S3,
    /// `gs://`: Google Cloud Storage.
    Gcs,
    /// `az://`: Azure Blob Storage (the account from `AZURE_STORAGE_ACCOUNT_NAME`).
    Azure,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::S3 => "s3",
            Scheme::Gcs => "gs",
            Scheme::Azure => "az",
        }
    }
}

/// `scheme://bucket/prefix`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUrl {
    pub scheme: Scheme,
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl ObjectUrl {
    /// `None` when `text` is not an object-storage URL (a local path); `Some(Err)` when it is
    /// one but malformed.
    pub fn parse(text: &str) -> Option<std::result::Result<ObjectUrl, String>> {
        let (scheme, rest) = text.split_once("://")?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => Scheme::S3,
            "gs" => Scheme::Gcs,
            "az" | "azure" => Scheme::Azure,
            other => {
                return Some(Err(format!(
                    "`{text}`: unknown scheme `{other}://`; give a local directory, s3://bucket/prefix, \
                     gs://bucket/prefix or az://container/prefix"
                )))
            }
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Some(Err(format!(
                "`{text}`: no bucket; give {}://bucket/prefix",
                scheme.name()
            )));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if let Err(e) = Path::parse(&prefix) {
            return Some(Err(format!(
                "`{text}`: the prefix `{prefix}` is not a valid object key ({e}); use `/`-separated \
                 names without empty segments"
            )));
        }
        Some(Ok(ObjectUrl {
            scheme,
            bucket: bucket.to_string(),
            prefix,
        }))
    }

    fn bucket_url(&self) -> String {
        format!("{}://{}", self.scheme.name(), self.bucket)
    }
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}/{}",
            self.scheme.name(),
            self.bucket,
            self.prefix
        )?;
        if !self.prefix.is_empty() {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// How to reach object storage: the settings users give as flags (credentials come only from
/// the environment, see the module docs). Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectOptions {
    /// S3 endpoint (`--s3-endpoint`, else `AWS_ENDPOINT_URL`), e.g. `http://127.0.0.1:7070`.
    pub endpoint: Option<String>,
    /// S3 region (`--s3-region`, else `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Bound on one HTTP request (connecting: at most 5 s of it).
    pub request_timeout: Duration,
    /// How long one store call keeps retrying transient failures before it fails.
    pub retry_timeout: Duration,
}

impl Default for ObjectOptions {
    fn default() -> Self {
        ObjectOptions {
            endpoint: None,
            region: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
        }
    }
}

/// The tokio runtime the futures run on: the caller's multi-threaded one, or our own.
struct Io {
    handle: Handle,
    /// Ours, when there was no multi-threaded runtime to borrow.
    _own: Option<OwnRuntime>,
}

/// A runtime that shuts down without blocking when dropped (it may be dropped in async code).
struct OwnRuntime(Option<Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Io {
    fn new() -> Result<Io> {
        if let Ok(handle) = Handle::try_current() {
            if handle.runtime_flavor() == RuntimeFlavor::MultiThread {
                return Ok(Io { handle, _own: None });
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("output-io")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Other(format!("cannot start the object storage I/O thread: {e}"))
            })?;
        Ok(Io {
            handle: rt.handle().clone(),
            _own: Some(OwnRuntime(Some(rt))),
        })
    }
}

/// The outage being ridden out, if any: since when, and the last failure.
#[derive(Debug, Default)]
struct Outage {
    since: Option<Instant>,
    last: String,
}

struct Shared {
    store: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    url: ObjectUrl,
    /// The prefix as an object path (empty: the bucket root).
    root: Path,
    /// Where, for messages: the URL and the endpoint.
    location: String,
    retry_timeout: Duration,
    io: Io,
    outage: Mutex<Outage>,
    /// Secret values to scrub from messages (never printed).
    secrets: Vec<String>,
}

/// The output in object storage (see the module docs).
#[derive(Clone)]
pub struct ObjectOutput {
    shared: Arc<Shared>,
}

impl fmt::Debug for ObjectOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only what `describe` says: the inner client holds credentials.
        f.debug_struct("ObjectOutput")
            .field("location", &self.shared.location)
            .finish_non_exhaustive()
    }
}

/// How one store call rides out an outage: 200 ms doubling to 5 s, with jitter; the deadline
/// is `--output-retry-timeout` ([`ObjectOptions::retry_timeout`]).
const STORE_RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(200), Duration::from_secs(5));

/// How [`Store::put_new`] waits for a concurrent conditional write of its key to go: 100 ms
/// doubling to 1 s, with jitter, for at most `--output-retry-timeout`.
const CREATE_RACE_RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1));

/// The object-storage classifier ([`crate::retry`]): an answer about the object or the request
/// (`NotFound`, `Precondition`, `AlreadyExists`, `NotModified`, `PermissionDenied`,
/// `Unauthenticated`, `InvalidPath`, `NotSupported`, `NotImplemented`, a configuration key) is
/// permanent; any other error is transient when it is a transport failure (connect, request,
/// timeout, interrupted) or the server's 5xx, 408, 429 or S3's `SlowDown`, `InternalError`,
/// `ServiceUnavailable`, `RequestTimeout`, and permanent otherwise (a 4xx, missing credentials).
fn object_verdict(e: &object_store::Error, secrets: &[String]) -> Verdict {
    use object_store::Error as E;
    match e {
        E::NotFound { .. }
        | E::Precondition { .. }
        | E::AlreadyExists { .. }
        | E::NotModified { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => Verdict::Permanent,
        _ => Verdict::transient_if(Summary::of(e, secrets).transient()),
    }
}

/// A [`StoreError::Remote`] about `key` (empty: the location itself).
fn remote(
    action: &'static str,
    key: &str,
    location: &str,
    detail: impl Into<String>,
    advice: impl Into<String>,
) -> StoreError {
    let detail = detail.into();
    StoreError::Remote {
        action,
        target: if key.is_empty() {
            location.to_string()
        } else {
            format!("{key} in {location}")
        },
        detail: detail.trim_end_matches('.').to_string(),
        advice: advice.into(),
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl ObjectOutput {
    /// Connects to `url` and checks, with one listing of the prefix, that the bucket exists and
    /// the credentials may read it (writes are checked by the first commit). Blocking.
    pub fn open(url: &ObjectUrl, options: &ObjectOptions) -> Result<ObjectOutput> {
        // reqwest's TLS is rustls without a built-in provider: ring, process-wide (an already
        // installed provider is kept).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
        let region = options
            .region
            .clone()
            .or_else(|| env_nonempty("AWS_REGION"))
            .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let location = match (url.scheme, &endpoint) {
            (Scheme::S3, Some(e)) => format!("{url} at {e}"),
            (Scheme::S3, None) => format!("{url} (AWS S3, region {region})"),
            _ => url.to_string(),
        };
        let secrets: Vec<String> = SECRET_VARS
            .iter()
            .filter_map(|v| env_nonempty(v))
            .filter(|v| v.len() >= 4)
            .collect();
        let config_error = |e: object_store::Error| {
            remote(
                "connect to",
                "",
                &location,
                scrub(&e.to_string(), &secrets),
                "check the URL given to --output and the AWS_*/GOOGLE_*/AZURE_* settings \
                 (docs/consume.md, Output to object storage)",
            )
        };
        let client = ClientOptions::new()
            .with_timeout(options.request_timeout)
            .with_connect_timeout(options.request_timeout.min(Duration::from_secs(5)));
        // object_store's own retries stay short: the outer loop (`retry`) rides out outages and
        // reports them.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: options.request_timeout.min(Duration::from_secs(30)),
        };
        let (store, multipart): (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>) = match url.scheme {
            Scheme::S3 => {
                let allow_http = endpoint
                    .as_deref()
                    .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"))
                    || env_nonempty("AWS_ALLOW_HTTP")
                        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url.bucket_url())
                    .with_region(&region)
                    .with_client_options(client.with_allow_http(allow_http))
                    .with_retry(retry);
                if let Some(e) = &endpoint {
                    builder = builder.with_endpoint(e);
                }
                let s3 = Arc::new(builder.build().map_err(config_error)?);
                (s3.clone(), s3)
            }
            Scheme::Gcs => {
                let gcs = Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_url(url.bucket_url())
                        .with_client_options(client)
                        .with_retry(retry)
                        .build()
                        .map_err(config_error)?,
                );
                (gcs.clone(), gcs)
            }
            Scheme::Azure => {
                let azure = Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(url.bucket_url())
                        .with_client_options(client)
                        .with_retry(retry)
                        .build()
                        .map_err(config_error)?,
                );
                (azure.clone(), azure)
            }
        };
        let root = Path::parse(&url.prefix).map_err(|e| StoreError::Other(e.to_string()))?;
        let out = ObjectOutput {
            shared: Arc::new(Shared {
                store,
                multipart,
                url: url.clone(),
                root,
                location,
                retry_timeout: options.retry_timeout,
                io: Io::new()?,
                outage: Mutex::default(),
                secrets,
            }),
        };
        out.check()?;
        Ok(out)
    }

    /// One listing request of the prefix: the bucket exists and may be read.
    fn check(&self) -> Result<()> {
        let s = &self.shared;
        let root = s.root.clone();
        self.retry("list", "", || {
            let store = Arc::clone(&s.store);
            let root = root.clone();
            async move {
                let prefix = (!root.as_ref().is_empty()).then_some(&root);
                store.list_with_delimiter(prefix).await.map(|_| ())
            }
        })
    }

    /// The URL this store writes under.
    pub fn url(&self) -> &ObjectUrl {
        &self.shared.url
    }

    fn path(&self, key: &str) -> Result<Path> {
        let full = if self.shared.root.as_ref().is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.shared.root.as_ref())
        };
        Path::parse(&full).map_err(|e| {
            remote(
                "name",
                key,
                &self.shared.location.clone(),
                e.to_string(),
                "this is a bug, please report it",
            )
        })
    }

    /// Runs one store operation, retrying transient failures ([`object_verdict`]) for up to
    /// `retry_timeout` with [`STORE_RETRY`] (see the module docs). `attempt` makes a fresh
    /// future per try.
    fn retry<T, F, Fut>(&self, action: &'static str, key: &str, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let s = &self.shared;
        let secrets = s.secrets.as_slice();
        let policy = STORE_RETRY.with_deadline(s.retry_timeout);
        let outcome = s.io.handle.block_on(retry::retry_notify(
            &policy,
            action,
            None,
            |e| object_verdict(e, secrets),
            |r| {
                let detail = Summary::of(r.error, secrets).text;
                self.failing_now(action, key, &detail, r.attempt, r.delay);
            },
            attempt,
        ));
        match outcome {
            Ok(v) => {
                self.recovered();
                Ok(v)
            }
            Err(RetryError::Permanent(e)) => Err(self.permanent(action, key, &e)),
            Err(RetryError::GaveUp {
                last,
                attempts,
                elapsed,
            }) => Err(remote(
                action,
                key,
                &s.location,
                format!(
                    "{} (still failing after {attempts} tries over {:.0} s)",
                    Summary::of(&last, secrets).text,
                    elapsed.as_secs_f64()
                ),
                format!(
                    "is the object storage up and reachable? This run stops after \
                     --output-retry-timeout {:?}; committed output is intact and a \
                     restart resumes",
                    s.retry_timeout
                ),
            )),
            // No stop signal is given.
            Err(RetryError::Stopped { .. }) => Err(StoreError::Other(format!(
                "{action} {key} in {}: stopped while retrying",
                s.location
            ))),
        }
    }

    fn failing_now(&self, action: &str, key: &str, detail: &str, tries: u32, backoff: Duration) {
        let mut outage = self.shared.outage.lock().unwrap_or_else(|p| p.into_inner());
        let first = outage.since.is_none();
        let since = *outage.since.get_or_insert_with(Instant::now);
        outage.last = format!("{action} {key}: {detail}");
        drop(outage);
        // The first failure of an outage, then every 10th try: enough to follow, not a flood.
        if first || tries % 10 == 0 {
            tracing::warn!(
                output = %self.shared.location,
                action,
                key,
                error = %detail,
                failing_for_s = since.elapsed().as_secs(),
                retry_in = ?backoff,
                "Output storage failing; retrying"
            );
        }
    }

    fn recovered(&self) {
        let mut outage = self.shared.outage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = outage.since.take() {
            tracing::info!(
                output = %self.shared.location,
                after_s = since.elapsed().as_secs_f64(),
                "Output storage answers again"
            );
        }
    }

    /// The error for a failure that retrying cannot fix, with what to do about it.
    fn permanent(&self, action: &'static str, key: &str, e: &object_store::Error) -> StoreError {
        let s = &self.shared;
        let summary = Summary::of(e, &s.secrets);
        let bucket = &s.url.bucket;
        let advice = match summary.code.as_deref() {
            Some("NoSuchBucket") => format!(
                "bucket `{bucket}` does not exist there: create it, or correct --output (and \
                 --s3-endpoint / --s3-region)"
            ),
            Some(
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "ExpiredToken"
                | "InvalidToken"
                | "AuthorizationHeaderMalformed",
            ) => format!(
                "check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
                 AWS_SESSION_TOKEN) and that they may read and write bucket `{bucket}`"
            ),
            _ if matches!(summary.status, Some(401 | 403)) => {
                format!("check the credentials and that they may read and write bucket `{bucket}`")
            }
            _ if summary.text.contains("credential") => "no usable credentials: set \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or run where an instance or \
                 container role provides them)"
                .to_string(),
            _ => "check --output, --s3-endpoint and --s3-region; committed output is intact and \
                  a restart resumes"
                .to_string(),
        };
        remote(action, key, &s.location, summary.text, advice)
    }

    fn put_payload(&self, key: &str, payload: PutPayload, mode: PutMode) -> Result<PutOutcome> {
        let path = self.path(key)?;
        let store = Arc::clone(&self.shared.store);
        self.retry("write", key, || {
            let store = Arc::clone(&store);
            let path = path.clone();
            let payload = payload.clone();
            let mode = mode.clone();
            async move {
                let opts = PutOptions {
                    mode,
                    ..PutOptions::default()
                };
                match store.put_opts(&path, payload, opts).await {
                    Ok(_) => Ok(PutOutcome::Written),
                    Err(
                        object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. },
                    ) => Ok(PutOutcome::Exists),
                    Err(e) => Err(e),
                }
            }
        })
    }

    /// The object at `key`, or `None`. A missing bucket is an error, not a missing object.
    /// The object's bytes (`suffix`: only its last that many), or `None` when it is absent.
    fn get_bytes(&self, key: &str, suffix: Option<u64>) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        let store = Arc::clone(&self.shared.store);
        let secrets = &self.shared.secrets;
        self.retry("read", key, || {
            let store = Arc::clone(&store);
            let path = path.clone();
            let options = object_store::GetOptions {
                range: suffix.map(object_store::GetRange::Suffix),
                ..Default::default()
            };
            async move {
                match store.get_opts(&path, options).await {
                    Ok(r) => r.bytes().await.map(Some),
                    Err(e @ object_store::Error::NotFound { .. }) => {
                        if Summary::of(&e, secrets).code.as_deref() == Some("NoSuchBucket") {
                            Err(e)
                        } else {
                            Ok(None)
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        })
    }
}

/// What a conditional or plain put did.
enum PutOutcome {
    Written,
    /// `PutMode::Create` found the key taken.
    Exists,
}

/// An error reduced to what a person needs: HTTP status, S3 error code, one line of text.
struct Summary {
    status: Option<u16>,
    code: Option<String>,
    transport: Option<object_store::client::HttpErrorKind>,
    text: String,
}

impl Summary {
    fn of(e: &object_store::Error, secrets: &[String]) -> Summary {
        let full = e.to_string();
        let mut transport = None;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(h) = err.downcast_ref::<object_store::client::HttpError>() {
                transport = Some(h.kind());
                break;
            }
            source = err.source();
        }
        let status = match e {
            object_store::Error::NotFound { .. } => Some(404),
            object_store::Error::PermissionDenied { .. } => Some(403),
            object_store::Error::Unauthenticated { .. } => Some(401),
            object_store::Error::Precondition { .. } => Some(412),
            object_store::Error::AlreadyExists { .. } => Some(409),
            _ => None,
        }
        .or_else(|| {
            let at = full.find("status code: ")? + "status code: ".len();
            full.get(at..at + 3)?.parse().ok()
        });
        let tag = |name: &str| -> Option<String> {
            let open = format!("<{name}>");
            let start = full.find(&open)? + open.len();
            let end = full[start..].find(&format!("</{name}>"))? + start;
            Some(full[start..end].to_string())
        };
        let code = tag("Code");
        let text = match (&code, status) {
            (Some(code), _) => {
                let message = tag("Message").unwrap_or_default();
                format!(
                    "the server answered {} {code}: {message}",
                    status.map_or(String::new(), |s| s.to_string())
                )
            }
            (None, Some(status)) => {
                // No S3 error body: the first line without any response body.
                let head = full.split(": <").next().unwrap_or(&full);
                format!("the server answered {status}: {head}")
            }
            (None, None) => match transport {
                Some(kind) => format!("{kind:?} error: {full}"),
                None => full.clone(),
            },
        };
        Summary {
            status,
            code,
            transport,
            text: scrub(&text, secrets),
        }
    }

    fn transient(&self) -> bool {
        use object_store::client::HttpErrorKind as K;
        if matches!(
            self.code.as_deref(),
            Some("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout")
        ) {
            return true;
        }
        match self.status {
            Some(s) => s >= 500 || s == 429 || s == 408,
            None => matches!(
                self.transport,
                Some(K::Connect | K::Request | K::Timeout | K::Interrupted)
            ),
        }
    }
}

/// Removes secrets and URL query strings (pre-signed parameters, SAS tokens) from `text`.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "<redacted>");
    }
    let mut clean = String::with_capacity(out.len());
    let mut in_query = false;
    for c in out.chars() {
        if c == '?' {
            in_query = true;
            clean.push_str("?<query redacted>");
            continue;
        }
        if in_query {
            if c.is_whitespace() {
                in_query = false;
                clean.push(c);
            }
            continue;
        }
        clean.push(c);
    }
    clean
}

impl Store for ObjectOutput {
    fn table_root(&self) -> Result<super::delta::TableRoot> {
        let s = &self.shared;
        let url = format!(
            "{}://{}/{}",
            s.url.scheme.name(),
            s.url.bucket,
            if s.url.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", s.url.prefix)
            }
        );
        Ok(super::delta::TableRoot {
            store: Arc::clone(&s.store),
            url: url::Url::parse(&url)
                .map_err(|e| StoreError::Other(format!("`{url}` is not a URL: {e}")))?,
        })
    }

    fn describe(&self) -> String {
        self.shared.location.clone()
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
        self.put_payload(key, payload, PutMode::Overwrite)
            .map(|_| ())
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
        let started = Instant::now();
        let mut backoff = CREATE_RACE_RETRY
            .with_deadline(self.shared.retry_timeout)
            .backoff();
        loop {
            match self.put_payload(key, payload.clone(), PutMode::Create)? {
                PutOutcome::Written => return Ok(true),
                PutOutcome::Exists => match self.get_bytes(key, None)? {
                    // Our own earlier attempt landed (its answer was lost): the create is ours.
                    Some(found) => return Ok(found.as_ref() == bytes),
                    // S3 answers 409 while a concurrent conditional write of the key is in
                    // flight; once it is gone, try again.
                    None => match backoff.next_delay(started.elapsed()) {
                        Some(delay) => std::thread::sleep(delay),
                        None => return Ok(false),
                    },
                },
            }
        }
    }

    fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(PartWriter {
            output: self.clone(),
            key: key.to_string(),
            path: self.path(key)?,
            buf: Vec::new(),
            upload: None,
            size: 0,
        }))
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.get_bytes(key, None)
    }

    fn get_suffix(&self, key: &str, len: u64) -> Result<Option<Bytes>> {
        self.get_bytes(key, Some(len))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        // List from the deepest "directory" the prefix names, then filter by the full prefix
        // (object_store lists whole path segments).
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let s = &self.shared;
        let list_path = if dir.is_empty() {
            s.root.clone()
        } else {
            self.path(dir)?
        };
        let store = Arc::clone(&s.store);
        let metas = self.retry("list", prefix, || {
            let store = Arc::clone(&store);
            let list_path = list_path.clone();
            async move {
                let at = (!list_path.as_ref().is_empty()).then_some(&list_path);
                store.list(at).try_collect::<Vec<_>>().await
            }
        })?;
        let root = s.root.as_ref();
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.as_ref();
                let key = if root.is_empty() {
                    full
                } else {
                    full.strip_prefix(root)?.strip_prefix('/')?
                };
                (key.starts_with(prefix) && !key.is_empty()).then(|| ObjectInfo {
                    key: Key::from(key),
                    size: m.size,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        let store = Arc::clone(&self.shared.store);
        self.retry("delete", key, || {
            let store = Arc::clone(&store);
            let path = path.clone();
            async move {
                match store.delete(&path).await {
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    r => r,
                }
            }
        })
    }

    fn failing(&self) -> Option<String> {
        let outage = self.shared.outage.lock().unwrap_or_else(|p| p.into_inner());
        let since = outage.since?;
        Some(format!(
            "output {} failing for {:.1} s (retrying for up to --output-retry-timeout {:?}): {}",
            self.shared.location,
            since.elapsed().as_secs_f64(),
            self.shared.retry_timeout,
            outage.last
        ))
    }
}

/// A multipart upload in progress.
struct Upload {
    id: MultipartId,
    parts: Vec<PartId>,
}

/// Streams one object: buffers a part, uploads parts as they fill (see the module docs).
struct PartWriter {
    output: ObjectOutput,
    key: Key,
    path: Path,
    buf: Vec<u8>,
    upload: Option<Upload>,
    size: u64,
}

impl PartWriter {
    fn upload_part(&mut self) -> Result<()> {
        let data = PutPayload::from(Bytes::from(std::mem::take(&mut self.buf)));
        let multipart = Arc::clone(&self.output.shared.multipart);
        let path = self.path.clone();
        if self.upload.is_none() {
            let id = self.output.retry("start the upload of", &self.key, || {
                let multipart = Arc::clone(&multipart);
                let path = path.clone();
                async move { multipart.create_multipart(&path).await }
            })?;
            self.upload = Some(Upload {
                id,
                parts: Vec::new(),
            });
        }
        let upload = self.upload.as_mut().expect("started above");
        let index = upload.parts.len();
        let id = upload.id.clone();
        // The same part number each try: a retried part replaces the earlier attempt.
        let part = self.output.retry("upload a part of", &self.key, || {
            let multipart = Arc::clone(&multipart);
            let path = path.clone();
            let id = id.clone();
            let data = data.clone();
            async move { multipart.put_part(&path, &id, index, data).await }
        })?;
        upload.parts.push(part);
        Ok(())
    }
}

impl io::Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(PART_BYTES.min(data.len().max(64 * 1024)));
        }
        let room = PART_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        if self.buf.len() >= PART_BYTES {
            self.upload_part().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for PartWriter {
    fn finish(mut self: Box<Self>) -> Result<u64> {
        if self.upload.is_none() {
            // Fits in one part: one plain PutObject.
            let payload = PutPayload::from(Bytes::from(std::mem::take(&mut self.buf)));
            self.output
                .put_payload(&self.key, payload, PutMode::Overwrite)?;
            return Ok(self.size);
        }
        if !self.buf.is_empty() {
            self.upload_part()?;
        }
        let upload = self
            .upload
            .take()
            .expect("a multipart upload is in progress");
        let multipart = Arc::clone(&self.output.shared.multipart);
        let store = Arc::clone(&self.output.shared.store);
        let path = self.path.clone();
        let size = self.size;
        self.output.retry("complete the upload of", &self.key, || {
            let multipart = Arc::clone(&multipart);
            let store = Arc::clone(&store);
            let path = path.clone();
            let id = upload.id.clone();
            let parts = upload.parts.clone();
            async move {
                match multipart.complete_multipart(&path, &id, parts).await {
                    Ok(_) => Ok(()),
                    // An earlier try completed it and its answer was lost: the upload is gone
                    // and the object is there, whole.
                    Err(e @ object_store::Error::NotFound { .. }) => {
                        match store.head(&path).await {
                            Ok(meta) if meta.size == size => Ok(()),
                            _ => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        })?;
        Ok(size)
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        // Unfinished: abort the upload in the background (never block or panic in drop).
        if let Some(upload) = self.upload.take() {
            let multipart = Arc::clone(&self.output.shared.multipart);
            let path = self.path.clone();
            self.output.shared.io.handle.spawn(async move {
                let _ = multipart.abort_multipart(&path, &upload.id).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_bucket_and_prefix() {
        let u = ObjectUrl::parse("s3://b/a/b/").unwrap().unwrap();
        assert_eq!(
            (u.scheme, u.bucket.as_str(), u.prefix.as_str()),
            (Scheme::S3, "b", "a/b")
        );
        assert_eq!(u.to_string(), "s3://b/a/b/");
        let u = ObjectUrl::parse("s3://bucket").unwrap().unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("bucket", ""));
        assert_eq!(u.to_string(), "s3://bucket/");
        assert_eq!(
            ObjectUrl::parse("gs://g/p").unwrap().unwrap().scheme,
            Scheme::Gcs
        );
        assert_eq!(
            ObjectUrl::parse("az://c/p").unwrap().unwrap().scheme,
            Scheme::Azure
        );
        assert!(ObjectUrl::parse("./output").is_none());
        assert!(ObjectUrl::parse("/tmp/x").is_none());
        let e = ObjectUrl::parse("ftp://x/y").unwrap().unwrap_err();
        assert!(e.contains("unknown scheme"), "{e}");
        let e = ObjectUrl::parse("s3:///p").unwrap().unwrap_err();
        assert!(e.contains("no bucket"), "{e}");
        let e = ObjectUrl::parse("s3://b/a//c").unwrap().unwrap_err();
        assert!(e.contains("not a valid object key"), "{e}");
    }

    #[test]
    fn scrub_removes_secrets_and_query_strings() {
        let text = "GET http://h/b/k?X-Amz-Signature=abc&sig=def failed: key s3cr3t-value here";
        let out = scrub(text, &["s3cr3t-value".to_string()]);
        assert!(!out.contains("s3cr3t-value") && !out.contains("abc") && !out.contains("def"));
        assert!(
            out.contains("<redacted>") && out.contains("failed"),
            "{out}"
        );
    }

    #[test]
    fn error_bodies_are_reduced_to_code_and_message() {
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Error performing PUT http://h/b/k in 3ms - Server returned non-2xx status \
                     code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch\
                     </Code><Message>The signature does not match</Message><AWSAccessKeyId>AKIAX\
                     </AWSAccessKeyId><StringToSign>secret-ish</StringToSign></Error>"
                .into(),
        };
        let s = Summary::of(&e, &[]);
        assert_eq!(s.status, Some(403));
        assert_eq!(s.code.as_deref(), Some("SignatureDoesNotMatch"));
        assert!(!s.transient());
        assert!(
            s.text.contains("The signature does not match"),
            "{}",
            s.text
        );
        assert!(
            !s.text.contains("StringToSign") && !s.text.contains("AKIAX"),
            "{}",
            s.text
        );
        let e = object_store::Error::Generic {
            store: "S3",
            source:
                "Error performing GET http://h/b in 1ms - Server returned non-2xx status code: \
                     503 Service Unavailable: "
                    .into(),
        };
        assert!(Summary::of(&e, &[]).transient());
    }

    #[test]
    fn answers_about_the_object_are_permanent_transport_failures_transient() {
        let path = || "b/k".to_string();
        let source = || -> Box<dyn std::error::Error + Send + Sync> { "x".into() };
        for e in [
            object_store::Error::NotFound {
                path: path(),
                source: source(),
            },
            object_store::Error::Precondition {
                path: path(),
                source: source(),
            },
            object_store::Error::AlreadyExists {
                path: path(),
                source: source(),
            },
            object_store::Error::PermissionDenied {
                path: path(),
                source: source(),
            },
            object_store::Error::Unauthenticated {
                path: path(),
                source: source(),
            },
            object_store::Error::Generic {
                store: "S3",
                source: "Server returned non-2xx status code: 403 Forbidden: ".into(),
            },
        ] {
            assert_eq!(object_verdict(&e, &[]), Verdict::Permanent, "{e}");
        }
        for text in [
            "Error performing PUT in 3ms - Server returned non-2xx status code: 503 Service \
             Unavailable: ",
            "Server returned non-2xx status code: 429 Too Many Requests: ",
            "Server returned non-2xx status code: 400 Bad Request: <Error><Code>SlowDown</Code>\
             </Error>",
        ] {
            let e = object_store::Error::Generic {
                store: "S3",
                source: text.into(),
            };
            assert_eq!(object_verdict(&e, &[]), Verdict::Transient, "{e}");
        }
    }
}
