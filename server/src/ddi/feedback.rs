//! What a DDI client's action feedback means for the deployment: parsing kept apart from
//! the reports it turns into (which `reports.rs` applies like any device's).
//!
//! The body is `{"id": ..., "time": ..., "status": {"execution": E, "result": {"finished":
//! F, "progress": {"cnt": c, "of": n}}, "details": [...]}}`. SWUpdate 2022.12 writes its
//! failure details without JSON escaping, so a body that is not JSON is still read for
//! its execution and result, and its details are kept as text.

use cairn_server_api::ReportedState;

/// The parts of a feedback body the server acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// `proceeding`, `closed`, `canceled`, `rejected`, `scheduled`, `resumed`,
    /// `download`, `downloaded`.
    pub execution: String,
    /// `success`, `failure` or `none`.
    pub finished: String,
    /// `(cnt, of)`.
    pub progress: Option<(u64, u64)>,
    pub details: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("feedback without {0}")]
pub struct Unreadable(&'static str);

pub fn parse(body: &[u8]) -> Result<Feedback, Unreadable> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => from_json(&value),
        Err(_) => from_text(&String::from_utf8_lossy(body)),
    }
}

fn from_json(value: &serde_json::Value) -> Result<Feedback, Unreadable> {
    let status = &value["status"];
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let progress = &status["result"]["progress"];
    Ok(Feedback {
        execution: text(&status["execution"]).ok_or(Unreadable("status.execution"))?,
        finished: text(&status["result"]["finished"]).unwrap_or_else(|| "none".into()),
        progress: progress["cnt"].as_u64().zip(progress["of"].as_u64()),
        details: status["details"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// The value of `"key": "value"` in text that is not JSON.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let after = &text[text.find(&format!("\"{key}\""))? + key.len() + 2..];
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let value = after.strip_prefix('"')?;
    value.split('"').next()
}

fn from_text(text: &str) -> Result<Feedback, Unreadable> {
    let details = text
        .find("\"details\"")
        .map(|at| text[at..].chars().take(2048).collect::<String>());
    Ok(Feedback {
        execution: field(text, "execution")
            .ok_or(Unreadable("status.execution"))?
            .to_string(),
        finished: field(text, "finished").unwrap_or("none").to_string(),
        progress: None,
        details: details.into_iter().collect(),
    })
}

/// What one feedback does to the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A log line or a state the deployment is past: nothing.
    Nothing,
    /// Progress, reported as the device API's report of that state.
    Progress(ReportedState),
    /// The client installed and confirmed the release (SWUpdate sends this after the
    /// restart into it, `-c 2`).
    Succeeded,
    Failed,
}

pub fn effect(f: &Feedback) -> Effect {
    match (f.execution.as_str(), f.finished.as_str()) {
        ("closed", "success") => Effect::Succeeded,
        ("closed" | "canceled" | "rejected", _) => Effect::Failed,
        (_, "failure") => Effect::Failed,
        _ => match f.progress {
            // SWUpdate's install log lines come as progress "of 0".
            Some((_, 0)) => Effect::Nothing,
            Some((done, of)) if done >= of => Effect::Progress(ReportedState::Installing),
            _ => Effect::Progress(ReportedState::Downloading),
        },
    }
}

/// The details for people, at most 4096 bytes (the reports' limit).
pub fn detail(f: &Feedback) -> Option<String> {
    let mut text = f.details.join("; ");
    if text.is_empty() {
        return None;
    }
    if text.len() > 4096 {
        let mut end = 4096;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(execution: &str, finished: &str, progress: &str, details: &str) -> Vec<u8> {
        format!(
            r#"{{"id": 7, "time": "20261202T101010", "status": {{"result": {{"progress": {progress}, "finished": "{finished}"}}, "execution": "{execution}", "details": [ {details} ]}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn swupdates_sequence_maps_to_download_install_and_the_confirmed_end() {
        let f = |e, r, p, d| effect(&parse(&body(e, r, p, d)).unwrap());
        let chunk = f(
            "proceeding",
            "none",
            r#"{"cnt": 0, "of": 1}"#,
            r#""Installing Update Chunk Artifacts.""#,
        );
        assert_eq!(chunk, Effect::Progress(ReportedState::Downloading));
        let log = f(
            "proceeding",
            "none",
            r#"{"cnt": 3, "of": 0}"#,
            r#""[INFO ] : SWUPDATE running""#,
        );
        assert_eq!(log, Effect::Nothing);
        let installed = f(
            "proceeding",
            "none",
            r#"{"cnt": 1, "of": 1}"#,
            r#""All Chunks Installed.""#,
        );
        assert_eq!(installed, Effect::Progress(ReportedState::Installing));
        assert_eq!(
            f("closed", "success", "{}", r#""Update Installed.""#),
            Effect::Succeeded
        );
        assert_eq!(
            f("closed", "failure", "{}", r#""Update Failed.""#),
            Effect::Failed
        );
        assert_eq!(f("rejected", "none", "{}", ""), Effect::Failed);
    }

    #[test]
    fn a_failure_whose_details_break_the_json_is_still_a_failure_with_its_text() {
        let broken = br#"{"id": 7, "time": "x", "status": {"result": {"progress": {"cnt": 0, "of": 1}, "finished": "failure"}, "execution": "closed", "details": [ "Image invalid or corrupted. "quoted" not escaped" ]}}"#;
        let f = parse(broken).unwrap();
        assert_eq!(effect(&f), Effect::Failed);
        assert!(detail(&f).unwrap().contains("Image invalid or corrupted"));
        assert_eq!(parse(b"{\"id\": 1}"), Err(Unreadable("status.execution")));
        assert_eq!(parse(b"garbage"), Err(Unreadable("status.execution")));
    }

    #[test]
    fn details_are_joined_and_bounded() {
        let long = format!(r#""{}""#, "é".repeat(3000));
        let f = parse(&body("closed", "failure", "{}", &format!(r#""a", {long}"#))).unwrap();
        let d = detail(&f).unwrap();
        assert!(d.starts_with("a; é") && d.len() <= 4096, "{}", d.len());
    }
}
