//! Azure Functions (ASP.NET Core) route templates: parsing and matching, as the host routes client requests.
//!
//! Supported: literal segments (case-insensitive), `{name}`, `{name?}`, `{name:constraint}` (constraints are
//! ignored except `int`), and a final catch-all `{*name}` / `{**name}`, which may match nothing at all,
//! so `health/{*rest}` matches both `health` and `health/ready`.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param { name: String, optional: bool, int: bool },
    CatchAll(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTemplate {
    pub template: String,
    segments: Vec<Segment>,
}

impl RouteTemplate {
    pub fn parse(template: &str) -> Self {
        let segments = template
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|raw| match raw.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(inner) if inner.starts_with('*') => {
                    Segment::CatchAll(inner.trim_start_matches('*').split(':').next().unwrap_or_default().to_owned())
                }
                Some(inner) => {
                    let (name, constraint) = inner.split_once(':').unwrap_or((inner, ""));
                    let optional = name.ends_with('?') || constraint.ends_with('?');
                    Segment::Param {
                        name: name.trim_end_matches('?').to_owned(),
                        optional,
                        int: constraint.trim_end_matches('?') == "int",
                    }
                }
                None => Segment::Literal(raw.to_owned()),
            })
            .collect();
        RouteTemplate { template: template.to_owned(), segments }
    }

    /// Matches a path (without the route prefix, without a query) and returns the route values.
    pub fn matches(&self, path: &str) -> Option<BTreeMap<String, Option<String>>> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        let mut values = BTreeMap::new();
        let mut i = 0;
        for segment in &self.segments {
            match segment {
                Segment::Literal(lit) => {
                    if !parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(lit)) {
                        return None;
                    }
                    i += 1;
                }
                Segment::Param { name, optional, int } => match parts.get(i) {
                    Some(part) if !*int || part.parse::<i64>().is_ok() => {
                        values.insert(name.clone(), Some((*part).to_owned()));
                        i += 1;
                    }
                    None if *optional => {
                        values.insert(name.clone(), None);
                    }
                    _ => return None,
                },
                Segment::CatchAll(name) => {
                    let rest = parts[i.min(parts.len())..].join("/");
                    values.insert(name.clone(), (!rest.is_empty()).then_some(rest));
                    i = parts.len();
                }
            }
        }
        (i == parts.len()).then_some(values)
    }
}

/// Replaces every `{param}` of an OpenAPI path template with a sample value.
pub fn sample_path(openapi_template: &str) -> String {
    openapi_template
        .split('/')
        .map(|seg| if seg.starts_with('{') && seg.ends_with('}') { "sample1" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn templates_match_like_the_host() {
    let t = RouteTemplate::parse("health/{*rest}");
    assert_eq!(t.matches("health").unwrap().get("rest"), Some(&None));
    assert_eq!(t.matches("HEALTH/ready").unwrap().get("rest"), Some(&Some("ready".into())));
    assert_eq!(t.matches("health/a/b").unwrap().get("rest"), Some(&Some("a/b".into())));
    assert!(t.matches("healthz").is_none());

    let t = RouteTemplate::parse("v1/documents/{id:int?}");
    assert!(t.matches("v1/documents").is_some());
    assert!(t.matches("v1/documents/42").is_some());
    assert!(t.matches("v1/documents/abc").is_none());
    assert!(t.matches("v1/documents/42/x").is_none());

    let t = RouteTemplate::parse("openapi.json");
    assert!(t.matches("openapi.json").is_some());
    assert!(t.matches("openapi.yaml").is_none());
    assert_eq!(sample_path("/api/v1/things/{id}/parts"), "/api/v1/things/sample1/parts");
}
