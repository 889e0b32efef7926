//! What a fan-out (`detflow fan`) adds to a Stream V2 stream so that N writers share one
//! detector: the block rule that deals images to ranks ([`Deal`]), and the three keys each
//! rank's `start` and `end` carry ([`RankKeys`]), spliced into the message's top-level map
//! with the rest of its bytes untouched ([`add_uint_keys`]). Plain consumers ignore them.

use minicbor::Decoder;
use minicbor::data::Type;

use crate::error::DecodeError;
use crate::model::Start;
use crate::read::{At, Key, invalid, map_key, more, peek_type, skip, skip_tags, uint};

/// The `start`/`end` key with the rank (0-based) the message was sent to.
pub const RANK_KEY: &str = "detflow_rank";
/// The `start`/`end` key with the number of ranks the images are dealt to.
pub const RANKS_KEY: &str = "detflow_ranks";
/// The `start`/`end` key with the number of consecutive images one rank gets in turn.
pub const FRAMES_PER_BLOCK_KEY: &str = "detflow_frames_per_block";

pub use detflow_hal::Deal;

/// The keys one rank's `start` and `end` carry: which rank it is, and the [`Deal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RankKeys {
    /// This rank, `0..deal.ranks()`.
    pub rank: u64,
    /// How the images are dealt.
    pub deal: Deal,
}

impl RankKeys {
    /// The keys of rank `rank` in `deal`; `None` when `rank` is not below `deal.ranks()`.
    pub fn new(rank: u64, deal: Deal) -> Option<Self> {
        (rank < deal.ranks()).then_some(RankKeys { rank, deal })
    }

    /// The three keys as [`add_uint_keys`] takes them.
    pub fn pairs(&self) -> [(&'static str, u64); 3] {
        [
            (RANK_KEY, self.rank),
            (RANKS_KEY, self.deal.ranks()),
            (FRAMES_PER_BLOCK_KEY, self.deal.frames_per_block()),
        ]
    }

    /// `msg` (a `start` or `end`, as received) with the three keys added, appended to `out`.
    pub fn add_to(&self, msg: &[u8], out: &mut Vec<u8>) -> Result<(), AddKeysError> {
        add_uint_keys(msg, &self.pairs(), out)
    }

    /// The keys of a decoded `start` (from its [`Start::extra`]): `None` when it has none of
    /// them (it did not come through a fan), an error naming the key when it has only some,
    /// or a value that is not an unsigned integer, or a rank or deal out of range.
    pub fn from_start(start: &Start<'_>) -> Result<Option<Self>, DecodeError> {
        let value = |key: &'static str| -> Result<Option<u64>, DecodeError> {
            let Some((_, raw)) = start.extra.iter().find(|(k, _)| *k == key) else {
                return Ok(None);
            };
            let mut d = Decoder::new(raw);
            uint(&mut d, Key::top(key)).map(Some)
        };
        let (rank, ranks, frames_per_block) = (
            value(RANK_KEY)?,
            value(RANKS_KEY)?,
            value(FRAMES_PER_BLOCK_KEY)?,
        );
        let (rank, ranks, frames_per_block) = match (rank, ranks, frames_per_block) {
            (None, None, None) => return Ok(None),
            (Some(r), Some(n), Some(b)) => (r, n, b),
            (r, n, _) => {
                let absent = match (r, n) {
                    (None, _) => RANK_KEY,
                    (_, None) => RANKS_KEY,
                    _ => FRAMES_PER_BLOCK_KEY,
                };
                return Err(DecodeError::MissingKey {
                    message: "start",
                    key: absent.to_owned(),
                });
            }
        };
        let deal = Deal::new(ranks, frames_per_block).ok_or_else(|| {
            let key = if ranks == 0 {
                RANKS_KEY
            } else {
                FRAMES_PER_BLOCK_KEY
            };
            invalid(Key::top(key), "0 (at least 1)")
        })?;
        let keys = RankKeys::new(rank, deal).ok_or_else(|| {
            invalid(
                Key::top(RANK_KEY),
                format!("{rank} (not below {RANKS_KEY} {ranks})"),
            )
        })?;
        Ok(Some(keys))
    }
}

/// Why keys could not be added to a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddKeysError {
    /// The message is not one CBOR map with text keys (or not well-formed).
    #[error("cannot add keys to the message: {0}")]
    Decode(#[from] DecodeError),
    /// The message has one of the keys already (it came through a fan before, say).
    #[error("cannot add key {key:?}: the message has it already")]
    Present {
        /// The key.
        key: String,
    },
}

/// Appends to `out` the message `msg` (one CBOR map with text keys, with or without the
/// 55799 prefix or other tags before it) with the pairs `keys` added at the end of its
/// top-level map, each value an unsigned integer at its smallest width. Only the map's head
/// is rewritten (a definite map of n pairs becomes n + `keys.len()`, its head as wide as
/// that needs; an indefinite map keeps its head and gets the pairs before its break); every
/// other byte is copied as received, so the image data of nothing is decoded.
///
/// The whole map is walked (its keys read, its values skipped) to find where it ends and
/// to refuse a key that is there already.
///
/// ```
/// use detflow_stream2::{End, Message, Series, decode, encode, fan::add_uint_keys};
///
/// let mut end = Vec::new();
/// encode(&Message::End(End { series: Series { id: 1, unique_id: "u" } }), &mut end);
/// let mut out = Vec::new();
/// add_uint_keys(&end, &[("detflow_rank", 2)], &mut out)?;
/// assert_eq!(out.len(), end.len() + 14); // "detflow_rank" (1 + 12 bytes) and 2 (1 byte)
/// assert!(matches!(decode(&out)?, Message::End(_)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn add_uint_keys(
    msg: &[u8],
    keys: &[(&str, u64)],
    out: &mut Vec<u8>,
) -> Result<(), AddKeysError> {
    let mut d = Decoder::new(msg);
    skip_tags(&mut d)?;
    let head_at = d.position();
    let len = match peek_type(&d)? {
        Type::Map | Type::MapIndef => d.map().at(head_at)?,
        t => {
            return Err(DecodeError::NotAMap {
                found: t.to_string(),
            }
            .into());
        }
    };
    let body_at = d.position();
    let mut left = len;
    while more(&mut d, &mut left)? {
        let k = map_key(&mut d, "message")?;
        if keys.iter().any(|(key, _)| *key == k) {
            return Err(AddKeysError::Present { key: k.to_owned() });
        }
        skip(&mut d)?;
    }
    let end = d.position();
    if end != msg.len() {
        return Err(DecodeError::Malformed {
            offset: end,
            reason: format!("{} bytes after the message's map", msg.len() - end),
        }
        .into());
    }
    out.reserve(msg.len() + keys.len() * 40);
    out.extend_from_slice(&msg[..head_at]);
    match len {
        Some(n) => {
            // n pairs took at least 2n bytes of the message, so n + keys cannot overflow.
            crate::encode::head(out, 5, n + keys.len() as u64);
            out.extend_from_slice(&msg[body_at..end]);
            pairs(out, keys);
        }
        None => {
            // Everything up to the break, the pairs, the break.
            out.extend_from_slice(&msg[head_at..end - 1]);
            pairs(out, keys);
            out.push(0xff);
        }
    }
    Ok(())
}

fn pairs(out: &mut Vec<u8>, keys: &[(&str, u64)]) {
    for (k, v) in keys {
        crate::encode::head(out, 3, k.len() as u64);
        out.extend_from_slice(k.as_bytes());
        crate::encode::head(out, 0, *v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{End, Message, SELF_DESCRIBED, Series, decode, encode};

    const KEYS: [(&str, u64); 3] = [
        (RANK_KEY, 2),
        (RANKS_KEY, 3),
        (FRAMES_PER_BLOCK_KEY, 100_000),
    ];

    /// A map of `n` pairs `k0: 0, k1: 1, ...` with the type first, as minicbor writes it
    /// (definite or indefinite), optionally with the prefix.
    fn map_of(n: u64, definite: bool, prefix: bool) -> Vec<u8> {
        let mut e = minicbor::Encoder::new(Vec::new());
        if prefix {
            e.tag(minicbor::data::Tag::new(55799)).unwrap();
        }
        if definite {
            e.map(n).unwrap();
        } else {
            e.begin_map().unwrap();
        }
        e.str("type").unwrap().str("end").unwrap();
        for i in 1..n {
            e.str(&format!("k{i}")).unwrap().u64(i).unwrap();
        }
        if !definite {
            e.end().unwrap();
        }
        e.into_writer()
    }

    /// The pairs of a top-level map, keys and uint values (text values as u64::MAX).
    fn read_pairs(msg: &[u8]) -> Vec<(String, u64)> {
        let mut d = Decoder::new(msg);
        skip_tags(&mut d).unwrap();
        let mut len = d.map().unwrap();
        let mut v = Vec::new();
        while more(&mut d, &mut len).unwrap() {
            let k = d.str().unwrap().to_owned();
            let x = if d.datatype().unwrap() == Type::String {
                d.skip().unwrap();
                u64::MAX
            } else {
                d.u64().unwrap()
            };
            v.push((k, x));
        }
        assert_eq!(d.position(), msg.len());
        v
    }

    #[test]
    fn every_map_head_width_gains_the_keys() {
        // Around each width change of the head: 23 -> 24 (1 to 2 bytes), 255 -> 256 (2 to 3),
        // 65535 -> 65536 (3 to 5).
        for n in [
            1, 2, 20, 21, 22, 23, 24, 252, 253, 255, 256, 65_533, 65_534, 65_536,
        ] {
            for (definite, prefix) in [(true, true), (true, false), (false, true), (false, false)] {
                let msg = map_of(n, definite, prefix);
                let mut out = b"before".to_vec();
                add_uint_keys(&msg, &KEYS, &mut out).unwrap();
                assert!(out.starts_with(b"before"));
                let out = &out[6..];
                assert_eq!(out.starts_with(&SELF_DESCRIBED), prefix);
                let mut want = read_pairs(&msg);
                want.extend(KEYS.iter().map(|(k, v)| ((*k).to_owned(), *v)));
                assert_eq!(read_pairs(out), want, "{n} pairs, definite {definite}");
                let head = out[if prefix { 3 } else { 0 }];
                if definite {
                    let width = match n + 3 {
                        0..=23 => 0xa0 + (n + 3) as u8,
                        24..=255 => 0xb8,
                        256..=65_535 => 0xb9,
                        _ => 0xba,
                    };
                    assert_eq!(head, width, "{n} pairs");
                } else {
                    assert_eq!(head, 0xbf);
                    assert_eq!(out.last(), Some(&0xff));
                }
            }
        }
    }

    #[test]
    fn a_non_minimal_head_is_rewritten_minimal() {
        // A 2-pair map written with a one-byte length (b8 02).
        let mut msg = vec![0xb8, 0x02];
        msg.extend_from_slice(&map_of(2, true, false)[1..]);
        let mut out = Vec::new();
        add_uint_keys(&msg, &KEYS, &mut out).unwrap();
        assert_eq!(out[0], 0xa5);
        assert_eq!(read_pairs(&out).len(), 5);
    }

    #[test]
    fn an_end_gains_the_keys_and_still_decodes() {
        let end = Message::End(End {
            series: Series {
                id: 7,
                unique_id: "u",
            },
        });
        let mut msg = Vec::new();
        encode(&end, &mut msg);
        let mut out = Vec::new();
        RankKeys::new(1, Deal::new(3, 2).unwrap())
            .unwrap()
            .add_to(&msg, &mut out)
            .unwrap();
        assert_eq!(decode(&out).unwrap(), end);
        assert_eq!(&out[..3], &SELF_DESCRIBED);
        assert_eq!(out[3], 0xa6);
        assert_eq!(
            &out[4..msg.len()],
            &msg[4..],
            "the old pairs are copied as they were"
        );
    }

    #[test]
    fn bad_messages_are_refused_and_out_is_untouched() {
        let ok = map_of(3, true, true);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "malformed"),
            (vec![0x83, 1, 2, 3], "a CBOR map"),
            (ok[..ok.len() - 1].to_vec(), "malformed"),
            ([ok.clone(), vec![0]].concat(), "after the message's map"),
            (vec![0xa1, 0x01, 0x02], "a text key"),
            (map_of(3, false, false)[..8].to_vec(), "malformed"),
        ];
        for (msg, why) in cases {
            let mut out = vec![9];
            let e = add_uint_keys(&msg, &KEYS, &mut out).unwrap_err();
            assert!(e.to_string().contains(why), "{msg:x?}: {e}");
            assert_eq!(out, [9]);
        }
        let mut twice = Vec::new();
        add_uint_keys(&ok, &KEYS, &mut twice).unwrap();
        let e = add_uint_keys(&twice, &KEYS[1..], &mut Vec::new()).unwrap_err();
        assert_eq!(
            e,
            AddKeysError::Present {
                key: RANKS_KEY.into()
            }
        );
    }

    #[test]
    fn the_deal_and_its_inverse_agree() {
        for (n, b) in [(1, 1), (1, 5), (3, 1), (3, 2), (4, 7)] {
            let deal = Deal::new(n, b).unwrap();
            let mut seen = vec![0u64; n as usize];
            for i in 0..200 {
                let r = deal.rank_of(i);
                assert_eq!(
                    deal.index_in_rank(i),
                    seen[r as usize],
                    "n {n} b {b} id {i}"
                );
                assert_eq!(deal.image_id(r, seen[r as usize]), Some(i));
                seen[r as usize] += 1;
                for rank in 0..n {
                    assert_eq!(
                        deal.images_of_rank(rank, i + 1),
                        seen[rank as usize],
                        "n {n} b {b} after {i}"
                    );
                }
            }
            assert_eq!(deal.image_id(n, 0), None);
        }
        assert!(Deal::new(0, 1).is_none() && Deal::new(1, 0).is_none());
        let huge = Deal::new(u64::MAX, u64::MAX).unwrap();
        assert_eq!(huge.rank_of(u64::MAX - 1), 0);
        assert_eq!(huge.images_of_rank(0, 10), 10);
        assert_eq!(huge.images_of_rank(1, 10), 0);
        assert_eq!(huge.image_id(1, u64::MAX), None);
    }

    #[test]
    fn rank_keys_read_back_from_a_start() {
        let keys = RankKeys::new(2, Deal::new(3, 4).unwrap()).unwrap();
        let start = crate::Start {
            series: Series {
                id: 1,
                unique_id: "u",
            },
            ..crate::Start::default()
        };
        let mut msg = Vec::new();
        encode(&Message::Start(start.clone()), &mut msg);
        let Message::Start(plain) = decode(&msg).unwrap() else {
            unreachable!()
        };
        assert_eq!(RankKeys::from_start(&plain).unwrap(), None);
        let mut out = Vec::new();
        keys.add_to(&msg, &mut out).unwrap();
        let Message::Start(s) = decode(&out).unwrap() else {
            unreachable!()
        };
        assert_eq!(RankKeys::from_start(&s).unwrap(), Some(keys));

        let with = |pairs: &[(&str, u64)]| {
            let mut out = Vec::new();
            add_uint_keys(&msg, pairs, &mut out).unwrap();
            out
        };
        let refused = |bytes: Vec<u8>| {
            let Message::Start(s) = decode(&bytes).unwrap() else {
                unreachable!()
            };
            RankKeys::from_start(&s).unwrap_err().to_string()
        };
        let e = refused(with(&[(RANK_KEY, 0), (RANKS_KEY, 2)]));
        assert!(e.contains(FRAMES_PER_BLOCK_KEY), "{e}");
        let e = refused(with(&[
            (RANK_KEY, 2),
            (RANKS_KEY, 2),
            (FRAMES_PER_BLOCK_KEY, 1),
        ]));
        assert!(e.contains("not below detflow_ranks 2"), "{e}");
        let e = refused(with(&[
            (RANK_KEY, 0),
            (RANKS_KEY, 0),
            (FRAMES_PER_BLOCK_KEY, 1),
        ]));
        assert!(e.contains(RANKS_KEY), "{e}");
    }
}
