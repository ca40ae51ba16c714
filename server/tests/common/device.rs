//! A simulated device: an ed25519 key and the device API over real HTTP.

use cairn_server_api::{
    paths, Assignment, CheckIn, CheckInResponse, EnrollRequest, InstalledImage, Report,
    ReportedState, Slot, TokenRequest, TokenResponse,
};
use ed25519_dalek::SigningKey;

#[derive(Clone)]
pub struct SimDevice {
    pub id: String,
    pub key: SigningKey,
    pub url: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
    pub version: String,
    pub images: Vec<InstalledImage>,
    pub nonce_counter: u64,
    /// What its check-ins say it waits for before a reboot.
    pub waiting: Option<String>,
}

pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    pub etag: Option<String>,
}

impl SimDevice {
    pub fn new(url: &str, id: &str, images: Vec<InstalledImage>) -> SimDevice {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).unwrap();
        SimDevice {
            id: id.into(),
            key: SigningKey::from_bytes(&seed),
            url: url.into(),
            http: reqwest::Client::new(),
            token: None,
            version: "1.0.0".into(),
            images,
            nonce_counter: 0,
            waiting: None,
        }
    }

    pub fn public_key(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// A CSV line of a factory manifest authorizing this device.
    pub fn factory_line(&self, tags: &str) -> String {
        format!(
            "{},{},{},{tags}",
            self.id,
            self.public_key(),
            super::COMPATIBLE
        )
    }

    pub fn nonce(&mut self) -> String {
        self.nonce_counter += 1;
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).unwrap();
        format!("{}{:016x}", hex::encode(random), self.nonce_counter)
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.http.post(format!("{}{path}", self.url)).json(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let etag = r
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_string());
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Answer { status, body, etag }
    }

    pub fn enroll_request(&mut self) -> EnrollRequest {
        let nonce = self.nonce();
        EnrollRequest::sign(&self.key, &self.id, super::COMPATIBLE, now(), &nonce)
    }

    pub async fn enroll(&mut self) -> Answer {
        let request = self.enroll_request();
        self.post_json(paths::ENROLL, &request, &[]).await
    }

    pub fn token_request(&mut self) -> TokenRequest {
        let nonce = self.nonce();
        TokenRequest::sign(&self.key, &self.id, now(), &nonce)
    }

    /// Gets a token and keeps it; panics unless the server gives one.
    pub async fn login(&mut self) {
        let request = self.token_request();
        let answer = self.post_json(paths::TOKEN, &request, &[]).await;
        assert_eq!(answer.status, 200, "token for {}: {}", self.id, answer.body);
        let token: TokenResponse = serde_json::from_value(answer.body).unwrap();
        self.token = Some(token.token);
    }

    pub fn state(&self) -> CheckIn {
        CheckIn {
            version: self.version.clone(),
            booted_slot: Slot::A,
            committed_slot: Slot::A,
            security_floor: 1,
            images: self.images.clone(),
            waiting: self.waiting.clone(),
        }
    }

    pub async fn check_in_raw(&self, etag: Option<&str>) -> Answer {
        let headers: Vec<(&str, &str)> =
            etag.map(|e| vec![("if-none-match", e)]).unwrap_or_default();
        self.post_json(paths::CHECK_IN, &self.state(), &headers)
            .await
    }

    pub async fn check_in(&self) -> Option<Assignment> {
        let answer = self.check_in_raw(None).await;
        assert_eq!(
            answer.status, 200,
            "check-in of {}: {}",
            self.id, answer.body
        );
        let response: CheckInResponse = serde_json::from_value(answer.body).unwrap();
        response.assignment
    }

    pub async fn report_raw(
        &self,
        deployment: &str,
        report_id: &str,
        state: ReportedState,
        detail: Option<&str>,
    ) -> Answer {
        let report = Report {
            report_id: report_id.into(),
            state,
            detail: detail.map(str::to_string),
        };
        self.post_json(&paths::reports(deployment), &report, &[])
            .await
    }

    pub async fn report(
        &self,
        deployment: &str,
        report_id: &str,
        state: ReportedState,
        detail: Option<&str>,
    ) -> serde_json::Value {
        let answer = self.report_raw(deployment, report_id, state, detail).await;
        assert_eq!(
            answer.status, 200,
            "report {report_id} of {}: {}",
            self.id, answer.body
        );
        answer.body
    }

    /// Downloading, installing, rebooting, then committed or rolled back.
    pub async fn install(&mut self, assignment: &Assignment, succeed: bool) {
        let d = &assignment.deployment_id;
        self.report(d, "r1", ReportedState::Downloading, None).await;
        self.report(d, "r2", ReportedState::Installing, None).await;
        self.report(d, "r3", ReportedState::Rebooting, None).await;
        if succeed {
            self.version = assignment.release_version.clone();
            self.report(d, "r4", ReportedState::Committed, None).await;
        } else {
            self.report(
                d,
                "r4",
                ReportedState::RolledBack,
                Some("health check failed: k3s not ready"),
            )
            .await;
        }
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
