//! Canonical inputs shared by every adapter that serves a model: the same slug takes
//! the same input whichever provider runs it.

use serde_json::Value;

/// Text to image (`flux-1.1-pro` and kin): a prompt, optional size and seed.
pub const TEXT_TO_IMAGE_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "required": ["prompt"],
  "properties": {
    "prompt": {"type": "string", "minLength": 1, "maxLength": 4000},
    "width": {"type": "integer", "minimum": 256, "maximum": 1440, "multipleOf": 32, "default": 1024},
    "height": {"type": "integer", "minimum": 256, "maximum": 1440, "multipleOf": 32, "default": 1024},
    "seed": {"type": "integer", "minimum": 0}
  }
}"#;

/// A valid [`TEXT_TO_IMAGE_SCHEMA`] input.
pub const TEXT_TO_IMAGE_EXAMPLE: &str =
    r#"{"prompt":"a lighthouse at dusk","width":1024,"height":768}"#;

/// Chat: messages, an optional output budget and temperature.
pub const CHAT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "required": ["messages"],
  "properties": {
    "messages": {
      "type": "array",
      "minItems": 1,
      "items": {
        "type": "object",
        "additionalProperties": false,
        "required": ["role", "content"],
        "properties": {
          "role": {"enum": ["system", "user", "assistant"]},
          "content": {"type": "string"}
        }
      }
    },
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 256},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2}
  }
}"#;

/// Width and height of a text-to-image input, with the schema's defaults.
pub fn image_size(input: &Value) -> (u64, u64) {
    let side = |name: &str| input[name].as_u64().unwrap_or(1024);
    (side("width"), side("height"))
}

/// Text to video: a prompt and a length in seconds.
pub const TEXT_TO_VIDEO_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "required": ["prompt"],
  "properties": {
    "prompt": {"type": "string", "minLength": 1, "maxLength": 2500},
    "duration": {"enum": [5, 10], "default": 5}
  }
}"#;

/// A valid [`TEXT_TO_VIDEO_SCHEMA`] input.
pub const TEXT_TO_VIDEO_EXAMPLE: &str = r#"{"prompt":"waves at dusk","duration":5}"#;

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

/// Image editing (`flux-kontext-pro` and kin): a prompt and the image to edit, given as
/// the `file_…` id of an upload (a file reference, see [`FILE_TYPES_KEYWORD`]); an
/// optional seed and aspect ratio (by default the input image's).
pub const IMAGE_EDIT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "required": ["prompt", "image"],
  "properties": {
    "prompt": {"type": "string", "minLength": 1, "maxLength": 4000},
    "image": {
      "type": "string",
      "pattern": "^file_[0-9a-f-]{36}$",
      "x-file-types": ["image/png", "image/jpeg", "image/webp"],
      "description": "a file_ id of an uploaded image"
    },
    "seed": {"type": "integer", "minimum": 0},
    "aspect_ratio": {"enum": ["1:1", "16:9", "9:16", "4:3", "3:4"]}
  }
}"#;

/// A valid [`IMAGE_EDIT_SCHEMA`] input. Its file names nothing stored: when the host
/// checks a plugin it grants example files placeholder URLs.
pub const IMAGE_EDIT_EXAMPLE: &str =
    r#"{"prompt":"make it night","image":"file_00000000-0000-4000-8000-000000000000"}"#;
