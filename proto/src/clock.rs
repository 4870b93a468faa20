//! The one wall-clock helper: milliseconds since the Unix epoch, as records,
//! heartbeats and status carry them. A clock before 1970 reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
