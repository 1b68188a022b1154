//! What the public catalogue says a model is: its modality, description and input
//! schema come from one neutral source, never from whichever adapter serves it.
//!
//! That source is the SDK's canonical models (`sdk/canonical/models.json`, which
//! adapters build their manifests from with `canonical::model`). A slug with no
//! canonical definition is described by its adapters, which must then agree: on
//! its modality and schema always (the registry refuses one that does not), and on
//! its description, or the catalogue shows a plain one of its own.

use anyhow::{Result, bail};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::{LoadedPlugin, types};

/// A model as the catalogue shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub modality: &'static str,
    pub description: String,
    pub input_schema: Value,
    /// the canonical input preset the schema is (or, for an operator's own
    /// schema, the preset its inputs follow); empty for an adapter's own schema
    pub input: String,
}

#[derive(Deserialize)]
struct CanonicalFile {
    inputs: BTreeMap<String, Value>,
    models: Vec<CanonicalModel>,
}

#[derive(Deserialize)]
struct CanonicalModel {
    slug: String,
    modality: String,
    description: String,
    input: String,
    #[serde(default)]
    example: Value,
}

static FILE: LazyLock<CanonicalFile> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../../sdk/canonical/models.json"))
        .expect("sdk/canonical/models.json is valid")
});

static CANONICAL: LazyLock<BTreeMap<String, Definition>> = LazyLock::new(|| {
    let file = &*FILE;
    file.models
        .iter()
        .map(|model| {
            let definition = Definition {
                modality: modality_name(&model.modality),
                description: model.description.clone(),
                input_schema: file.inputs[&model.input].clone(),
                input: model.input.clone(),
            };
            (model.slug.clone(), definition)
        })
        .collect()
});

/// The chat input preset: the only one whose models continue an assistant prefill.
pub const CHAT: &str = "chat";

/// The chat input's field the host adds (clients cannot: the schema has no such
/// property) when it asks a model that `accepts_prefill` to continue an answer cut
/// mid-stream: the text already delivered, which the answer continues.
pub const PREFILL: &str = "prefill";

/// The canonical input preset `name`'s JSON Schema (`chat`, `text-to-image`, …).
pub fn preset(name: &str) -> Option<&'static Value> {
    FILE.inputs.get(name)
}

/// The names of the canonical input presets, sorted.
pub fn presets() -> Vec<&'static str> {
    FILE.inputs.keys().map(String::as_str).collect()
}

/// The modality of the canonical models taking preset `name` (`text` for `chat`),
/// when they agree; `None` when no canonical model takes it.
pub fn preset_modality(name: &str) -> Option<&'static str> {
    let mut modalities = FILE
        .models
        .iter()
        .filter(|model| model.input == name)
        .map(|model| modality_name(&model.modality));
    let first = modalities.next()?;
    modalities.all(|m| m == first).then_some(first)
}

/// How a fixture names an operator-declared model of preset `p`: `declared:p`.
pub const DECLARED_PREFIX: &str = "declared:";

/// A stand-in for a model the operator declares with preset `name`, as the kit and
/// the pre-install checks call an adapter that lists it in `declared-inputs`: a slug
/// no adapter names, an operator's provider model, the preset's schema, and the
/// example of a canonical model taking it. `None` for an unknown preset.
pub fn declared_example(name: &str) -> Option<types::Model> {
    let schema = preset(name)?;
    let example = FILE
        .models
        .iter()
        .find(|model| model.input == name && !model.example.is_null())
        .map_or_else(|| "{}".to_string(), |model| model.example.to_string());
    let modality = match preset_modality(name) {
        Some("image") => types::Modality::Image,
        Some("video") => types::Modality::Video,
        Some("audio") => types::Modality::Audio,
        _ => types::Modality::Text,
    };
    Some(types::Model {
        slug: format!("operator-declared-{name}"),
        provider_model: format!("operator/declared-{name}"),
        modality,
        description: "A model the operator declares.".into(),
        input_schema: schema.to_string(),
        example_input: example,
        price: types::Price::default(),
        accepts_prefill: false,
        input: name.to_string(),
    })
}

fn modality_name(name: &str) -> &'static str {
    match name {
        "image" => "image",
        "video" => "video",
        "audio" => "audio",
        _ => "text",
    }
}

fn modality(modality: types::Modality) -> &'static str {
    match modality {
        types::Modality::Image => "image",
        types::Modality::Video => "video",
        types::Modality::Audio => "audio",
        types::Modality::Text => "text",
    }
}

/// The canonical definition of `slug`, if the SDK has one.
pub fn canonical(slug: &str) -> Option<&'static Definition> {
    CANONICAL.get(slug)
}

/// How the catalogue shows `slug`, served by `models` (one per adapter, in any
/// order); `None` when nothing serves it.
pub fn public(slug: &str, models: &[&types::Model]) -> Option<Definition> {
    let first = models.first()?;
    if let Some(definition) = canonical(slug) {
        return Some(definition.clone());
    }
    let modality = modality(first.modality);
    let agreed = models
        .iter()
        .all(|model| model.description == first.description);
    Some(Definition {
        modality,
        description: if agreed {
            first.description.clone()
        } else {
            let article = if modality.starts_with(['a', 'i']) {
                "An"
            } else {
                "A"
            };
            format!("{article} {modality} model.")
        },
        input_schema: serde_json::from_str(&first.input_schema).unwrap_or(Value::Null),
        input: first.input.clone(),
    })
}

/// Refuses `plugin` when a model it serves would make the catalogue disagree with
/// itself: a canonical slug served with another schema or modality than its
/// definition, or another slug served unlike `others` (the active adapters, besides
/// the version `plugin` replaces) serve it.
pub fn check_agreement<'a>(
    plugin: &LoadedPlugin,
    others: impl IntoIterator<Item = &'a LoadedPlugin>,
) -> Result<()> {
    let others: Vec<_> = others
        .into_iter()
        .map(|other| (other.name.as_str(), other.manifest.models.as_slice()))
        .collect();
    check_models(&plugin.name, &plugin.manifest.models, &others)
}

/// [`check_agreement`] on manifests: adapter `name` serving `models`, beside
/// `others` as (name, models).
fn check_models(
    name: &str,
    models: &[types::Model],
    others: &[(&str, &[types::Model])],
) -> Result<()> {
    for model in models {
        let slug = &model.slug;
        let schema: Value = serde_json::from_str(&model.input_schema)?;
        if let Some(definition) = canonical(slug) {
            if modality(model.modality) != definition.modality {
                bail!(
                    "model {slug}: the modality is {}, the canonical model's is {}",
                    modality(model.modality),
                    definition.modality
                );
            }
            if schema != definition.input_schema {
                bail!(
                    "model {slug}: the input schema differs from the canonical model's \
                     (build the manifest entry with the SDK's canonical::model)"
                );
            }
            continue;
        }
        for &(other, their_models) in others {
            if other == name {
                continue;
            }
            let Some(theirs) = their_models.iter().find(|m| &m.slug == slug) else {
                continue;
            };
            let their_schema: Value = serde_json::from_str(&theirs.input_schema)?;
            if their_schema != schema || theirs.modality != model.modality {
                bail!(
                    "model {slug}: adapter {other} serves it with another input schema \
                     or modality; every adapter serving a slug must take the same input"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(slug: &str, description: &str, schema: &str) -> types::Model {
        types::Model {
            slug: slug.into(),
            provider_model: "provider/model".into(),
            modality: types::Modality::Image,
            description: description.into(),
            input_schema: schema.into(),
            example_input: "{}".into(),
            price: types::Price {
                per_image: 1,
                ..Default::default()
            },
            accepts_prefill: false,
            input: String::new(),
        }
    }

    /// Every canonical model's example input is valid against its schema.
    #[test]
    fn canonical_definitions_are_well_formed() {
        let file: Value =
            serde_json::from_str(include_str!("../../../sdk/canonical/models.json")).unwrap();
        for model in file["models"].as_array().unwrap() {
            let slug = model["slug"].as_str().unwrap();
            let definition = canonical(slug).unwrap();
            let validator = jsonschema::validator_for(&definition.input_schema).unwrap();
            assert!(
                validator.is_valid(&model["example"]),
                "{slug}'s example breaks its schema"
            );
            assert!(!definition.description.is_empty());
        }
        assert_eq!(canonical("flux-1.1-pro").unwrap().modality, "image");
    }

    #[test]
    fn presets_have_a_modality_and_a_stand_in_declared_model() {
        assert_eq!(
            presets(),
            ["chat", "image-edit", "text-to-image", "text-to-video"]
        );
        assert_eq!(preset_modality("chat"), Some("text"));
        assert_eq!(preset_modality("text-to-image"), Some("image"));
        assert_eq!(preset_modality("chatt"), None);
        let chat = declared_example("chat").unwrap();
        assert_eq!(
            (chat.input.as_str(), chat.modality),
            ("chat", types::Modality::Text)
        );
        assert!(canonical(&chat.slug).is_none());
        let schema: Value = serde_json::from_str(&chat.input_schema).unwrap();
        let example: Value = serde_json::from_str(&chat.example_input).unwrap();
        assert!(
            jsonschema::validator_for(&schema)
                .unwrap()
                .is_valid(&example)
        );
        assert!(declared_example("chatt").is_none());
    }

    /// Regression: `GET /v1/models/flux-1.1-pro` showed a third-party adapter's
    /// description ("… served by Acme Images") because the first adapter's won.
    #[test]
    fn a_canonical_slug_is_described_by_its_definition_whatever_serves_it() {
        let schema = canonical("flux-1.1-pro").unwrap().input_schema.to_string();
        let acme = model("flux-1.1-pro", "FLUX, served by Acme Images", &schema);
        let shown = public("flux-1.1-pro", &[&acme]).unwrap();
        assert_eq!(shown, canonical("flux-1.1-pro").unwrap().clone());
        assert!(!shown.description.contains("Acme"));
    }

    #[test]
    fn adapters_that_disagree_on_another_slugs_description_get_a_plain_one() {
        let schema = r#"{"type":"object"}"#;
        let a = model("acme-art", "Acme's art model", schema);
        let b = model("acme-art", "Art, by Other Co", schema);
        assert_eq!(
            public("acme-art", &[&a]).unwrap().description,
            "Acme's art model"
        );
        let shown = public("acme-art", &[&a, &b]).unwrap();
        assert_eq!(shown.description, "An image model.");
        assert_eq!(shown.input_schema, serde_json::json!({"type": "object"}));
        assert_eq!(public("acme-art", &[]), None);
    }

    #[test]
    fn a_canonical_slug_served_with_another_schema_is_refused() {
        let canonical_schema = canonical("flux-1.1-pro").unwrap().input_schema.to_string();
        let faithful = model("flux-1.1-pro", "anything", &canonical_schema);
        assert!(check_models("acme", &[faithful], &[]).is_ok());
        let own = model("flux-1.1-pro", "anything", r#"{"type":"object"}"#);
        let refused = check_models("acme", &[own], &[]).unwrap_err();
        assert!(refused.to_string().contains("canonical"), "{refused}");
    }

    #[test]
    fn adapters_serving_another_slug_must_take_the_same_input() {
        let first = [model("acme-art", "Art", r#"{"type":"object"}"#)];
        let same = [model("acme-art", "Art, too", r#"{ "type" : "object" }"#)];
        let other = [model(
            "acme-art",
            "Art",
            r#"{"type":"object","required":["x"]}"#,
        )];
        let active = [("first", first.as_slice())];
        assert!(check_models("second", &same, &active).is_ok());
        let refused = check_models("second", &other, &active).unwrap_err();
        assert!(refused.to_string().contains("adapter first"), "{refused}");
        // A new version of the same adapter replaces it: no disagreement with itself.
        assert!(check_models("first", &other, &active).is_ok());
    }
}
