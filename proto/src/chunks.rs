//! How a Watch stream cuts what it sends into messages: each SNAPSHOT or
//! EVENTS message holds at most [`MESSAGE_EVENTS`] events and about
//! [`MESSAGE_BYTES`] of keys and values (a larger record travels alone).
//!
//! The byte bound is low on purpose. A gRPC receiver (tonic) keeps one
//! decode buffer per stream as large as the largest message the stream has
//! brought, for the life of the stream. An apiserver holds one stream per
//! peer: with 1 MiB messages, 250 peers could pin 250 MiB of buffers after
//! one large snapshot each; at 16 KiB they pin a few MiB. A message of
//! 16 KiB is still one HTTP/2 DATA frame's worth, so the cost per record
//! hardly changes (docs/benchmarks.md "Bounded messages").

use crate::v1::Event;

/// Events per message, at most.
pub const MESSAGE_EVENTS: usize = 512;

/// Bytes of keys and values per message, at most (a single larger record
/// travels alone).
pub const MESSAGE_BYTES: usize = 16 * 1024;

/// How many of `events` go into the next message (at least one, unless
/// `events` is empty).
pub fn chunk_len(events: &[Event]) -> usize {
    let mut bytes = 0;
    for (i, e) in events.iter().take(MESSAGE_EVENTS).enumerate() {
        bytes += e.key.len() + e.value.len();
        if i > 0 && bytes > MESSAGE_BYTES {
            return i;
        }
    }
    events.len().min(MESSAGE_EVENTS)
}

/// `events` cut into consecutive messages' worth ([`chunk_len`]), in order.
pub fn slices(events: &[Event]) -> impl Iterator<Item = &[Event]> {
    let mut rest = events;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (chunk, tail) = rest.split_at(chunk_len(rest));
        rest = tail;
        Some(chunk)
    })
}

/// `events` (in revision order, every one up to `revision`) cut into
/// messages, each with the revision up to which it completes the stream:
/// the last one `revision`; an earlier one, the revision just before the
/// first event left for the next message. A cut may fall inside one store
/// transaction (its events share a revision): a consumer that resumes from
/// such a message gets that whole transaction again, and its mirror finds
/// the repeated events unchanged. Nothing is ever skipped.
pub fn split_events(mut events: Vec<Event>, revision: i64) -> Vec<(Vec<Event>, i64)> {
    let mut out = Vec::new();
    loop {
        let n = chunk_len(&events);
        if n >= events.len() {
            out.push((events, revision));
            return out;
        }
        let rest = events.split_off(n);
        let upto = (rest[0].revision - 1).min(revision);
        out.push((events, upto));
        events = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(len: usize, revision: i64) -> Event {
        Event {
            key: "k".into(),
            value: vec![0u8; len].into(),
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn chunks_are_bounded_by_count_and_bytes() {
        let small: Vec<_> = (0..1000).map(|_| ev(10, 1)).collect();
        assert_eq!(chunk_len(&small), MESSAGE_EVENTS);
        assert_eq!(chunk_len(&small[..7]), 7);
        assert_eq!(chunk_len(&[]), 0);
        let big: Vec<_> = (0..10).map(|_| ev(7 * 1024, 1)).collect();
        assert_eq!(chunk_len(&big), 2, "2 × 7 KiB fit, 3 do not");
        let huge = vec![ev(3 * 1024 * 1024, 1), ev(1, 1)];
        assert_eq!(chunk_len(&huge), 1, "a record over the bound travels alone");
        let lens: Vec<usize> = slices(&big).map(<[Event]>::len).collect();
        assert_eq!(lens, [2, 2, 2, 2, 2], "every event, in bounded slices");
        assert_eq!(slices(&[]).count(), 0);
    }

    #[test]
    fn split_events_marks_each_message_with_what_it_completes() {
        // Revisions 10 (3 events of 7 KiB, one transaction), 11, 12.
        let events = vec![
            ev(7 * 1024, 10),
            ev(7 * 1024, 10),
            ev(7 * 1024, 10),
            ev(7 * 1024, 11),
            ev(7 * 1024, 12),
        ];
        let parts = split_events(events.clone(), 12);
        let shape: Vec<(Vec<i64>, i64)> = parts
            .iter()
            .map(|(e, r)| (e.iter().map(|e| e.revision).collect(), *r))
            .collect();
        assert_eq!(
            shape,
            [
                // Cut inside revision 10: only 9 is complete.
                (vec![10, 10], 9),
                (vec![10, 11], 11),
                (vec![12], 12),
            ]
        );
        let flat: Vec<Event> = parts.into_iter().flat_map(|(e, _)| e).collect();
        assert_eq!(flat, events, "every event, in order");
        // What fits stays one message with the batch's revision.
        let one = split_events(vec![ev(10, 4), ev(10, 5)], 6);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1, 6);
        assert_eq!(split_events(Vec::new(), 3), vec![(Vec::new(), 3)]);
    }
}
