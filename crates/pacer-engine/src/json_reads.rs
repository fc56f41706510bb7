//! What a request reads from a JSON answer, and parsing only that.
//!
//! A request's checks, extracts and poll conditions name JSON Pointers (RFC 6901); nothing else
//! of the answer is ever looked at. Building the whole document as a `serde_json::Value` cost
//! about 4.4 µs of client CPU per KiB of answer (an allocation per string, key, object and
//! array, and as many frees): 400 µs per request for a 93 KB page of analytics conversations,
//! 80% of it building and dropping the tree. So each request's pointers become one tree of
//! tokens ([`Reads`]), built once per run, and an answer is parsed against it: the values a
//! pointer ends at are built whole, the objects and arrays on the way keep only the members
//! some pointer goes through, and everything else is skipped by serde's `IgnoredAny`, which
//! checks the grammar without allocating. The same request now costs 90 µs (docs/benchmarks.md,
//! "JSON checks on large answers").
//!
//! The result is a sparse `Value` on which every pointer of the request finds exactly what it
//! finds on the whole document (property-tested below), so `JsonCheck::holds` and extraction
//! are unchanged. What counts as a JSON answer: valid UTF-8 (checked first, over the whole
//! body) that follows JSON's grammar with nothing after the document. Skipped parts are held
//! to the grammar only: a number too large for an `f64`, an escaped lone surrogate or nesting
//! deeper than serde_json's 128 levels fail the parse where a pointer reads them, and are
//! accepted (RFC 8259 allows them) where none does.

use std::fmt;

use pacer_plan::{ExtractFrom, Request};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The parts of a JSON answer some pointer of a request reads: a tree of pointer tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Reads {
    /// A pointer ends here: the value is built whole, and `children` are not needed.
    whole: bool,
    /// Tokens some pointer goes through next (decoded: `~1` is `/`, `~0` is `~`), each once.
    children: Vec<(String, Reads)>,
}

impl Reads {
    /// The pointers `req`'s checks, JSON extracts and poll conditions read; `None` when none
    /// reads the body (then it is drained, not kept).
    pub(crate) fn of(req: &Request) -> Option<Reads> {
        let checks = req
            .expect
            .json
            .iter()
            .chain(req.poll.iter().flat_map(|p| p.until.json.iter()))
            .map(|c| c.pointer.as_str());
        let extracts = req.extract.iter().filter_map(|(_, ex)| match &ex.from {
            ExtractFrom::JsonPointer(p) => Some(p.as_str()),
            ExtractFrom::Header(_) => None,
        });
        let mut pointers = checks.chain(extracts).peekable();
        pointers.peek()?;
        Some(Reads::of_pointers(pointers))
    }

    /// The tree of `pointers`. A pointer that does not start with `/` (and is not empty)
    /// finds nothing in any document, so it adds nothing.
    pub(crate) fn of_pointers<'p>(pointers: impl IntoIterator<Item = &'p str>) -> Reads {
        let mut root = Reads::default();
        for p in pointers {
            if p.is_empty() {
                root.whole = true;
                continue;
            }
            let Some(rest) = p.strip_prefix('/') else {
                continue;
            };
            let mut node = &mut root;
            // The same decoding as `serde_json::Value::pointer`, in the same order.
            for token in rest
                .split('/')
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
            {
                let i = match node.children.iter().position(|(t, _)| *t == token) {
                    Some(i) => i,
                    None => {
                        node.children.push((token, Reads::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[i].1;
            }
            node.whole = true;
        }
        root
    }

    /// `body` as the sparse document these pointers read, or `None` when it is not JSON.
    pub(crate) fn parse(&self, body: &[u8]) -> Option<Value> {
        let text = std::str::from_utf8(body).ok()?;
        let mut de = serde_json::Deserializer::from_str(text);
        let doc = self.deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(doc)
    }

    /// The child for array index `i`: a token that `Value::pointer` reads as `i` (decimal, no
    /// sign, no leading zero).
    fn index_child(&self, i: usize) -> Option<&Reads> {
        self.children
            .iter()
            .find(|(t, _)| as_index(t) == Some(i))
            .map(|(_, r)| r)
    }

    /// The largest array index any child names.
    fn max_index(&self) -> Option<usize> {
        self.children.iter().filter_map(|(t, _)| as_index(t)).max()
    }
}

/// A pointer token as an array index, as `serde_json::Value::pointer` reads it.
fn as_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

impl<'de> DeserializeSeed<'de> for &Reads {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.whole {
            return serde::Deserialize::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &Reads {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // Scalars on the way to a pointer's end: kept as they are (a pointer through them finds
    // nothing, as on the whole document).
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(child) = map.next_key_seed(Key(self))? {
            match child {
                Some((token, reads)) => {
                    // A repeated key replaces the earlier value, as in `Value`.
                    out.insert(token.clone(), map.next_value_seed(reads)?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        // Elements up to the last index a pointer names are kept in place (`null` for those no
        // pointer reads, so the indices stay right); the rest are skipped.
        if let Some(last) = self.max_index() {
            for i in 0..=last {
                let next = match self.index_child(i) {
                    Some(reads) => seq.next_element_seed(reads)?,
                    None => seq.next_element::<IgnoredAny>()?.map(|_| Value::Null),
                };
                match next {
                    Some(v) => out.push(v),
                    None => return Ok(Value::Array(out)),
                }
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Array(out))
    }
}

/// An object's key, matched against the children without allocating: which child it is, if any.
struct Key<'r>(&'r Reads);

impl<'de, 'r> DeserializeSeed<'de> for Key<'r> {
    type Value = Option<(&'r String, &'r Reads)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'r> Visitor<'de> for Key<'r> {
    type Value = Option<(&'r String, &'r Reads)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .children
            .iter()
            .find(|(t, _)| t == key)
            .map(|(t, r)| (t, r)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Every pointer finds on the sparse document what it finds on the whole one (parsed from
    /// the same bytes, as before: a float need not survive a round trip through text).
    fn same_reads(doc: &Value, pointers: &[&str]) {
        let body = serde_json::to_vec(doc).unwrap();
        let whole: Value = serde_json::from_slice(&body).unwrap();
        let sparse = Reads::of_pointers(pointers.iter().copied())
            .parse(&body)
            .unwrap();
        for p in pointers {
            assert_eq!(
                sparse.pointer(p),
                whole.pointer(p),
                "pointer {p:?} of {doc}"
            );
        }
    }

    #[test]
    fn pointers_find_what_they_find_on_the_whole_document() {
        let doc = json!({
            "totalHits": 3,
            "conversations": [
                {"id": "a", "participants": [{"purpose": "customer"}, {"purpose": "agent"}]},
                {"id": "b", "participants": []},
            ],
            "a/b": {"m~n": 1},
            "": {"": 2},
            "01": "key, not index",
            "nested": {"deep": {"deeper": [1, 2, {"x": null}]}},
        });
        same_reads(
            &doc,
            &[
                "/totalHits",
                "/conversations/0/participants/0/purpose",
                "/conversations/1/id",
                "/conversations/1/participants/0",
                "/conversations/7/id",
                "/conversations/01/id",
                "/conversations/-/id",
                "/a~1b/m~0n",
                "//",
                "/01",
                "/nested/deep",
                "/nested/deep/deeper/2/x",
                "/totalHits/0",
                "/missing",
                "",
                "no-slash",
            ],
        );
    }

    #[test]
    fn only_what_a_pointer_reads_is_built() {
        let body =
            br#"{"keep":{"x":[1,2,3]},"skip":{"big":[{"a":"b"}]},"arr":[10,{"y":1,"z":2},30,40]}"#;
        let sparse = Reads::of_pointers(["/keep", "/arr/1/y"])
            .parse(body)
            .unwrap();
        assert_eq!(
            sparse,
            json!({"keep": {"x": [1, 2, 3]}, "arr": [null, {"y": 1}]})
        );
        // The empty pointer is the whole document.
        let whole = Reads::of_pointers([""]).parse(body).unwrap();
        assert_eq!(whole, serde_json::from_slice::<Value>(body).unwrap());
    }

    #[test]
    fn what_is_not_json_is_none_wherever_the_fault_is() {
        let reads = Reads::of_pointers(["/a"]);
        for body in [
            &b""[..],
            b"not json",
            b"{\"a\":1",
            b"{\"a\":1} trailing",
            b"{\"a\":1,\"skip\":[1,2}",
            b"{\"skip\":\"\xff\",\"a\":1}",
            b"{\"skip\":\"\x01\",\"a\":1}",
            b"{\"skip\":\"\\q\",\"a\":1}",
            b"{\"skip\":01,\"a\":1}",
        ] {
            assert_eq!(
                reads.parse(body),
                None,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(reads.parse(b" {\"a\":1} \n"), Some(json!({"a": 1})));
    }

    #[test]
    fn a_repeated_key_keeps_the_last_value_as_value_does() {
        let body = br#"{"a":1,"a":{"b":2}}"#;
        let sparse = Reads::of_pointers(["/a/b", "/a"]).parse(body).unwrap();
        let whole: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(sparse.pointer("/a"), whole.pointer("/a"));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            "[a-c~/0-2]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-c~/0-2]{0,3}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Pointers made of the same small alphabet as the keys, so they often hit.
    fn arb_pointers() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(
            prop::collection::vec(
                prop_oneof!["[a-c0-2]{0,2}", "~0", "~1", "0", "1", "2", "01"],
                0..4,
            )
            .prop_map(|tokens| tokens.iter().map(|t| format!("/{t}")).collect::<String>()),
            1..5,
        )
    }

    proptest! {
        #[test]
        fn any_pointers_find_the_same_on_any_document(doc in arb_json(), ps in arb_pointers()) {
            let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
            same_reads(&doc, &refs);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_parse_where_value_does(
            body in prop::collection::vec(any::<u8>(), 0..64),
            ps in arb_pointers(),
        ) {
            agrees_with_value(&body, &ps)?;
        }

        #[test]
        fn a_document_with_one_byte_changed_parses_where_value_does(
            doc in arb_json(),
            ps in arb_pointers(),
            at in any::<prop::sample::Index>(),
            byte in prop_oneof![Just(b'"'), Just(b','), Just(b'}'), Just(b']'), Just(b'\\'), any::<u8>()],
            op in 0..3u8,
        ) {
            let mut body = serde_json::to_vec(&doc).unwrap();
            let i = at.index(body.len());
            match op {
                0 => body[i] = byte,
                1 => body.insert(i, byte),
                _ => {
                    body.remove(i);
                }
            }
            agrees_with_value(&body, &ps)?;
        }
    }

    /// Where the whole parse accepts `body`, the sparse one does too and every pointer agrees.
    /// (The sparse one may accept more: see the module doc.)
    fn agrees_with_value(body: &[u8], ps: &[String]) -> Result<(), TestCaseError> {
        let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
        let sparse = Reads::of_pointers(refs.iter().copied()).parse(body);
        if let Ok(whole) = serde_json::from_slice::<Value>(body) {
            let sparse = sparse.ok_or_else(|| TestCaseError::fail("valid JSON refused"))?;
            for p in &refs {
                prop_assert_eq!(sparse.pointer(p), whole.pointer(p));
            }
        }
        Ok(())
    }
}
