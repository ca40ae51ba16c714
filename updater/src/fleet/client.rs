//! The device API of cairn-server (server/API.md) over blocking HTTP: enroll, token,
//! check-in (with ETag), reports, TPM enrollment and attestation. Requests and signatures come from `cairn-server-api`.

use std::time::Duration;

use cairn_server_api::{
    paths, AttestationEvidence, AttestationResult, CheckIn, CheckInResponse, EnrollRequest,
    EnrollResponse, EnrollStatus, ErrorBody, RebootLease, Report, ReportAck, TokenRequest,
    TokenResponse, TpmActivation, TpmChallenge, TpmEnrollRequest, TpmEnrollStatus,
};
use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;

use super::identity::DeviceIdentity;
use crate::clock::Clock;
use crate::transport::{error_chain, read_bounded, Transport, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{url}: {}", error_chain(source))]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: the server refused ({status} {code}): {message}")]
    Refused {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("device {0} is enrolled and waits for an operator to approve it")]
    NotApproved(String),
    #[error("no randomness for a request nonce: {0}")]
    Random(String),
    #[error("device identity: {0}")]
    Identity(String),
    /// A URL or certificate setting the transport rules refuse.
    #[error(transparent)]
    Policy(#[from] TransportError),
    /// Reading or saving cairnd's own state around a server exchange.
    #[error("{0}")]
    Local(String),
}

impl FleetError {
    /// The server said no to this request for good (a retry with the same body is futile).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if *status != 401 && *status < 500)
    }

    /// The server's machine-readable error code (`cairn_server_api::codes`), when it
    /// refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub struct ServerClient {
    base: String,
    http: Client,
    transport: Transport,
    identity: DeviceIdentity,
    compatible: String,
    token: Option<String>,
    /// The last check-in answer and its ETag, for `If-None-Match`.
    last: Option<(String, CheckInResponse)>,
    /// Told the server's `Date` of every answer (a device without a clock learns the
    /// time this way).
    clock: Option<Clock>,
}

impl ServerClient {
    /// A client for the server at `base`, reached as `transport` allows.
    pub fn new(
        base: &str,
        identity: DeviceIdentity,
        compatible: &str,
        transport: Transport,
    ) -> Result<ServerClient, FleetError> {
        transport.check_url(base)?;
        let http = transport
            .client()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| FleetError::Transport {
                url: base.to_string(),
                source,
            })?;
        Ok(ServerClient {
            base: base.trim_end_matches('/').to_string(),
            http,
            transport,
            identity,
            compatible: compatible.to_string(),
            token: None,
            last: None,
            clock: None,
        })
    }

    /// Lets the server's `Date` headers step `clock` forward.
    pub fn with_clock(mut self, clock: Clock) -> ServerClient {
        self.clock = Some(clock);
        self
    }

    /// What this client may reach: the server's origin, its mirrors, its CA.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn device_id(&self) -> &str {
        &self.identity.device_id
    }

    /// Presents the device key; harmless to repeat.
    pub fn enroll(&mut self) -> Result<EnrollStatus, FleetError> {
        let request = EnrollRequest::sign(
            &self.identity.key,
            &self.identity.device_id,
            &self.compatible,
            unix_now(),
            &nonce()?,
        );
        let response = self.post(paths::ENROLL, &request, None, None)?;
        let answer: EnrollResponse = self.json(paths::ENROLL, response)?;
        Ok(answer.status)
    }

    /// Sends the device's state; answers what to do. Gets a token first when needed.
    pub fn check_in(&mut self, state: &CheckIn) -> Result<CheckInResponse, FleetError> {
        let etag = self.last.as_ref().map(|(tag, _)| tag.clone());
        let response = self.authorized(paths::CHECK_IN, state, etag.as_deref())?;
        if response.status() == StatusCode::NOT_MODIFIED {
            if let Some((_, answer)) = &self.last {
                return Ok(answer.clone());
            }
        }
        let tag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let answer: CheckInResponse = self.json(paths::CHECK_IN, response)?;
        self.last = tag.map(|t| (t, answer.clone()));
        Ok(answer)
    }

    pub fn report(&mut self, deployment: &str, report: &Report) -> Result<ReportAck, FleetError> {
        let path = paths::reports(deployment);
        let response = self.authorized(&path, report, None)?;
        self.json(&path, response)
    }

    /// Asks leave to reboot into the deployment's update (the campaign's reboot budget).
    pub fn reboot_lease(&mut self, deployment: &str) -> Result<RebootLease, FleetError> {
        let path = paths::reboot_lease(deployment);
        let response = self.authorized(&path, &serde_json::json!({}), None)?;
        self.json(&path, response)
    }

    /// Enrolls the TPM's EK and a fresh AK; the answer is the challenge to activate.
    pub fn tpm_enroll(&mut self, request: &TpmEnrollRequest) -> Result<TpmChallenge, FleetError> {
        let response = self.authorized(paths::TPM_ENROLL, request, None)?;
        self.json(paths::TPM_ENROLL, response)
    }

    pub fn tpm_activate(
        &mut self,
        activation: &TpmActivation,
    ) -> Result<TpmEnrollStatus, FleetError> {
        let response = self.authorized(paths::TPM_ACTIVATE, activation, None)?;
        self.json(paths::TPM_ACTIVATE, response)
    }

    pub fn attest(
        &mut self,
        deployment: &str,
        evidence: &AttestationEvidence,
    ) -> Result<AttestationResult, FleetError> {
        let path = paths::attestation(deployment);
        let response = self.authorized(&path, evidence, None)?;
        self.json(&path, response)
    }

    /// A bearer-token request; on any 401 the token is renewed once and the request sent
    /// again (the body is the same, so the server applies it at most once).
    fn authorized(
        &mut self,
        path: &str,
        body: &impl serde::Serialize,
        etag: Option<&str>,
    ) -> Result<Response, FleetError> {
        if self.token.is_none() {
            self.token = Some(self.new_token()?);
        }
        let mut response = self.post(path, body, self.token.as_deref(), etag)?;
        if response.status() == StatusCode::UNAUTHORIZED {
            // Expired (or the server forgot it): renew once. A second 401 goes back to
            // the caller as the server's refusal.
            self.token = Some(self.new_token()?);
            response = self.post(path, body, self.token.as_deref(), etag)?;
        }
        Ok(response)
    }

    fn new_token(&mut self) -> Result<String, FleetError> {
        let request = TokenRequest::sign(
            &self.identity.key,
            &self.identity.device_id,
            unix_now(),
            &nonce()?,
        );
        let response = self.post(paths::TOKEN, &request, None, None)?;
        match self.json::<TokenResponse>(paths::TOKEN, response) {
            Ok(token) => Ok(token.token),
            // Waiting for an operator is not an error; a revoked or rejected key is, and
            // says so (server/API.md, "Device states").
            Err(FleetError::Refused {
                status: 403, code, ..
            }) if code == "not-approved" => {
                Err(FleetError::NotApproved(self.identity.device_id.clone()))
            }
            Err(e) => Err(e),
        }
    }

    fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        token: Option<&str>,
        etag: Option<&str>,
    ) -> Result<Response, FleetError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.post(&url).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let response = request
            .send()
            .map_err(|source| FleetError::Transport { url, source })?;
        if let (Some(clock), Some(date)) =
            (&self.clock, response.headers().get(reqwest::header::DATE))
        {
            if let Ok(date) = date.to_str() {
                clock.observe_server_date(date);
            }
        }
        Ok(response)
    }

    /// The body of a 2xx answer as `T`, or the server's error body as a `Refused`.
    fn json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        response: Response,
    ) -> Result<T, FleetError> {
        let url = format!("{}{path}", self.base);
        let status = response.status();
        // Bounded: a server (or whoever answers in its name) cannot make cairnd hold an
        // answer of any size.
        let text = read_bounded(response).map_err(|e| FleetError::Refused {
            url: url.clone(),
            status: status.as_u16(),
            code: "unreadable-answer".into(),
            message: e.to_string(),
        })?;
        if status.is_success() {
            if let Ok(value) = serde_json::from_str(&text) {
                return Ok(value);
            }
        }
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => (e.error, e.message),
            Err(_) => ("unexpected-answer".into(), text.chars().take(200).collect()),
        };
        Err(FleetError::Refused {
            url,
            status: status.as_u16(),
            code,
            message,
        })
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn nonce() -> Result<String, FleetError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| FleetError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}
