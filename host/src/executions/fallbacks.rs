//! Fallback models (SPEC §11): the ones an execution may go on with, checked and
//! priced when it is created, and the operator's defaults checked at start-up.

use anyhow::Result;
use serde_json::Value;

use super::Executions;
use super::model::Fallback;
use crate::auth::Caller;
use crate::config::ExecutionSettings;
use crate::error::{ApiError, DetailCode, quote};
use crate::money::Micros;
use crate::plugins::types;
use crate::routing;

/// Most fallback models an execution may name.
pub const MAX_FALLBACK_MODELS: usize = 4;

/// Checks the operator's default fallbacks at start-up: each one served, of its
/// model's modality, not the model itself, at most [`MAX_FALLBACK_MODELS`]. An
/// error names the field.
pub fn check_default_fallbacks(
    settings: &ExecutionSettings,
    router: &routing::Router,
) -> Result<()> {
    let served = |slug: &str| {
        router
            .ranked(slug, &types::Usage::default())
            .into_iter()
            .next()
            .map(|c| c.model.modality)
    };
    for (slug, model) in &settings.models {
        let field = format!("executions.models.{slug:?}.fallback_models");
        anyhow::ensure!(
            model.fallback_models.len() <= MAX_FALLBACK_MODELS,
            "{field}: at most {MAX_FALLBACK_MODELS} models"
        );
        if model.fallback_models.is_empty() {
            continue;
        }
        let modality = served(slug)
            .ok_or_else(|| anyhow::anyhow!("{field}: no provider serves {slug:?} itself"))?;
        for (i, fallback) in model.fallback_models.iter().enumerate() {
            let at = format!("{field}[{i}]");
            anyhow::ensure!(fallback != slug, "{at}: a model cannot fall back to itself");
            match served(fallback) {
                None => anyhow::bail!("{at}: no provider serves {fallback:?}"),
                Some(other) if other != modality => {
                    anyhow::bail!("{at}: {fallback:?} is not of {slug:?}'s modality")
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

impl Executions {
    /// The fallback models of an execution of `primary`, each checked (served, of
    /// the same modality, the input valid for it) and priced. The client's list is
    /// refused with a detail on the entry at fault; the operator's defaults skip a
    /// model no adapter serves now.
    pub(super) async fn fallbacks(
        &self,
        caller: &Caller,
        primary: &routing::Candidate,
        asked: Option<Vec<String>>,
        input: &Value,
    ) -> Result<Vec<(Fallback, Micros)>, ApiError> {
        let from_client = asked.is_some();
        let slugs =
            asked.unwrap_or_else(|| self.settings.fallback_models(&primary.model.slug).to_vec());
        let mut fallbacks: Vec<(Fallback, Micros)> = Vec::new();
        for (i, slug) in slugs.into_iter().enumerate() {
            let field = format!("fallback_models[{i}]");
            let refuse =
                |message: String| Err(ApiError::invalid(&field, DetailCode::InvalidValue, message));
            let repeated =
                slug == primary.model.slug || fallbacks.iter().any(|(f, _)| f.model == slug);
            if repeated {
                return refuse(format!(
                    "{} is already a model of this execution",
                    quote(&slug)
                ));
            }
            let Some(candidate) = self.first_candidate(&slug) else {
                if !from_client {
                    tracing::warn!(model = %primary.model.slug, fallback = %slug, "a default fallback model is not served now; skipped");
                    continue;
                }
                return refuse(format!(
                    "unknown model {}; see GET /v1/models",
                    quote(&slug)
                ));
            };
            if candidate.model.modality != primary.model.modality {
                return refuse(format!(
                    "{} is not of the same modality as {}",
                    quote(&slug),
                    quote(&primary.model.slug)
                ));
            }
            let rules = self.input_rules(&candidate)?;
            if let Err(invalid) = rules.validate(input) {
                let why = invalid
                    .details
                    .first()
                    .map(|d| format!(": {} {}", d.field, d.message))
                    .unwrap_or_default();
                return refuse(format!("the input does not fit {}{why}", quote(&slug)));
            }
            self.files
                .check_input_files(&caller.org_id, &rules.files, input)?;
            let (usage_estimate, cost) = self.price(&candidate, input).await?;
            fallbacks.push((
                Fallback {
                    model: slug,
                    usage_estimate,
                },
                cost,
            ));
        }
        Ok(fallbacks)
    }
}
