//! The fleet at a glance, for the dashboard's overview: the versions devices ran day by
//! day (from their version history), the update success rate per release, and devices
//! not seen recently.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row as _;

use crate::checkin::{version_in_event, VERSION_EVENT};
use crate::db::Db;
use crate::error::ApiResult;

pub const DAY_MS: i64 = 86_400_000;

/// How many approved devices ran each version at the end of one day (the last day ends
/// now).
#[derive(Debug, Clone)]
pub struct VersionDay {
    pub end_ms: i64,
    pub counts: BTreeMap<String, u64>,
}

/// The last `days` days, oldest first. A device counts from its first reported version.
pub async fn versions_by_day(db: &Db, days: u32, now_ms: i64) -> ApiResult<Vec<VersionDay>> {
    let approved: Vec<String> =
        sqlx::query_scalar("SELECT id FROM devices WHERE approval = 'approved'")
            .fetch_all(&db.pool)
            .await?;
    let rows =
        sqlx::query("SELECT device_id, at, detail FROM history WHERE event = $1 ORDER BY at")
            .bind(VERSION_EVENT)
            .fetch_all(&db.pool)
            .await?;
    let mut timelines: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for row in &rows {
        let detail: String = row.try_get("detail")?;
        if let Some(version) = version_in_event(&detail) {
            timelines
                .entry(row.try_get("device_id")?)
                .or_default()
                .push((row.try_get("at")?, version.to_string()));
        }
    }
    let today_start = now_ms - now_ms.rem_euclid(DAY_MS);
    Ok((0..days)
        .rev()
        .map(|back| {
            let end_ms = if back == 0 {
                now_ms
            } else {
                today_start - (i64::from(back) - 1) * DAY_MS
            };
            let mut counts = BTreeMap::new();
            for id in &approved {
                let version = timelines
                    .get(id)
                    .and_then(|t| t.iter().take_while(|(at, _)| *at <= end_ms).last());
                if let Some((_, v)) = version {
                    *counts.entry(v.clone()).or_insert(0) += 1;
                }
            }
            VersionDay { end_ms, counts }
        })
        .collect())
}

/// One release's deployments by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseOutcomes {
    pub succeeded: u64,
    pub failed: u64,
    pub in_progress: u64,
}

impl ReleaseOutcomes {
    /// Succeeded over decided (succeeded or failed); none before any is decided.
    pub fn success_rate(&self) -> Option<f64> {
        let decided = self.succeeded + self.failed;
        (decided > 0).then(|| self.succeeded as f64 / decided as f64)
    }
}

/// Every release's deployments across its campaigns, by release id.
pub async fn outcomes_by_release(db: &Db) -> ApiResult<BTreeMap<String, ReleaseOutcomes>> {
    let rows = sqlx::query(
        "SELECT c.release_id, d.state, COUNT(*) AS n FROM deployments d \
         JOIN campaigns c ON c.id = d.campaign_id GROUP BY c.release_id, d.state",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut out: BTreeMap<String, ReleaseOutcomes> = BTreeMap::new();
    for row in &rows {
        let entry = out.entry(row.try_get("release_id")?).or_default();
        let n = row.try_get::<i64, _>("n")? as u64;
        match row.try_get::<String, _>("state")?.as_str() {
            "succeeded" => entry.succeeded += n,
            "failed" | "attestation-failed" => entry.failed += n,
            "cancelled" => {}
            _ => entry.in_progress += n,
        }
    }
    Ok(out)
}

/// Approved devices whose last check-in is older than `since_ms` (or that never checked in).
pub async fn unseen_since(db: &Db, since_ms: i64) -> ApiResult<u64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM devices WHERE approval = 'approved' \
         AND (last_checkin IS NULL OR last_checkin < $1)",
    )
    .bind(since_ms)
    .fetch_one(&db.pool)
    .await?;
    Ok(n as u64)
}

/// A stacked bar per day, a colour per version (the same version keeps its colour), and
/// a legend: SVG, no script.
pub fn versions_chart(days: &[VersionDay]) -> String {
    const PALETTE: [&str; 8] = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
    ];
    const BAR: u64 = 28;
    const HEIGHT: u64 = 160;
    let versions: Vec<&String> = {
        let mut all: Vec<&String> = days.iter().flat_map(|d| d.counts.keys()).collect();
        all.sort();
        all.dedup();
        all
    };
    let colour = |v: &str| {
        let i = versions.iter().position(|x| *x == v).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let most = days
        .iter()
        .map(|d| d.counts.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let width = days.len() as u64 * (BAR + 4);
    let mut svg = format!(
        "<svg class=\"versions\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{}\" role=\"img\" aria-label=\"versions across the fleet, day by day\">",
        HEIGHT + 20
    );
    for (i, day) in days.iter().enumerate() {
        let x = i as u64 * (BAR + 4);
        let mut y = HEIGHT;
        for (version, n) in &day.counts {
            let h = n * HEIGHT / most;
            y -= h;
            svg.push_str(&format!(
                "<rect x=\"{x}\" y=\"{y}\" width=\"{BAR}\" height=\"{h}\" fill=\"{}\" \
                 data-version=\"{}\" data-devices=\"{n}\"><title>{}: {n}</title></rect>",
                colour(version),
                crate::dashboard::escape(version),
                crate::dashboard::escape(version)
            ));
        }
        let date = time::OffsetDateTime::from_unix_timestamp(day.end_ms / 1000)
            .map(|t| format!("{:02}-{:02}", u8::from(t.month()), t.day()))
            .unwrap_or_default();
        svg.push_str(&format!(
            "<text x=\"{x}\" y=\"{}\" font-size=\"9\">{date}</text>",
            HEIGHT + 14
        ));
    }
    svg.push_str("</svg><p class=\"legend\">");
    for v in &versions {
        svg.push_str(&format!(
            "<span style=\"color:{}\">■</span> {} ",
            colour(v),
            crate::dashboard::escape(v)
        ));
    }
    svg.push_str("</p>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_needs_decided_deployments() {
        let none = ReleaseOutcomes::default();
        assert_eq!(none.success_rate(), None);
        let some = ReleaseOutcomes {
            succeeded: 3,
            failed: 1,
            in_progress: 9,
        };
        assert_eq!(some.success_rate(), Some(0.75));
    }

    #[test]
    fn the_chart_stacks_each_days_versions_with_one_colour_per_version() {
        let day = |end_ms, pairs: &[(&str, u64)]| VersionDay {
            end_ms,
            counts: pairs.iter().map(|(v, n)| (v.to_string(), *n)).collect(),
        };
        let svg = versions_chart(&[
            day(0, &[("1.0.0", 4)]),
            day(DAY_MS, &[("1.0.0", 1), ("2.0.0", 3)]),
        ]);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert_eq!(
            svg.matches("fill=\"#4e79a7\"").count(),
            2,
            "1.0.0 keeps its colour"
        );
        assert!(svg.contains("data-version=\"2.0.0\" data-devices=\"3\""));
        assert!(svg.contains("01-02"), "the second day's label");
    }
}
