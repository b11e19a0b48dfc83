//! Output for people: aligned tables, durations, timestamps. No colour (output is often piped).

/// Prints rows under a header, each column as wide as its widest cell; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect(), &mut out);
    }
    out
}

/// `950ms`, `42s`, `3m05s`, `2h07m`, `3d04h`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Timestamps and cut text look the same in the CLI and the web UI.
pub use ravel_controller::{timestamp, truncate};

/// A command line for display: arguments with spaces or quotes are quoted.
pub fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(duration(950), "950ms");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(command_line(&["sh".into(), "-c".into(), "echo 'hi' x".into()]), r"sh -c 'echo '\''hi'\'' x'");
        let t = table(&["ID", "NAME"], &[vec!["1".into(), "a".into()], vec!["100".into(), "b".into()]]);
        assert_eq!(t, "ID   NAME\n1    a\n100  b\n");
    }
}
