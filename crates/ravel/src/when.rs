//! Times as users write them for `--begin`: `+30m`, `2026-12-01T02:00`, `2026-12-01 02:00:30`,
//! read in the local time zone.

/// UTC milliseconds for `s`, relative to `now` for `+DURATION`.
pub fn parse_begin(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Some(d) = s.strip_prefix('+') {
        return ravel_core::units::parse_duration_ms(d).map(|ms| now + ms as i64);
    }
    let bad = || format!("bad time {s:?}: use +30m, or YYYY-MM-DDTHH:MM[:SS] in local time");
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "00:00"));
    let d: Vec<i32> = date.split('-').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let t: Vec<i32> = time.split(':').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    if d.len() != 3 || !(2..=3).contains(&t.len()) {
        return Err(bad());
    }
    let (mon, day, hour, min, sec) = (d[1], d[2], t[0], t[1], t.get(2).copied().unwrap_or(0));
    if !(1..=12).contains(&mon) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 || hour < 0 {
        return Err(bad());
    }
    // SAFETY: mktime reads and normalises a fully initialised tm; tm_isdst = -1 lets it decide DST.
    let epoch = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        tm.tm_year = d[0] - 1900;
        tm.tm_mon = mon - 1;
        tm.tm_mday = day;
        tm.tm_hour = hour;
        tm.tm_min = min;
        tm.tm_sec = sec;
        tm.tm_isdst = -1;
        libc::mktime(&mut tm)
    };
    if epoch == -1 {
        return Err(bad());
    }
    Ok(epoch as i64 * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute() {
        assert_eq!(parse_begin("+30m", 1000), Ok(1000 + 1_800_000));
        let a = parse_begin("2026-12-01T02:00", 0).unwrap();
        let b = parse_begin("2026-12-01 02:00:30", 0).unwrap();
        assert_eq!(b - a, 30_000);
        for bad in ["tomorrow", "2026-13-01T00:00", "2026-12-01T25:00", "+x"] {
            assert!(parse_begin(bad, 0).is_err(), "{bad}");
        }
    }
}
