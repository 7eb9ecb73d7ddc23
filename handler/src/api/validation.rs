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
            .with_detail("PATCH takes a JSON merge patch: Content-Type: application/merge-patch+json"))
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
