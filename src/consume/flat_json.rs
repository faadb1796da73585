//! The fast path of consume's JSON decoding: one scan over a message that is a JSON object,
//! handing each top-level `key: value` to the caller, with no allocation.
//!
//! Why it exists: serde_json's visitor path was the largest single cost of `app consume`
//! (BENCHMARKS.md, "Where our own pipeline spends its CPU"); the values our producer writes are
//! flat objects whose strings need no escapes, which a direct scan reads several times faster.
//!
//! Why it is safe: it never *decides* anything. It returns `None` for whatever it does not handle
//! (an escape in a string, a control character, invalid UTF-8, a number serde_json reads in a
//! special way such as `-0` or more than 19 digits, nesting deeper than [`MAX_DEPTH`], anything
//! malformed), and the caller then decodes the message with serde_json, which gives every error
//! its message. When it returns `Some`, the fields it reported are exactly those serde_json's
//! `deserialize_any` reports for the same bytes: integers without fraction or exponent are `U64`
//! (or `I64` when negative), other numbers `F64` (correctly rounded, as serde_json's
//! `float_roundtrip`), keys in order, duplicates included. Tests below compare the two on
//! generated and mutated messages; the `json_message` fuzz target compares the whole decoder with
//! `Schema::decode_json`.

use crate::schema::first_special;

/// Nesting (objects or arrays inside the top-level object) beyond this goes to serde_json.
pub const MAX_DEPTH: usize = 16;

/// The field names a scan expects, in the order producers write them: a key equal to the next
/// expected name is recognised by one comparison instead of being scanned and looked up.
#[derive(Debug, Clone)]
pub struct KeyOrder {
    /// `None`: a name that needs escaping in JSON, never predicted.
    names: Vec<Option<Box<[u8]>>>,
}

impl KeyOrder {
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        let names = names
            .iter()
            .map(|n| {
                let n = n.as_ref().as_bytes();
                first_special(n).is_none().then(|| n.into())
            })
            .collect();
        KeyOrder { names }
    }
}

/// A top-level field's key: the expected name at this index, or another one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldKey<'a> {
    Known(usize),
    Other(&'a str),
}

/// A top-level field's value. Nested objects and arrays are checked for validity, not kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FlatValue<'a> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(&'a str),
    Array,
    Object,
}

/// Scans `bytes` as one JSON object (surrounding whitespace allowed), calling `on_field` for each
/// top-level field in order. `None`: not handled here (possibly valid JSON): decode it with
/// serde_json instead, and discard whatever `on_field` was given. A key is
/// [`FieldKey::Known`] exactly when it equals that name of `order`.
pub fn scan_object<'a>(
    bytes: &'a [u8],
    order: &KeyOrder,
    on_field: &mut dyn FnMut(FieldKey<'a>, FlatValue<'a>),
) -> Option<()> {
    // UTF-8 is checked per string, as serde_json does: outside strings only ASCII grammar bytes
    // are accepted, and a key recognised by comparison equals a valid name.
    let mut cursor = Cursor { bytes, at: 0 };
    cursor.whitespace();
    if cursor.peek()? != b'{' {
        return None;
    }
    let mut more = cursor.open(b'}')?;
    let mut next = 0usize;
    while more {
        let key = match cursor.predicted(order, next) {
            Some(i) => {
                next = i + 1;
                FieldKey::Known(i)
            }
            None => FieldKey::Other(cursor.string()?),
        };
        cursor.whitespace();
        cursor.expect(b':')?;
        cursor.whitespace();
        let value = cursor.value(0)?;
        on_field(key, value);
        more = cursor.separator(b'}')?;
    }
    cursor.whitespace();
    (cursor.at == bytes.len()).then_some(())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// At a key: `Some(next)` (and the key consumed) when it is exactly `"<name next>"`.
    fn predicted(&mut self, order: &KeyOrder, next: usize) -> Option<usize> {
        let name = order.names.get(next)?.as_deref()?;
        let end = self.at + name.len() + 2;
        let quoted = self.bytes.get(self.at..end)?;
        let hit = quoted[0] == b'"'
            && quoted[end - self.at - 1] == b'"'
            && &quoted[1..name.len() + 1] == name;
        hit.then(|| {
            self.at = end;
            next
        })
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// At an opening `{` or `[`: `Some(true)` when members follow, `Some(false)` when `close`
    /// (the container is empty) has been consumed.
    fn open(&mut self, close: u8) -> Option<bool> {
        self.at += 1;
        self.whitespace();
        if self.peek()? == close {
            self.at += 1;
            return Some(false);
        }
        Some(true)
    }

    /// After a member: `Some(true)` at `,` (another member follows), `Some(false)` at `close`.
    fn separator(&mut self, close: u8) -> Option<bool> {
        self.whitespace();
        match self.peek()? {
            b',' => {
                self.at += 1;
                self.whitespace();
                Some(true)
            }
            b if b == close => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// At `{` of a nested object: checks its fields.
    fn object(&mut self, depth: usize) -> Option<()> {
        let mut more = self.open(b'}')?;
        while more {
            self.string()?;
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            self.value(depth)?;
            more = self.separator(b'}')?;
        }
        Some(())
    }

    /// At `[`: checks the elements.
    fn array(&mut self, depth: usize) -> Option<()> {
        let mut more = self.open(b']')?;
        while more {
            self.value(depth)?;
            more = self.separator(b']')?;
        }
        Some(())
    }

    /// One value; `depth` is the nesting of the object or array it is in (0: top level).
    fn value(&mut self, depth: usize) -> Option<FlatValue<'a>> {
        Some(match self.peek()? {
            b'"' => FlatValue::Str(self.string()?),
            b'{' if depth < MAX_DEPTH => {
                self.object(depth + 1)?;
                FlatValue::Object
            }
            b'[' if depth < MAX_DEPTH => {
                self.array(depth + 1)?;
                FlatValue::Array
            }
            b't' => self.literal(b"true", FlatValue::Bool(true))?,
            b'f' => self.literal(b"false", FlatValue::Bool(false))?,
            b'n' => self.literal(b"null", FlatValue::Null)?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return None,
        })
    }

    fn literal(&mut self, word: &[u8], value: FlatValue<'a>) -> Option<FlatValue<'a>> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| {
            self.at = end;
            value
        })
    }

    /// At `"`: a string without escapes or control characters (anything else: `None`).
    fn string(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at + 1;
        let rest = self.bytes.get(start..)?;
        let len = first_special(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        std::str::from_utf8(&rest[..len]).ok()
    }

    /// A number by JSON's grammar, typed as serde_json types it.
    fn number(&mut self) -> Option<FlatValue<'a>> {
        let start = self.at;
        let negative = self.peek()? == b'-';
        if negative {
            self.at += 1;
        }
        let digits_start = self.at;
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let digits_end = self.at;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.at_least_one_digit()?;
            float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.at_least_one_digit()?;
            float = true;
        }
        if float {
            // ASCII by the grammar just checked.
            let text = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
            let value: f64 = text.parse().ok()?;
            // serde_json refuses what overflows; let it say so.
            return value.is_finite().then_some(FlatValue::F64(value));
        }
        let digits = &self.bytes[digits_start..digits_end];
        if digits.len() > 19 {
            return None;
        }
        let magnitude = digits.iter().try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        if !negative {
            return Some(FlatValue::U64(magnitude));
        }
        // `-0` (serde_json: -0.0) and magnitudes below i64::MIN (serde_json: a float) go there.
        if magnitude == 0 || magnitude > i64::MAX as u64 + 1 {
            return None;
        }
        Some(FlatValue::I64((magnitude as i64).wrapping_neg()))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Option<()> {
        let before = self.at;
        self.digits();
        (self.at > before).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const NAMES: [&str; 4] = ["a", "b", "ano", "x\"y"];

    fn fields(bytes: &[u8]) -> Option<Vec<(String, FlatValue<'_>)>> {
        let order = KeyOrder::new(&NAMES);
        let mut out = Vec::new();
        scan_object(bytes, &order, &mut |k, v| {
            let key = match k {
                FieldKey::Known(i) => NAMES[i].to_string(),
                FieldKey::Other(k) => k.to_string(),
            };
            out.push((key, v))
        })?;
        Some(out)
    }

    /// What serde_json says the same field is (the reference).
    fn same(flat: &FlatValue<'_>, value: &Value) -> bool {
        match (flat, value) {
            (FlatValue::Null, Value::Null) => true,
            (FlatValue::Bool(a), Value::Bool(b)) => a == b,
            (FlatValue::Str(a), Value::String(b)) => a == b,
            (FlatValue::Array, Value::Array(_)) => true,
            (FlatValue::Object, Value::Object(_)) => true,
            (FlatValue::U64(a), Value::Number(n)) => n.is_u64() && n.as_u64() == Some(*a),
            (FlatValue::I64(a), Value::Number(n)) => n.is_i64() && n.as_i64() == Some(*a),
            (FlatValue::F64(a), Value::Number(n)) => {
                n.is_f64() && n.as_f64().map(f64::to_bits) == Some(a.to_bits())
            }
            _ => false,
        }
    }

    /// Where the scan answers, serde_json accepts the message and agrees on every field (the
    /// last of duplicate keys, as `serde_json::Map` keeps it).
    fn check_agrees(bytes: &[u8]) -> Result<bool, TestCaseError> {
        let Some(flat) = fields(bytes) else {
            return Ok(false);
        };
        let parsed: Value = serde_json::from_slice(bytes).map_err(|e| {
            TestCaseError::fail(format!(
                "scanned {:?} but serde_json refuses it: {e}",
                String::from_utf8_lossy(bytes)
            ))
        })?;
        let object = parsed.as_object().expect("an object");
        let mut last = std::collections::BTreeMap::new();
        for (k, v) in &flat {
            last.insert(k.as_str(), v);
        }
        prop_assert_eq!(
            last.len(),
            object.len(),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        for (k, v) in last {
            let reference = &object[k];
            prop_assert!(
                same(v, reference),
                "{:?}: field {k}: scan {v:?}, serde_json {reference:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        Ok(true)
    }

    #[test]
    fn reads_what_the_producer_writes() {
        let message = r#"{"ano":2023,"trimestre":2,"categoria":"Demais Bancos, Financeiras","cnpj_if":null,"instituicao_financeira":"SERTÃO – CRÉDITO","indice":8.8,"neg":-5,"_source":{"file":"/d/x.csv","line":500000}}"#
            .as_bytes();
        let got = fields(message).expect("the fast path reads the producer's shape");
        assert_eq!(got[0], ("ano".into(), FlatValue::U64(2023)));
        assert_eq!(got[3], ("cnpj_if".into(), FlatValue::Null));
        assert_eq!(got[4].1, FlatValue::Str("SERTÃO – CRÉDITO"));
        assert_eq!(got[5], ("indice".into(), FlatValue::F64(8.8)));
        assert_eq!(got[6], ("neg".into(), FlatValue::I64(-5)));
        assert_eq!(got[7], ("_source".into(), FlatValue::Object));
        assert!(check_agrees(message).unwrap());
    }

    #[test]
    fn leaves_special_cases_to_serde_json() {
        for message in [
            &br#"{"a":"x\"y"}"#[..],
            br#"{"a\n":1}"#,
            b"{\"a\":\"tab\there\"}",
            br#"{"a":-0}"#,
            br#"{"a":12345678901234567890123}"#,
            br#"{"a":1e400}"#,
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":tru}"#,
            br#"{"a":1,}"#,
            br#"{"a":1} x"#,
            br#"[1]"#,
            b"{\"a\":\"\xff\"}",
            br#"{"a":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}"#,
        ] {
            assert!(
                fields(message).is_none(),
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
        assert_eq!(
            fields(br#" { "a" : -9223372036854775808 , "b":[ ] ,"c":{ } } "#).unwrap(),
            vec![
                ("a".into(), FlatValue::I64(i64::MIN)),
                ("b".into(), FlatValue::Array),
                ("c".into(), FlatValue::Object)
            ]
        );
    }

    /// JSON-like text from pieces that include every edge the scan handles or refuses.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:e}")),
            any::<f64>().prop_map(|v| v.to_string()),
            "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?",
            "\"[a-zç\\\\\"\\t ]{0,6}\"",
            "\\PC{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just("[1,[2,{}]]".to_string()),
            Just("{\"file\":\"f\",\"line\":7}".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn first_special_is_the_first_quote_backslash_or_control(bytes in proptest::collection::vec(
            prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..=0xff], 0..40)) {
            let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(first_special(&bytes), expected);
        }

        /// Generated objects: whenever the scan answers, serde_json agrees field by field; an
        /// object of plain fields is always answered.
        #[test]
        fn agrees_with_serde_json(
            entries in proptest::collection::vec(("[a-c]{1,2}", piece()), 0..8),
            spaced in any::<bool>(),
        ) {
            let sep = if spaced { " , " } else { "," };
            let body: Vec<String> = entries.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let message = format!("{{{}}}", body.join(sep));
            check_agrees(message.as_bytes())?;
        }

        /// The same objects cut, spliced and corrupted: never a wrong answer.
        #[test]
        fn mutated_messages_never_disagree(
            entries in proptest::collection::vec(("[a-c]{1,2}", piece()), 0..6),
            cut in any::<prop::sample::Index>(),
            insert in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let body: Vec<String> = entries.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let mut bytes = format!("{{{}}}", body.join(",")).into_bytes();
            let at = insert.index(bytes.len() + 1);
            bytes.insert(at, byte);
            check_agrees(&bytes)?;
            let cut_at = cut.index(bytes.len() + 1);
            check_agrees(&bytes[..cut_at])?;
        }

        #[test]
        fn arbitrary_bytes_never_disagree(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            check_agrees(&bytes)?;
        }
    }
}
