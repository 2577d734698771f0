//! Checking a custom field value against its definition.
//!
//! A value is JSON; `null` clears the field. Each [`FieldType`] accepts one shape, and a
//! value of the wrong shape is refused with a message naming the field and the rule,
//! before anything is written.

use backchannel_protocol::http::{FieldDefinition, FieldType};
use serde_json::Value;

/// Longest text or link value, in bytes.
pub const MAX_TEXT_BYTES: usize = 2048;

/// `Ok(())` if `value` fits `definition`.
pub fn check(definition: &FieldDefinition, value: &Value) -> Result<(), String> {
    let key = &definition.key;
    if value.is_null() {
        return Ok(());
    }
    let ok = match definition.field_type {
        FieldType::Text => value
            .as_str()
            .is_some_and(|s| s.len() <= MAX_TEXT_BYTES && !s.contains('\0')),
        FieldType::Number => value.as_f64().is_some_and(f64::is_finite),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Date => value.as_str().is_some_and(is_date),
        FieldType::List => value
            .as_str()
            .is_some_and(|s| definition.options.iter().any(|o| o == s)),
        FieldType::Link => value.as_str().is_some_and(is_link),
    };
    if ok {
        Ok(())
    } else {
        Err(match definition.field_type {
            FieldType::Text => {
                format!("`{key}` takes text of at most {MAX_TEXT_BYTES} bytes, without NUL")
            }
            FieldType::Number => format!("`{key}` takes a number"),
            FieldType::Boolean => format!("`{key}` takes true or false"),
            FieldType::Date => format!("`{key}` takes a date, YYYY-MM-DD"),
            FieldType::List => format!("`{key}` takes one of: {}", definition.options.join(", ")),
            FieldType::Link => format!("`{key}` takes an http:// or https:// link"),
        })
    }
}

fn is_date(s: &str) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    s.len() == 10 && time::Date::parse(s, &format).is_ok()
}

fn is_link(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    s.len() <= MAX_TEXT_BYTES
        && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && !s.chars().any(char::is_whitespace)
}

/// The one stored form of a value, so equal numbers compare equal (`2` and `2.0`).
pub fn normalize(value: Value) -> Value {
    match value.as_f64() {
        Some(f) if value.is_number() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Value::from(f as i64)
        }
        _ => value,
    }
}

/// A filter value from a query string, typed like the field.
pub fn parse_filter(definition: &FieldDefinition, raw: &str) -> Result<Value, String> {
    let value = match definition.field_type {
        FieldType::Number => raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        FieldType::Boolean => raw.parse::<bool>().ok().map(Value::Bool),
        _ => Some(Value::String(raw.to_owned())),
    };
    let value = value.ok_or_else(|| format!("`{raw}` is not a valid `{}`", definition.key))?;
    check(definition, &value).map(|()| normalize(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_protocol::FieldTarget;
    use serde_json::json;

    fn def(field_type: FieldType) -> FieldDefinition {
        FieldDefinition {
            key: "k".into(),
            field_type,
            applies_to: FieldTarget::Conversation,
            label: "K".into(),
            required: false,
            options: vec!["gold".into(), "silver".into()],
        }
    }

    #[test]
    fn each_type_accepts_its_shape_only() {
        assert!(check(&def(FieldType::Text), &json!("hi")).is_ok());
        assert!(check(&def(FieldType::Text), &json!(3)).is_err());
        assert!(check(&def(FieldType::Number), &json!(3.5)).is_ok());
        assert!(check(&def(FieldType::Number), &json!("3")).is_err());
        assert!(check(&def(FieldType::Boolean), &json!(true)).is_ok());
        assert!(check(&def(FieldType::Boolean), &json!("true")).is_err());
        assert!(check(&def(FieldType::Date), &json!("2026-02-28")).is_ok());
        assert!(check(&def(FieldType::Date), &json!("2026-02-30")).is_err());
        assert!(check(&def(FieldType::List), &json!("gold")).is_ok());
        assert!(check(&def(FieldType::List), &json!("bronze")).is_err());
        assert!(check(&def(FieldType::Link), &json!("https://example.com/x")).is_ok());
        assert!(check(&def(FieldType::Link), &json!("javascript:alert(1)")).is_err());
        assert!(check(&def(FieldType::Link), &json!(null)).is_ok());
    }

    #[test]
    fn filters_are_typed() {
        assert_eq!(
            parse_filter(&def(FieldType::Number), "2").ok(),
            Some(json!(2))
        );
        assert_eq!(normalize(json!(2.0)), json!(2));
        assert_eq!(normalize(json!(2.5)), json!(2.5));
        assert!(parse_filter(&def(FieldType::Number), "x").is_err());
        assert_eq!(
            parse_filter(&def(FieldType::List), "gold").ok(),
            Some(json!("gold"))
        );
    }
}
