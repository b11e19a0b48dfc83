//! Sizes and durations as users write them: `12G`, `512M`, `2h`, `1h30m`, `90s`.

/// MiB from a size with a unit: `K`, `M`, `G`, `T` (binary; `GB`, `GiB` and lower case accepted).
/// A bare number is MiB.
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("bad size {s:?}: use a number and a unit, e.g. 12G or 512M"))?;
    let factor = match unit.trim().to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" | "m" => 1.0,
        "k" => 1.0 / 1024.0,
        "g" => 1024.0,
        "t" => 1024.0 * 1024.0,
        _ => return Err(format!("bad size unit in {s:?}: use K, M, G or T")),
    };
    let mib = (value * factor).ceil();
    if !mib.is_finite() || mib < 0.0 || mib > u64::MAX as f64 {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(mib as u64)
}

/// `small=8G,medium=20G,large=40G` (the format of `RAVEL_MEMORY_LIMITS`).
pub fn parse_memory_limits(s: &str) -> Result<Vec<(String, u64)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (tag, size) =
                p.split_once('=').ok_or_else(|| format!("bad memory limit {p:?}: use TAG=SIZE, e.g. small=8G"))?;
            Ok((tag.trim().to_string(), parse_size_mib(size)?))
        })
        .collect()
}

/// Milliseconds from `500ms`, `90s`, `30m`, `2h`, `1d`, or sums like `1h30m`. A bare number is seconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("bad duration {s:?}: use e.g. 90s, 30m, 2h or 1h30m");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<f64>() {
        return if secs >= 0.0 && secs.is_finite() { Ok((secs * 1000.0) as u64) } else { Err(bad()) };
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if n_end == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let ms = match &rest[..u_end] {
            "ms" => 1.0,
            "s" | "sec" => 1000.0,
            "m" | "min" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return Err(bad()),
        };
        rest = &rest[u_end..];
        total = total.saturating_add((value * ms) as u64);
    }
    Ok(total)
}

/// An array spec: `0-99`, `0-99%8` (at most 8 running), `1,3,7-9`, `0-20:5` (step 5).
/// Returns the indices in the order given, and the running limit.
pub fn parse_array(s: &str) -> Result<(Vec<u32>, Option<u32>), String> {
    let bad = |why: &str| format!("bad --array {s:?}: {why}; use e.g. 0-99%8 or 1,3,5");
    let (ranges, limit) = match s.split_once('%') {
        Some((r, l)) => (r, Some(l.trim().parse::<u32>().map_err(|_| bad("the limit after % is not a number"))?)),
        None => (s, None),
    };
    if limit == Some(0) {
        return Err(bad("the limit after % must be at least 1"));
    }
    let mut out = Vec::new();
    for part in ranges.split(',').map(str::trim) {
        let (range, step) = match part.split_once(':') {
            Some((r, st)) => (r, st.parse::<u32>().ok().filter(|s| *s > 0).ok_or_else(|| bad("bad step"))?),
            None => (part, 1),
        };
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (a, b),
            None => (range, range),
        };
        let a: u32 = a.trim().parse().map_err(|_| bad("an index is not a number"))?;
        let b: u32 = b.trim().parse().map_err(|_| bad("an index is not a number"))?;
        if b < a {
            return Err(bad("a range ends before it starts"));
        }
        if (b - a) / step >= 100_000 || out.len() >= 100_000 {
            return Err(bad("more than 100000 elements"));
        }
        out.extend((a..=b).step_by(step as usize));
    }
    Ok((out, limit))
}

#[cfg(test)]
mod tests {
    #[test]
    fn arrays() {
        assert_eq!(parse_array("0-3%2"), Ok((vec![0, 1, 2, 3], Some(2))));
        assert_eq!(parse_array("1,3,7-9"), Ok((vec![1, 3, 7, 8, 9], None)));
        assert_eq!(parse_array("0-10:5"), Ok((vec![0, 5, 10], None)));
        for bad in ["", "5-1", "a-b", "0-3%0", "0-3%x", "0-9999999"] {
            assert!(parse_array(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("12G"), Ok(12 * 1024));
        assert_eq!(parse_size_mib("12GiB"), Ok(12 * 1024));
        assert_eq!(parse_size_mib("512m"), Ok(512));
        assert_eq!(parse_size_mib("1.5G"), Ok(1536));
        assert_eq!(parse_size_mib("300"), Ok(300));
        assert!(parse_size_mib("12X").unwrap_err().contains("unit"));
        assert!(parse_size_mib("G").is_err());
        assert_eq!(
            parse_memory_limits("small=8G, large=40G").unwrap(),
            vec![("small".into(), 8192), ("large".into(), 40960)]
        );
        assert!(parse_memory_limits("small").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1.5"), Ok(1500));
        for bad in ["", "h", "5x", "-1", "1h-2m"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
