//! Output helpers: aligned tables (bold header on a terminal) and JSON.

use std::io::IsTerminal;

/// Output format chosen with `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Renders rows as columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        let n = cells.len();
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let head = line(header.iter().map(|s| s.to_string()).collect());
    let mut out = if color {
        format!("\x1b[1m{head}\x1b[0m\n")
    } else {
        format!("{head}\n")
    };
    for r in rows {
        out.push_str(line(r.clone()).trim_end());
        out.push('\n');
    }
    out
}

/// How long ago `then_ms` was, or None when it is unset (0).
pub fn age_millis(then_ms: i64, now_ms: i64) -> Option<i64> {
    (then_ms > 0).then(|| (now_ms - then_ms).max(0))
}

/// "never", "3s ago", "4m ago", "2h ago", "3d ago".
pub fn age_text(age_ms: Option<i64>) -> String {
    let Some(ms) = age_ms else {
        return "never".into();
    };
    let s = ms / 1000;
    if s < 120 {
        format!("{s}s ago")
    } else if s < 7200 {
        format!("{}m ago", s / 60)
    } else if s < 172_800 {
        format!("{}h ago", s / 3600)
    } else {
        format!("{}d ago", s / 86_400)
    }
}

/// Pretty JSON with a final newline.
pub fn json_text(v: &serde_json::Value) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    )
}

/// A list joined with ", ", or "-" when empty.
pub fn list_or_dash<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns() {
        let t = super::table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], "xyz  1");
        assert_eq!(lines[2], "q    22");
        assert_eq!(lines[0], "A    LONGER", "no colour off a terminal");
    }

    #[test]
    fn ages() {
        use super::{age_millis, age_text};
        assert_eq!(age_text(age_millis(0, 5000)), "never");
        assert_eq!(age_text(age_millis(1000, 4500)), "3s ago");
        assert_eq!(age_text(age_millis(1, 600_001)), "10m ago");
        assert_eq!(age_text(Some(3 * 3600 * 1000)), "3h ago");
        assert_eq!(age_text(Some(5 * 86_400 * 1000)), "5d ago");
        assert_eq!(age_millis(9000, 5000), Some(0), "clock skew clamps to 0");
    }

    #[test]
    fn dash() {
        assert_eq!(super::list_or_dash::<&str>(&[]), "-");
        assert_eq!(super::list_or_dash(&["a", "b"]), "a,b");
    }
}
