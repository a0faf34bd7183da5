//! The plan parser. Invariants: no panic, and bounded time and memory (run.sh's -timeout and
//! -rss_limit_mb), on any text; an error names a location inside the text (or none); a plan
//! that loads serialises to JSON (a YAML subset) that loads again to the same plan, so the
//! parsed form keeps every field it read and writes only what it can read back.
#![no_main]

use idem_guest::plan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match plan::parse(source) {
        Err(e) => {
            assert!(!e.message.is_empty(), "an error with no message");
            if let Some(loc) = e.loc {
                let lines = source.split('\n').count() as u32;
                assert!(
                    loc.line >= 1 && loc.line <= lines + 1 && loc.column >= 1,
                    "error at {}:{} outside a text of {lines} lines: {}",
                    loc.line,
                    loc.column,
                    e.message
                );
            }
        }
        Ok(loaded) => {
            assert_eq!(loaded.locations.len(), loaded.plan.steps.len());
            let json = serde_json::to_string(&loaded.plan).expect("a plan serialises");
            let again = match plan::parse(&json) {
                Ok(again) => again,
                Err(e) => panic!("the serialised plan {json} does not load: {}", e.message),
            };
            let json2 = serde_json::to_string(&again.plan).unwrap();
            assert_eq!(json, json2, "parse -> serialise -> parse changed the plan");
        }
    }
});
