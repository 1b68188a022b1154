//! Operator-declared models (`[[models]]`) as the router serves them: manifest
//! entries of its own, taken by providers whose adapter lists their preset.

use super::apply_price_override;
use crate::config;
use crate::plugins::types;

/// A declared model as a manifest entry would be: what the catalogue, validation,
/// estimates and the adapter's call context read.
pub(super) fn declared_model(declared: &config::DeclaredModel) -> types::Model {
    let price = declared
        .price
        .as_ref()
        .map_or_else(types::Price::default, |with| {
            let mut price = types::Price::default();
            apply_price_override(&mut price, with);
            price
        });
    types::Model {
        slug: declared.slug.clone(),
        provider_model: String::new(),
        modality: match declared.modality.as_str() {
            "image" => types::Modality::Image,
            "video" => types::Modality::Video,
            "audio" => types::Modality::Audio,
            _ => types::Modality::Text,
        },
        description: declared.description.clone(),
        input_schema: declared.schema().to_string(),
        example_input: String::new(),
        price,
        // a provider's `accepts_prefill` says whether its deployment continues one
        accepts_prefill: false,
        input: declared.preset().to_string(),
    }
}
