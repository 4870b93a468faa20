//! Human durations for flags: "250ms", "5s", "2m", "1h".

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses() {
        use std::time::Duration;
        assert_eq!(super::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(super::parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(super::parse("2m"), Ok(Duration::from_secs(120)));
        assert!(super::parse("5 parsecs").is_err());
        assert!(super::parse("").is_err());
    }
}
