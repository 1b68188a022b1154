//! `GET /readyz` (SPEC §13): whether this host can do its work now, as a load
//! balancer or an orchestrator asks before sending it traffic. `/healthz` only says
//! the process answers.

use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::App;

/// The dispatcher's loops are taken for stopped when they have not ticked for this
/// long (they tick every second).
pub const DISPATCHER_STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the host is ready, and each check's verdict.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Readiness)]
pub struct ReadinessReport<'a> {
    /// `ready` or `not_ready`
    pub status: &'static str,
    /// `store`, `adapters` and `dispatcher`
    pub checks: BTreeMap<&'static str, Check<'a>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ReadinessCheck)]
pub struct Check<'a> {
    pub ok: bool,
    /// what was seen, or what is wrong
    pub detail: &'a str,
}

/// Each check's verdict: `Ok` with what was seen, or `Err` with what is wrong.
pub struct Readiness {
    checks: Vec<(&'static str, Result<String, String>)>,
}

impl Readiness {
    /// The store answers a read and its writer runs; every configured provider's
    /// adapter is loaded; the dispatcher's loops run.
    pub fn of(app: &App) -> Readiness {
        let store = app
            .store
            .check()
            .map(|()| "reads and writes".to_string())
            .map_err(|error| format!("{error:#}"));
        let mut missing: Vec<&str> = app
            .config
            .providers
            .iter()
            .filter(|provider| app.registry.get(&provider.adapter).is_none())
            .map(|provider| provider.adapter.as_str())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let adapters = if missing.is_empty() {
            Ok(format!("{} loaded", app.registry.all().len()))
        } else {
            Err(format!("not loaded: {}", missing.join(", ")))
        };
        let dispatcher = if app.dispatcher.is_running(DISPATCHER_STALL) {
            Ok("running".to_string())
        } else {
            Err(format!(
                "its loops have not run for {} s",
                DISPATCHER_STALL.as_secs()
            ))
        };
        Readiness {
            checks: vec![
                ("store", store),
                ("adapters", adapters),
                ("dispatcher", dispatcher),
            ],
        }
    }

    pub fn ready(&self) -> bool {
        self.checks.iter().all(|(_, verdict)| verdict.is_ok())
    }

    /// What `GET /readyz` answers.
    pub fn body(&self) -> ReadinessReport<'_> {
        let checks = self
            .checks
            .iter()
            .map(|(name, verdict)| {
                let (ok, detail) = match verdict {
                    Ok(detail) => (true, detail.as_str()),
                    Err(detail) => (false, detail.as_str()),
                };
                (*name, Check { ok, detail })
            })
            .collect();
        let status = if self.ready() { "ready" } else { "not_ready" };
        ReadinessReport { status, checks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_failing_check_makes_the_host_not_ready_and_says_why() {
        let readiness = Readiness {
            checks: vec![
                ("store", Ok("reads and writes".into())),
                ("dispatcher", Err("its loops have not run for 5 s".into())),
            ],
        };
        assert!(!readiness.ready());
        assert_eq!(
            json!(readiness.body()),
            json!({"status": "not_ready", "checks": {
                "store": {"ok": true, "detail": "reads and writes"},
                "dispatcher": {"ok": false, "detail": "its loops have not run for 5 s"},
            }})
        );
    }
}
