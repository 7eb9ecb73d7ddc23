//! Request validation: `validator` failures as one 422 problem listing every field.

use validator::{Validate, ValidationErrors, ValidationErrorsKind};

use crate::error::{AppError, ErrorCode, FieldError};

/// Refuses a PATCH body that is not a JSON merge patch (RFC 7396) with 415.
pub fn require_merge_patch(req: &actix_web::HttpRequest) -> Result<(), AppError> {
    let content_type =
        req.headers().get(actix_web::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.to_ascii_lowercase().starts_with("application/merge-patch+json") {
        Ok(())
    } else {
        Err(AppError::new(ErrorCode::UnsupportedMediaType)
            .with_detail("PATCH takes a JSON merge patch: Content-Type: application/merge-patch+json")
            .with_header(
                crate::api::contract::accept_patch(),
                actix_web::http::header::HeaderValue::from_static("application/merge-patch+json"),
            ))
    }
}

/// Validates `value`, collecting every failing field (nested fields as `a.b`, list items as `a[2]`).
pub fn validate(value: &impl Validate) -> Result<(), AppError> {
    value.validate().map_err(|errors| {
        let mut fields = Vec::new();
        collect("", "", &errors, &mut fields);
        fields.sort_by(|a, b| a.field.cmp(&b.field));
        AppError::new(ErrorCode::ValidationFailed)
            .with_detail(format!("{} field(s) failed validation", fields.len()))
            .with_field_errors(fields)
    })
}

/// Every failure under `errors`, each with its path (`tags[2]`) and JSON Pointer (`/tags/2`).
fn collect(prefix: &str, pointer: &str, errors: &ValidationErrors, out: &mut Vec<FieldError>) {
    for (field, kind) in errors.errors() {
        let name = camel(field);
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let pointer = format!("{pointer}/{name}");
        match kind {
            ValidationErrorsKind::Field(list) => {
                for e in list {
                    let message = e.message.as_ref().map(|m| m.to_string()).unwrap_or_else(|| describe(e));
                    // A rule on a list's items says which item failed (`item` in its params).
                    let at = match e.params.get("item").and_then(|i| i.as_u64()) {
                        Some(index) => format!("{pointer}/{index}"),
                        None => pointer.clone(),
                    };
                    out.push(FieldError {
                        pointer: Some(at),
                        ..FieldError::new(path.clone(), e.code.to_string(), message)
                    });
                }
            }
            ValidationErrorsKind::Struct(inner) => collect(&path, &pointer, inner, out),
            ValidationErrorsKind::List(items) => {
                for (index, inner) in items {
                    collect(&format!("{path}[{index}]"), &format!("{pointer}/{index}"), inner, out);
                }
            }
        }
    }
}

fn describe(e: &validator::ValidationError) -> String {
    let param = |name: &str| e.params.get(name).map(|v| v.to_string());
    match (e.code.as_ref(), param("min"), param("max")) {
        ("length", Some(min), Some(max)) => format!("length must be between {min} and {max}"),
        ("length", None, Some(max)) => format!("length must be at most {max}"),
        ("length", Some(min), None) => format!("length must be at least {min}"),
        ("range", Some(min), Some(max)) => format!("must be between {min} and {max}"),
        (code, _, _) => format!("invalid ({code})"),
    }
}

/// Most JSON values (members' values and array items, nested ones included) a request body may hold. No operation
/// takes more than a few dozen; a body of half a million small items (1 MiB of `1,`) took half a second of CPU and
/// 300 MB to check against its schema, which explains every failure it finds.
pub const MAX_BODY_VALUES: usize = 10_000;

/// What a request body's structure says before it is parsed into a value: the first duplicate member, and
/// whether it holds more than [`MAX_BODY_VALUES`] values.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BodyShape {
    /// The JSON Pointer of the first object member that appears twice in its object. RFC 8259 leaves such a body's
    /// meaning to the parser (serde keeps the last value, or refuses it for a struct, without saying where);
    /// I-JSON (RFC 7493) refuses it, and so does every body here, naming the member.
    pub duplicate: Option<String>,
    /// The walk stopped at the value past [`MAX_BODY_VALUES`].
    pub too_many_values: bool,
}

/// Walks `json` once without building it (nothing of a malformed body is reported: its parse says why).
pub fn body_shape(json: &[u8]) -> BodyShape {
    use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

    struct Walk<'a> {
        path: &'a mut Vec<String>,
        shape: &'a mut BodyShape,
        values: &'a mut usize,
    }

    impl Walk<'_> {
        fn next(&mut self) -> Walk<'_> {
            Walk { path: self.path, shape: self.shape, values: self.values }
        }
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            *self.values += 1;
            if *self.values > MAX_BODY_VALUES {
                self.shape.too_many_values = true;
                return Err(D::Error::custom("too many values"));
            }
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                let pointer_part = key.replace('~', "~0").replace('/', "~1");
                if !seen.insert(key) && self.shape.duplicate.is_none() {
                    self.shape.duplicate = Some(format!("{}/{pointer_part}", self.path.concat()));
                }
                self.path.push(format!("/{pointer_part}"));
                map.next_value_seed(self.next())?;
                self.path.pop();
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            let mut index = 0;
            loop {
                self.path.push(format!("/{index}"));
                let more = seq.next_element_seed(self.next())?;
                self.path.pop();
                if more.is_none() {
                    return Ok(());
                }
                index += 1;
            }
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }

    let (mut path, mut shape, mut values) = (Vec::new(), BodyShape::default(), 0);
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let _ = Walk { path: &mut path, shape: &mut shape, values: &mut values }.deserialize(&mut deserializer);
    shape
}

/// `doc_type` becomes `docType`: error paths use the wire names.
fn camel(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// More than spaces, for `validator`'s `custom` (titles, names).
pub fn not_blank(value: &str) -> Result<(), validator::ValidationError> {
    match value.trim().is_empty() {
        true => Err(validator::ValidationError::new("blank").with_message("more than spaces".into())),
        false => Ok(()),
    }
}

/// At most `max` characters as the stores count them: UTF-16 code units, as SQL Server's `NVARCHAR(n)` does (an
/// emoji counts as two), so a text one store takes the other takes too.
pub fn utf16_at_most(value: &str, max: usize) -> Result<(), validator::ValidationError> {
    if crate::store::utf16_width(value) <= max {
        return Ok(());
    }
    Err(validator::ValidationError::new("length")
        .with_message(format!("at most {max} characters (UTF-16 code units: an emoji counts as two)").into()))
}

/// [`utf16_at_most`] 128, for `validator`'s `custom` (an application id).
pub fn utf16_at_most_128(value: &str) -> Result<(), validator::ValidationError> {
    utf16_at_most(value, 128)
}

/// [`utf16_at_most`] 200, for `validator`'s `custom` (a name).
pub fn utf16_at_most_200(value: &str) -> Result<(), validator::ValidationError> {
    utf16_at_most(value, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Validate)]
    struct Input {
        #[validate(length(min = 1, max = 3))]
        doc_type: String,
        #[validate(range(min = 1, max = 10))]
        size: u32,
    }

    #[test]
    fn every_failing_field_is_listed_with_its_wire_name() {
        let err = validate(&Input { doc_type: "toolong".into(), size: 0 }).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ValidationFailed);
        let fields: Vec<_> = err.field_errors().iter().map(|f| (f.field.as_str(), f.code.as_str())).collect();
        assert_eq!(fields, vec![("docType", "length"), ("size", "range")]);
        assert_eq!(err.field_errors()[0].message, "length must be between 1 and 3");
        assert!(validate(&Input { doc_type: "ok".into(), size: 5 }).is_ok());
    }
}

#[cfg(test)]
mod duplicate_tests {
    use super::{MAX_BODY_VALUES, body_shape};

    fn duplicate_member(json: &[u8]) -> Option<String> {
        body_shape(json).duplicate
    }

    #[test]
    fn a_body_of_more_values_than_any_operation_takes_is_stopped_at_the_first_one_past_the_bound() {
        let items = |n: usize| format!("{{\"tags\":[{}]}}", vec!["1"; n].join(","));
        // The object and its array are values too.
        assert!(!body_shape(items(MAX_BODY_VALUES - 2).as_bytes()).too_many_values);
        assert!(body_shape(items(MAX_BODY_VALUES - 1).as_bytes()).too_many_values);
        assert!(body_shape(items(500_000).as_bytes()).too_many_values);
        let nested = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(body_shape(nested.as_bytes()), super::BodyShape::default());
    }

    #[test]
    fn a_member_twice_in_one_object_is_found_with_its_pointer() {
        assert_eq!(duplicate_member(br#"{"title":"a","docType":"b","title":"c"}"#).as_deref(), Some("/title"));
        assert_eq!(duplicate_member(br#"{"tags":["a"],"x":{"a/b":1,"a/b":2}}"#).as_deref(), Some("/x/a~1b"));
        assert_eq!(duplicate_member(br#"{"list":[{"k":1},{"k":1,"k":2}]}"#).as_deref(), Some("/list/1/k"));
        assert_eq!(duplicate_member(br#"{"a":{"k":1},"b":{"k":1}}"#), None, "the same name in two objects");
        assert_eq!(duplicate_member(br#"[1, "x", null, true, 2.5]"#), None);
    }
}
