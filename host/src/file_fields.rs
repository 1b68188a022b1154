//! Which properties of a model's input name files: those its schema marks with the
//! keyword `x-file-types` (the MIME types accepted). Executions check them before a
//! hold, attempts get grants for them, and a plugin's example input is validated
//! with placeholders for them; every other string is text, whatever it looks like.

use serde_json::Value;

use crate::ids::has_prefix;

/// An input property a model's schema marks as a file reference with the
/// `x-file-types` keyword (a list of accepted MIME types).
#[derive(Debug, Clone, PartialEq)]
pub struct FileField {
    pub name: String,
    pub types: Vec<String>,
}

/// The file properties of an input schema (top-level properties only).
pub fn file_fields(schema: &Value) -> Vec<FileField> {
    let Some(properties) = schema["properties"].as_object() else {
        return Vec::new();
    };
    properties
        .iter()
        .filter_map(|(name, property)| {
            let types = property.get("x-file-types")?.as_array()?;
            Some(FileField {
                name: name.clone(),
                types: types
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect(),
            })
        })
        .collect()
}

/// The distinct `file_…` ids an input holds in its `fields` (the only places an
/// input names files: other strings are text, whatever they look like).
pub fn field_file_ids(fields: &[FileField], input: &Value) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for field in fields {
        if let Some(id) = input.get(&field.name).and_then(Value::as_str)
            && has_prefix(id, "file")
            && !ids.iter().any(|known| known == id)
        {
            ids.push(id.to_string());
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_fields_are_the_properties_marked_with_x_file_types() {
        let schema = json!({"properties": {
            "prompt": {"type": "string"},
            "image": {"type": "string", "x-file-types": ["image/png", "image/jpeg"]}
        }});
        assert_eq!(
            file_fields(&schema),
            vec![FileField {
                name: "image".into(),
                types: vec!["image/png".into(), "image/jpeg".into()]
            }]
        );
    }

    #[test]
    fn only_the_schema_file_fields_name_files() {
        let schema = json!({"properties": {
            "prompt": {"type": "string"},
            "image": {"type": "string", "x-file-types": ["image/png"]},
            "mask": {"type": "string", "x-file-types": ["image/png"]}
        }});
        let (image, other) = (crate::ids::new_id("file"), crate::ids::new_id("file"));
        let input = json!({"prompt": other, "image": image, "mask": image, "extra": [other]});
        assert_eq!(field_file_ids(&file_fields(&schema), &input), vec![image]);
    }
}
