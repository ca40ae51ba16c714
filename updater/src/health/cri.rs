//! The `cri` health check: one CRI `RuntimeService/Status` call through the
//! `cairn_cri_probe` client (the same one the image's `cairn-cri-probe` uses), judged here.

use std::path::Path;
use std::time::Duration;

use cairn_cri_probe::Condition;

/// Healthy when the runtime answers within `timeout` with RuntimeReady and NetworkReady
/// both true; otherwise says which condition is not, with the runtime's reason/message.
pub fn runtime_ready(socket: &Path, timeout: Duration) -> Result<(), String> {
    let conditions = cairn_cri_probe::status(socket, timeout)
        .map_err(|e| format!("CRI Status on {}: {e}", socket.display()))?;
    judge(&conditions)
}

fn judge(conditions: &[Condition]) -> Result<(), String> {
    let mut problems = Vec::new();
    for wanted in ["RuntimeReady", "NetworkReady"] {
        match conditions.iter().find(|c| c.kind == wanted) {
            Some(c) if c.status => {}
            Some(c) => problems.push(format!("{wanted}=false ({}: {})", c.reason, c.message)),
            None => problems.push(format!("{wanted} not reported")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "container runtime not ready: {}",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(kind: &str, status: bool) -> Condition {
        Condition {
            kind: kind.into(),
            status,
            reason: if status { "" } else { "NetworkPluginNotReady" }.into(),
            message: if status {
                ""
            } else {
                "cni plugin not initialized"
            }
            .into(),
        }
    }

    #[test]
    fn both_conditions_must_be_true() {
        let ok = [
            condition("RuntimeReady", true),
            condition("NetworkReady", true),
        ];
        assert!(judge(&ok).is_ok());
        let no_net = [
            condition("RuntimeReady", true),
            condition("NetworkReady", false),
        ];
        let e = judge(&no_net).unwrap_err();
        assert!(
            e.contains("NetworkReady=false (NetworkPluginNotReady: cni plugin not initialized)"),
            "{e}"
        );
        assert!(!e.contains("RuntimeReady"), "{e}");
        let e = judge(&[condition("RuntimeReady", true)]).unwrap_err();
        assert!(e.contains("NetworkReady not reported"), "{e}");
    }
}
