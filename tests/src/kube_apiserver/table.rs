//! Server-side `Table` output for `kubectl get` (the name plus a CRD's
//! printer columns, evaluated with the JSONPath subset they use), and the
//! RFC 3339 timestamps the stand-in stamps and ages.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=Table"))
}

/// The server-side table `kubectl get` prints: the name plus the CRD's
/// printer columns, evaluated with the JSONPath subset they use.
pub fn table(columns: &[Value], items: &[Value], resource_version: &str) -> Value {
    let mut definitions = vec![json!({
        "name": "Name", "type": "string", "format": "name",
        "description": "Name of the resource", "priority": 0
    })];
    definitions.extend(columns.iter().map(|c| {
        json!({
            "name": c["name"], "type": c["type"], "format": c.get("format").cloned().unwrap_or(json!("")),
            "description": c.get("description").cloned().unwrap_or(json!("")), "priority": 0
        })
    }));
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut cells = vec![item["metadata"]["name"].clone()];
            cells.extend(columns.iter().map(|c| {
                let value = json_path(item, c["jsonPath"].as_str().unwrap_or(""));
                match (c["type"].as_str(), value) {
                    (Some("date"), Some(Value::String(at))) => json!(age(&at)),
                    (_, Some(value)) => value,
                    (_, None) => Value::Null,
                }
            }));
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": item["metadata"]
                }
            })
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version },
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// `.a.b` and `.a.list[?(@.key=="value")].field`.
fn json_path(object: &Value, path: &str) -> Option<Value> {
    let mut current = object.clone();
    // Split on dots outside `[...]` filters.
    let mut segments = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    let path = path.trim_start_matches('.');
    for (i, c) in path.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                segments.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    segments.push(&path[start..]);
    for segment in segments {
        let (field, filter) = match segment.split_once("[?(@.") {
            Some((field, rest)) => (field, Some(rest.trim_end_matches(")]"))),
            None => (segment, None),
        };
        current = current.get(field)?.clone();
        if let Some(filter) = filter {
            let (key, value) = filter.split_once("==")?;
            let value = value.trim_matches('"');
            current = current
                .as_array()?
                .iter()
                .find(|entry| entry[key] == value)?
                .clone();
        }
    }
    (!current.is_null()).then_some(current)
}

fn age(timestamp: &str) -> String {
    let created = parse_rfc3339(timestamp).unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}s", now.saturating_sub(created))
}

pub fn rfc3339_now() -> String {
    rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// Unix seconds as RFC 3339, in UTC.
pub fn rfc3339(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn parse_rfc3339(text: &str) -> Option<u64> {
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>());
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let mut time = time.split(':').map(|p| p.parse::<u64>());
    let (hour, minute, second) = (time.next()?.ok()?, time.next()?.ok()?, time.next()?.ok()?);
    let days = days_from_civil(year, month, day);
    Some(u64::try_from(days).ok()? * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Howard Hinnant's civil-from-days (proleptic Gregorian, UTC).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
