//! Canonical models: the same slug takes the same input, and is described alike,
//! whichever provider runs it. The definitions live in `canonical/models.json`, which
//! the host reads too: the public catalogue's descriptions and schemas come from
//! there, never from an adapter, and the host refuses an adapter whose schema for a
//! canonical slug differs from it.

use serde_json::Value;
use std::sync::OnceLock;

use crate::{Modality, Model, Price};

/// The canonical definitions: `inputs` (JSON Schemas by name) and `models`.
pub const MODELS_JSON: &str = include_str!("../canonical/models.json");

fn definitions() -> &'static Value {
    static DEFINITIONS: OnceLock<Value> = OnceLock::new();
    DEFINITIONS.get_or_init(|| serde_json::from_str(MODELS_JSON).expect("canonical/models.json"))
}

/// The `chat` input preset's name: what `CallContext::input` and `ModelRef::input`
/// say for a model taking the canonical chat input (OpenAI's chat request).
pub const CHAT: &str = "chat";
/// The `text-to-image` input preset's name.
pub const TEXT_TO_IMAGE: &str = "text-to-image";

/// The names of the canonical input presets (`chat`, `text-to-image`, …): what a
/// manifest's `declared_inputs` may list, and what `CallContext::input` names.
pub fn inputs() -> Vec<&'static str> {
    definitions()["inputs"]
        .as_object()
        .into_iter()
        .flat_map(|inputs| inputs.keys().map(String::as_str))
        .collect()
}

/// The canonical input schema `name` (`text-to-image`, `image-edit`, `chat`,
/// `text-to-video`), as JSON text.
pub fn input_schema(name: &str) -> Option<String> {
    definitions()["inputs"].get(name).map(Value::to_string)
}

/// The slugs that have a canonical definition.
pub fn slugs() -> Vec<&'static str> {
    definitions()["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|model| model["slug"].as_str())
        .collect()
}

/// The manifest entry for serving the canonical model `slug` as the provider's
/// `provider_model` at `price`: modality, description, input schema and example
/// come from the canonical definition.
///
/// # Panics
///
/// When `slug` has no canonical definition (see [`slugs`]); a model of your own
/// needs a [`Model`] written out, with a neutral description.
pub fn model(slug: &str, provider_model: &str, price: Price) -> Model {
    let definitions = definitions();
    let definition = definitions["models"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|model| model["slug"] == slug)
        .unwrap_or_else(|| panic!("{slug} is not a canonical model"));
    let text = |field: &str| definition[field].as_str().unwrap_or_default();
    Model {
        slug: slug.into(),
        provider_model: provider_model.into(),
        modality: match text("modality") {
            "image" => Modality::Image,
            "video" => Modality::Video,
            "audio" => Modality::Audio,
            _ => Modality::Text,
        },
        description: text("description").into(),
        input_schema: definitions["inputs"][text("input")].to_string(),
        example_input: definition["example"].to_string(),
        price,
        accepts_prefill: false,
    }
}

impl Model {
    /// The model continues an assistant prefill ([`prefill`]): say so only when the
    /// provider's answer then is the text that follows the prefill.
    pub fn accepting_prefill(self) -> Model {
        Model {
            accepts_prefill: true,
            ..self
        }
    }
}

/// The text a chat input asks the answer to continue, when the host asks a model
/// that `accepts_prefill` to go on with an answer cut mid-stream at another
/// provider (clients cannot set it: the chat schema has no such property). Send it
/// as the assistant's last message, in whatever way makes the provider continue
/// that message instead of answering anew; the answer's text is then only what
/// follows it (the host joins the two).
pub fn prefill(input: &Value) -> Option<&str> {
    input["prefill"].as_str().filter(|text| !text.is_empty())
}

/// What a text-to-image input is expected to consume: one image of its size.
pub fn image_estimate(input: &Value) -> crate::Usage {
    let (width, height) = image_size(input);
    crate::Usage::images(1, width, height)
}

/// Width and height of a text-to-image input, with the schema's defaults.
pub fn image_size(input: &Value) -> (u64, u64) {
    let side = |name: &str| input[name].as_u64().unwrap_or(1024);
    (side("width"), side("height"))
}

/// Seconds of video a text-to-video input asks for, with the schema's default.
pub fn video_seconds(input: &Value) -> u64 {
    input["duration"].as_u64().unwrap_or(5)
}

/// The schema keyword that marks an input property as a file reference: its value is
/// the list of MIME types the model accepts, e.g. `"x-file-types": ["image/png"]`.
///
/// The property holds the `file_…` id of a file the client uploaded. Before accepting
/// an execution the host checks that the file exists, belongs to the client's
/// organization and has one of the listed types (else `FILE_NOT_FOUND` or
/// `FILE_FORMAT_UNSUPPORTED`). The adapter never sees the client's storage: each
/// attempt gets one [`FileGrant`](crate::FileGrant) per referenced id in
/// `CallContext::files`, a short-lived URL (with the bytes too when the manifest asks
/// for `inline_files`). See [`CallContext::file_grant`](crate::CallContext::file_grant).
pub const FILE_TYPES_KEYWORD: &str = "x-file-types";
