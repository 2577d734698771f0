//! An arbitrary JSON value and query-string text against a field definition of each type:
//! `fields::check`, `fields::parse_filter` and `fields::normalize` never panic, and what
//! they accept has the type's shape (a Date is a real `YYYY-MM-DD` date, a List value is
//! one of the options, a Number is finite, ...).
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use backchannel::fields::{check, normalize, parse_filter, MAX_TEXT_BYTES};
use backchannel_protocol::http::{FieldDefinition, FieldType};
use backchannel_protocol::FieldTarget;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const TYPES: [FieldType; 6] = [
    FieldType::Text,
    FieldType::Number,
    FieldType::Boolean,
    FieldType::Date,
    FieldType::List,
    FieldType::Link,
];

/// A JSON value built from the fuzzer's bytes, strings biased towards dates and links.
fn json(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let pick = if depth == 0 { 5 } else { 7 };
    Ok(match u.choose_index(pick)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => match u.choose_index(3)? {
            0 => Value::from(u.arbitrary::<i64>()?),
            1 => Value::from(u.arbitrary::<u64>()?),
            _ => serde_json::Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        },
        3 => Value::String(u.arbitrary()?),
        4 => Value::String(shaped(u)?),
        5 => Value::Array(
            (0..u.choose_index(4)?)
                .map(|_| json(u, depth - 1))
                .collect::<Result<_>>()?,
        ),
        _ => Value::Object(
            (0..u.choose_index(4)?)
                .map(|_| Ok((u.arbitrary()?, json(u, depth - 1)?)))
                .collect::<Result<_>>()?,
        ),
    })
}

/// Text close to a date or a link, so the fuzzer reaches their edge cases sooner.
fn shaped(u: &mut Unstructured) -> Result<String> {
    let tail: String = u.arbitrary()?;
    Ok(match u.choose_index(3)? {
        0 => format!(
            "{:04}-{:02}-{:02}{}",
            u.int_in_range(0..=10_000u32)?,
            u.int_in_range(0..=13u32)?,
            u.int_in_range(0..=32u32)?,
            if u.arbitrary()? { "" } else { &tail }
        ),
        1 => format!("{}://{tail}", if u.arbitrary()? { "https" } else { "http" }),
        _ => tail,
    })
}

/// An independent check of `YYYY-MM-DD` (years 0000-9999, proleptic Gregorian).
fn is_real_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let (Some(year), Some(month), Some(day)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

fn has_shape(definition: &FieldDefinition, value: &Value) -> bool {
    match definition.field_type {
        _ if value.is_null() => true,
        FieldType::Text => value.as_str().is_some_and(|s| s.len() <= MAX_TEXT_BYTES),
        FieldType::Number => value.as_f64().is_some_and(f64::is_finite),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Date => value.as_str().is_some_and(is_real_date),
        FieldType::List => value
            .as_str()
            .is_some_and(|s| definition.options.iter().any(|o| o == s)),
        FieldType::Link => value.as_str().is_some_and(|s| {
            (s.starts_with("https://") || s.starts_with("http://"))
                && s.len() <= MAX_TEXT_BYTES
                && !s.chars().any(char::is_whitespace)
        }),
    }
}

#[derive(Debug)]
struct Input {
    options: Vec<String>,
    value: Value,
    raw: String,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Input {
            options: u.arbitrary()?,
            value: json(u, 3)?,
            raw: if u.arbitrary()? {
                shaped(u)?
            } else {
                u.arbitrary()?
            },
        })
    }
}

fuzz_target!(|input: Input| {
    for field_type in TYPES {
        let definition = FieldDefinition {
            key: "k".into(),
            field_type,
            applies_to: FieldTarget::Conversation,
            label: "K".into(),
            required: false,
            options: input.options.clone(),
        };
        if check(&definition, &input.value).is_ok() {
            assert!(
                has_shape(&definition, &input.value),
                "{field_type:?} accepted {:?}",
                input.value
            );
        }
        let _ = normalize(input.value.clone());
        if let Ok(value) = parse_filter(&definition, &input.raw) {
            assert!(
                has_shape(&definition, &value),
                "{field_type:?} filter accepted {:?} as {value:?}",
                input.raw
            );
            // A filter value is checked again as it is stored: still accepted.
            assert!(check(&definition, &value).is_ok());
        }
    }
});
