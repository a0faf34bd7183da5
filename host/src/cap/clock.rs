//! The clock capability: one instant per run, read when the run starts (or pinned with
//! `--now`), so every age in a run is measured against the same "now" and a dry run agrees
//! with the apply that follows it.

use crate::bindings::clock::Host;
use crate::bindings::types::Datetime;

/// What the `clock` interface sees of the store: the run's one instant.
pub struct ClockView {
    pub now: Datetime,
}

/// Parse `--now`: Unix seconds, or RFC 3339 in UTC (`2026-01-31T12:00:00Z`).
pub fn parse_now(text: &str) -> Result<Datetime, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<i64>() {
        return Ok(Datetime {
            seconds: secs,
            nanoseconds: 0,
        });
    }
    let bad =
        || format!("--now {text:?}: expected Unix seconds or a UTC time like 2026-01-31T12:00:00Z");
    let t = t.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = t.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let tm: Vec<i64> = time
        .split(':')
        .map(|x| x.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let (&[y, m, dd], &[hh, mi, ss]) = (&d[..], &tm[..]) else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&dd) || hh > 23 || mi > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(Datetime {
        seconds: days * 86_400 + hh * 3600 + mi * 60 + ss,
        nanoseconds: 0,
    })
}

/// The system clock now.
pub fn system_now() -> Datetime {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Datetime {
        seconds: d.as_secs() as i64,
        nanoseconds: d.subsec_nanos(),
    }
}

impl Host for ClockView {
    fn now(&mut self) -> wasmtime::Result<Datetime> {
        Ok(self.now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_accepts_unix_seconds_and_utc_times() {
        assert_eq!(parse_now("86400").unwrap().seconds, 86_400);
        assert_eq!(parse_now("1970-01-02T00:00:00Z").unwrap().seconds, 86_400);
        assert_eq!(
            parse_now("2000-03-01T00:00:01Z").unwrap().seconds,
            951_868_801
        );
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01",
        ] {
            assert!(parse_now(bad).is_err(), "{bad}");
        }
    }
}
