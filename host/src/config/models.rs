//! Models the operator declares (`[[models]]`): a slug no adapter's manifest names,
//! served by providers whose adapter speaks a generic wire format (it lists the
//! model's input preset in its manifest's `declared-inputs`), and the checks that
//! need no adapter. Those against the loaded adapters are made by the router.

use serde::Deserialize;
use serde_json::Value;

use super::providers::{MAX_UNIT_PRICE, PriceOverride};
use crate::plugins::catalogue;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredModel {
    /// the public slug clients ask for
    pub slug: String,
    /// `text`, `image`, `video` or `audio`
    pub modality: String,
    /// shown in the catalogue; must not name a provider
    pub description: String,
    /// the canonical input preset (`chat`, `text-to-image`, …) the model's input
    /// follows: its schema, and what the adapter translates
    pub input: Option<String>,
    /// a JSON Schema (a table, or JSON text) replacing the preset's as the model's
    /// `input_schema`; its inputs still go to the adapter as the preset's
    pub input_schema: Option<Value>,
    /// unit prices (USD decimal strings); a provider's `price` overrides them
    pub price: Option<PriceOverride>,
}

/// The longest slug.
const MAX_SLUG: usize = 64;

/// A slug: lowercase letters, digits, `.`, `_` and `-`, starting with a letter or
/// digit, at most 64 characters.
pub fn check_slug(slug: &str) -> Result<(), String> {
    let valid = !slug.is_empty()
        && slug.len() <= MAX_SLUG
        && slug.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{slug:?} is not a slug (lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, at most {MAX_SLUG} characters)"
        ))
    }
}

impl DeclaredModel {
    /// The preset the input follows; set once [`DeclaredModel::validate`] passed.
    pub fn preset(&self) -> &str {
        self.input.as_deref().unwrap_or_default()
    }

    /// The model's public input schema: the inline one, else the preset's.
    pub fn schema(&self) -> Value {
        match &self.input_schema {
            Some(Value::String(text)) => serde_json::from_str(text).unwrap_or(Value::Null),
            Some(schema) => schema.clone(),
            None => catalogue::preset(self.preset())
                .cloned()
                .unwrap_or(Value::Null),
        }
    }

    /// The checks that need no adapter; the error starts with the field's path
    /// below `models[i]`.
    pub(super) fn validate(&self) -> Result<(), String> {
        check_slug(&self.slug).map_err(|error| format!("slug: {error}"))?;
        if catalogue::canonical(&self.slug).is_some() {
            return Err(format!(
                "slug: {:?} is a canonical model; serve it through [providers.models.{:?}] instead of declaring it",
                self.slug, self.slug
            ));
        }
        let presets = catalogue::presets().join(", ");
        let Some(preset) = &self.input else {
            return Err(format!(
                "input: required: the input preset the model's input follows and its adapter translates (presets: {presets}); input_schema may narrow it"
            ));
        };
        if catalogue::preset(preset).is_none() {
            return Err(format!(
                "input: unknown preset {preset:?} (presets: {presets})"
            ));
        }
        let modality = self.modality.as_str();
        if !matches!(modality, "text" | "image" | "video" | "audio") {
            return Err(format!(
                "modality: {modality:?} is none of text, image, video, audio"
            ));
        }
        if let Some(expected) = catalogue::preset_modality(preset)
            && expected != modality
        {
            return Err(format!(
                "modality: {modality:?}, but the {preset:?} preset is for {expected} models"
            ));
        }
        if self.description.trim().is_empty() {
            return Err("description: must not be empty".into());
        }
        if let Some(schema) = &self.input_schema {
            let schema = match schema {
                Value::String(text) => serde_json::from_str(text)
                    .map_err(|error| format!("input_schema: not JSON: {error}"))?,
                schema => schema.clone(),
            };
            if !schema.is_object() {
                return Err("input_schema: a JSON Schema must be an object".into());
            }
            jsonschema::validator_for(&schema)
                .map_err(|error| format!("input_schema: not a valid JSON Schema: {error}"))?;
        }
        let Some(price) = &self.price else {
            return Err(
                "price: required: the model's unit prices, e.g. { per_million_input_tokens = \"0.9\" }".into(),
            );
        };
        let mut priced = false;
        for (unit, value) in price.units() {
            if let Some(value) = value {
                if value > MAX_UNIT_PRICE {
                    return Err(format!(
                        "price.{unit}: {value} USD is more than {MAX_UNIT_PRICE} USD a unit (prices are in dollars, e.g. \"0.04\")"
                    ));
                }
                priced |= value.0 > 0;
            }
        }
        if !priced {
            return Err("price: no unit is priced above zero".into());
        }
        Ok(())
    }
}
