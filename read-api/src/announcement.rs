//! What the projector and the rebuild announce on [`NOTIFY_CHANNEL`], and how it is read back.
//!
//! A payload is one or more announcements separated by spaces: `p:<id>:<version>` or
//! `o:<id>:<version>` (the highest version a product or order reached in the announcing
//! transaction), or `rebuilt` after a rebuild swapped new tables in. This module is the only
//! place that writes or reads that vocabulary.

use std::fmt;

use ordering_schema::events::AggregateType;
use uuid::Uuid;

pub use crate::views::NOTIFY_CHANNEL;

/// One announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announcement {
    /// The aggregate's view reached `version`.
    Applied {
        aggregate: AggregateType,
        id: Uuid,
        version: i64,
    },
    /// A rebuild swapped in new tables.
    Rebuilt,
}

const REBUILT: &str = "rebuilt";

fn tag(aggregate: AggregateType) -> char {
    match aggregate {
        AggregateType::Product => 'p',
        AggregateType::Order => 'o',
    }
}

impl fmt::Display for Announcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Applied { aggregate, id, version } => write!(f, "{}:{}:{version}", tag(*aggregate), id.simple()),
            Self::Rebuilt => f.write_str(REBUILT),
        }
    }
}

/// Parses a payload: its announcements, unreadable parts left out.
pub fn parse_all(payload: &str) -> impl Iterator<Item = Announcement> + '_ {
    payload.split_ascii_whitespace().filter_map(parse)
}

/// Parses one announcement.
pub fn parse(payload: &str) -> Option<Announcement> {
    if payload == REBUILT {
        return Some(Announcement::Rebuilt);
    }
    let mut parts = payload.split(':');
    let aggregate = match parts.next()? {
        "p" => AggregateType::Product,
        "o" => AggregateType::Order,
        _ => return None,
    };
    let id = Uuid::parse_str(parts.next()?).ok()?;
    let version = parts.next()?.parse().ok()?;
    Some(Announcement::Applied { aggregate, id, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_announcements() {
        let id = Uuid::now_v7();
        let product = |id, version| Announcement::Applied {
            aggregate: AggregateType::Product,
            id,
            version,
        };
        let order = |id, version| Announcement::Applied {
            aggregate: AggregateType::Order,
            id,
            version,
        };
        assert_eq!(parse(&format!("p:{id}:3")), Some(product(id, 3)));
        assert_eq!(parse(&format!("o:{id}:2:{id}")), Some(order(id, 2)));
        assert_eq!(parse("rebuilt"), Some(Announcement::Rebuilt));
        let other = Uuid::now_v7();
        assert_eq!(
            parse_all(&format!("p:{}:3 o:{}:7 junk", id.simple(), other.simple())).collect::<Vec<_>>(),
            [product(id, 3), order(other, 7)]
        );
        assert_eq!(parse("x:y"), None);
    }

    #[test]
    fn what_is_written_reads_back() {
        let id = Uuid::now_v7();
        for a in [
            Announcement::Applied {
                aggregate: AggregateType::Order,
                id,
                version: 9,
            },
            Announcement::Rebuilt,
        ] {
            assert_eq!(parse(&a.to_string()), Some(a));
        }
    }
}
