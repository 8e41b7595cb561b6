//! The REST calls a run makes: intake (as a patient would), onboarding caregivers and raising
//! queue caps (as an admin), cancelling a visit. A refusal comes back as its problem `code`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use visithub::model::{Role, UsState};
use visithub::protocol::QueueSnapshot;

/// What a run keeps of an intake receipt.
#[derive(Debug, Clone, Deserialize)]
pub struct Admitted {
    pub visit_id: String,
    pub patient_token: String,
}

pub struct Rest {
    http: reqwest::Client,
    /// This process's run, in every intake's `Idempotency-Key`: keys stay unique across runs
    /// against one hub and across worker processes.
    run: String,
}

impl Rest {
    pub fn new() -> anyhow::Result<Rest> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(64).build()?;
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(Rest { http, run: format!("{}-{}", started.as_nanos(), std::process::id()) })
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, String> {
        let resp = req.send().await.map_err(|e| if e.is_timeout() { "http_timeout" } else { "http_failed" })?;
        let ok = resp.status().is_success();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if ok { Ok(body) } else { Err(body["code"].as_str().map_or_else(|| format!("http_{status}"), str::to_string)) }
    }

    /// `POST /v1/visits` with a synthetic patient (no real names or reasons), patient
    /// `index` of this run, with an `Idempotency-Key` as the patient client sends.
    pub async fn intake(&self, base: &str, index: usize, state: UsState) -> Result<Admitted, String> {
        let body =
            json!({ "display_name": format!("Patient {index}"), "state": state.code(), "reason": "load test visit" });
        let key = format!("loadtest-{}-{index}", self.run);
        let value =
            self.call(self.http.post(format!("{base}/v1/visits")).header("idempotency-key", key).json(&body)).await?;
        serde_json::from_value(value).map_err(|_| "bad_intake_receipt".to_string())
    }

    pub async fn onboard(
        &self,
        base: &str,
        admin: &str,
        subject: &str,
        role: Role,
        states: &[UsState],
    ) -> Result<(), String> {
        let states: Vec<&str> = states.iter().map(|s| s.code()).collect();
        let body = json!({ "subject": subject, "name": subject, "role": role.as_str(), "states": states });
        self.call(self.http.post(format!("{base}/v1/caregivers")).bearer_auth(admin).json(&body)).await.map(drop)
    }

    /// Raises a state's queue cap so a run can keep many patients waiting.
    pub async fn queue_cap(&self, base: &str, admin: &str, state: UsState, cap: u32) -> Result<(), String> {
        let url = format!("{base}/v1/states/{}/settings", state.code());
        self.call(self.http.patch(url).bearer_auth(admin).json(&json!({ "queue_cap": cap }))).await.map(drop)
    }

    /// How many visits wait in a state's queue now (`GET /v1/states/{state}/queue`).
    pub async fn queue_length(&self, base: &str, admin: &str, state: UsState) -> Result<u32, String> {
        let url = format!("{base}/v1/states/{}/queue", state.code());
        let value = self.call(self.http.get(url).bearer_auth(admin)).await?;
        let snapshot: QueueSnapshot = serde_json::from_value(value).map_err(|_| "bad_queue_snapshot".to_string())?;
        Ok(snapshot.visits.len() as u32)
    }

    pub async fn cancel(&self, base: &str, patient_token: &str, visit_id: &str) -> Result<(), String> {
        let url = format!("{base}/v1/visits/{visit_id}/cancel");
        self.call(self.http.post(url).bearer_auth(patient_token)).await.map(drop)
    }
}
