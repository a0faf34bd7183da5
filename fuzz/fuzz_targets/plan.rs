//! The plan parser. Invariants: no panic, and bounded time and memory (run.sh's -timeout and
//! -rss_limit_mb), on any text; an error names a location inside the text, as an editor
//! counts lines and columns (or none); a plan that loads serialises to JSON (a YAML subset)
//! that loads again to the same plan, so the parsed form keeps every field it read and writes
//! only what it can read back.
#![no_main]

use idem_guest::plan;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Every string value's `${` written as `$${`, which the loader reads back as `${`.
fn escape_interpolation(v: &mut Value) {
    match v {
        Value::String(s) => *s = s.replace("${", "$${"),
        Value::Array(items) => items.iter_mut().for_each(escape_interpolation),
        Value::Object(map) => map.values_mut().for_each(escape_interpolation),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match plan::parse(source) {
        Err(e) => {
            assert!(!e.message.is_empty(), "an error with no message");
            if let Some(loc) = e.loc {
                // Where an editor would put the cursor: lines counted by line feeds (a CR
                // ends a line only before a LF), columns in characters, at most one past the
                // line's end.
                let lines: Vec<&str> = source.split('\n').collect();
                let line = loc.line.checked_sub(1).and_then(|l| lines.get(l as usize));
                let Some(line) = line else {
                    panic!(
                        "error at {}:{} outside a text of {} lines: {}",
                        loc.line,
                        loc.column,
                        lines.len(),
                        e.message
                    );
                };
                let width = line.strip_suffix('\r').unwrap_or(line).chars().count() as u32;
                assert!(
                    loc.column >= 1 && loc.column <= width + 1,
                    "error at {}:{} outside its line of {width} characters: {}",
                    loc.line,
                    loc.column,
                    e.message
                );
            }
        }
        Ok(loaded) => {
            assert_eq!(loaded.locations.len(), loaded.plan.steps.len());
            // The parsed plan has its `${...}` resolved and `$${` unescaped, so a `${` in it
            // is literal text: written back as a plan, it is escaped again.
            let mut value = serde_json::to_value(&loaded.plan).expect("a plan serialises");
            escape_interpolation(&mut value);
            let json = serde_json::to_string(&value).unwrap();
            let again = match plan::parse(&json) {
                Ok(again) => again,
                Err(e) => panic!("the serialised plan {json} does not load: {}", e.message),
            };
            let mut value2 = serde_json::to_value(&again.plan).unwrap();
            escape_interpolation(&mut value2);
            let json2 = serde_json::to_string(&value2).unwrap();
            assert_eq!(json, json2, "parse -> serialise -> parse changed the plan");
        }
    }
});
